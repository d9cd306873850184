"""Latent geometry: the boxes the grid figures and measures cover, and the gaps in a latent.

    boxes = latent_boxes(ae_test_z, latent_dim)        # eval/latent_boxes.json, the manifest's
    z = figure_grid(boxes["vae"], side=10)             # (100, d), as Bundle.grid_latents
    gaps = latent_gaps(train_z, test_z, latent_dim, side=30)   # empty cells, *.latent_empty_frac

A grid cell is empty when its centre lies farther from every train latent than 99% of the test
digits lie from their nearest train latent (``GAP_PERCENTILE``); the measure boxes follow one
rule for both models (``measure_regions``).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from export.lattice import lattice
from pipeline import measures
from pipeline.common import PREDICT_BATCH
from pipeline.data import Splits

AE_BOX_PERCENTILES = (1.0, 99.0)  # ae_grid.png spans this percentile box of the test latents
VAE_GRID_QUANTILES = (0.05, 0.95)  # the VAE grid spans these quantiles of the N(0, 1) prior
# The grid measures (latent_empty_frac, grid_confident_frac) use one rule for both models: the
# 1st-99th percentile box of each model's own train latents; the VAE's also over its prior box.
MEASURE_BOX_PERCENTILES = (1.0, 99.0)
GAP_PERCENTILE = 99.0  # a grid cell is empty when farther than this pct of test-to-train NN


def prior_box(latent_dim: int) -> tuple[list[float], list[float]]:
    """(low, high): the ``VAE_GRID_QUANTILES`` of N(0, 1) on every latent axis."""
    low_q, high_q = VAE_GRID_QUANTILES
    normal = NormalDist()
    return [normal.inv_cdf(low_q)] * latent_dim, [normal.inv_cdf(high_q)] * latent_dim


def latent_boxes(ae_test_z: np.ndarray, latent_dim: int) -> dict[str, Any]:
    """The latent regions the grid figures cover: AE percentile box, VAE prior quantiles."""
    ae_low, ae_high = measures.percentile_box(ae_test_z, AE_BOX_PERCENTILES)
    vae_low, vae_high = prior_box(latent_dim)
    return {
        "ae": {"percentiles": list(AE_BOX_PERCENTILES), "low": ae_low, "high": ae_high},
        "vae": {
            "prior": "standard_normal",
            "quantiles": list(VAE_GRID_QUANTILES),
            "low": vae_low,
            "high": vae_high,
        },
    }


def measure_regions(
    train_z: dict[str, np.ndarray], latent_dim: int
) -> dict[str, tuple[str, list[float], list[float]]]:
    """The boxes the grid measures cover, keyed by metric suffix: {"ae": (kind, low, high), ...}.

    "ae" and "vae": each model's own train-latent ``MEASURE_BOX_PERCENTILES`` box, one rule for
    both; "vae_prior": the box of the VAE grid figure, where a user samples the prior.
    """
    regions = {
        kind: (kind, *measures.percentile_box(train_z[kind], MEASURE_BOX_PERCENTILES))
        for kind in ("ae", "vae")
    }
    regions["vae_prior"] = ("vae", *prior_box(latent_dim))
    return regions


def metric_key(region: str, name: str) -> str:
    """``vae_prior`` + ``latent_empty_frac`` -> ``vae.latent_empty_frac_prior``."""
    kind, _, suffix = region.partition("_")
    return f"{kind}.{name}_{suffix}" if suffix else f"{kind}.{name}"


def figure_grid(box: dict[str, Any], side: int) -> np.ndarray:
    """The latents of a grid figure over one model's entry of ``latent_boxes``: (side^2, d).

    The same points, in the same order, as the runtime's ``Bundle.grid_latents`` over the box
    the manifest copies from ``latent_boxes.json``.
    """
    return lattice(box["low"], box["high"], side)


@dataclass(frozen=True)
class LatentGaps:
    """The grid measure's regions, its empty cells and radii, and its metrics."""

    regions: dict[str, tuple[str, list[float], list[float]]]  # see ``measure_regions``
    empty: dict[str, np.ndarray]  # per region: (confident_grid_size^2,) bool, lattice order
    radius: dict[str, float]  # per model: r99, the coverage radius of its test latents
    metrics: dict[str, float]  # *.latent_empty_frac[_prior]


def latent_gaps(
    train_z: dict[str, np.ndarray], test_z: dict[str, np.ndarray], latent_dim: int, side: int
) -> LatentGaps:
    """Grid cells farther from every train latent than 99% of the test digits land.

    train_z, test_z: {kind: (n, d)}; side: the measure grid's side (``confident_grid_size``).
    """
    radius = {
        kind: measures.coverage_radius(test_z[kind], train_z[kind], GAP_PERCENTILE)
        for kind in ("ae", "vae")
    }
    regions = measure_regions(train_z, latent_dim)
    empty, metrics = {}, {}
    for region, (kind, low, high) in regions.items():
        empty[region] = measures.empty_cells(train_z[kind], radius[kind], low, high, side)
        metrics[metric_key(region, "latent_empty_frac")] = float(empty[region].mean())
    return LatentGaps(regions, empty, radius, metrics)


def train_latents(models: dict[str, Any], images: np.ndarray) -> dict[str, np.ndarray]:
    """{kind: latents (n, d) of the train ``images`` (n, 28, 28)}; the VAE's are z_mean.

    The reference of the k-NN, of the gap measure and of the AE's sampler.
    """
    train_z = {}
    for kind in ("ae", "vae"):
        encoded = models[f"{kind}_encoder"].predict(images, batch_size=PREDICT_BATCH, verbose=0)
        train_z[kind] = encoded[0] if kind == "vae" else encoded
    return train_z


def knn_metrics(
    train_z: dict[str, np.ndarray],
    test_z: dict[str, np.ndarray],
    data: Splits,
    k: int,
) -> dict[str, float]:
    """*.latent_knn_acc: a k-NN on the train latents (n_train, d) labels the test latents."""
    return {
        f"{kind}.latent_knn_acc": measures.knn_accuracy(
            train_z[kind], data.train_labels, test_z[kind], data.test_labels, k=k
        )
        for kind in ("ae", "vae")
    }
