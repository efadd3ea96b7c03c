"""Store images on the search device: the background pool resident when it fits the memory budget, else
streamed in blocks (read ahead on a thread, copied on a side CUDA stream from pinned memory).

The host never holds the whole pool: a resident pool is filled block by block, a streamed one keeps two blocks.
Reads of items chunked one per chunk with plain gzip skip h5py's filter pipeline: the raw chunks are read
under h5py's lock and inflated by zlib on a thread pool (zlib releases the GIL), which is several times faster
on many cores than ``ds[idx]``.
"""
from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import h5py
import numpy as np
import torch

from advbg.data.store import Store
from advbg.data.verify import damaged_store
from advbg.hardware import usable_cores
from advbg.search.compositor import select_mask

HOST_BLOCK_BYTES = 256 << 20     # host staging per read-ahead buffer (two are alive while streaming)
RESIDENT_SHARE = 0.5             # a pool is resident when it takes at most this share of the memory budget


def default_threads() -> int:
    """Threads for inflating chunks: the usable cores torch's intra-op threads leave free (at least 1, at most 8),
    so that reading ahead never competes with the forwards for cores (``advbg.hardware.configure_threads``)."""
    return max(1, min(8, usable_cores() - torch.get_num_threads()))


def _raw_gzip_items(ds: h5py.Dataset) -> bool:
    """True when each item is one chunk compressed by gzip alone (then raw chunk reads + zlib are exact)."""
    return (ds.dtype == np.uint8 and ds.chunks == (1,) + tuple(ds.shape[1:]) and ds.compression == "gzip"
            and not ds.shuffle and not ds.fletcher32 and ds.scaleoffset is None)


def read_items(ds: h5py.Dataset, idx: np.ndarray, out: np.ndarray | None = None,
               executor: ThreadPoolExecutor | None = None) -> np.ndarray:
    """``out[k] = ds[idx[k]]`` for any order of ``idx`` (repeats allowed); returns ``out``. An unreadable item
    (a damaged compressed chunk) raises StoreError naming the file and dataset."""
    try:
        return _read_items(ds, idx, out, executor)
    except OSError as e:
        raise damaged_store(ds.file.filename, ds.name, e) from None


def _read_items(ds: h5py.Dataset, idx: np.ndarray, out: np.ndarray | None,
                executor: ThreadPoolExecutor | None) -> np.ndarray:
    idx = np.asarray(idx, np.int64)
    if out is None:
        out = np.empty((len(idx),) + tuple(ds.shape[1:]), ds.dtype)
    if len(idx) == 0:
        return out
    if executor is not None and _raw_gzip_items(ds):
        shape, zeros = tuple(ds.shape[1:]), (0,) * (ds.ndim - 1)

        def one(k: int) -> None:
            mask, raw = ds.id.read_direct_chunk((int(idx[k]),) + zeros)
            if mask:  # the filter was skipped for this chunk: the bytes are stored as they are
                out[k] = np.frombuffer(raw, np.uint8).reshape(shape)
            else:
                out[k] = np.frombuffer(zlib.decompress(raw), np.uint8).reshape(shape)

        try:
            list(executor.map(one, range(len(idx))))
            return out
        except (OSError, zlib.error, ValueError):  # unusual layout (e.g. unwritten chunks): the safe path
            pass
    if len(idx) > 1 and (np.diff(idx) == 1).all():
        ds.read_direct(out, np.s_[int(idx[0]):int(idx[-1]) + 1])
        return out
    order = np.argsort(idx, kind="stable")
    uniq, inverse = np.unique(idx[order], return_inverse=True)
    data = ds[uniq]                     # h5py wants increasing unique indices
    out[order] = data[inverse]
    return out


def upload(host: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host uint8 array -> contiguous tensor on ``device`` (through pinned memory on CUDA)."""
    t = torch.as_tensor(host)
    if device.type != "cuda":
        return t.contiguous()
    return t.pin_memory().to(device, non_blocking=True)


class BackgroundPool:
    """The pool's backgrounds as uint8 (n, H, W, 3) on ``device``: ``blocks()`` yields (j0, j1, tensor) with
    pool positions j0..j1-1; one block holding everything when resident. ``ids``: the pool's bg_ids;
    ``labels``: their classes (-1 = none) on the device."""

    def __init__(self, images: h5py.Dataset, pool: np.ndarray, device: torch.device, budget_bytes: int,
                 block_bytes: int | None = None, executor: ThreadPoolExecutor | None = None,
                 labels: np.ndarray | None = None):
        self.images, self.ids, self.device = images, np.asarray(pool, np.int64), device
        self.labels = torch.as_tensor(np.asarray(labels if labels is not None else np.full(len(self.ids), -1)),
                                      device=device)
        self.executor = executor
        self.item_shape = tuple(images.shape[1:])
        self.item_bytes = int(np.prod(self.item_shape))
        self.nbytes = self.item_bytes * len(self.ids)
        self.resident = self.nbytes <= RESIDENT_SHARE * budget_bytes
        self._tensor: torch.Tensor | None = None
        per_block = block_bytes or min(HOST_BLOCK_BYTES, max(self.item_bytes, budget_bytes // 8))
        self.block = max(1, min(len(self.ids), per_block // self.item_bytes))
        if self.resident:
            try:
                self._tensor = self._load_all()
            except torch.OutOfMemoryError:  # the estimate was too kind: fall back to streaming
                self._tensor, self.resident = None, False
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    def __len__(self) -> int:
        return len(self.ids)

    def _load_all(self) -> torch.Tensor:
        n = len(self.ids)
        if self.device.type != "cuda":  # CPU: the tensor is host memory; read straight into it
            arr = np.empty((n,) + self.item_shape, np.uint8)
            for s in range(0, n, self.block):
                read_items(self.images, self.ids[s:s + self.block], arr[s:s + self.block], self.executor)
            return torch.from_numpy(arr)
        dev = torch.empty((n,) + self.item_shape, dtype=torch.uint8, device=self.device)
        stage = torch.empty((min(n, self.block),) + self.item_shape, dtype=torch.uint8, pin_memory=True)
        for s in range(0, n, self.block):
            e = min(n, s + self.block)
            read_items(self.images, self.ids[s:e], stage.numpy()[: e - s], self.executor)
            dev[s:e].copy_(stage[: e - s], non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()  # the stage is reused next
        return dev

    def blocks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(j0, j1, uint8 block on the device) in pool order."""
        if self.resident:
            yield 0, len(self.ids), self._tensor
            return
        yield from (_cuda_stream_blocks if self.device.type == "cuda" else _host_stream_blocks)(self)


def _spans(pool: BackgroundPool) -> list[tuple[int, int]]:
    n = len(pool.ids)
    return [(s, min(n, s + pool.block)) for s in range(0, n, pool.block)]


def _host_stream_blocks(pool: BackgroundPool) -> Iterator[tuple[int, int, torch.Tensor]]:
    """CPU: the next block is read (and inflated) on a thread while the current one is searched."""
    spans = _spans(pool)
    bufs = [np.empty((pool.block,) + pool.item_shape, np.uint8) for _ in range(min(2, len(spans)))]

    def read(b: int) -> np.ndarray:
        s, e = spans[b]
        return read_items(pool.images, pool.ids[s:e], bufs[b % 2][: e - s], pool.executor)

    with ThreadPoolExecutor(1) as ahead:
        fut = ahead.submit(read, 0)
        for b, (s, e) in enumerate(spans):
            arr = fut.result()
            if b + 1 < len(spans):  # buffer (b+1)%2 held block b-1, which the consumer has finished
                fut = ahead.submit(read, b + 1)
            yield s, e, torch.from_numpy(arr)


def _cuda_stream_blocks(pool: BackgroundPool) -> Iterator[tuple[int, int, torch.Tensor]]:
    """CUDA: read ahead into pinned buffers on a thread; copy on a side stream; compute waits on an event."""
    spans = _spans(pool)
    dev = pool.device
    k = min(2, len(spans))
    host = [torch.empty((pool.block,) + pool.item_shape, dtype=torch.uint8, pin_memory=True) for _ in range(k)]
    devbuf = [torch.empty((pool.block,) + pool.item_shape, dtype=torch.uint8, device=dev) for _ in range(k)]
    copied = [torch.cuda.Event() for _ in range(k)]      # host[i] -> devbuf[i] copy finished
    released = [torch.cuda.Event() for _ in range(k)]    # compute finished with devbuf[i]
    side = torch.cuda.Stream(dev)
    compute = torch.cuda.current_stream(dev)

    def read(b: int) -> None:
        s, e = spans[b]
        copied[b % k].synchronize()       # the previous copy out of this pinned buffer has finished
        read_items(pool.images, pool.ids[s:e], host[b % k].numpy()[: e - s], pool.executor)

    with ThreadPoolExecutor(1) as ahead:
        fut = ahead.submit(read, 0)
        for b, (s, e) in enumerate(spans):
            i = b % k
            fut.result()
            with torch.cuda.stream(side):
                side.wait_event(released[i])
                devbuf[i][: e - s].copy_(host[i][: e - s], non_blocking=True)
                copied[i].record(side)
            compute.wait_event(copied[i])
            if b + 1 < len(spans):
                fut = ahead.submit(read, b + 1)
            yield s, e, devbuf[i][: e - s]
            released[i].record(compute)


class StoreReader:
    """A search's reads of the store: each unit's foregrounds as device tensors, and the background pool. Owns the
    thread pool that inflates chunks; ``close`` it (or use it as a context manager)."""

    def __init__(self, store: Store, device: torch.device):
        self.store, self.device = store, device
        self.executor = ThreadPoolExecutor(default_threads())

    def foregrounds(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images (n, H, W, 3) uint8, select masks (n, H, W, 3) 0/255, classes (n,)) of fg_ids ``ids``."""
        fgs = self.store.foregrounds
        fg = upload(read_items(fgs.images, ids, executor=self.executor), self.device)
        sel = select_mask(upload(read_items(fgs.masks, ids, executor=self.executor), self.device))
        return fg, sel, torch.as_tensor(fgs.labels[ids], device=self.device)

    def backgrounds(self, pool: np.ndarray, budget_bytes: int) -> BackgroundPool:
        """The pool (bg_ids) on the device: resident when it fits ``budget_bytes``, else streamed."""
        bgs = self.store.backgrounds
        return BackgroundPool(bgs.images, pool, self.device, budget_bytes, executor=self.executor,
                              labels=bgs.labels[np.asarray(pool, np.int64)])

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    def __enter__(self) -> "StoreReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
