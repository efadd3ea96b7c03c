"""`advbg verify`: checksums, schema and completeness of a store."""
from __future__ import annotations

import os
from typing import Callable

from advbg.data.verify import VerifyReport, verify_store
from advbg.errors import AdvbgError


def run_verify(path: str | os.PathLike, *, progress: bool = True,
               echo: Callable[[str], None] = print) -> VerifyReport:
    """`advbg verify`: print the report; raise AdvbgError (one line, exit 1) when there is any problem."""
    report = verify_store(path, progress=progress)
    for line in report.lines:
        echo(line)
    if not report.ok:
        raise AdvbgError(report.summary())
    echo(report.summary())
    return report
