"""The worst-case background search: compositor, background pool, engine (tensors in, rows out), criteria,
candidate strategies (candidates as data), FAISS index, the results owner (``advbg.search.results``: columns,
outcome codes, journal sink, checked reading, verify rules), torchrun ranks. ``search()`` is the one entry point."""
from advbg.search.config import SearchConfig
from advbg.search.criteria import Criterion
from advbg.search.results import ForegroundResult, RunRecord, SearchResult
from advbg.search.runner import search

__all__ = ["Criterion", "ForegroundResult", "RunRecord", "SearchConfig", "SearchResult", "search"]
