"""The evaluate stage's figures, drawn with matplotlib (Agg) and written as PNG atomically.

    digits_figure(path, images, labels, columns=10)
    grid_figure(path, pixels, size=10, low=[-1.6, -1.6], high=[1.6, 1.6], title="VAE ...")

Every figure has a title and labelled axes (or labelled rows where the axes carry no scale).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from export.files import atomic_path
from export.images import tile
from export.scoring import Reconstruction
from pipeline.common import Paths
from pipeline.config import Config
from pipeline.data import Splits
from pipeline.latents import LatentGaps, metric_key

DPI = 80
FIGURES = (  # the evaluate stage's figures, eval/<name>.png
    "digits",
    "latent_scatter",
    "latent_gaps",
    "vae_grid",
    "ae_grid",
    "denoise",
    "anomalies",
    "training_curves",
)
EMPTY_CELL_RGBA = (0.85, 0.1, 0.1, 0.35)  # translucent red: the scatter shows through


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _image_rows(
    path: Path,
    rows: Sequence[np.ndarray],
    row_labels: Sequence[str],
    captions: Sequence[Sequence[str]] | None,
    title: str,
) -> None:
    """One row of digits per entry of ``rows`` (each (columns, 28, 28)), labelled at the left."""
    plt = _pyplot()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(1.1 * n_cols + 1.2, 1.3 * n_rows + 0.6), squeeze=False
    )
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(row[c], cmap="gray_r", vmin=0.0, vmax=1.0)
            else:
                ax.axis("off")
            if captions is not None and c < len(captions[r]):
                ax.set_title(captions[r][c], fontsize=8)
        axes[r][0].set_ylabel(row_labels[r], fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def digits_figure(path: Path, images: np.ndarray, labels: np.ndarray, columns: int) -> None:
    """Two rows of real test digits (images (2*columns, 28, 28)) titled with their labels."""
    rows = [images[:columns], images[columns : 2 * columns]]
    captions = [[f"label {y}" for y in labels[:columns]], [f"label {y}" for y in labels[columns:]]]
    _image_rows(path, rows, ["test", "test"], captions, "Real MNIST test digits")


def latent_scatter_figure(
    path: Path, ae_z: np.ndarray, vae_z: np.ndarray, labels: np.ndarray
) -> None:
    """Test digits in the AE latent (left) and the VAE's z_mean (right), coloured by label."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    cmap = plt.get_cmap("tab10")
    for ax, z, name in ((axes[0], ae_z, "AE latent z"), (axes[1], vae_z, "VAE latent z_mean")):
        for digit in range(10):
            keep = labels == digit
            ax.scatter(z[keep, 0], z[keep, 1], s=2, alpha=0.6, color=cmap(digit), label=str(digit))
        ax.set_title(f"{name} ({len(z):,} test digits)")
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]")
    axes[1].legend(title="label", markerscale=5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("The 2-D latent space of the test digits")
    fig.tight_layout()
    _save(fig, path)


class GapPanel(NamedTuple):
    """One side of ``latent_gaps_figure``."""

    title: str
    z: np.ndarray  # (n, d) test latents; the first two axes are drawn
    empty: np.ndarray  # (size*size,) bool, ``export.lattice`` order: row 0 at the top
    low: Sequence[float]  # (d,) the grid's box
    high: Sequence[float]
    outlines: tuple[tuple[str, Sequence[float], Sequence[float]], ...] = ()  # (label, low, high)


def latent_gaps_figure(
    path: Path, panels: Sequence[GapPanel], labels: np.ndarray, size: int
) -> None:
    """Test latents coloured by label (n,), with the empty cells of a size x size grid in red."""
    plt = _pyplot()
    from matplotlib.patches import Patch, Rectangle

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 6.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, panel in zip(axes[0], panels, strict=True):
        low, high = panel.low, panel.high
        half_x = (high[0] - low[0]) / (2 * max(size - 1, 1))
        half_y = (high[1] - low[1]) / (2 * max(size - 1, 1))
        extent = (low[0] - half_x, high[0] + half_x, low[1] - half_y, high[1] + half_y)
        for digit in range(10):
            keep = labels == digit
            ax.scatter(panel.z[keep, 0], panel.z[keep, 1], s=1, alpha=0.5, color=cmap(digit))
        # one RGBA image of the grid: each cell a square of side one grid step, as in grid_figure
        overlay = np.zeros((size, size, 4), np.float32)
        overlay[panel.empty.reshape(size, size)] = EMPTY_CELL_RGBA
        ax.imshow(overlay, extent=extent, origin="upper", aspect="auto", interpolation="nearest")
        boxes = (("grid box: train latents, 1st-99th pct", low, high, "black", "-"),) + tuple(
            (label, o_low, o_high, "tab:blue", "--") for label, o_low, o_high in panel.outlines
        )
        for label, o_low, o_high, color, style in boxes:
            ax.add_patch(
                Rectangle(
                    (o_low[0], o_low[1]),
                    o_high[0] - o_low[0],
                    o_high[1] - o_low[1],
                    fill=False,
                    color=color,
                    ls=style,
                    lw=1.5,
                    label=label,
                )
            )
        # the grid and every outline in view; test latents beyond them are left out
        x0 = min([extent[0]] + [o[1][0] for o in panel.outlines])
        x1 = max([extent[1]] + [o[2][0] for o in panel.outlines])
        y0 = min([extent[2]] + [o[1][1] for o in panel.outlines])
        y1 = max([extent[3]] + [o[2][1] for o in panel.outlines])
        ax.set_xlim(x0 - 0.08 * (x1 - x0), x1 + 0.08 * (x1 - x0))
        ax.set_ylim(y0 - 0.08 * (y1 - y0), y1 + 0.08 * (y1 - y0))
        handles = ax.get_legend_handles_labels()[0] + [
            Patch(color=EMPTY_CELL_RGBA, label="empty cell")
        ]
        ax.legend(handles=handles, loc="upper right", fontsize=8)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]")
    fig.suptitle(
        f"Gaps: cells of a {size}x{size} grid farther from every train latent than 99% of test "
        "digits land"
    )
    fig.tight_layout()
    _save(fig, path)


def grid_figure(
    path: Path,
    pixels: np.ndarray,
    size: int,
    low: Sequence[float],
    high: Sequence[float],
    title: str,
) -> None:
    """Decoded digits (size*size, 28, 28) from ``export.lattice`` drawn at their latents."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    half_x = (high[0] - low[0]) / (2 * max(size - 1, 1))
    half_y = (high[1] - low[1]) / (2 * max(size - 1, 1))
    ax.imshow(
        tile(pixels, columns=size, padding=0),
        cmap="gray_r",
        vmin=0.0,
        vmax=1.0,
        extent=(low[0] - half_x, high[0] + half_x, low[1] - half_y, high[1] + half_y),
        aspect="auto",
    )
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def denoise_figure(
    path: Path,
    noisy: np.ndarray,
    ae_out: np.ndarray,
    vae_out: np.ndarray,
    clean: np.ndarray,
    sigma: float,
    denoiser_out: np.ndarray,
) -> None:
    """Five rows of (columns, 28, 28): noisy inputs, the AE's, the VAE's and the denoiser's
    outputs, the clean originals."""
    _image_rows(
        path,
        [noisy, ae_out, vae_out, denoiser_out, clean],
        [f"noisy (sigma {sigma:g})", "AE output", "VAE output", "denoiser output", "clean"],
        None,
        "Denoising: Gaussian noise in, reconstruction out",
    )


def anomalies_figure(
    path: Path,
    ae_images: np.ndarray,
    ae_captions: Sequence[str],
    vae_images: np.ndarray,
    vae_captions: Sequence[str],
) -> None:
    """Two rows: the AE's and the VAE's highest-scoring test digits, captioned score / label."""
    _image_rows(
        path,
        [ae_images, vae_images],
        ["AE: top MSE", "VAE: top -ELBO"],
        [ae_captions, vae_captions],
        "Most anomalous test digits (highest anomaly score)",
    )


def training_curves_figure(
    path: Path, ae_history: dict[str, list[float]], vae_history: dict[str, list[float]]
) -> None:
    """Train and validation losses per epoch (nats per image) of the AE and the VAE."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, hist, name, loss_name in (
        (axes[0], ae_history, "AE", "Bernoulli NLL"),
        (axes[1], vae_history, "VAE", "negative ELBO"),
    ):
        epochs = np.arange(1, len(hist["loss"]) + 1)
        ax.plot(epochs, hist["loss"], label=f"train {loss_name}")
        ax.plot(epochs, hist["val_loss"], label=f"validation {loss_name}")
        ax.set_title(f"{name} training")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (nats per image)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
        if "val_kl" in hist:  # the KL is ~5 nats against ~150: its own axis
            kl_ax = ax.twinx()
            kl_ax.plot(epochs, hist["val_kl"], "g--", label="validation KL")
            kl_ax.set_ylabel("KL (nats per image)")
            kl_ax.legend(loc="center right")
    fig.suptitle("Training curves")
    fig.tight_layout()
    _save(fig, path)


def figure_path(paths: Paths, name: str) -> Path:
    """Where the evaluate stage writes figure ``name`` (one of ``FIGURES``)."""
    return paths.eval_dir / f"{name}.png"


def read_history(path: Path) -> dict[str, list[float]]:
    """``history.csv`` of a training stage as {column: per-epoch values}."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path}: no epochs recorded")
    return {col: [float(r[col]) for r in rows] for col in rows[0] if col != "epoch"}


def _top_captions(scores: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, list[str]]:
    top = np.argsort(scores, kind="stable")[::-1][:n]
    return top, [f"{scores[i]:.3g} / {labels[i]}" for i in top]


def gap_panel(kind: str, test_z: np.ndarray, gaps: LatentGaps) -> GapPanel:
    """One side of ``latent_gaps.png``: the model's own-box measure, and the VAE's prior box."""
    name = {"ae": "AE latent z", "vae": "VAE latent z_mean"}[kind]
    _, low, high = gaps.regions[kind]
    frac = gaps.metrics[metric_key(kind, "latent_empty_frac")]
    outlines = []
    if kind == "vae":
        _, prior_low, prior_high = gaps.regions["vae_prior"]
        prior_frac = gaps.metrics[metric_key("vae_prior", "latent_empty_frac")]
        outlines.append((f"prior 0.05-0.95 box: {prior_frac:.1%} empty", prior_low, prior_high))
    return GapPanel(
        title=f"{name}: {frac:.1%} of the grid empty (r99 = {gaps.radius[kind]:.3g})",
        z=test_z,
        empty=gaps.empty[kind],
        low=low,
        high=high,
        outlines=tuple(outlines),
    )


def draw_figures(
    cfg: Config,
    paths: Paths,
    data: Splits,
    test_out: dict[str, Reconstruction],
    test_scores: dict[str, np.ndarray],
    boxes: dict[str, Any],
    grid_pixels: dict[str, np.ndarray],
    noisy: np.ndarray,
    denoised: dict[str, np.ndarray],
    gaps: LatentGaps,
) -> dict[str, Path]:
    """Write every figure of ``FIGURES`` under ``eval/``; returns {name: png path}.

    The arguments are what the steps of ``run`` returned.
    """
    ev = cfg.evaluate
    n = ev.figure_digits
    test_images, test_labels = data.test_images, data.test_labels
    fig = {name: figure_path(paths, name) for name in FIGURES}
    digits_figure(fig["digits"], test_images[: 2 * n], test_labels[: 2 * n], n)
    latent_scatter_figure(fig["latent_scatter"], test_out["ae"].z, test_out["vae"].z, test_labels)
    latent_gaps_figure(
        fig["latent_gaps"],
        [gap_panel(kind, test_out[kind].z, gaps) for kind in ("ae", "vae")],
        test_labels,
        ev.confident_grid_size,
    )
    for kind, what in (("vae", "N(0, 1) quantiles 0.05-0.95"), ("ae", "1st-99th percentile box")):
        grid_figure(
            fig[f"{kind}_grid"],
            grid_pixels[kind],
            ev.grid_size,
            boxes[kind]["low"],
            boxes[kind]["high"],
            f"{kind.upper()} decoder over its latent: {what}",
        )
    denoise_figure(
        fig["denoise"],
        noisy[:n],
        denoised["ae"][:n],
        denoised["vae"][:n],
        test_images[:n],
        ev.noise_sigma,
        denoised["denoiser"][:n],
    )
    ae_top, ae_captions = _top_captions(test_scores["ae"], test_labels, n)
    vae_top, vae_captions = _top_captions(test_scores["vae"], test_labels, n)
    anomalies_figure(
        fig["anomalies"], test_images[ae_top], ae_captions, test_images[vae_top], vae_captions
    )
    training_curves_figure(
        fig["training_curves"],
        read_history(paths.history_file("ae")),
        read_history(paths.history_file("vae")),
    )
    return fig
