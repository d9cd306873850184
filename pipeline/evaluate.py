"""Stage `evaluate`: measure the trained AE and VAE on the test split; write ``eval/``.

    python run_pipeline.py --stages evaluate

Writes ``eval/metrics.json`` (flat keys such as ``vae.anomaly_threshold``) and
``eval/latent_boxes.json`` (the latent regions the decoded grids cover, which the export stage
copies into the bundle's manifest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.scoring import (
    calibrate_threshold,
    false_positive_rate,
    negative_elbo,
    reconstruction_mse,
)
from pipeline.common import Paths, write_json_atomic
from pipeline.config import Config
from pipeline.data import load_split

AE_BOX_PERCENTILES = (1.0, 99.0)  # the AE grid spans this percentile box of the test latents
VAE_GRID_QUANTILES = (0.05, 0.95)  # the VAE grid spans these quantiles of the N(0, 1) prior
PREDICT_BATCH = 1024


def load_models(paths: Paths) -> dict[str, Any]:
    """The four sub-models, loaded in safe mode: ae_encoder, ae_decoder, vae_encoder, vae_decoder."""
    from models import load_model

    return {
        f"{kind}_{part}": load_model(paths.model_dir(kind) / f"{part}.keras")
        for kind in ("ae", "vae")
        for part in ("encoder", "decoder")
    }


def encode_decode(models: dict[str, Any], kind: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """Latents and reconstructions of ``images`` (n, 28, 28); the VAE decodes z_mean."""
    encoded = models[f"{kind}_encoder"].predict(images, batch_size=PREDICT_BATCH, verbose=0)
    if kind == "vae":
        z_mean, z_log_var = encoded
        pixels = models["vae_decoder"].predict(z_mean, batch_size=PREDICT_BATCH, verbose=0)
        return {"z": z_mean, "z_log_var": z_log_var, "pixels": pixels}
    pixels = models["ae_decoder"].predict(encoded, batch_size=PREDICT_BATCH, verbose=0)
    return {"z": encoded, "pixels": pixels}


def anomaly_scores(images: np.ndarray, out: dict[str, np.ndarray], kind: str) -> np.ndarray:
    """(n,) AE: mean squared error; VAE: negative ELBO at z_mean (see export.scoring)."""
    if kind == "ae":
        return reconstruction_mse(images, out["pixels"])
    return negative_elbo(images, out["pixels"], out["z"], out["z_log_var"])


def standard_normal_quantile(p: float) -> float:
    """Phi^{-1}(p) by bisection on erf (no SciPy needed); accurate to ~1e-12."""
    from math import erf, sqrt

    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + erf(mid / sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def latent_boxes(ae_test_z: np.ndarray, latent_dim: int) -> dict[str, Any]:
    """The latent regions the grids cover: AE percentile box, VAE prior quantiles."""
    low_q, high_q = VAE_GRID_QUANTILES
    return {
        "ae": {
            "percentiles": list(AE_BOX_PERCENTILES),
            "low": np.percentile(ae_test_z, AE_BOX_PERCENTILES[0], axis=0).tolist(),
            "high": np.percentile(ae_test_z, AE_BOX_PERCENTILES[1], axis=0).tolist(),
        },
        "vae": {
            "prior": "standard_normal",
            "quantiles": list(VAE_GRID_QUANTILES),
            "low": [standard_normal_quantile(low_q)] * latent_dim,
            "high": [standard_normal_quantile(high_q)] * latent_dim,
        },
    }


def run(cfg: Config, paths: Paths) -> dict[str, float]:
    """Compute the metrics and write ``eval/metrics.json`` and ``eval/latent_boxes.json``."""
    models = load_models(paths)
    val_images, _ = load_split(paths.dataset, "validation", cfg.data)
    test_images, _ = load_split(paths.dataset, "test", cfg.data)
    metrics: dict[str, float] = {}
    test_out = {}
    for kind in ("ae", "vae"):
        val_out = encode_decode(models, kind, val_images)
        test_out[kind] = encode_decode(models, kind, test_images)
        val_scores = anomaly_scores(val_images, val_out, kind)
        test_scores = anomaly_scores(test_images, test_out[kind], kind)
        threshold = calibrate_threshold(val_scores, cfg.evaluate.anomaly_fpr)
        metrics[f"{kind}.recon_mse"] = float(
            reconstruction_mse(test_images, test_out[kind]["pixels"]).mean()
        )
        metrics[f"{kind}.anomaly_threshold"] = threshold
        metrics[f"{kind}.test_fpr"] = false_positive_rate(test_scores, threshold)
    paths.eval_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths.eval_dir / "metrics.json", metrics)
    write_json_atomic(
        paths.eval_dir / "latent_boxes.json",
        latent_boxes(test_out["ae"]["z"], cfg.model.latent_dim),
    )
    for key, value in metrics.items():
        print(f"evaluate: {key:<24} {value:.6g}")
    return metrics


def evaluate_inputs(paths: Paths) -> list[Path]:
    return [paths.dataset] + [
        paths.model_dir(kind) / f"{part}.keras"
        for kind in ("ae", "vae")
        for part in ("encoder", "decoder")
    ]


def evaluate_outputs(paths: Paths) -> list[Path]:
    return [paths.eval_dir / "metrics.json", paths.eval_dir / "latent_boxes.json"]
