"""One function per command: load the inputs, compute, write the outputs, print what a person reads.

The CLI calls exactly one of these per command; a notebook can call them too. Each takes the store and one model
(a ``ModelSpec``, a name, or a ready ``Classifier``)."""
from advbg.commands.evaluate import run_eval, run_plot
from advbg.commands.index import run_index
from advbg.commands.models import run_models
from advbg.commands.refine import run_refine
from advbg.commands.search import run_search
from advbg.commands.universal import run_universal
from advbg.commands.verify import run_verify

__all__ = ["run_eval", "run_index", "run_models", "run_plot", "run_refine", "run_search", "run_universal",
           "run_verify"]
