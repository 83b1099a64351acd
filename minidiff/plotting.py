"""Pictures: image grids, trajectories and curves, written as PNG files with matplotlib.

Every picture is written by write_png, through files.atomic_write: a full disk or a Ctrl-C leaves
the previous file whole, never a truncated PNG."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

if "MPLBACKEND" not in os.environ:  # Jupyter kernels set it (inline figures); elsewhere: files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from minidiff.data import from_model_range  # noqa: E402
from minidiff.files import atomic_write  # noqa: E402


def image_grid(images, ncols: int, pad: int = 2) -> np.ndarray:
    """Tile images (N, H, W, C) in [-1, 1] into one uint8 picture with ncols per row.

    Returns (rows * (H + pad) + pad, ncols * (W + pad) + pad, C); padding is white.
    """
    x = from_model_range(images)  # (N, H, W, C) uint8
    n, h, w, c = x.shape
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = x[i]
    return grid


def save_grid(path, images, ncols: int, scale: int = 2, row_labels=None, title=None, col_labels=None) -> Path:
    """Save images (N, H, W, C) in [-1, 1] as a PNG grid, rows and columns optionally labelled."""
    fig = grid_figure(images, ncols, scale, row_labels, title, col_labels)
    return write_png(path, fig, dpi=fig.dpi)


def grid_figure(images, ncols: int, scale: int = 2, row_labels=None, title=None, col_labels=None):
    """A matplotlib figure of images (N, H, W, C) in [-1, 1] tiled ncols per row, shown at
    `scale` screen pixels per image pixel (notebooks display it; save_grid writes it).
    row_labels name the rows (left), col_labels the columns (above)."""
    grid = image_grid(images, ncols)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)  # nearest-neighbour upscaling
    height, width = grid.shape[:2]
    dpi = 100
    margin = 0.2 + 0.085 * max(len(str(r)) for r in row_labels) if row_labels is not None else 0.0
    top = (0.35 if title else 0.0) + (0.2 if col_labels is not None else 0.0)
    fig = plt.figure(figsize=(width / dpi + margin, height / dpi + top), dpi=dpi)
    ax = fig.add_axes((margin / (width / dpi + margin), 0, width / dpi / (width / dpi + margin),
                       height / dpi / (height / dpi + top)))
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    if col_labels is not None:
        step = width / ncols
        ax.set_xticks([step * (i + 0.5) for i in range(len(col_labels))], [str(c) for c in col_labels])
        ax.xaxis.tick_top()
        ax.tick_params(axis="x", length=0, labelsize=8)
    else:
        ax.set_xticks([])
    if row_labels is not None:
        nrows = len(row_labels)
        step = height / nrows
        ax.set_yticks([step * (i + 0.5) for i in range(nrows)], [str(r) for r in row_labels])
        ax.tick_params(length=0)
    else:
        ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.05 * (0.35 if title else 0.0))
    return fig


def save_panels(path, panels: dict, xlabel: str, title: str | None = None, logx: bool = False,
                logy=False, xticks=None, ylim=None, target=None) -> Path:
    """Side-by-side line plots sharing an x axis, as PNG.

    panels maps each panel's y label to {line label: (xs, ys)} or (xs, ys, yerr) for error
    bars; a line label of None draws an unlabelled line (no legend). xticks: the x values to
    label, written as plain numbers (on a log axis too). logy, ylim ((low, high)) and target (a
    y value drawn as a dashed line) hold for every panel, or are dicts {panel's y label: value}
    for some panels.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.3), dpi=110, squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels.items()):
        panel_logy, panel_ylim, panel_target = (
            option.get(ylabel) if isinstance(option, dict) else option for option in (logy, ylim, target))
        for label, (xs, ys, *yerr) in lines.items():
            ax.errorbar(xs, ys, yerr=yerr[0] if yerr else None, marker="o" if len(xs) < 20 else None,
                        markersize=3, capsize=3, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        if panel_logy:
            ax.set_yscale("log")
        if xticks is not None:
            ax.set_xticks(list(xticks), [f"{v:g}" for v in xticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # no unlabelled log ticks
        if panel_target is not None:
            ax.axhline(panel_target, color="grey", linestyle="--", linewidth=1,
                       label=f"target {panel_target:g}")
        if panel_ylim is not None:
            ax.set_ylim(*panel_ylim)
        ax.grid(alpha=0.3)
        if panel_target is not None or any(label is not None for label in lines):
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return write_png(path, fig)


def word_maps_figure(images, maps, words, title: str | None = None):
    """Prompt-to-Prompt's per-word picture: one row per image, the image (N, H, W, C) in [-1, 1]
    and then, over it, each word's cross-attention map (maps (N, L, H, W); words[n] lists
    (token position, word) for row n). One colour scale for every map, with its colour bar."""
    ncols = 1 + max(len(w) for w in words)
    vmax = max(float(maps[n, j].max()) for n, ws in enumerate(words) for j, _ in ws)
    fig, axes = plt.subplots(len(images), ncols, figsize=(1.35 * ncols + 0.6, 1.45 * len(images)), dpi=110,
                             squeeze=False)
    shown = None
    for n, row in enumerate(axes):
        row[0].imshow(from_model_range(images[n]).squeeze(-1), cmap="gray", vmin=0, vmax=255)
        row[0].set_title("image", fontsize=7)
        for k, ax in enumerate(row[1:]):
            if k < len(words[n]):
                j, word = words[n][k]
                shown = ax.imshow(maps[n, j], cmap="inferno", vmin=0.0, vmax=vmax, interpolation="nearest")
                ax.set_title(word, fontsize=7)
        for ax in row:
            ax.set_axis_off()
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight (mean)")
    if title:
        fig.suptitle(title, fontsize=8)
    return fig


def save_figure(path, fig) -> Path:
    """Write a matplotlib figure as PNG and close it."""
    return write_png(path, fig)


def write_png(path, fig, **savefig_kwargs) -> Path:
    """Write fig as a PNG at path, atomically (files.atomic_write), and close it; returns the path."""
    path = Path(path)
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", **savefig_kwargs)
    finally:
        plt.close(fig)
    return path
