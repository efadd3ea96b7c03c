"""The worst-case background search: compositor, background pool, engine, criteria, candidate strategies, FAISS
index, resumable journal, results schema and types, torchrun sharding. ``search()`` is the one entry point."""
from advbg.search.config import SearchConfig
from advbg.search.criteria import Criterion
from advbg.search.results import ForegroundResult, RunRecord, SearchResult
from advbg.search.runner import search

__all__ = ["Criterion", "ForegroundResult", "RunRecord", "SearchConfig", "SearchResult", "search"]
