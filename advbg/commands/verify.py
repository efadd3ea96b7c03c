"""`advbg verify`: checksums, schema and completeness of a store and of the files derived from it."""
from __future__ import annotations

import os
from typing import Callable

from advbg.data.verify import VerifyReport
from advbg.errors import AdvbgError
from advbg.search.results import verify_all


def run_verify(path: str | os.PathLike, *, progress: bool = True,
               echo: Callable[[str], None] = print) -> VerifyReport:
    """`advbg verify`: print the report; raise AdvbgError (one line, exit 1) when there is any problem."""
    report = verify_all(path, progress=progress)
    for line in report.lines:
        echo(line)
    if not report.ok:
        raise AdvbgError(report.summary())
    echo(report.summary())
    return report
