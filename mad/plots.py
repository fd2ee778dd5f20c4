"""Static figures: image grids as arrays, and matplotlib renderings for papers and TensorBoard.

Shared by the report's paper figures (mad/report/paper.py) and the TensorBoard tracker. Matplotlib is imported
inside the functions that draw, never at module import, so the report stays fast when it only
writes HTML. Figures use the object API (``Figure`` + Agg canvas), never ``pyplot``: no global
state, no GUI backend, safe to call from a driver thread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

# plotly dash names -> matplotlib linestyles, so a PNG looks like the interactive page
MPL_DASHES = {
    "solid": "-",
    "dash": (0, (6, 3)),
    "dot": (0, (1.5, 2.5)),
    "dashdot": (0, (6, 2.5, 1.5, 2.5)),
    "longdash": (0, (12, 4)),
    "longdashdot": (0, (12, 3, 2, 3)),
}


@dataclass
class Line:
    """One curve of a metric panel, in a form both plotly and matplotlib can draw.

    role: "chain" (one chain of a multi-seed group, drawn faint), "single" (the only chain of
    its group), "mean" (the group's summary over seeds: the mean with ``lo``/``hi`` the mean -/+ one
    std, or with ``extra["band"] == "median_iqr"`` the median with the quartiles), "theory".
    ``y`` holds None where a generation has no value (a gap, not a zero).
    """

    x: list[int]
    y: list[Optional[float]]
    label: str
    group: str
    color: str
    dash: str
    role: str
    hover: str = ""
    lo: Optional[list[Optional[float]]] = None
    hi: Optional[list[Optional[float]]] = None
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- arrays
def is_image_batch(x: np.ndarray) -> bool:
    """Images are (n, c, h, w) (or (n, h, w)); vectors are (n, d)."""
    return x.ndim in (3, 4)


def to_uint8_nchw(x: np.ndarray) -> np.ndarray:
    """Images as uint8 (n, c, h, w), c in {1, 3}; float input in [-1, 1] or [0, 1] is rescaled."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)  # tolerate NHWC: the contract is NCHW, but a grid is cheap to save
    if x.shape[1] == 4:
        x = x[:, :3]
    if x.dtype != np.uint8:
        x = x.astype(np.float64)
        # the contract is uint8; for floats guess the range: [-1, 1] (model space), [0, 255], else [0, 1]
        if np.nanmin(x, initial=0.0) < 0:
            x = (x + 1.0) / 2.0
        elif np.nanmax(x, initial=0.0) > 1.5:
            x = x / 255.0
        x = np.clip(np.nan_to_num(x) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return x


def tile_images(x: np.ndarray, max_images: int = 16, pad: int = 1) -> np.ndarray:
    """The first ``max_images`` images as one near-square grid: uint8 (H, W) or (H, W, 3)."""
    x = to_uint8_nchw(x)[:max_images]
    n, c, h, w = x.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    grid = np.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) or (H, W, 3) array."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def first_two_dims(x: np.ndarray) -> np.ndarray:
    """(n, 2) points to scatter; 1-D data is drawn on the line y = 0."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if x.shape[1] == 1:
        return np.concatenate([x, np.zeros_like(x)], axis=1)
    return x[:, :2]


# ----------------------------------------------------------------------------- matplotlib
def _figure(width_in: float, height_in: float, layout: Optional[str] = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def render_scatter(x: np.ndarray, title: str = "", color: str = "#1f77b4", size_px: int = 320) -> np.ndarray:
    """A scatter plot of the first two dims as a uint8 (H, W, 3) array (for TensorBoard images)."""
    pts = first_two_dims(x)
    fig = _figure(size_px / 100, size_px / 100)
    ax = fig.add_subplot()
    ax.scatter(pts[:, 0], pts[:, 1], s=6, c=color, alpha=0.7, linewidths=0)
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_aspect("equal", adjustable="datalim")
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_heatmap_png(path: Path, metric: str, x_key: str, x_labels: Sequence[str], y_key: str,
                     y_labels: Sequence[str], z: Sequence[Sequence[Optional[float]]], title: str = "",
                     dpi: int = 100, reverse: bool = False) -> None:
    """Final value of ``metric`` over two swept keys, in the format ``path``'s suffix names (png, pdf,
    svg); ``reverse``: the colour scale reversed (lower is better: bright is good, as on the page)."""
    arr = np.asarray([[np.nan if v is None else v for v in row] for row in z], dtype=float)
    fig = _figure(1.2 * len(x_labels) + 2.5, 0.8 * len(y_labels) + 1.8)
    ax = fig.add_subplot()
    cmap = "viridis_r" if reverse else "viridis"
    im = ax.imshow(arr, cmap=cmap, aspect="auto", origin="upper")  # sweep order top down, as on the page
    ax.set_xticks(range(len(x_labels)), labels=list(x_labels))
    ax.set_yticks(range(len(y_labels)), labels=list(y_labels))
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            if np.isfinite(arr[i, j]):
                bright = im.norm(arr[i, j]) < 0.4 if reverse else im.norm(arr[i, j]) > 0.6
                light = bright  # viridis turns yellow at the top: dark text there
                ax.text(j, i, f"{arr[i, j]:.3g}", ha="center", va="center", color="black" if light else "white",
                        fontsize=8)
    fig.colorbar(im, ax=ax, label=metric)
    ax.set_title(title or f"final {metric}")
    fig.savefig(path, dpi=dpi)
