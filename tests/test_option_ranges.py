"""Every numeric option of every command has a documented range (shown in --help), checked before any work: a value
outside it gets one line naming the option and a non-zero exit, and no output appears (#24 item 8)."""
from __future__ import annotations

import re

import pytest
import typer
from conftest import assert_one_line_error, make_random_store, run_cli

from advbg.cli.app import app
from advbg.errors import AdvbgError, check_workers, usable_cores

HUGE = "99999999999"


def _numeric_options():
    """(command path, option name, parameter) of every int or float option of every command."""
    root = typer.main.get_command(app)

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, path + (name,))
        for p in getattr(cmd, "params", []):
            if p.param_type_name == "option" and not p.is_flag and re.search(r"\b(int|float)\b", p.bare_type()):
                yield " ".join(path), p.opts[0], p
    return list(walk(root, ()))


NUMERIC = _numeric_options()


def test_the_walk_finds_the_numeric_options():
    found = {(c, o) for c, o, _ in NUMERIC}
    assert {("universal", "--top"), ("finetune", "--workers"), ("extract", "--iterations"),
            ("saliency", "--resamples"), ("variants", "--hue-shift"), ("fetch in9", "--timeout")} <= found


@pytest.mark.parametrize("command, option", [(c, o) for c, o, _ in NUMERIC])
def test_every_numeric_option_has_a_documented_range(command, option):
    param = next(p for c, o, p in NUMERIC if (c, o) == (command, option))
    assert param.min is not None and param.max is not None, f"{command} {option}: no range, or an open-ended one"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ranges")
    store = make_random_store(d / "s.h5", n_fg=4, n_bg=5)
    (d / "photos" / "cat").mkdir(parents=True)
    (d / "boxes.csv").write_text("file,xmin,ymin,xmax,ymax,label\n")
    return d, store


# (command line after the store/out options, the option the error must name). Each value is outside the range.
CASES = [
    ("extract", "--resize " + HUGE, "--resize"), ("extract", "--iterations -1", "--iterations"),
    ("extract", "--crop 0", "--crop"), ("extract", "--seed -1", "--seed"), ("extract", "--workers 0", "--workers"),
    ("extract", "--workers " + HUGE, "--workers"),
    ("variants", "--hue-shift " + HUGE, "--hue-shift"), ("variants", "--blur-kernel -1", "--blur-kernel"),
    ("variants", "--reduced-margin -1", "--reduced-margin"), ("variants", "--seed -1", "--seed"),
    ("export", "--top 0", "--top"), ("export", "--per-class -1", "--per-class"),
    ("finetune", "-j " + HUGE, "--workers"), ("finetune", "-j -1", "--workers"), ("finetune", "--seed -1", "--seed"),
    ("finetune", "--epochs 0", "--epochs"), ("finetune", "--ratio 2", "--ratio"), ("finetune", "--lr -1", "--lr"),
    ("finetune", "--lr 0", "--lr"), ("finetune", "--batch-size 0", "--batch-size"),
    ("finetune", "--weight-decay -1", "--weight-decay"), ("finetune", "--warmup-steps -1", "--warmup-steps"),
    ("finetune", "--refresh-every 0", "--refresh-every"), ("finetune", "--probe-per-class 0", "--probe-per-class"),
    ("synth", "--classes 1", "--classes"), ("synth", "--classes 10", "--classes"), ("synth", "--per-class 0", "--per-class"),
    ("synth", "--size " + HUGE, "--size"), ("synth", "--correlation 2", "--correlation"), ("synth", "--seed -1", "--seed"),
    ("search", "--batch-size 0", "--batch-size"), ("search", "--fg-block 0", "--fg-block"),
    ("search", "--memory-gb 0", "--memory-gb"), ("search", "--verify-close -1", "--verify-close"),
    ("search", "--prune 0", "--prune"), ("search", "--prune-ratio 2", "--prune-ratio"),
    ("universal", "--top " + HUGE, "--top"), ("universal", "--greedy -1", "--greedy"),
    ("universal", "--batch-size 0", "--batch-size"),
    ("saliency", "--resamples " + HUGE, "--resamples"), ("saliency", "--resamples 10", "--resamples"),
    ("saliency", "--batch-size 0", "--batch-size"), ("saliency", "--limit 0", "--limit"),
    ("saliency", "--grid-rows 0", "--grid-rows"), ("saliency", "--seed -1", "--seed"),
    ("eval", "--batch-size 0", "--batch-size"), ("eval", "--seed -1", "--seed"),
    ("index", "--batch-size 0", "--batch-size"),
    ("report", "--thumb 0", "--thumb"), ("report", "--page-rows 0", "--page-rows"),
    ("report", "--gallery-worst -1", "--gallery-worst"), ("report", "--gallery-fooled -1", "--gallery-fooled"),
    ("fetch in9", "--timeout 0", "--timeout"), ("fetch in9", "--timeout " + HUGE, "--timeout"),
]


def _argv(command: str, rest: str, d, store) -> list[str]:
    out = d / "out"
    base = {
        "extract": [str(d / "photos"), "--boxes", str(d / "boxes.csv"), "--out", str(out.with_suffix(".h5"))],
        "variants": ["--store", str(store), "--out", str(out.with_suffix(".h5")), "-q"],
        "export": ["--store", str(store), "--out", str(out)],
        "finetune": ["--store", str(store), "--model", "test/tiny", "--out", str(out), "-q"],
        "synth": ["--out", str(out.with_suffix(".h5"))],
        "search": ["--store", str(store), "--model", "test/tiny", "--no-write", "--grid", "-", "-q"],
        "universal": ["--store", str(store), "--model", "test/tiny", "--top-png", "-", "--hist-png", "-", "-q"],
        "saliency": ["--store", str(store), "--model", "test/tiny", "--results-file", str(out.with_suffix(".json")),
                     "-q"],
        "eval": ["--store", str(store), "--model", "test/tiny", "--results-file", str(out.with_suffix(".json")),
                 "-q"],
        "index": ["--store", str(store), "--model", "test/tiny", "-q"],
        "report": ["--store", str(store), "--out", str(out.with_suffix(".html")), "-q"],
        "fetch in9": ["--dest", str(out), "--archive", str(d / "missing.tar.gz")],
    }[command]
    return command.split() + base + rest.split()


@pytest.mark.parametrize("command, rest, option", CASES, ids=[f"{c}{r.replace(' ', '=')}" for c, r, _ in CASES])
def test_a_value_outside_its_range_is_one_line_before_any_work(command, rest, option, files, capsys):
    d, store = files
    before = sorted(p.name for p in d.iterdir())
    code, _, err = run_cli(_argv(command, rest, d, store), capsys)
    assert_one_line_error(code, err, option)
    assert sorted(p.name for p in d.iterdir()) == before     # no output, no sidecar, no partial file


def test_the_ranges_are_in_the_help(capsys):
    code, out, _ = run_cli(["universal", "--help"], capsys)
    assert code == 0 and "0<=x<=100" in out
    code, out, _ = run_cli(["finetune", "--help"], capsys)
    assert code == 0 and "0<=x<=" in " ".join(out.split())


def test_workers_are_capped_at_the_usable_cores():
    most = 4 * usable_cores()
    assert check_workers(None, default=3) == 3 and check_workers(most, default=1) == most
    for bad in (0, most + 1):
        with pytest.raises(AdvbgError, match="--workers must be between 1 and"):
            check_workers(bad, default=1)
    assert check_workers(0, default=0, least=0) == 0


def test_the_python_api_checks_the_same_bounds(files):
    """A notebook calling the run_* functions or the configs gets the same refusals as the command line."""
    from advbg.analysis.saliency import SaliencyConfig
    from advbg.commands import run_universal
    from advbg.data.extract import ExtractConfig
    from advbg.data.synth import SynthConfig
    from advbg.data.variants import VariantOptions
    from advbg.train.finetune import FinetuneConfig

    _, store = files
    bad = [lambda: run_universal(store, "test/tiny", top=int(HUGE)),
           lambda: SaliencyConfig(resamples=int(HUGE)).validate(),
           lambda: ExtractConfig(resize=int(HUGE)).validate(), lambda: ExtractConfig(iterations=-1).validate(),
           lambda: SynthConfig(seed=-1).validate(), lambda: VariantOptions(hue_shift=int(HUGE)).validate(),
           lambda: FinetuneConfig(seed=-1).validate(), lambda: FinetuneConfig(num_workers=int(HUGE)).validate()]
    for call in bad:
        with pytest.raises(AdvbgError):
            call()
