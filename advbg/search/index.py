"""Embeddings of a store's backgrounds and foregrounds under one classifier, and FAISS indexes over them.

``build_index(store, classifier)`` (= ``advbg index``):
  1. embeds every background (the image as stored) and every foreground (its object pixels on a flat fill, the
     IN-9 Only-FG idea, so the embedding describes the object and not the photo it was cut from) with
     - features: the classifier's penultimate features (timm models: ``forward_head(forward_features(x),
       pre_logits=True)``); a module without ``forward_features``/``forward_head`` has no defined penultimate
       layer, so its logits serve as its features (``feature_kind`` records which),
     - scores: the mapped class scores of the image alone (``label_map.reduce(logits)``; with a "none" column
       when the label map has unmapped outputs),
  2. writes them to ``<store>.d/embeddings/<model tag>.<label map>.<identity key>.h5`` with the model
     identity (architecture, weight tag, weights file SHA-256, SHA-256 of the parameters actually loaded,
     label map, normalisation) and the store digest,
  3. writes FAISS indexes of the L2-normalised features (inner product = cosine similarity) beside the store:
     ``<store stem>.<embedding name>.{bg,fg}.faiss``, each with a ``.json`` sidecar recording the same identity,
     the store digest and the SHA-256 of the index file. Loading checks all three and refuses another model,
     another store content or a changed file with a message that says how to rebuild.

Index kinds: ``flat`` (exact; used up to ``FLAT_MAX`` vectors), ``ivf`` (inverted lists, also on GPU) and
``hnsw`` (graph, CPU only) past it. What an approximate kind can miss: a true neighbour in an inverted list that
is not probed (ivf) or not reached by the graph walk (hnsw); ``flat`` never misses. A GPU copy of the index is
used when faiss has GPUs (``faiss.get_num_gpus() > 0``, i.e. faiss-gpu on a CUDA machine), the CPU one otherwise.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from advbg._version import __version__
from advbg.data.sidecar import require_sidecar_folder, sidecar_folder
from advbg.data.store import Store
from advbg.errors import AdvbgError, StoreError
from advbg.files import atomic_output, now, sha256_file, write_json
from advbg.models.classifier import Classifier
from advbg.progress import progress as progress_bar
from advbg.search.results.rules import unreadable_why

FLAT_MAX = 20_000          # exact search up to here; a flat query over 20k x 1280 floats still takes milliseconds
EMBED_GROUP = "embeddings"
FG_FILL = 0                # pixel value outside the object mask when embedding a foreground (IN-9 Only-FG: black)
IndexKind = Literal["auto", "flat", "ivf", "hnsw"]
KINDS = ("auto", "flat", "ivf", "hnsw")


# --------------------------------------------------------------------------------------------- identity
def params_sha256(model: nn.Module) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes, bytes): what the weights really are."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_identity(classifier: Classifier) -> dict:
    """Everything that makes two classifiers give the same embeddings (the user-given name is kept for messages)."""
    return dict(name=classifier.config.name, **classifier.config.identity(),
                params_sha256=params_sha256(classifier.model))


def embedding_key(identity: dict) -> str:
    """16 hex digits naming the embeddings of a model identity (``model_identity``: its parameters' hash included;
    the name does not count: two names, same weights = same). Not ``ClassifierConfig.identity_key``."""
    core = {k: v for k, v in identity.items() if k != "name"}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def describe(identity: dict) -> str:
    sha = identity.get("weights_sha256") or identity.get("params_sha256", "")
    return (f"{identity['name']} ({identity['architecture']}.{identity['weight_tag']}, label map "
            f"{identity['label_map']}, weights sha256 {str(sha)[:12]})")


# --------------------------------------------------------------------------------------------- features
def feature_kind(model: nn.Module) -> str:
    """'pre_logits' for timm-style models (forward_features + forward_head), else 'logits'."""
    return "pre_logits" if hasattr(model, "forward_features") and hasattr(model, "forward_head") else "logits"


def features_and_logits(classifier: Classifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[0,1] images (N,3,H,W) -> (features (N,D), logits (N,num_outputs)); see ``feature_kind``."""
    m = classifier.model
    z = classifier.preprocess(x)
    if feature_kind(m) == "pre_logits":
        fmap = m.forward_features(z)
        return m.forward_head(fmap, pre_logits=True).flatten(1), m.forward_head(fmap)
    logits = m(z)
    return logits, logits


def _embed_blocks(classifier: Classifier, read, n: int, batch_size: int, device: torch.device,
                  bar) -> tuple[np.ndarray, np.ndarray]:
    """Features and mapped scores of ``read(slice) -> uint8 (b,H,W,3)`` for items 0..n-1."""
    feats, scores = [], []
    for s in range(0, n, batch_size):
        u8 = torch.as_tensor(read(slice(s, min(s + batch_size, n)))).to(device)      # (b, H, W, 3)
        x = u8.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            f, logits = features_and_logits(classifier, x)
            scores.append(classifier.label_map.reduce(logits.float()).cpu().numpy())
        feats.append(f.float().cpu().numpy())
        bar.update(len(u8))
    return np.concatenate(feats).astype(np.float32), np.concatenate(scores).astype(np.float32)


def foreground_alone(store: Store, sl: slice, fill: int = FG_FILL) -> np.ndarray:
    """uint8 (b,H,W,3): the object pixels of foregrounds ``sl`` on a flat ``fill`` background."""
    img, mask = store.foregrounds.read(sl), store.foregrounds.read_masks(sl)
    return np.where(mask[..., None].astype(bool), img, np.uint8(fill))


# --------------------------------------------------------------------------------------------- embeddings
@dataclass(frozen=True)
class Embeddings:
    """One classifier's view of a store. Rows are bg_ids / fg_ids."""

    name: str
    identity: dict
    store_digest: str
    feature_kind: str              # 'pre_logits' or 'logits'
    score_names: tuple[str, ...]   # columns of *_scores: the class names, plus 'none' for unmapped outputs
    bg_features: np.ndarray        # (B, D) float32
    bg_scores: np.ndarray          # (B, G) float32 mapped class scores of the background alone
    fg_features: np.ndarray        # (F, D) float32 (foreground on the fill)
    fg_scores: np.ndarray          # (F, G) float32
    fg_area: np.ndarray            # (F,) float32 share of the image the object covers
    fg_fill: int = FG_FILL

    @property
    def key(self) -> str:
        return embedding_key(self.identity)


def embedding_name(identity: dict) -> str:
    return f"{identity['architecture']}.{identity['weight_tag']}.{identity['label_map']}.{embedding_key(identity)[:8]}"


def compute_embeddings(store: Store, classifier: Classifier, *, batch_size: int = 64, progress: bool = True,
                       fg_fill: int = FG_FILL) -> Embeddings:
    """Embed every background and foreground of ``store`` (see the module docstring)."""

    store.require_nonempty()
    if batch_size < 1:
        raise AdvbgError(f"batch size must be at least 1 (got {batch_size})")
    if classifier.label_map.num_classes != len(store.class_names):
        raise AdvbgError(f"the classifier's label map gives {classifier.label_map.num_classes} classes but the store "
                         f"has {len(store.class_names)}; choose a label map that fits (--label-map in9 for ImageNet "
                         f"models on IN-9 stores)")
    ident = model_identity(classifier)
    nb, nf = len(store.backgrounds), len(store.foregrounds)
    device = classifier.device
    with progress_bar(total=nb + nf, enabled=progress, unit="img", desc="embed") as bar:
        bg_f, bg_s = _embed_blocks(classifier, store.backgrounds.read, nb, batch_size, device, bar)
        fg_f, fg_s = _embed_blocks(classifier, lambda sl: foreground_alone(store, sl, fg_fill), nf, batch_size,
                                   device, bar)
    area = np.concatenate([store.foregrounds.read_masks(slice(s, min(s + 256, nf))).mean(axis=(1, 2))
                           for s in range(0, nf, 256)]).astype(np.float32)
    names = tuple(classifier.label_map.class_names) + (("none",) if bg_s.shape[1] > classifier.label_map.num_classes
                                                       else ())
    return Embeddings(embedding_name(ident), ident, store.digest(), feature_kind(classifier.model), names,
                      bg_f, bg_s, fg_f, fg_s, area, fg_fill)


_ARRAYS = ("bg_features", "bg_scores", "fg_features", "fg_scores", "fg_area")


def write_embeddings(store: Store, emb: Embeddings) -> str:
    """Write ``emb`` to ``<store>.d/embeddings/<name>.h5`` (an older copy is replaced only once the new one is
    complete) and return that path."""
    with store.write_derived(EMBED_GROUP, emb.name) as f:
        for k in _ARRAYS:
            f.create_dataset(k, data=getattr(emb, k), compression="gzip", compression_opts=1, fletcher32=True)
        f.attrs.update(identity=json.dumps(emb.identity), identity_key=emb.key, feature_kind=emb.feature_kind,
                       score_names=json.dumps(list(emb.score_names)), fg_fill=emb.fg_fill)
    return str(sidecar_folder(store.path) / EMBED_GROUP / f"{emb.name}.h5")


def load_embeddings(store: Store, classifier: Classifier) -> Embeddings:
    """The classifier's embeddings stored for ``store``; a clear error when there are none for this model."""
    ident = model_identity(classifier)
    key = embedding_key(ident)
    groups = {k: g for k, g in store.embeddings.items() if g.attrs.get("complete")}
    match = [(k, g) for k, g in groups.items() if g.attrs.get("identity_key") == key]
    if not match:
        have = "; it has embeddings for: " + ", ".join(
            describe(json.loads(g.attrs["identity"])) for g in groups.values()) if groups else ""
        raise AdvbgError(f"{store.path} has no embeddings for model {describe(ident)}{have}. Run `advbg index "
                         f"--model {ident['name']} --store {store.path}` first")
    name, g = match[0]
    digest = store.digest()
    if g.attrs["store_digest"] != digest:
        raise AdvbgError(f"the embeddings {name} of {store.path} were computed on different store content "
                         f"(digest {g.attrs['store_digest']}, now {digest}); rerun `advbg index`")
    try:            # a chunk that fails its fletcher32 checksum (bit rot) raises OSError here
        return Embeddings(name, json.loads(g.attrs["identity"]), g.attrs["store_digest"],
                          str(g.attrs["feature_kind"]), tuple(json.loads(g.attrs["score_names"])),
                          fg_fill=int(g.attrs["fg_fill"]), **{k: g[k][()] for k in _ARRAYS})
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise StoreError(f"the embeddings {name} of {store.path} are damaged ({unreadable_why(e)}); rerun "
                         f"`advbg index` to rewrite them") from None


# --------------------------------------------------------------------------------------------- FAISS
def require_faiss():
    """The faiss module, or an AdvbgError naming the extra that installs it (checked before any embedding)."""
    try:
        import faiss  # deferred: heavy or optional dependency, loaded only when used
    except ImportError:
        raise AdvbgError('the FAISS index needs faiss, which is not installed: pip install "advbg[cpu]" (or '
                         '"advbg[gpu]" on CUDA machines; never both)') from None
    return faiss


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32 C-contiguous as FAISS wants."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(n > 0, n, 1.0), dtype=np.float32)


def faiss_gpus() -> int:
    """GPUs faiss can use: 0 with faiss-cpu, or faiss-gpu without a CUDA device."""
    faiss = require_faiss()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def choose_kind(n: int, kind: IndexKind = "auto", on_gpu: bool = False) -> str:
    """Exact ``flat`` up to FLAT_MAX vectors; past it ``ivf`` on GPU (faiss has no GPU HNSW), ``hnsw`` on CPU."""
    if kind not in KINDS:
        raise AdvbgError(f"unknown index kind {kind!r}; use one of: {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    return "flat" if n <= FLAT_MAX else ("ivf" if on_gpu else "hnsw")


def make_index(vectors: np.ndarray, kind: IndexKind = "auto", on_gpu: bool = False):
    """A CPU FAISS inner-product index holding ``vectors`` (normalise them first for cosine similarity)."""
    faiss = require_faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    kind = choose_kind(n, kind, on_gpu)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = 80, 128
    else:
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))   # faiss wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = max(1, nlist // 8)
    index.add(x)
    return index


_GPU_RES: list = []   # faiss GPU resources must outlive every index placed on them


def place_index(index, gpu: bool | str = "auto"):
    """(index, 'gpu'|'cpu'): a GPU copy when asked/possible, else the CPU index itself.

    gpu='auto': GPU when faiss has one and the index kind runs there (not HNSW); True: GPU or a clear error;
    False: CPU.
    """
    faiss = require_faiss()
    n_gpu = faiss_gpus()
    if gpu is True and n_gpu == 0:
        raise AdvbgError("a GPU FAISS index was asked for, but faiss sees no GPU (faiss-cpu is installed, or "
                         "there is no CUDA device); install faiss-gpu on a CUDA machine or use the CPU index")
    is_hnsw = isinstance(index, faiss.IndexHNSW)
    if gpu is True and is_hnsw:
        raise AdvbgError("faiss has no GPU HNSW index; build a flat or ivf index for the GPU")
    if gpu is False or n_gpu == 0 or is_hnsw:
        return index, "cpu"
    if not _GPU_RES:
        _GPU_RES.append(faiss.StandardGpuResources())
    return faiss.index_cpu_to_gpu(_GPU_RES[0], 0, index), "gpu"


def search_index(index, queries: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(scores (Q,k), ids (Q,k)) best first, queried block by block; ids -1 where fewer than k exist."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, index.ntotal)
    out_s, out_i = [], []
    for s in range(0, len(q), block):
        sc, ids = index.search(q[s:s + block], k)
        out_s.append(sc), out_i.append(ids)
    if not out_s:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    return np.concatenate(out_s), np.concatenate(out_i).astype(np.int64)


def index_path(store_path: str | os.PathLike, emb_name: str, what: str, folder: str | os.PathLike | None = None) -> Path:
    """Where the ``what`` ('bg' or 'fg') index of one embedding lives: beside the store unless ``folder``."""
    p = Path(store_path)
    return Path(folder or p.parent) / f"{p.stem}.{emb_name}.{what}.faiss"


def write_index_file(index, path: Path, meta: dict) -> Path:
    """Write a CPU ``index`` to ``path`` and its sidecar ``path.json`` (meta + file SHA-256), both atomically."""
    faiss = require_faiss()
    side = path.with_name(path.name + ".json")
    with atomic_output(path) as tmp:
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(index, str(tmp))
        meta = dict(meta, file=path.name, sha256=sha256_file(tmp), ntotal=int(index.ntotal), dim=int(index.d),
                    index_type=type(index).__name__, advbg_version=__version__, created=now())
    try:
        write_json(side, meta)
    except BaseException:       # an index without its sidecar would be refused anyway: leave neither
        path.unlink(missing_ok=True)
        raise
    return path


def read_index_file(path: str | os.PathLike, identity: dict, store_digest: str | None = None):
    """(CPU index, sidecar meta) of ``path``, refused for another model, other store content or a changed file."""
    faiss = require_faiss()
    path = Path(path)
    side = path.with_name(path.name + ".json")
    if not path.is_file() or not side.is_file():
        raise AdvbgError(f"index {path} (and its {side.name}) not found; build it with `advbg index`")
    meta = json.loads(side.read_text())
    built_for = meta.get("identity", {})
    if meta.get("identity_key") != embedding_key(identity):
        raise AdvbgError(f"index {path} was built for model {describe(built_for) if built_for else '?'}, not for "
                         f"{describe(identity)}; an index only fits the model that embedded it. Rebuild it with "
                         f"`advbg index --model {identity['name']} --store <store>`")
    if store_digest is not None and meta.get("store_digest") != store_digest:
        raise AdvbgError(f"index {path} was built for store content {meta.get('store_digest')}, this store is "
                         f"{store_digest}; rerun `advbg index` on it")
    if sha256_file(path) != meta.get("sha256"):
        raise AdvbgError(f"index {path} does not match the SHA-256 in {side.name} (changed or truncated); rebuild it")
    return faiss.read_index(str(path)), meta


@dataclass(frozen=True)
class IndexSet:
    """FAISS indexes over one embedding's background and foreground features (cosine similarity)."""

    backgrounds: object
    foregrounds: object
    kind: str
    where: str          # 'cpu' or 'gpu'

    def bg_neighbours(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search_index(self.backgrounds, normalise(queries), k)

    def fg_neighbours(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search_index(self.foregrounds, normalise(queries), k)


def build_indexes(emb: Embeddings, kind: IndexKind = "auto", gpu: bool | str = "auto") -> IndexSet:
    """In-memory indexes of ``emb`` (no files)."""
    on_gpu = gpu is True or (gpu == "auto" and faiss_gpus() > 0)
    bg = make_index(normalise(emb.bg_features), kind, on_gpu)
    fg = make_index(normalise(emb.fg_features), kind, on_gpu)
    (bg_p, where), (fg_p, _) = place_index(bg, gpu), place_index(fg, gpu)
    return IndexSet(bg_p, fg_p, choose_kind(emb.bg_features.shape[0], kind, on_gpu), where)


def save_indexes(store_path, emb: Embeddings, kind: IndexKind = "auto", folder=None) -> list[Path]:
    """Build the CPU indexes of ``emb`` and write them (with sidecars) beside the store or into ``folder``."""
    meta = dict(identity=emb.identity, identity_key=emb.key, store_digest=emb.store_digest,
                embedding=emb.name, feature_kind=emb.feature_kind, metric="inner product of L2-normalised features")
    paths = []
    for what, x in (("bg", emb.bg_features), ("fg", emb.fg_features)):
        k = choose_kind(len(x), kind, faiss_gpus() > 0)
        paths.append(write_index_file(make_index(normalise(x), k), index_path(store_path, emb.name, what, folder),
                                      dict(meta, items="backgrounds" if what == "bg" else "foregrounds", kind=k)))
    return paths


def open_indexes(store: Store, emb: Embeddings, gpu: bool | str = "auto", folder=None) -> IndexSet:
    """The saved indexes of ``emb`` (checked against its model and the store), placed on a GPU when possible."""
    digest = store.digest()
    (bg, meta), (fg, _) = (read_index_file(index_path(store.path, emb.name, w, folder), emb.identity, digest)
                           for w in ("bg", "fg"))
    (bg_p, where), (fg_p, _) = place_index(bg, gpu), place_index(fg, gpu)
    return IndexSet(bg_p, fg_p, meta.get("kind", "flat"), where)


# --------------------------------------------------------------------------------------------- command
@dataclass(frozen=True)
class IndexReport:
    embeddings: str
    index_files: tuple[Path, ...]
    feature_kind: str
    dim: int
    n_backgrounds: int
    n_foregrounds: int
    kind: str

    def line(self) -> str:
        return (f"embedded {self.n_backgrounds} backgrounds and {self.n_foregrounds} foregrounds "
                f"({self.feature_kind} features, {self.dim} dims) -> {self.embeddings}; {self.kind} FAISS "
                f"indexes: {', '.join(str(p) for p in self.index_files)}")


def build_index(store: Store, classifier: Classifier, *, batch_size: int = 64, kind: IndexKind = "auto",
                folder=None, progress: bool = True) -> IndexReport:
    """`advbg index`: embed the store with ``classifier``, store the embeddings, write the FAISS index files."""
    choose_kind(0, kind)
    require_faiss()
    store.require_writable()
    require_sidecar_folder(store.path, EMBED_GROUP)     # before the embedding work, not after it
    emb = compute_embeddings(store, classifier, batch_size=batch_size, progress=progress)
    where = write_embeddings(store, emb)
    paths = save_indexes(store.path, emb, kind, folder)
    k = choose_kind(len(emb.bg_features), kind, faiss_gpus() > 0)
    return IndexReport(where, tuple(paths), emb.feature_kind, int(emb.bg_features.shape[1]),
                       len(emb.bg_features), len(emb.fg_features), k)
