"""Every CLI command is one call into one ``run_*`` of advbg.commands, handed exactly the options given; the help
lists the commands in panels."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import run_cli

import advbg.commands as commands
from advbg.data.extract import ExtractConfig
from advbg.data.synth import SynthConfig
from advbg.data.variants import VariantOptions
from advbg.train.export import ExportConfig
from advbg.train.finetune import FinetuneConfig

CLI = Path(__file__).resolve().parents[1] / "advbg" / "cli"


def _record(monkeypatch, module, name: str) -> dict:
    """Replace ``module.name`` (a run_* the CLI calls) by a recorder of its arguments."""
    seen: dict = {}

    def fake(*args, **kwargs):
        seen.update(args=args, **kwargs)

    monkeypatch.setattr(module, name, fake)
    return seen


# --------------------------------------------------------------------------------------------- what reaches run_*
def test_variants_hands_run_variants_exactly_the_options_given(monkeypatch, capsys, tmp_path):
    import advbg.cli.data as cli

    seen = _record(monkeypatch, cli, "run_variants")
    code, _, err = run_cli(["variants", "--out", str(tmp_path / "v.h5"), "--store", "s.h5", "--format", "h5",
                            "--variants", "bg_blur, mixed_rand", "--seed", "3", "--blur-kernel", "9", "--recolor",
                            "gray", "--hue-shift", "45", "--reduced-margin", "4", "--reduced-fill", "white",
                            "--texture", "procedural", "--overwrite", "-q"], capsys)
    assert code == 0, err
    assert seen["args"] == (Path("s.h5"), tmp_path / "v.h5")
    assert seen["fmt"] == "h5" and seen["variants"] == "bg_blur, mixed_rand" and seen["seed"] == 3
    assert seen["options"] == VariantOptions(blur_kernel=9, recolor="gray", hue_shift=45, reduced_margin=4,
                                             reduced_fill="white", texture="procedural")
    assert seen["overwrite"] is True and seen["progress"] is False


def test_export_hands_run_export_exactly_the_options_given(monkeypatch, capsys, tmp_path):
    import advbg.cli.train as cli

    seen = _record(monkeypatch, cli, "run_export")
    code, _, err = run_cli(["export", "--out", str(tmp_path / "e"), "--store", "s.h5", "--results", "r1",
                            "--format", "h5", "--what", "composites", "--top", "7", "--per-class", "2",
                            "--rank", "asr", "--include-unfooled", "--overwrite"], capsys)
    assert code == 0, err
    assert seen["args"] == (Path("s.h5"), tmp_path / "e")
    assert seen["results"] == "r1" and seen["overwrite"] is True
    assert seen["config"] == ExportConfig(what="composites", fmt="h5", top=7, per_class=2, rank="asr",
                                          include_unfooled=True)


def test_extract_hands_run_extract_exactly_the_options_given(monkeypatch, capsys, tmp_path):
    import advbg.cli.data as cli

    seen = _record(monkeypatch, cli, "run_extract")
    code, _, err = run_cli(["extract", "photos", "--out", "o.h5", "--boxes", "b.csv", "--masks", "m",
                            "--classes", "in9", "--filter", "sehwag", "--resize", "0", "--crop", "64",
                            "--iterations", "2", "--seed", "5", "-j", "1", "--resume", "-q"], capsys)
    assert code == 0, err
    assert seen["args"] == (Path("photos"), Path("o.h5"))
    assert seen["boxes"] == Path("b.csv") and seen["masks"] == Path("m") and seen["classes"] == "in9"
    assert seen["config"] == ExtractConfig(resize=0, crop=64, iterations=2, filter="sehwag", seed=5)
    assert seen["workers"] == 1 and seen["resume"] is True and seen["overwrite"] is False
    assert seen["progress"] is False


def test_finetune_hands_run_finetune_exactly_the_options_given(monkeypatch, capsys, tmp_path):
    import advbg.cli.train as cli

    seen = _record(monkeypatch, cli, "run_finetune")
    code, _, err = run_cli(["finetune", "--out", "ck", "--model", "resnet18", "--store", "s.h5", "--policy",
                            "adversarial", "--ratio", "0.5", "-e", "2", "-b", "8", "--optimizer", "sgd", "--lr",
                            "0.1", "--weight-decay", "0", "--warmup-steps", "3", "--seed", "4", "--refresh-every",
                            "9", "--probe-per-class", "1", "--backgrounds", "bg.h5", "--no-pretrained", "--amp",
                            "off", "-j", "2", "--device", "cpu", "--overwrite", "-q"], capsys)
    assert code == 0, err
    assert seen["args"][:3] == ("resnet18", Path("s.h5"), Path("ck"))
    assert seen["args"][3] == FinetuneConfig(
        policy="adversarial", ratio=0.5, epochs=2, batch_size=8, optimizer="sgd", lr=0.1, weight_decay=0.0,
        warmup_steps=3, seed=4, amp="off", num_workers=2, refresh_every=9, probe_per_class=1, pretrained=False)
    assert seen["backgrounds"] == Path("bg.h5") and seen["device"] == "cpu"
    assert seen["overwrite"] is True and seen["progress"] is False


def test_synth_ingest_and_fetch_hand_their_run_exactly_the_options_given(monkeypatch, capsys, tmp_path):
    import advbg.cli.data as cli_data
    import advbg.cli.train as cli_train

    seen = _record(monkeypatch, cli_train, "run_synth")
    code, _, err = run_cli(["synth", "--out", "x.h5", "--classes", "3", "--per-class", "4", "--size", "16",
                            "--correlation", "0.5", "--seed", "2", "--overwrite"], capsys)
    assert code == 0, err
    assert seen["args"] == (Path("x.h5"), SynthConfig(n_classes=3, n_per_class=4, image_size=16, correlation=0.5,
                                                      seed=2))
    assert seen["overwrite"] is True

    seen = _record(monkeypatch, cli_data, "run_ingest")
    code, _, err = run_cli(["ingest", "in9", "rel", "--out", "i.h5", "--skip-bad", "--no-evalsets", "-q"], capsys)
    assert code == 0, err
    assert seen["args"] == (Path("rel"), Path("i.h5"))
    assert seen["skip_bad"] is True and seen["evalsets"] is False and seen["overwrite"] is False
    assert seen["progress"] is False

    seen = _record(monkeypatch, cli_data, "run_fetch")
    code, _, err = run_cli(["fetch", "in9", "--dest", "d", "--archive", "a.tar", "--sha256", "ab",
                            "--timeout", "3"], capsys)
    assert code == 0, err
    assert seen["args"] == (Path("d"),)
    assert seen["archive"] == Path("a.tar") and seen["sha256"] == "ab" and seen["timeout"] == 3.0
    assert seen["progress"] is True


# --------------------------------------------------------------------------------------------- run_* behaviour
def test_run_variants_reads_a_comma_list_and_reports_skips_to_warn(monkeypatch):
    import advbg.commands.data as cmd

    calls = {}

    def fake(store, out, **kw):
        calls.update(kw)
        kw["on_skip"]("bg_texture", "no backgrounds")
        return {"original": 3, "bg_blur": 3}

    monkeypatch.setattr(cmd, "write_variants", fake)
    out, warned = [], []
    counts = cmd.run_variants("s.h5", "v", variants=" original ,bg_blur", echo=out.append, warn=warned.append)
    assert calls["names"] == ["original", "bg_blur"] and counts == {"original": 3, "bg_blur": 3}
    assert out == ["wrote v: original 3, bg_blur 3"] and warned == ["skipped bg_texture: no backgrounds"]
    cmd.run_variants("s.h5", "v", variants="", echo=out.append, warn=warned.append)
    assert calls["names"] is None                                  # an empty --variants means every variant


def test_run_export_and_run_finetune_read_the_demo_store_through_its_working_copy(monkeypatch):
    import advbg.commands.train as cmd

    seen = []
    monkeypatch.setattr(cmd, "working_store", lambda store, echo: Path(f"copy-of-{store}"))
    monkeypatch.setattr(cmd, "export", lambda store, out, **kw: seen.append(store))
    monkeypatch.setattr(cmd, "finetune", lambda model, store, out, config, **kw: seen.append(store))
    cmd.run_export("s.h5", "e")
    cmd.run_finetune("m", "s.h5", "ck")
    assert seen == [Path("copy-of-s.h5")] * 2


# --------------------------------------------------------------------------------------------- shape of the CLI
def _command_functions():
    """(module, function) for every function in advbg/cli registered as a command (``@<typer>.command(...)``)."""
    for path in sorted(CLI.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        run_names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                     and (n.module or "").startswith("advbg.commands") for a in n.names}
        for fn in tree.body:
            if isinstance(fn, ast.FunctionDef) and any(
                    isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
                    for d in fn.decorator_list):
                yield path.stem, fn, run_names


def test_every_cli_command_is_one_call_into_one_run_function():
    found = list(_command_functions())
    assert len(found) == 20          # 19 commands; `fetch in9` and `ingest in9` under groups
    for module, fn, run_names in found:
        calls = [n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                 and n.func.id in run_names]
        assert len(calls) == 1 and calls[0].startswith("run_"), f"cli/{module}.py:{fn.name} calls {calls}"
        assert calls[0] in commands.__all__, f"{calls[0]} is not exported by advbg.commands"


def test_help_lists_every_command_in_its_panel_in_data_flow_order(capsys):
    code, out, err = run_cli(["--help"], capsys)
    assert code == 0, err
    panels, where = [], {}
    for line in out.splitlines():
        if m := re.match(r"\W*╭─ (.+?) ─", line):
            panels.append(m.group(1))
        elif (m := re.match(r"│ (\w+)\s", line)) and panels:
            where[m.group(1)] = panels[-1]
    assert panels == ["Options", "Data in", "Search", "Analyse", "Train", "Report"]
    assert where == {"extract": "Data in", "fetch": "Data in", "ingest": "Data in", "synth": "Data in",
                     "variants": "Data in", "verify": "Data in", "index": "Search", "refine": "Search", "search": "Search",
                     "eval": "Analyse", "models": "Analyse", "plot": "Analyse", "saliency": "Analyse",
                     "universal": "Analyse", "export": "Train", "finetune": "Train", "report": "Report",
                     "card": "Report", "compare": "Report", "leaderboard": "Report"}


@pytest.mark.parametrize("command", [["search"], ["variants"], ["fetch", "in9"], ["ingest", "in9"], ["report"]])
def test_each_command_still_has_its_own_help(capsys, command):
    code, out, err = run_cli([*command, "--help"], capsys)
    assert code == 0, err
    assert "Usage:" in out and " ".join(command) in out
