"""The one owner of a search's output: the per-foreground columns and outcome codes (``schema``), the sink a search
commits its units to and that writes the results file (``sink``, over ``advbg.search.journal``), the checked
reading every analysis uses (``read``) and the rules ``advbg verify`` applies to results files (``verify``).
No other module writes or reads a results file."""
from advbg.search.results.read import (
    ResultInfo,
    check_group,
    complete_searches,
    listing,
    load_outcome,
    load_search,
    result_info,
    result_names,
)
from advbg.search.results.schema import (
    ADDED_COLUMNS,
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
    raw_class_name,
)
from advbg.search.results.sink import (
    ResultsSink,
    RunId,
    Unit,
    check_replaceable,
    merge_journal,
    pending_fingerprint,
    results_path,
    write_result,
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
from advbg.search.results.verify import verify_all, verify_results

__all__ = [
    "ADDED_COLUMNS", "COLUMNS", "FIELDS", "OUTCOME_INVALID", "OUTCOME_MISSING", "OUTCOME_NONE", "PER_FOREGROUND",
    "ForegroundResult", "ResultInfo", "ResultsSink", "RunId", "RunRecord", "SearchResult", "Unit", "check_group",
    "check_name", "check_replaceable", "complete_searches", "empty_columns", "fingerprint", "group_attrs", "listing",
    "load_outcome", "load_search", "merge_journal", "pending_fingerprint", "raw_class_name", "result_info",
    "result_names", "results_path", "verify_all", "verify_results", "write_result", "REFINE_COLUMNS", "RefineId",
    "RefineSink", "StoredRefine", "load_refine", "refine_fingerprint", "refine_names", "refine_problem",
]
