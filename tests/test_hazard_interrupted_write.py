"""Hazard: a write interrupted by an exception or SIGKILL. Nothing at the final path ever opens as complete;
an older store being replaced stays intact; resume continues from the last complete item, never misaligned."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from conftest import make_random_store

from advbg.data.store import Store
from advbg.data.verify import verify_store
from advbg.data.writer import StoreWriter
from advbg.errors import StoreError

SIZE = (8, 8)


def item(k: int):
    rng = np.random.default_rng(k)
    mask = np.zeros(SIZE, np.uint8)
    mask[2:6, 2:6] = 1
    return rng.integers(0, 256, SIZE + (3,), dtype=np.uint8), mask


def add(w: StoreWriter, k: int) -> None:
    img, mask = item(k)
    w.add_foreground(img, mask, k % 3, f"photo{k}")
    w.add_background(img[::-1].copy(), k % 3, f"photo{k}")


def test_exception_mid_write_leaves_no_store_and_an_incomplete_partial(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with StoreWriter(path, class_names=["a", "b", "c"], image_size=SIZE) as w:
            add(w, 0)
            raise RuntimeError("boom")
    assert not path.exists() and not (tmp_path / "s.h5.lock").exists()
    with pytest.raises(StoreError, match=r"does not exist \(an interrupted write left its temporary \.s\.h5\.partial"):
        Store(path)
    with pytest.raises(StoreError, match="is incomplete"):
        Store(tmp_path / ".s.h5.partial")  # even opened (or renamed) by hand it never reads as complete


def test_interrupted_overwrite_keeps_the_old_store_intact(tmp_path):
    path = make_random_store(tmp_path / "s.h5")
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(path, class_names=["a"], image_size=SIZE, overwrite=True) as w:
            add(w, 0)
            raise KeyboardInterrupt
    assert path.read_bytes() == before and verify_store(path).ok


def test_a_bad_item_is_refused_before_anything_is_appended(tmp_path):
    path = tmp_path / "s.h5"
    with StoreWriter(path, class_names=["a", "b", "c"], image_size=SIZE) as w:
        add(w, 0)
        img, mask = item(1)
        for kwargs, why in ((dict(source_id="a\0b"), "NUL"), (dict(source_id="caf\udce9"), "not valid Unicode"),
                            (dict(label="dog"), "integer class index"), (dict(box=(1, 2, 3)), "4 numbers")):
            args = dict(image=img, mask=mask, label=0, source_id="x") | kwargs
            with pytest.raises(StoreError, match=why):
                w.add_foreground(**args)
        add(w, 2)
    with Store(path) as s:
        assert s.foregrounds.source_ids == ["photo0", "photo2"] and verify_store(path).ok


def test_class_names_hdf5_cannot_hold_are_refused_with_a_reason(tmp_path):
    with pytest.raises(StoreError, match="class name .* NUL"):
        StoreWriter(tmp_path / "s.h5", class_names=["a\0"], image_size=SIZE)
    assert not (tmp_path / "s.h5.lock").exists()


WRITER = textwrap.dedent("""
    import numpy as np
    from advbg.data.writer import StoreWriter
    with StoreWriter({path!r}, class_names=["a", "b", "c"], image_size=(8, 8), resume=True) as w:
        k = len(w.done_source_ids)
        while True:
            rng = np.random.default_rng(k)  # the same items as item(k)
            img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            mask = np.zeros((8, 8), np.uint8)
            mask[2:6, 2:6] = 1
            w.add_foreground(img, mask, k % 3, f"photo{{k}}")
            w.add_background(img[::-1].copy(), k % 3, f"photo{{k}}")
            k += 1
            if k == 3:
                w.flush()
                print("ready", flush=True)
""")

def test_sigkill_mid_write_then_resume_gives_a_consistent_store(tmp_path):
    path = tmp_path / "s.h5"
    code = WRITER.format(path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)  # mid-stream: items are being appended as fast as they can
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not path.exists()
    with pytest.raises(StoreError, match="does not exist"):
        Store(path)
    assert (tmp_path / "s.h5.lock").read_text() == str(proc.pid)  # stale: its process is dead
    try:
        w = StoreWriter(path, class_names=["a", "b", "c"], image_size=SIZE, resume=True)
    except StoreError as e:  # the kill may have left HDF5 metadata unreadable: refused with a reason, never a crash
        assert "cannot resume" in str(e) and "delete it" in str(e)
        return
    with w:
        n = len(w.done_source_ids)
        assert n >= 3
        for k in range(n, n + 2):
            add(w, k)
    report = verify_store(path)
    assert report.ok, report.problems
    with Store(path) as s:
        ids = s.foregrounds.source_ids
        assert ids == [f"photo{k}" for k in range(len(ids))] == s.backgrounds.source_ids[:len(ids)]
        assert np.array_equal(s.foregrounds.read([len(ids) - 1])[0], item(len(ids) - 1)[0])


def test_resume_cuts_a_half_written_item_so_items_stay_aligned(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(path, class_names=["a", "b", "c"], image_size=SIZE) as w:
            add(w, 0)
            add(w, 1)
            raise KeyboardInterrupt
    with h5py.File(tmp_path / ".s.h5.partial", "r+") as f:  # as if killed after the image, before the rest
        ds = f["foregrounds/image"]
        ds.resize(3, axis=0)
        ds[2] = 7
    with StoreWriter(path, class_names=["a", "b", "c"], image_size=SIZE, resume=True) as w:
        assert w.done_source_ids == {"photo0", "photo1"}
        add(w, 2)
    assert verify_store(path).ok
    with Store(path) as s:
        assert np.array_equal(s.foregrounds.read([2])[0], item(2)[0])
