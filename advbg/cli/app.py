"""The typer application every command module registers on, and the help panels it lists them in."""
from __future__ import annotations

import typer
from typer.core import TyperGroup

# `advbg --help` lists the commands in panels, in the order data flows through them; each command names its panel
# (rich_help_panel=...), and a panel lists its commands alphabetically.
DATA_IN, SEARCH, ANALYSE, TRAIN, REPORT = "Data in", "Search", "Analyse", "Train", "Report"
PANELS = (DATA_IN, SEARCH, ANALYSE, TRAIN, REPORT)


class _ByPanel(TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        def rank(name: str) -> tuple[int, str]:
            panel = getattr(self.commands[name], "rich_help_panel", None)
            return (PANELS.index(panel) if panel in PANELS else len(PANELS)), name
        return sorted(super().list_commands(ctx), key=rank)


app = typer.Typer(
    name="advbg",
    cls=_ByPanel,
    help="Adversarial background search for image classifiers (ImageNet-9 protocol).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

