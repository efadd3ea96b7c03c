"""Fuzz the real CLI in-process with random and malformed arguments and files, for a bounded time, seeded.

Every command the app registers is discovered (new commands are fuzzed without editing this file). Each case
must end with: no traceback; exit 0, or a non-zero exit whose stderr ends in one ``advbg: error:`` line that is
not an internal error (exit 3 = an unexpected exception); no file changed outside the paths given as outputs
(the store given with --store may change only when the command succeeded); advbg/data/demo.h5 never changes.
ADVBG_FUZZ_SECONDS / ADVBG_FUZZ_SEED override the budget (default 10 s) and the seed.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import typer
from conftest import TinyNet, make_random_store, make_tiny_classifier
from fixtures_data import draw_object, make_released, save_png, write_csv

from advbg.cli.app import app
from advbg.cli import main
from advbg.commands.common import DEMO_STORE as DEFAULT_STORE
from advbg.data.store import Store
from advbg.models.weights import register
from advbg.search.config import SearchConfig
from advbg.search.runner import search

SECONDS = float(os.environ.get("ADVBG_FUZZ_SECONDS", "10"))
SEED = int(os.environ.get("ADVBG_FUZZ_SEED", "20240609"))
CASE_LIMIT_S = 30  # one case running longer is a finding (a hang), not a slow test
LOG = os.environ.get("ADVBG_FUZZ_LOG")  # append each argv here before it runs (to find a hanging case)
# Never fuzzed: `fetch` would try the network; `finetune` trains for as many epochs as the fuzzer asks.
SKIP = {("fetch", "in9"), ("finetune",)}
OUT_OPTS = {"--out", "-o", "--results-file", "--grid", "--top-png", "--hist-png", "--plot", "--dest",
            "--journal-dir", "--dir"}
IN_OPTS = {"--store", "-s", "--weights", "--models-file", "--boxes", "--archive", "--backgrounds"}


@register("test/tiny-fuzz")
def _tiny():
    return TinyNet(9), dict(architecture="tinynet", weight_tag="fuzz", source="test", weights_file=None,
                            weights_sha256=None, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 32, 32),
                            class_names=("dog", "bird", "vehicle", "reptile", "carnivore", "insect", "instrument",
                                         "primate", "fish"))


class Evil:
    def __reduce__(self):
        return (open, ("pwned-by-fuzz", "w"))


def make_inputs(d: Path) -> dict[str, Path]:
    """Good and malformed input files under d (the fuzzer picks among them)."""
    d.mkdir()
    rng = np.random.default_rng(0)
    store = make_random_store(d / "store.h5")
    data = store.read_bytes()
    files = {"store": store, "dir": d / "folder", "missing": d / "missing.h5", "txt": d / "notes.txt",
             "trunc": d / "trunc.h5", "garbage": d / "garbage.h5", "empty": d / "empty.h5", "png": d / "img.png",
             "pickle": d / "evil.pt", "json": d / "r.json", "csv": d / "boxes.csv", "tar": d / "a.tar.gz"}
    files["dir"].mkdir()
    (files["dir"] / "inside.txt").write_text("x")
    files["txt"].write_text("not an image, not a store\n")
    files["link"] = d / "link.json"          # an output path through a symlink: the target must never change
    files["link"].symlink_to(files["txt"])
    files["trunc"].write_bytes(data[: len(data) // 2])
    files["garbage"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["empty"].write_bytes(b"")
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(files["png"])
    files["pickle"].write_bytes(pickle.dumps({"model": Evil()}))
    files["json"].write_text('{"fooling_rate": "x", "foregrounds": [1, 2]}')
    files["csv"].write_text("file,xmin,ymin,xmax,ymax,label\nimg.png,1,1,9,9,dog\nimg.png,-5,x,,3,\n")
    files["tar"].write_bytes(b"\x1f\x8b" + rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    with Store(store, "r+") as s:  # a complete exhaustive search, so that export/universal have results
        search(s, make_tiny_classifier(), SearchConfig(), results_name="r", progress=False)
    files["release"] = make_released(d / "release", per_class=1, size=16).root
    files["photos"] = d / "photos"
    rows = []
    for k in range(3):
        img, _ = draw_object(rng, 40, 48, (10, 8, 34, 30))
        save_png(files["photos"] / f"p{k}.png", img)
        rows.append((f"p{k}.png", 10, 8, 34, 30, ("dog", "bird")[k % 2]))
    files["boxes"] = write_csv(d / "photo_boxes.csv", rows)
    return files


WORDS = ["", "any", "bg-class", "in9", "identity", "auto", "cpu", "cuda:7", "off", "bf16", "fp16", "folder", "h5",
         "both", "fooled", "asr", "all", "dog", "reference", "sehwag", "0,1", "0.5,0.25", "r", "a/b", "..",
         "-", "nan", "inf", "-1", "0", "1", "3", "1e300", "99999999999999999999", "é🙂", "  ", "--", "x" * 300]
INTS = ["-1", "0", "1", "2", "7", "10000000000000000", "1.5", "abc", ""]
MODELS = ["test/tiny-fuzz", "test/tiny-fuzz", "test/tiny-fuzz", "resnet5O", "", "no/such", "{pickle}", "{png}",
          "{missing}", "resnet18.a1_in1k"]
JUNK = ["--nope", "-x", "--", "-", "--store", "--help=3", "é", "--quiet=maybe"]


def commands():
    root = typer.main.get_command(app)

    def walk(c, prefix=()):
        if hasattr(c, "commands"):
            for name, sub in c.commands.items():
                yield from walk(sub, prefix + (name,))
        else:
            yield prefix, c

    return [(p, c) for p, c in walk(root) if p not in SKIP]


def value_for(opt: str, rnd: random.Random, files: dict[str, Path], out: Path) -> tuple[str, bool]:
    """(value, is_output) for option ``opt``."""
    if opt in OUT_OPTS or opt in ("results", "path", "images") and rnd.random() < 0.3:
        name = rnd.choice(["x.h5", "r.json", "r.csv", "p.png", "sub/x.h5", "dir", "-"])
        target = out / name if rnd.random() < 0.85 else files[rnd.choice(["dir", "txt", "missing", "link", "store"])]
        return (str(target) if name != "-" else "-"), name != "-"
    if opt in IN_OPTS or opt in ("store", "path", "images", "results"):
        return str(files[rnd.choice(list(files))] if rnd.random() < 0.8 else files["store"]), False
    if opt in ("--model", "-m"):
        m = rnd.choice(MODELS)
        return (str(files[m[1:-1]]) if m.startswith("{") else m), False
    if rnd.random() < 0.5:
        return rnd.choice(INTS), False
    return rnd.choice(WORDS), False


def templates(files: dict[str, Path], out: Path) -> list[list[str]]:
    """Valid invocations (tiny inputs, the tiny model): the happy paths that mutations start from."""
    st, m = str(files["store"]), "test/tiny-fuzz"
    return [
        ["verify", st, "-q"],
        ["search", "--store", st, "--model", m, "--grid", str(out / "g.png"), "--results-file", str(out / "r.json"), "-q"],
        ["search", "--store", st, "--model", m, "--early-exit", "--results-name", "ee", "-q"],
        ["universal", "--store", st, "--model", m, "--results-file", str(out / "u.json"), "--top-png",
         str(out / "t.png"), "--hist-png", str(out / "h.png"), "-q"],
        ["export", "--store", st, "--out", str(out / "exp"), "--results", "r"],
        ["variants", "--store", st, "--out", str(out / "var"), "--variants", "only_fg,no_fg", "-q"],
        ["eval", "--store", st, "--model", m, "--variants", "original,only_fg", "--results-file",
         str(out / "e.json"), "-q"],
        ["ingest", "in9", str(files["release"]), "--out", str(out / "in9.h5"), "-q"],
        ["extract", str(files["photos"]), "--boxes", str(files["boxes"]), "--out", str(out / "x.h5"), "--crop", "16",
         "--resize", "24", "--workers", "1", "-q"],
        ["synth", "--out", str(out / "syn.h5"), "--classes", "2", "--per-class", "2", "--size", "16"],
        ["models"],
    ]


def mutate(argv: list[str], rnd: random.Random, files: dict[str, Path], out: Path) -> list[str]:
    """0-2 changes: a value swapped for a random one, an argument dropped, junk inserted."""
    argv = list(argv)
    for _ in range(rnd.choice([0, 1, 1, 2])):
        if len(argv) < 2:
            break
        k = rnd.randrange(1, len(argv))
        how = rnd.random()
        if how < 0.5 and argv[k - 1].startswith("-") and not argv[k].startswith("-"):
            argv[k] = value_for(argv[k - 1], rnd, files, out)[0]
        elif how < 0.7:
            del argv[k]
        else:
            argv.insert(k, rnd.choice(JUNK + WORDS))
    return argv


def outputs_and_store(argv: list[str]) -> tuple[set[Path], Path | None]:
    outs, store = set(), None
    for a, b in zip(argv, argv[1:]):
        if a in OUT_OPTS and b != "-":
            outs.add(Path(b))
        if a in ("--store", "-s"):
            store = Path(b)
    if argv and argv[0] == "verify" and len(argv) > 1:
        store = Path(argv[1])
    return outs, store


def make_case(rnd: random.Random, cmds, files, out: Path) -> tuple[list[str], set[Path], Path | None]:
    """A random argv, the output paths it names, and the --store it names (if any)."""
    if rnd.random() < 0.5:
        argv = mutate(rnd.choice(templates(files, out)), rnd, files, out)
        return (argv, *outputs_and_store(argv))
    path, cmd = rnd.choice(cmds)
    argv, outs, store = list(path), set(), None
    params = list(cmd.params)
    rnd.shuffle(params)
    for p in params:
        required = p.required or (p.param_type_name == "option" and p.opts[0] in ("--store", "--model"))
        if not required and rnd.random() < 0.6:
            continue
        if required and rnd.random() < 0.08:
            continue  # a missing required argument
        opt = rnd.choice(p.opts)
        if getattr(p, "is_flag", False):
            argv.append(opt)
            continue
        value, is_out = value_for(opt if p.param_type_name == "option" else p.name, rnd, files, out)
        argv += [opt, value] if p.param_type_name == "option" else [value]
        if is_out:
            outs.add(Path(value))
        if opt in ("--store", "-s") or p.name == "store":
            store = Path(value)
    if "--quiet" not in argv and any(p.opts[0] == "--quiet" for p in cmd.params):
        argv.append("-q")
    if rnd.random() < 0.1:
        argv.insert(rnd.randrange(len(argv) + 1), rnd.choice(JUNK))
    return argv, outs, store


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            p = Path(dirpath) / name
            out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class CaseTimeout(BaseException):
    """Raised by SIGALRM inside a case that runs too long (a BaseException, so main() does not swallow it)."""


def _alarm(signum, frame):
    raise CaseTimeout


def run_case(argv, capsys, limit_s: int = 0) -> tuple[int, str, str]:
    """Run main(argv) in-process; exit code -1 when it was still running after ``limit_s`` seconds."""
    old = signal.signal(signal.SIGALRM, _alarm) if limit_s else None
    signal.alarm(limit_s)
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except CaseTimeout:
        code = -1
    finally:
        signal.alarm(0)
        if old is not None:
            signal.signal(signal.SIGALRM, old)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def known_unbounded(argv: list[str]) -> bool:
    """Cases that do what was asked for far too long, reported rather than fuzzed: `synth` makes as many images
    as asked (until the disk fills); `extract --workers N` starts N processes."""
    if not argv:
        return False
    huge = any(a.isdigit() and int(a) > 10**5 for a in argv)
    workers = any(a in ("--workers", "--num-workers") and b.lstrip("-").isdigit() and int(b) > 16
                  for a, b in zip(argv, argv[1:]))
    return (argv[0] == "synth" and huge) or workers


def test_usage_errors_are_one_line_exit_2_not_internal_errors(capsys):
    for argv in (["verify"], ["search", "--batch-size", "abc"], ["verify", "--nope"], ["nosuchcommand"]):
        code, _, err = run_case(argv, capsys)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("advbg: error:"), (argv, err)
        assert "internal error" not in err


# Hazards the fuzzer found in other modules (all fixed since), kept as regression tests.
REGRESSIONS = {
    # advbg/evaluate.py read_models_file: a binary file raised UnicodeDecodeError (internal error, exit 3)
    "models-file": lambda f: ["eval", "--store", str(f["store"]), "--model", "test/tiny-fuzz", "--models-file",
                              str(f["png"]), "-q"],
    # advbg/universal.py run_universal: PNG paths were checked only after fill searches had written the store
    "universal-png": lambda f: ["universal", "--store", str(f["store"]), "--model", "test/tiny-fuzz", "--hist-png",
                                str(f["store"].parent / "no-such-folder" / "h.png"), "--top-png", "-", "-q"],
    # advbg/synth.py: a negative --seed reached numpy unchecked (internal error, exit 3)
    "synth-seed": lambda f: ["synth", "--out", str(f["store"].parent / "syn.h5"), "--seed", "-1", "--classes", "2",
                             "--per-class", "1", "--size", "16"],
}


def test_binary_models_file_is_a_one_line_error(tmp_path, capsys):
    files = {"store": make_random_store(tmp_path / "s.h5"), "png": tmp_path / "m.png"}
    files["png"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    code, _, err = run_case(REGRESSIONS["models-file"](files), capsys)
    assert code == 1 and "internal error" not in err and err.startswith("advbg: error:")


def test_universal_png_in_missing_folder_is_refused_before_any_work(tmp_path, capsys):
    files = {"store": make_random_store(tmp_path / "s.h5")}
    before = files["store"].read_bytes()
    code, _, err = run_case(REGRESSIONS["universal-png"](files), capsys)
    assert code == 1 and "internal error" not in err and files["store"].read_bytes() == before


def test_negative_synth_seed_is_a_one_line_error(tmp_path, capsys):
    code, _, err = run_case(REGRESSIONS["synth-seed"]({"store": tmp_path / "s.h5"}), capsys)
    assert code in (1, 2) and "internal error" not in err
    assert not (tmp_path / "syn.h5").exists()


def check(argv, code, out, err, before, after, outs, store, files) -> list[str]:
    """Every way this case broke the CLI's promises (empty when it kept them)."""
    bad = []
    if code == -1:
        return [f"still running after {CASE_LIMIT_S} s"]
    if "Traceback" in out + err:
        bad.append("traceback")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if code != 0:
        if not lines or not lines[-1].startswith("advbg: error:"):
            bad.append(f"exit {code} without a final 'advbg: error:' line (stderr tail {lines[-2:]!r})")
        elif sum(ln.startswith("advbg: error:") for ln in lines) != 1:
            bad.append("more than one error line")
        if code == 3 or "internal error" in err:
            bad.append(f"internal error: {lines[-1] if lines else ''}")
    allowed = [o.resolve() for o in outs]
    allowed += [p.resolve() for o in outs for p in o.parent.glob(o.stem + ".*")]  # derived outputs (x.json -> x.png)
    if code == 0 and store is not None:
        allowed += [store.resolve()] + [p.resolve() for p in store.parent.glob(store.stem + ".*")]
    for path in set(before) | set(after):
        if before.get(path) != after.get(path):
            p = Path(path).resolve()
            if not any(p == a or a in p.parents for a in allowed):
                bad.append(f"changed {path} (not an output of this command)")
    if Path("pwned-by-fuzz").exists():
        bad.append("a pickle payload ran")
    return bad


def fuzz_case(argv, outs, store, files, inputs: Path, capsys) -> list[str]:
    """Run one case; the broken promises, each prefixed with the command line."""
    before = snapshot(inputs)
    if LOG:
        with open(LOG, "a") as fh:
            print(argv, file=fh, flush=True)
    code, sout, serr = run_case(argv, capsys, CASE_LIMIT_S)
    after = snapshot(inputs)
    shown = " ".join(repr(a) if " " in a or not a else a for a in argv)
    return [f"advbg {shown}: {problem}" for problem in check(argv, code, sout, serr, before, after, outs, store, files)]


def test_cli_fuzz_never_crashes_or_touches_other_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # default outputs (runs/, beside-the-store files) stay in here
    files = make_inputs(tmp_path / "in")
    pristine = {k: p.read_bytes() for k, p in files.items() if p.is_file()}
    demo = hashlib.sha256(DEFAULT_STORE.read_bytes()).hexdigest() if DEFAULT_STORE.exists() else None
    cmds = commands()
    assert len(cmds) >= 5 and any(p == ("verify",) for p, _ in cmds)
    rnd = random.Random(SEED)
    failures, n, t0 = [], 0, time.monotonic()
    while time.monotonic() - t0 < SECONDS:
        out = tmp_path / f"out{n}"
        out.mkdir()
        n += 1
        argv, outs, store = make_case(rnd, cmds, files, out)
        if not known_unbounded(argv):
            failures += fuzz_case(argv, outs, store, files, tmp_path / "in", capsys)
        for k, p in files.items():  # restore inputs a successful command was allowed to change
            if k in pristine and (not p.exists() or p.read_bytes() != pristine[k]):
                p.write_bytes(pristine[k])
        shutil.rmtree(out, ignore_errors=True)
    assert n >= 5, f"only {n} cases ran in {SECONDS} s"
    if demo:
        assert hashlib.sha256(DEFAULT_STORE.read_bytes()).hexdigest() == demo, "advbg/data/demo.h5 changed"
    assert not failures, f"{len(failures)} of {n} cases broke the CLI's promises:\n" + "\n".join(failures[:30])
