"""How good the generated digits are, judged by the digit classifier: decoded latent grids and FIDs.

    grid_pixels, metrics = decoded_grids(models, judge, boxes, regions, 10, 30, 0.9)
    metrics = fid_metrics(models, judge, data, test_out, train_z, n_fid=10_000, seed=1234)

The evaluate stage's steps for the *.grid_confident_frac and *.sample_fid / *.recon_fid metrics.
The compact decoder (``pipeline.compact``) decodes the VAE's latents, so it is judged on the
VAE's grids and prior draws: compact.grid_confident_frac[_prior] and compact.sample_fid.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from export.lattice import lattice
from export.scoring import Reconstruction
from pipeline import measures
from pipeline.classifier import Judge
from pipeline.common import PREDICT_BATCH
from pipeline.data import Splits
from pipeline.latents import figure_grid, metric_key

# each decoder and the latent space it decodes
DECODES = {"ae": "ae", "vae": "vae", "compact": "vae"}


def decode(models: dict[str, Any], kind: str, z: np.ndarray) -> np.ndarray:
    """Pixels (m, 28, 28) of latents z (m, d), in as few decoder calls as the batch allows."""
    return models[f"{kind}_decoder"].predict(z, batch_size=PREDICT_BATCH * 8, verbose=0)


def decoded_grids(
    models: dict[str, Any],
    judge: Judge,
    boxes: dict[str, Any],
    regions: dict[str, tuple[str, list[float], list[float]]],
    grid_size: int,
    confident_grid_size: int,
    confident_prob: float,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The figure's grid and every measure grid of a decoder, decoded in one call.

    Returns ({kind: the grid figure's pixels (grid_size^2, 28, 28) over the box of the latent
    it decodes}, the *.grid_confident_frac[_prior] metrics over ``regions``).
    """
    grid_pixels, metrics = {}, {}
    n_cells = confident_grid_size**2
    for kind, latent in DECODES.items():
        own = [region for region, (owner, _, _) in regions.items() if owner == latent]
        grids = [figure_grid(boxes[latent], grid_size)]
        grids += [lattice(*regions[r][1:], confident_grid_size) for r in own]
        pixels = decode(models, kind, np.concatenate(grids))
        grid_pixels[kind] = pixels[: len(grids[0])]
        probs = judge.probs(pixels[len(grids[0]) :])
        for i, region in enumerate(own):
            key = metric_key(region, "grid_confident_frac").replace(latent, kind, 1)
            metrics[key] = measures.confident_fraction(
                probs[i * n_cells : (i + 1) * n_cells], confident_prob
            )
    return grid_pixels, metrics


def fid_metrics(
    models: dict[str, Any],
    judge: Judge,
    data: Splits,
    test_out: dict[str, Reconstruction],
    train_z: dict[str, np.ndarray],
    n_fid: int,
    seed: int,
) -> dict[str, float]:
    """FID in the classifier's feature space, every set of ``n_fid`` images against the same
    first ``n_fid`` test digits: the Frechet distance of finite samples is biased up, the more
    so the fewer they are.

    *.sample_fid: VAE samples of z ~ N(0, I), AE samples of a Gaussian fitted to its train
    latents (n_train, d); *.recon_fid: reconstructions; reference.fid_train_test: real digits.
    """
    reference = judge.test_features[:n_fid]

    def fid_to_test(images: np.ndarray) -> float:
        feats = judge.features.predict(images, batch_size=PREDICT_BATCH, verbose=0)
        return measures.frechet_distance(feats, reference)

    rng = np.random.default_rng(seed)
    prior_z = rng.standard_normal((n_fid, train_z["vae"].shape[1]), dtype=np.float32)
    # the AE has no prior: a user samples a Gaussian fitted to its train latents
    ae_z = measures.sample_fitted_gaussian(train_z["ae"], n_fid, seed=seed + 2)
    metrics = {}
    for kind, z in (("ae", ae_z), ("vae", prior_z)):
        metrics[f"{kind}.sample_fid"] = fid_to_test(decode(models, kind, z))
        metrics[f"{kind}.recon_fid"] = fid_to_test(test_out[kind].pixels[:n_fid])
    # the same prior draws through the compact decoder: its FID next to the VAE decoder's
    metrics["compact.sample_fid"] = fid_to_test(decode(models, "compact", prior_z))
    picked = np.random.default_rng(seed + 3).choice(len(data.train_images), n_fid, replace=False)
    metrics["reference.fid_train_test"] = fid_to_test(data.train_images[np.sort(picked)])
    return metrics
