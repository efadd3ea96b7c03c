"""The `advbg` command line: a thin shell over the Python API.

Each command module registers its commands on ``app`` and only declares options and hands off to one library
call. Library errors (AdvbgError) become one line on stderr and exit code 1, here and nowhere else.
"""
from __future__ import annotations

import os
import sys

import typer

# Each command module registers its commands on `app` when imported.
from advbg.cli import (data, evaluate, index, refine, report, results, saliency, search, train,  # noqa: F401
                       universal, verify)
from advbg.cli.app import app
from advbg.errors import AdvbgError, disk_error
from advbg.hardware import configure_threads


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning every error into one line and a non-zero exit."""
    # A CPU search in this process may keep freed memory for the next forward (advbg.search.engine.keep_freed_memory):
    # a whole-process allocator setting, so the library leaves it off and the command turns it on.
    os.environ.setdefault("ADVBG_KEEP_FREED_MEMORY", "1")
    try:
        configure_threads()   # intra-op threads = usable cores, unless ADVBG_THREADS / OMP_NUM_THREADS say otherwise
        code = app(args=argv, standalone_mode=False)  # non-standalone typer returns Exit codes (130 on Ctrl-C)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except BrokenPipeError:  # `advbg ... | head`: the reader left; stop quietly like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        sys.exit(141)
    except KeyboardInterrupt:
        typer.echo("advbg: interrupted", err=True)
        sys.exit(130)
    except AdvbgError as e:
        raise SystemExit(_one_line(e, 1))
    except OSError as e:  # a full or read-only disk under a writer that does not name it itself
        err = disk_error(e, e.filename or "an output file")
        if err is None:
            _internal(e)
        raise SystemExit(_one_line(err, 1))
    except Exception as e:  # click usage errors, then anything unexpected: never a traceback
        # By class name: recent typer vendors its own copy of click, so click's classes may not be these.
        kinds = {c.__name__ for c in type(e).__mro__}
        if "UsageError" in kinds:
            raise SystemExit(_one_line(e.format_message(), 2))
        if "Abort" in kinds:
            raise SystemExit(_one_line("aborted", 1))
        _internal(e)
    if code == 130:
        typer.echo("advbg: interrupted", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)


def _internal(e: BaseException) -> None:
    if os.environ.get("ADVBG_DEBUG"):
        raise e
    raise SystemExit(_one_line(f"internal error: {type(e).__name__}: {e} "
                               f"(set ADVBG_DEBUG=1 for a traceback and please report it)", 3))


def _one_line(e, code: int) -> int:
    typer.echo(f"advbg: error: {' '.join(str(e).split())}", err=True)
    return code
