"""Pictures and files people read: the worst-composite grid PNG and the JSON summary."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .store import Store


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_output(path: str | os.PathLike | None, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse an output path before any work: a directory, a missing folder, or (if given) a wrong suffix."""
    from .errors import AdvbgError

    if path is None or str(path) == "-":
        return
    path = Path(path)
    if path.is_dir():
        raise AdvbgError(f"{path} is a directory; give a file name")
    if not path.parent.exists():
        raise AdvbgError(f"folder {path.parent} does not exist")
    if suffixes and path.suffix.lower() not in suffixes:
        raise AdvbgError(f"output file {path} must end in {' or '.join(suffixes)}")


def save_figure(fig, path: str | os.PathLike, dpi: int = 90) -> Path:
    """Save a matplotlib figure as PNG atomically (temporary name, then rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _clean(o):
    """JSON-safe copy: NaN/inf -> None, numpy scalars/arrays -> Python."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    return o


def write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")


def worst_grid(store: Store, result, path: str | os.PathLike, n: int = 8) -> Path:
    """PNG: for the n foregrounds with the lowest worst margin, foreground | worst background | composite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [k for k in np.argsort(result.worst_margin, kind="stable") if result.worst_bg[k] >= 0][:n]
    names = list(store.class_names)
    label = lambda c: names[c] if 0 <= c < len(names) else "none"  # noqa: E731
    fig, axes = plt.subplots(max(1, len(order)), 3, figsize=(7.5, 2.6 * max(1, len(order))), squeeze=False)
    for row, k in enumerate(order):
        fg_id, bg_id = int(result.fg_id[k]), int(result.worst_bg[k])
        img = store.foregrounds.read([fg_id])[0]
        mask = store.foregrounds.read_masks([fg_id])[0][..., None].astype(bool)
        bg = store.backgrounds.read([bg_id])[0]
        comp = np.where(mask, img, bg)
        fooled = result.first_fooling_bg[k] >= 0
        titles = (f"fg {fg_id}: {label(int(result.true_class[k]))}",
                  f"bg {bg_id}: {label(int(store.backgrounds.labels[bg_id]))}",
                  f"pred {label(int(result.worst_pred[k]))}, margin {result.worst_margin[k]:+.2f}"
                  + (" FOOLED" if fooled else ""))
        for ax, im, t in zip(axes[row], (np.where(mask, img, 0), bg, comp), titles):
            ax.imshow(im)
            ax.set_title(t, fontsize=8, color="crimson" if (fooled and ax is axes[row][2]) else "black")
            ax.axis("off")
    if not order:
        for ax in axes[0]:
            ax.axis("off")
        axes[0][1].set_title("no composites evaluated")
    run = result.run
    fig.suptitle(f"Worst backgrounds: {run.classifier['name']} ({run.classifier['architecture']}."
                 f"{run.classifier['weight_tag']}), criterion {str(run.criterion).split(':')[0].split('(')[-1]}",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # leave room for the suptitle
    return save_figure(fig, path)
