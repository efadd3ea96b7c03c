"""The one owner of a search's output: the per-foreground columns and outcome codes (``schema``), the sink a search
commits its units to and that writes the results file (``sink``, over ``advbg.search.journal``), the checked
reading every analysis uses (``read``) and the rules ``advbg verify`` applies to results files (``verify``).
No other module writes or reads a results file."""
from advbg.search.results.read import load_outcome, load_search, outcome_problem, result_names
from advbg.search.results.schema import (
    COLUMNS,
    FIELDS,
    OUTCOME_INVALID,
    OUTCOME_MISSING,
    OUTCOME_NONE,
    PER_FOREGROUND,
    ForegroundResult,
    RunRecord,
    SearchResult,
    check_name,
    empty_columns,
    fingerprint,
    group_attrs,
)
from advbg.search.results.refine import (
    REFINE_COLUMNS,
    RefineId,
    RefineSink,
    StoredRefine,
    load_refine,
    refine_fingerprint,
    refine_names,
    refine_problem,
)
from advbg.search.results.sink import ResultsSink, RunId, Unit, merge_journal, pending_fingerprint, write_result
from advbg.search.results.verify import verify_all, verify_results

__all__ = [
    "COLUMNS", "FIELDS", "OUTCOME_INVALID", "OUTCOME_MISSING", "OUTCOME_NONE", "PER_FOREGROUND", "ForegroundResult",
    "ResultsSink", "RunId", "RunRecord", "SearchResult", "Unit", "check_name", "empty_columns", "fingerprint",
    "group_attrs", "load_outcome", "load_search", "merge_journal", "outcome_problem", "pending_fingerprint", "result_names", "verify_all",
    "verify_results", "write_result",
    "REFINE_COLUMNS", "RefineId", "RefineSink", "StoredRefine", "load_refine", "refine_fingerprint", "refine_names",
    "refine_problem",
]
