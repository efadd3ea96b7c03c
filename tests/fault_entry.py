"""The advbg CLI (with advbg_entry's test models) killed by SIGKILL just before its N-th write, for tests of what
a kill at that moment leaves behind.

    python tests/fault_entry.py        # then one JSON request per line on stdin:
    {"log": "/abs/events.log", "kill": N, "cwd": "/abs/dir", "out": "/abs/output.txt", "args": ["search", ...]}

For each request the server forks a child that runs ``advbg ARGS`` in ``cwd`` (stdout/stderr to ``out``) and
answers one line ``{"rc": exit code, negative for a signal}``. Forking a process that has imported torch once
makes each run take a second instead of a fresh interpreter's many.

A write is any call that changes a file: an h5py file opened for writing, a dataset or group created, data or an
attribute written, a resize, delete, move, flush or close of a writable HDF5 file, and os.replace / rename /
unlink / link / fsync / shutil.rmtree. Each is appended to LOG as one line (``index kind detail``, fsync'ed)
before it runs; N = 0 never kills, so a first run lists the writes a command makes.
"""
import json
import os
import shutil
import signal
import sys

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import advbg_entry  # noqa: F401  (registers test/tiny-entry)

_fsync = os.fsync
_state = dict(count=0, kill=0, log=None)


def _event(kind: str, detail: object = "") -> None:
    log = _state["log"]
    if log is None:
        return
    _state["count"] += 1
    log.write(f"{_state['count']} {kind} {detail}\n")
    log.flush()
    _fsync(log.fileno())
    if _state["count"] == _state["kill"]:
        os.kill(os.getpid(), signal.SIGKILL)


def _wrap(owner, name: str, kind: str, when=lambda self, *a, **k: True, detail=lambda self, *a, **k: ""):
    original = getattr(owner, name)

    def wrapper(self, *args, **kwargs):
        if when(self, *args, **kwargs):
            _event(kind, detail(self, *args, **kwargs))
        return original(self, *args, **kwargs)

    setattr(owner, name, wrapper)


def _writable(obj) -> bool:
    try:
        return obj.file.mode == "r+"
    except Exception:
        return False


def _file_name(obj, *a, **k) -> str:
    try:
        return f"{os.path.basename(obj.file.filename)}:{obj.name}"
    except Exception:
        return "?"


_wrap(h5py.File, "__init__", "h5-open", when=lambda self, name, mode="r", *a, **k: mode not in ("r", None),
      detail=lambda self, name, mode="r", *a, **k: f"{os.path.basename(str(name))} {mode}")
_wrap(h5py.File, "close", "h5-close", when=lambda self: self.id.valid and _writable(self), detail=_file_name)
_wrap(h5py.File, "flush", "h5-flush", when=lambda self: _writable(self), detail=_file_name)
for name in ("create_dataset", "create_group", "__setitem__", "__delitem__", "move", "copy", "require_group"):
    _wrap(h5py.Group, name, f"h5-{name.strip('_')}", when=lambda self, *a, **k: _writable(self), detail=_file_name)
for name in ("__setitem__", "resize"):
    _wrap(h5py.Dataset, name, f"h5-data-{name.strip('_')}", when=lambda self, *a, **k: _writable(self),
          detail=_file_name)
# attributes are only ever written to writable files (a read-only one refuses), so every call counts
_wrap(h5py.AttributeManager, "__setitem__", "h5-attr", detail=lambda self, key, *a: key)
_wrap(h5py.AttributeManager, "__delitem__", "h5-attr-del", detail=lambda self, key, *a: key)


def _wrap_fn(module, name: str) -> None:
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        _event(name, os.path.basename(str(args[-1] if name in ("replace", "rename", "link") else args[0])))
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


for fn in ("replace", "rename", "unlink", "remove", "link", "fsync"):
    _wrap_fn(os, fn)
_wrap_fn(shutil, "rmtree")

def _child(req: dict) -> int:
    """Run one advbg command in this (forked) process; the exit code it would give."""
    import torch

    torch.set_num_threads(1)
    out = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.chdir(req["cwd"])
    _state.update(count=0, kill=int(req["kill"]), log=open(req["log"], "w", buffering=1))
    from advbg.cli import main

    try:
        main(list(req["args"]))
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        return 99


def serve() -> None:
    import advbg.cli  # noqa: F401  (imported once, before forking)

    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 99
            try:
                code = _child(req)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps(dict(rc=os.waitstatus_to_exitcode(status))), flush=True)


if __name__ == "__main__":
    serve()
