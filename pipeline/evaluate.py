"""Stage `evaluate`: measure the trained AE and VAE on the test split, draw the figures, report.

    python run_pipeline.py --stages evaluate

Writes under ``eval/``: ``metrics.json`` (flat float keys such as ``vae.elbo_nats``, listed in
``pipeline.report.METRIC_DOCS``), ``latent_boxes.json`` (the latent regions the decoded grids
cover, which the export stage copies into the bundle's manifest), the figures
(``FIGURES``, PNG), the digit classifier (``classifier.keras`` + ``classifier.json``); and
``report.html`` beside them, one self-contained page. The measures live in ``measures``,
``likelihood`` and ``classifier``; the drawing in ``figures``; the page in ``report``.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from export.files import write_json_atomic, write_text_atomic
from export.lattice import lattice
from export.metrics import roc_auc
from export.scoring import (
    calibrate_threshold,
    false_positive_rate,
    negative_elbo,
    reconstruction_mse,
)
from pipeline import figures, measures, report
from pipeline.classifier import classifier_paths, feature_model, train_or_reuse
from pipeline.common import (
    PREDICT_BATCH,
    Paths,
    Stage,
    denoise,
    library_versions,
    load_denoiser,
    load_models,
)
from pipeline.config import Config, config_to_toml
from pipeline.data import load_split
from pipeline.fitting import keras_verbosity
from pipeline.likelihood import bernoulli_entropy, vae_likelihood

AE_BOX_PERCENTILES = (1.0, 99.0)  # ae_grid.png spans this percentile box of the test latents
VAE_GRID_QUANTILES = (0.05, 0.95)  # the VAE grid spans these quantiles of the N(0, 1) prior
# The grid measures (latent_empty_frac, grid_confident_frac) use one rule for both models: the
# 1st-99th percentile box of each model's own train latents; the VAE's also over its prior box.
MEASURE_BOX_PERCENTILES = (1.0, 99.0)
GAP_PERCENTILE = 99.0  # a grid cell is empty when farther than this pct of test-to-train NN
FIGURES = (
    "digits",
    "latent_scatter",
    "latent_gaps",
    "vae_grid",
    "ae_grid",
    "denoise",
    "anomalies",
    "training_curves",
)


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


def read_history(path: Path) -> dict[str, list[float]]:
    """``history.csv`` of a training stage as {column: per-epoch values}."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path}: no epochs recorded")
    return {col: [float(r[col]) for r in rows] for col in rows[0] if col != "epoch"}


def report_path(paths: Paths) -> Path:
    return paths.eval_dir / "report.html"


def figure_path(paths: Paths, name: str) -> Path:
    return paths.eval_dir / f"{name}.png"


class _Clock:
    """Prints how long each step of the stage took."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self, what: str) -> None:
        now = time.perf_counter()
        print(f"evaluate: {what} ({now - self.last:.1f} s)", flush=True)
        self.last = now


def decode(models: dict[str, Any], kind: str, z: np.ndarray) -> np.ndarray:
    """Pixels (m, 28, 28) of latents z (m, d), in as few decoder calls as the batch allows."""
    return models[f"{kind}_decoder"].predict(z, batch_size=PREDICT_BATCH * 8, verbose=0)


def figure_grid(box: dict[str, Any], side: int) -> np.ndarray:
    """The latents of a grid figure over one model's entry of ``latent_boxes``: (side^2, d).

    The same points, in the same order, as the runtime's ``Bundle.grid_latents`` over the box
    the manifest copies from ``latent_boxes.json``.
    """
    return lattice(box["low"], box["high"], side)


@dataclass(frozen=True)
class Splits:
    """The dataset's images (n, 28, 28) float32 in [0, 1] and labels (n,), per split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @classmethod
    def load(cls, cfg: Config, paths: Paths) -> Splits:
        train_images, train_labels = load_split(paths.dataset, "train", cfg.data)
        val_images, _ = load_split(paths.dataset, "validation", cfg.data)
        test_images, test_labels = load_split(paths.dataset, "test", cfg.data)
        return cls(train_images, train_labels, val_images, test_images, test_labels)


@dataclass(frozen=True)
class Judge:
    """The digit classifier and what it says of the test digits."""

    model: Any  # images (n, 28, 28) -> probabilities (n, 10)
    features: Any  # images (n, 28, 28) -> its feature layer (n, 128)
    record: dict[str, Any]  # classifier.json: epochs, seconds, reused
    test_probs: np.ndarray  # (n_test, 10)
    test_features: np.ndarray  # (n_test, 128)

    def probs(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (n, 10) of ``images`` (n, 28, 28)."""
        return self.model.predict(images, batch_size=PREDICT_BATCH, verbose=0)


@dataclass(frozen=True)
class LatentGaps:
    """The grid measure's regions, its empty cells and radii, and its metrics."""

    regions: dict[str, tuple[str, list[float], list[float]]]  # see ``measure_regions``
    empty: dict[str, np.ndarray]  # per region: (confident_grid_size^2,) bool, lattice order
    radius: dict[str, float]  # per model: r99, the coverage radius of its test latents
    metrics: dict[str, float]  # *.latent_empty_frac[_prior]


def reconstructions(
    models: dict[str, Any], data: Splits, fpr: float
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray], dict[str, float]]:
    """Each model's test reconstructions and anomaly scores, thresholds calibrated on validation.

    Returns ({kind: ``encode_decode`` of the test digits: "z" (n, d), "pixels" (n, 28, 28),
    VAE also "z_log_var" (n, d)}, {kind: test anomaly scores (n,)}, the *.recon_mse,
    *.anomaly_threshold and *.test_fpr metrics).
    """
    test_out, test_scores, metrics = {}, {}, {}
    for kind in ("ae", "vae"):
        val_scores = anomaly_scores(
            data.val_images, encode_decode(models, kind, data.val_images), kind
        )
        test_out[kind] = encode_decode(models, kind, data.test_images)
        test_scores[kind] = anomaly_scores(data.test_images, test_out[kind], kind)
        threshold = calibrate_threshold(val_scores, fpr)
        metrics[f"{kind}.recon_mse"] = float(
            reconstruction_mse(data.test_images, test_out[kind]["pixels"]).mean()
        )
        metrics[f"{kind}.anomaly_threshold"] = threshold
        metrics[f"{kind}.test_fpr"] = false_positive_rate(test_scores[kind], threshold)
    return test_out, test_scores, metrics


def likelihood_metrics(
    decoder: Any, images: np.ndarray, vae_out: dict[str, np.ndarray], k: int, seed: int
) -> dict[str, float]:
    """The VAE's test ELBO, KL and importance-sampled NLL (K = ``k``), means in nats per image.

    images (n, 28, 28); vae_out: the VAE's ``encode_decode`` of them ("z" = z_mean, "z_log_var",
    each (n, d)). Also the Bernoulli entropy floor of the images.
    """
    lik = vae_likelihood(decoder, images, vae_out["z"], vae_out["z_log_var"], k=k, seed=seed)
    return {
        "vae.elbo_nats": float(lik["elbo"].mean()),
        "vae.kl_nats": float(lik["kl"].mean()),
        "vae.nll_is_nats": float(lik["nll_is"].mean()),
        "vae.nll_is_k": float(k),
        # what a perfect decoder (p = x) would score: the NLL cannot fall below it on grey levels
        "reference.bernoulli_entropy_floor_nats": float(bernoulli_entropy(images).mean()),
    }


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


def digit_classifier(cfg: Config, paths: Paths, test_images: np.ndarray) -> Judge:
    """The classifier, trained on the train split or reused, and its view of ``test_images``."""
    model, record = train_or_reuse(cfg, paths, verbose=keras_verbosity(cfg.train.verbose))
    features = feature_model(model)
    return Judge(
        model=model,
        features=features,
        record=record,
        test_probs=model.predict(test_images, batch_size=PREDICT_BATCH, verbose=0),
        test_features=features.predict(test_images, batch_size=PREDICT_BATCH, verbose=0),
    )


def classifier_metrics(judge: Judge, test_labels: np.ndarray) -> dict[str, float]:
    """classifier.test_acc on the test labels (n,) and its dead feature units."""
    return {
        "classifier.test_acc": float(np.mean(judge.test_probs.argmax(axis=1) == test_labels)),
        "classifier.dead_units": float(measures.dead_units(judge.test_features)),
    }


def decoded_grids(
    models: dict[str, Any],
    judge: Judge,
    boxes: dict[str, Any],
    regions: dict[str, tuple[str, list[float], list[float]]],
    grid_size: int,
    confident_grid_size: int,
    confident_prob: float,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The figure's grid and every measure grid of a model, decoded in one decoder call.

    Returns ({kind: the grid figure's pixels (grid_size^2, 28, 28) over ``boxes[kind]``},
    the *.grid_confident_frac[_prior] metrics over ``regions``).
    """
    grid_pixels, metrics = {}, {}
    n_cells = confident_grid_size**2
    for kind in ("ae", "vae"):
        own = [region for region, (owner, _, _) in regions.items() if owner == kind]
        grids = [figure_grid(boxes[kind], grid_size)]
        grids += [lattice(*regions[r][1:], confident_grid_size) for r in own]
        pixels = decode(models, kind, np.concatenate(grids))
        grid_pixels[kind] = pixels[: len(grids[0])]
        probs = judge.probs(pixels[len(grids[0]) :])
        for i, region in enumerate(own):
            metrics[metric_key(region, "grid_confident_frac")] = measures.confident_fraction(
                probs[i * n_cells : (i + 1) * n_cells], confident_prob
            )
    return grid_pixels, metrics


def fid_metrics(
    models: dict[str, Any],
    judge: Judge,
    data: Splits,
    test_out: dict[str, dict[str, np.ndarray]],
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
        metrics[f"{kind}.recon_fid"] = fid_to_test(test_out[kind]["pixels"][:n_fid])
    picked = np.random.default_rng(seed + 3).choice(len(data.train_images), n_fid, replace=False)
    metrics["reference.fid_train_test"] = fid_to_test(data.train_images[np.sort(picked)])
    return metrics


def noise_auroc(clean_scores: np.ndarray, noisy_scores: np.ndarray) -> float:
    """AUROC of anomaly scores (n,) telling noisy digits (positive) from clean ones."""
    is_noisy = np.concatenate([np.zeros(len(clean_scores), bool), np.ones(len(noisy_scores), bool)])
    return roc_auc(np.concatenate([clean_scores, noisy_scores]), is_noisy)


def denoising(
    models: dict[str, Any],
    denoiser: Any,
    judge: Judge,
    test_images: np.ndarray,
    test_scores: dict[str, np.ndarray],
    sigma: float,
    seed: int,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float]]:
    """Each model on the test digits (n, 28, 28) under clipped noise of ``sigma``.

    Returns (the noisy digits (n, 28, 28), {"ae", "vae", "denoiser": outputs (n, 28, 28)},
    the *.denoise_psnr_gain_db, *.noise_auroc and denoise.* metrics).
    """
    noisy = measures.add_noise(test_images, sigma, seed=seed)
    noisy_psnr = measures.psnr(test_images, noisy)
    denoised, metrics = {}, {}
    for kind in ("ae", "vae"):
        noisy_out = encode_decode(models, kind, noisy)
        denoised[kind] = noisy_out["pixels"]
        gain = measures.psnr(test_images, noisy_out["pixels"]) - noisy_psnr
        metrics[f"{kind}.denoise_psnr_gain_db"] = float(gain.mean())
        metrics[f"{kind}.noise_auroc"] = noise_auroc(
            test_scores[kind], anomaly_scores(noisy, noisy_out, kind)
        )
    # the denoising autoencoder: closer to the clean digit, and still the same digit?
    denoised["denoiser"] = denoise(denoiser, noisy)
    metrics.update(
        measures.denoise_metrics(
            test_images,
            noisy,
            denoised["denoiser"],
            judge.test_probs,
            judge.probs(noisy),
            judge.probs(denoised["denoiser"]),
        )
    )
    return noisy, denoised, metrics


def unclipped_noise_metrics(
    models: dict[str, Any],
    test_images: np.ndarray,
    test_scores: dict[str, np.ndarray],
    sigma: float,
    seed: int,
) -> dict[str, float]:
    """*.noise_auroc_unclipped: the same noise draw as ``denoising`` left unclipped, zero-mean,
    so a score cannot tell it by brightness alone."""
    unclipped = measures.add_noise(test_images, sigma, seed=seed, clip=False)
    return {
        f"{kind}.noise_auroc_unclipped": noise_auroc(
            test_scores[kind],
            anomaly_scores(unclipped, encode_decode(models, kind, unclipped), kind),
        )
        for kind in ("ae", "vae")
    }


def ordered_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` in ``report.METRIC_DOCS`` order (others sorted after); raises if any is not
    finite."""
    order = [key for key in report.METRIC_DOCS if key in metrics]
    metrics = {key: metrics[key] for key in order + sorted(set(metrics) - set(order))}
    bad = [key for key, value in metrics.items() if not np.isfinite(value)]
    if bad:
        raise ValueError(f"evaluate: non-finite metrics {bad}")
    return metrics


def _top_captions(scores: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, list[str]]:
    top = np.argsort(scores, kind="stable")[::-1][:n]
    return top, [f"{scores[i]:.3g} / {labels[i]}" for i in top]


def gap_panel(kind: str, test_z: np.ndarray, gaps: LatentGaps) -> figures.GapPanel:
    """One side of ``latent_gaps.png``: the model's own-box measure, and the VAE's prior box."""
    name = {"ae": "AE latent z", "vae": "VAE latent z_mean"}[kind]
    _, low, high = gaps.regions[kind]
    frac = gaps.metrics[metric_key(kind, "latent_empty_frac")]
    outlines = []
    if kind == "vae":
        _, prior_low, prior_high = gaps.regions["vae_prior"]
        prior_frac = gaps.metrics[metric_key("vae_prior", "latent_empty_frac")]
        outlines.append((f"prior 0.05-0.95 box: {prior_frac:.1%} empty", prior_low, prior_high))
    return figures.GapPanel(
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
    test_out: dict[str, dict[str, np.ndarray]],
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
    figures.digits_figure(fig["digits"], test_images[: 2 * n], test_labels[: 2 * n], n)
    figures.latent_scatter_figure(
        fig["latent_scatter"], test_out["ae"]["z"], test_out["vae"]["z"], test_labels
    )
    figures.latent_gaps_figure(
        fig["latent_gaps"],
        [gap_panel(kind, test_out[kind]["z"], gaps) for kind in ("ae", "vae")],
        test_labels,
        ev.confident_grid_size,
    )
    for kind, what in (("vae", "N(0, 1) quantiles 0.05-0.95"), ("ae", "1st-99th percentile box")):
        figures.grid_figure(
            fig[f"{kind}_grid"],
            grid_pixels[kind],
            ev.grid_size,
            boxes[kind]["low"],
            boxes[kind]["high"],
            f"{kind.upper()} decoder over its latent: {what}",
        )
    figures.denoise_figure(
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
    figures.anomalies_figure(
        fig["anomalies"], test_images[ae_top], ae_captions, test_images[vae_top], vae_captions
    )
    figures.training_curves_figure(
        fig["training_curves"],
        read_history(paths.history_file("ae")),
        read_history(paths.history_file("vae")),
    )
    return fig


def run(cfg: Config, paths: Paths) -> dict[str, float]:
    """Compute every metric, draw every figure, write metrics.json, latent_boxes.json, report."""
    ev = cfg.evaluate
    clock = _Clock()
    models = load_models(paths)
    data = Splits.load(cfg, paths)
    paths.eval_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}

    test_out, test_scores, found = reconstructions(models, data, ev.anomaly_fpr)
    metrics.update(found)
    clock.lap("reconstructions and anomaly thresholds")

    metrics.update(
        likelihood_metrics(
            models["vae_decoder"], data.test_images, test_out["vae"], ev.nll_samples, ev.seed
        )
    )
    clock.lap(f"ELBO and importance-sampled NLL (K={ev.nll_samples})")

    train_z = train_latents(models, data.train_images)
    test_z = {kind: test_out[kind]["z"] for kind in ("ae", "vae")}
    metrics.update(knn_metrics(train_z, test_z, data, ev.knn_k))
    clock.lap(f"{ev.knn_k}-NN latent accuracy")

    gaps = latent_gaps(train_z, test_z, cfg.model.latent_dim, ev.confident_grid_size)
    metrics.update(gaps.metrics)
    clock.lap("latent gaps")

    judge = digit_classifier(cfg, paths, data.test_images)
    metrics.update(classifier_metrics(judge, data.test_labels))
    clock.lap("digit classifier " + ("reused" if judge.record["reused"] else "trained"))

    boxes = latent_boxes(test_z["ae"], cfg.model.latent_dim)
    grid_pixels, found = decoded_grids(
        models,
        judge,
        boxes,
        gaps.regions,
        ev.grid_size,
        ev.confident_grid_size,
        ev.confident_prob,
    )
    metrics.update(found)
    clock.lap("decoded grids")

    n_fid = min(ev.fid_samples, len(data.test_images), len(data.train_images))
    metrics.update(fid_metrics(models, judge, data, test_out, train_z, n_fid, ev.seed))
    clock.lap(f"FID ({n_fid:,} images a set)")

    noisy, denoised, found = denoising(
        models,
        load_denoiser(paths),
        judge,
        data.test_images,
        test_scores,
        ev.noise_sigma,
        ev.seed + 1,
    )
    metrics.update(found)
    clock.lap(f"denoising (sigma {ev.noise_sigma:g})")

    metrics.update(
        unclipped_noise_metrics(models, data.test_images, test_scores, ev.noise_sigma, ev.seed + 1)
    )
    clock.lap("noise AUROC, unclipped")

    metrics = ordered_metrics(metrics)
    fig = draw_figures(
        cfg, paths, data, test_out, test_scores, boxes, grid_pixels, noisy, denoised, gaps
    )
    clock.lap("figures")

    write_json_atomic(paths.eval_dir / "metrics.json", metrics)
    write_json_atomic(paths.eval_dir / "latent_boxes.json", boxes)
    notes = measurement_notes(cfg, judge.record, len(data.test_images), n_fid)
    write_text_atomic(
        report_path(paths),
        report.render_report(metrics, fig, config_to_toml(cfg), library_versions(), notes),
    )
    for key, value in metrics.items():
        print(f"evaluate: {key:<38} {value:.6g}")
    return metrics


def measurement_notes(
    cfg: Config, record: dict[str, Any], n_test: int, n_fid: int
) -> dict[str, str]:
    """How each group of numbers was obtained, for the report."""
    ev = cfg.evaluate
    return {
        "Test split": f"{n_test:,} digits; binarized: {cfg.data.binarize}.",
        "ELBO and NLL": (
            f"K = {ev.nll_samples} samples z_k ~ q(z|x) per digit; ELBO = mean_k log p(x|z_k) "
            "minus the closed-form KL; NLL = -log mean_k p(x|z_k) p(z_k) / q(z_k|x) "
            "(importance-weighted bound, Burda et al. 2016). On grey-level pixels the Bernoulli "
            "NLL cannot go below reference.bernoulli_entropy_floor_nats, the summed binary "
            "entropy H(x) of the pixels (what a decoder with p = x scores); on binarized data the "
            "floor is 0."
        ),
        "Classifier": (
            f"CNN trained {record['epochs']} epochs on the train split "
            f"({'reused from an earlier run' if record['reused'] else 'trained in this run'}, "
            f"{record['train_seconds']} s); its test accuracy is classifier.test_acc, its "
            "feature units silent on every test digit classifier.dead_units."
        ),
        "Latent gaps": (
            f"r99 = the {GAP_PERCENTILE:g}th percentile of the distances from each test latent "
            "to its nearest train latent (Euclidean, exact, each model its own); a cell of a "
            f"{ev.confident_grid_size}x{ev.confident_grid_size} grid is empty when its centre is "
            "farther than r99 from every train latent. The box is each model's own train "
            "latents' 1st-99th percentile box (one rule for both); _prior: the VAE's N(0, 1) "
            f"{VAE_GRID_QUANTILES[0]:g}-{VAE_GRID_QUANTILES[1]:g} quantile box. Meant for the "
            "2-D latent: with more axes the grid spans the first two, the others at the box "
            "centre."
        ),
        "Grid confidence": (
            f"the same {ev.confident_grid_size}x{ev.confident_grid_size} grids (each model's own "
            "train-latent box, and the VAE's prior box for _prior) decoded; a point counts "
            f"when the classifier's top probability >= {ev.confident_prob:g}."
        ),
        "FID": (
            f"{n_fid:,} images per set vs the first {n_fid:,} test digits, compared in the "
            "classifier's 128-unit feature layer (Gaussian Frechet distance): VAE samples "
            "z ~ N(0, I), AE samples z ~ N(mean, covariance) fitted to its train latents, both "
            "decoded to pixel probabilities; recon_fid: each model's reconstructions of those "
            "test digits; reference.fid_train_test: a seeded random choice of real train digits."
        ),
        "Denoising": (
            f"Gaussian noise sigma = {ev.noise_sigma:g}, clipped to [0, 1]; gain = mean over "
            "test digits of PSNR(output) - PSNR(noisy input), peak 1.0. noise_auroc ranks the "
            "clean and the noisy test digits by each model's anomaly score. denoise.class_kept: "
            "share of test digits the classifier gives the same label denoised as clean."
        ),
        "Noise AUROC": (
            "noise_auroc uses the clipped noise above, which keeps only the upward half of the "
            "noise on the black background and so also brightens a digit: a score can win on "
            "brightness alone. noise_auroc_unclipped ranks the clean digits against the same "
            "noise draw left unclipped: zero-mean, the brightness unchanged on average."
        ),
        "k-NN": f"k = {ev.knn_k}, Euclidean, train latents as reference.",
    }


def evaluate_inputs(paths: Paths) -> list[Path]:
    return [paths.dataset, paths.keras_file("denoiser")] + [
        path
        for kind in ("ae", "vae")
        for path in (
            paths.keras_file(kind, "encoder"),
            paths.keras_file(kind, "decoder"),
            paths.history_file(kind),
        )
    ]


def evaluate_outputs(paths: Paths) -> list[Path]:
    classifier_model, classifier_record = classifier_paths(paths)
    return [
        paths.eval_dir / "metrics.json",
        paths.eval_dir / "latent_boxes.json",
        classifier_model,
        classifier_record,
        *(figure_path(paths, name) for name in FIGURES),
        report_path(paths),
    ]


STAGE = Stage(
    name="evaluate",
    run=run,
    sections=("data", "evaluate"),
    inputs=evaluate_inputs,
    outputs=evaluate_outputs,
)
