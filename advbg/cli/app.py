"""The typer application every command module registers on, and the one-line error it prints."""
from __future__ import annotations

import typer

app = typer.Typer(
    name="advbg",
    help="Adversarial background search for image classifiers (ImageNet-9 protocol).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print ``advbg: error: message`` (one line) and return the Exit to raise."""
    typer.echo(f"advbg: error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(code)
