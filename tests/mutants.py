"""Mutation check of the oracles: apply each one-line mutation below to advbg (one at a time), run the oracle
tests, print which tests fail, and restore advbg with `git checkout -- advbg` (also on SIGINT/SIGTERM).
Every mutation must make at least one test fail. Not collected by pytest; run from the repository root:

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python3 tests/mutants.py [INDEX ...]

It refuses to start unless `git status` shows advbg/ unchanged. About a minute per mutation on a shared 2-core CPU.
"""
import json
import os
import re
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _restore(*_):
    subprocess.run(["git", "checkout", "--", "advbg"], cwd=ROOT, check=True)
    sys.exit(1)


# (what the mutation breaks, file, the line as it is, the line mutated)
C, L, K = "advbg/models/label_map.py", "advbg/data/labels.py", "advbg/search/criteria.py"
M = [
 ("label map: none group merged into class 0 (_index)", C, "torch.where(t < 0, torch.full_like(t, self.num_classes), t)", "torch.where(t < 0, torch.full_like(t, 0), t)"),
 ("label map: none group column dropped (reduce)", C, "return out if self.has_none else out[:, : self.num_classes]", "return out[:, : self.num_classes]"),
 ("label map: max-per-group -> sum", C, 'reduce="amax"', 'reduce="sum"'),
 ("label map: max-per-group -> mean", C, 'reduce="amax"', 'reduce="mean"'),
 ("label map: top-1 argmax -> argmin (predict)", C, "top = logits.argmax(1)", "top = logits.argmin(1)"),
 ("label map: none not decoded to -1 (>= -> >)", C, "pred >= self.num_classes, torch.full_like", "pred > self.num_classes, torch.full_like"),
 ("table: dog 171,172 mapped (151-268)", L, '"dog": _r(151, 170) + _r(173, 268)', '"dog": _r(151, 268)'),
 ("table: domestic cats mapped to carnivore (269-299)", L, '"carnivore": _r(269, 280) + _r(286, 299)', '"carnivore": _r(269, 299)'),
 ("table: class indices rotated (k -> k+1 mod 9)", L, "table[IN9_IMAGENET_INDICES[name]] = k", "table[IN9_IMAGENET_INDICES[name]] = (k + 1) % 9"),
 ("table: unmapped filled with dog (0)", L, "table = np.full(1000, UNMAPPED, dtype=np.int64)", "table = np.full(1000, 0, dtype=np.int64)"),
 ("table: fish 389-397 dropped", L, '"fish": _r(0, 6) + _r(389, 397)', '"fish": _r(0, 6)'),
 ("margin: others include the true class", C, "return true_score - others.max(1).values", "return true_score - scores.max(1).values"),
 ("margin: none group excluded from others", C, 'others = scores.scatter(1, true.view(-1, 1), float("-inf"))', 'others = scores[:, : self.num_classes].scatter(1, true.view(-1, 1), float("-inf"))'),
 ("margin: sign flipped (best other minus true)", C, "return true_score - others.max(1).values", "return others.max(1).values - true_score"),
 ("margin: best other -> worst other (max -> min)", C, "return true_score - others.max(1).values", "return true_score - others.min(1).values"),
 ("margin: true score = best score overall", C, "true_score = scores.gather(1, true.view(-1, 1)).squeeze(1)", "true_score = scores.max(1).values"),
 ("any: pred != true -> pred != bg_label", K, "return pred != true", "return pred != bg_label"),
 ("any: pred != true -> pred < true", K, "return pred != true", "return pred < true"),
 ("any: != -> ==", K, "return pred != true", "return pred == true"),
 ("bg-class: drop (pred == bg_label)", K, "return (pred == bg_label) & (bg_label >= 0) & (bg_label != true)", "return (bg_label >= 0) & (bg_label != true)"),
 ("bg-class: drop (bg_label >= 0)", K, "return (pred == bg_label) & (bg_label >= 0) & (bg_label != true)", "return (pred == bg_label) & (bg_label != true)"),
 ("bg-class: drop (bg_label != true)", K, "return (pred == bg_label) & (bg_label >= 0) & (bg_label != true)", "return (pred == bg_label) & (bg_label >= 0)"),
 ("bg-class: bg_label >= 0 -> > 0", K, "(pred == bg_label) & (bg_label >= 0) & (bg_label != true)", "(pred == bg_label) & (bg_label > 0) & (bg_label != true)"),
 ("bg-class: pred == bg_label -> pred != true", K, "return (pred == bg_label) & (bg_label >= 0) & (bg_label != true)", "return (pred != true) & (bg_label >= 0) & (bg_label != true)"),
 ("outcome: 255 check disabled", K, "        if missing:\n            raise AdvbgError(f\"{missing} pairs of", "        if False:\n            raise AdvbgError(f\"{missing} pairs of"),
 ("outcome: NONE(254) not decoded (MISSING decoded instead)", K, "np.where(outcome == OUTCOME_NONE, -1,", "np.where(outcome == OUTCOME_MISSING, -1,"),
 ("outcome: criterion ignored (always any)", K, "return self.fooled(pred, np.asarray(true", "return Criterion(\"any\").fooled(pred, np.asarray(true"),
 ("target_mask: drop t >= 0", K, "return (t >= 0) & (c >= 0) & (t != c)", "return (c >= 0) & (t != c)"),
 ("target_mask: drop c >= 0", K, "return (t >= 0) & (c >= 0) & (t != c)", "return (t >= 0) & (t != c)"),
 ("target_mask: drop t != c", K, "return (t >= 0) & (c >= 0) & (t != c)", "return (t >= 0) & (c >= 0)"),
 ("fooled_targets: non-targets not masked out (& target dropped)", K, "fooled_outcome(only_targets, fg_class, bg_class) & target", "fooled_outcome(only_targets, fg_class, bg_class)"),
 ("fooled_targets: missing-target check disabled", K, "    if missing:\n        raise AdvbgError(f\"{missing} target pairs", "    if False:\n        raise AdvbgError(f\"{missing} target pairs"),
 ("fooled_targets: non-target pairs not neutralised", K, "only_targets = np.where(target, outcome, OUTCOME_NONE)", "only_targets = outcome"),
 ("asr: divided by all foregrounds, not targets", K, "out = 100.0 * fooled.sum(0) / n", "out = 100.0 * fooled.sum(0) / len(fg_class)"),
]
TESTS = ["tests/test_criteria.py",
         "tests/test_models.py::test_in9_table_equals_the_reference_table_typed_in_from_the_protocol",
         "tests/test_models.py::test_label_map_prediction_and_margin_equal_the_plain_reference",
         "tests/test_search.py::test_search_equals_naive_loop", "tests/test_search.py::test_the_parity_store_covers_every_clause"]


def main() -> None:
    if subprocess.run(["git", "status", "--short", "advbg"], cwd=ROOT, capture_output=True, text=True,
                      check=False).stdout.strip():
        sys.exit("advbg/ has uncommitted changes: commit them first (this script restores advbg with git checkout)")
    signal.signal(signal.SIGTERM, _restore)
    signal.signal(signal.SIGINT, _restore)
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
    only = set(sys.argv[1:])
    survivors = []
    for idx, (name, f, old, new) in enumerate(M):
        if only and str(idx) not in only:
            continue
        path = os.path.join(ROOT, f)
        with open(path) as fh:
            src = fh.read()
        assert src.count(old) == 1, (name, src.count(old))
        try:
            with open(path, "w") as fh:
                fh.write(src.replace(old, new))
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *TESTS],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
        finally:
            subprocess.run(["git", "checkout", "--", "advbg"], cwd=ROOT, check=True)
        failed = sorted(set(re.findall(r"^FAILED (\S+)", r.stdout, re.MULTILINE)))
        if not failed:
            survivors.append(name)
        print(json.dumps({"index": idx, "mutation": name, "file": f, "failed": failed}), flush=True)
    left = subprocess.run(["git", "status", "--short", "advbg"], cwd=ROOT, capture_output=True, text=True,
                          check=False).stdout
    assert not left.strip(), left
    print(f"survivors: {survivors}" if survivors else "every mutation was caught")
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
