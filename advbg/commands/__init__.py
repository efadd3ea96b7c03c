"""One function per command: load the inputs, compute, write the outputs, print what a person reads.

The CLI calls exactly one of these per command; a notebook can call them too. Each takes the store and one model
(a ``ModelSpec``, a name, or a ready ``Classifier``)."""
from advbg.commands.cards import run_card, run_leaderboard
from advbg.commands.compare import run_compare
from advbg.commands.data import run_extract, run_fetch, run_ingest, run_variants
from advbg.commands.evaluate import run_eval, run_plot
from advbg.commands.index import run_index
from advbg.commands.models import run_models
from advbg.commands.refine import run_refine
from advbg.commands.report import run_report
from advbg.commands.saliency import run_saliency
from advbg.commands.search import run_search
from advbg.commands.train import run_export, run_finetune, run_synth
from advbg.commands.universal import run_universal
from advbg.commands.verify import run_verify

__all__ = ["run_card", "run_compare", "run_eval", "run_export", "run_extract", "run_fetch", "run_finetune", "run_index",
           "run_ingest", "run_leaderboard", "run_models", "run_plot", "run_refine", "run_report", "run_saliency",
           "run_search", "run_synth", "run_universal", "run_variants", "run_verify"]
