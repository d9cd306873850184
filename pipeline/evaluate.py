"""Stage `evaluate`: measure the trained AE and VAE on the test split, draw the figures, report.

    python run_pipeline.py --stages evaluate

Writes under ``eval/``: ``metrics.json`` (flat float keys such as ``vae.elbo_nats``, listed in
``pipeline.report.METRIC_DOCS``), ``latent_boxes.json`` (the latent regions the decoded grids
cover, which the export stage copies into the bundle's manifest), the figures
(``FIGURES``, PNG), the digit classifier (``classifier.keras`` + ``classifier.json``); and
``report.html`` beside them, one self-contained page. This module holds the stage's named steps;
the measures live in ``measures``, ``likelihood``, ``latents`` (latent geometry and gaps),
``quality`` (decoded grids and FIDs) and ``classifier`` (the judge); the drawing in ``figures``;
the page and the prose on how each number is measured in ``report``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from export.files import write_json_atomic, write_text_atomic
from export.metrics import roc_auc
from export.scoring import (
    Reconstruction,
    calibrate_threshold,
    false_positive_rate,
    reconstruct_and_score,
    reconstruction_mse,
)
from pipeline import measures, report
from pipeline.classifier import Judge, classifier_metrics, classifier_paths, digit_classifier
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
from pipeline.data import Splits
from pipeline.detection import keras_detector_scores, load_detector, read_calibration
from pipeline.figures import FIGURES, draw_figures, figure_path
from pipeline.latents import knn_metrics, latent_boxes, latent_gaps, train_latents
from pipeline.likelihood import bernoulli_entropy, vae_likelihood
from pipeline.quality import decoded_grids, fid_metrics


def reconstruct(models: dict[str, Any], kind: str, images: np.ndarray) -> Reconstruction:
    """``kind``'s Keras encoder and decoder over ``images`` (n, 28, 28), wired and scored as the
    runtime does (``export.scoring.reconstruct_and_score``; the VAE decodes z_mean)."""
    return reconstruct_and_score(
        kind,
        images,
        lambda x: models[f"{kind}_encoder"].predict(x, batch_size=PREDICT_BATCH, verbose=0),
        lambda z: models[f"{kind}_decoder"].predict(z, batch_size=PREDICT_BATCH, verbose=0),
    )


def report_path(paths: Paths) -> Path:
    return paths.eval_dir / "report.html"


class _Clock:
    """Prints how long each step of the stage took."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self, what: str) -> None:
        now = time.perf_counter()
        print(f"evaluate: {what} ({now - self.last:.1f} s)", flush=True)
        self.last = now


def reconstructions(
    models: dict[str, Any], data: Splits, fpr: float
) -> tuple[dict[str, Reconstruction], dict[str, float]]:
    """Each model's test reconstructions and anomaly scores, thresholds calibrated on validation.

    Returns ({kind: ``reconstruct`` of the test digits}, the *.recon_mse, *.anomaly_threshold
    and *.test_fpr metrics).
    """
    test_out, metrics = {}, {}
    for kind in ("ae", "vae"):
        threshold = calibrate_threshold(reconstruct(models, kind, data.val_images).scores, fpr)
        test_out[kind] = reconstruct(models, kind, data.test_images)
        metrics[f"{kind}.recon_mse"] = float(
            reconstruction_mse(data.test_images, test_out[kind].pixels).mean()
        )
        metrics[f"{kind}.anomaly_threshold"] = threshold
        metrics[f"{kind}.test_fpr"] = false_positive_rate(test_out[kind].scores, threshold)
    return test_out, metrics


DETECTOR_KINDS = ("detector", "background")


def detector_metrics(paths: Paths, data: Splits, fpr: float) -> dict[str, float]:
    """The detector's (``pipeline.detector``) threshold calibrated on the validation digits
    and the share of test digits above it: detector.anomaly_threshold, detector.test_fpr."""
    models = load_detector(paths)
    calibration, block = read_calibration(paths)
    threshold = calibrate_threshold(
        keras_detector_scores(models, data.val_images, calibration, block), fpr
    )
    test = keras_detector_scores(models, data.test_images, calibration, block)
    return {
        "detector.anomaly_threshold": threshold,
        "detector.test_fpr": false_positive_rate(test, threshold),
    }


def likelihood_metrics(
    decoder: Any, images: np.ndarray, vae_out: Reconstruction, k: int, seed: int
) -> dict[str, float]:
    """The VAE's test ELBO, KL and importance-sampled NLL (K = ``k``), means in nats per image.

    images (n, 28, 28); vae_out: the VAE's ``reconstruct`` of them (z = z_mean, z_log_var, each
    (n, d)). Also the Bernoulli entropy floor of the images.
    """
    lik = vae_likelihood(decoder, images, vae_out.z, vae_out.z_log_var, k=k, seed=seed)
    return {
        "vae.elbo_nats": float(lik["elbo"].mean()),
        "vae.kl_nats": float(lik["kl"].mean()),
        "vae.nll_is_nats": float(lik["nll_is"].mean()),
        "vae.nll_is_k": float(k),
        # what a perfect decoder (p = x) would score: the NLL cannot fall below it on grey levels
        "reference.bernoulli_entropy_floor_nats": float(bernoulli_entropy(images).mean()),
    }


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
        noisy_out = reconstruct(models, kind, noisy)
        denoised[kind] = noisy_out.pixels
        gain = measures.psnr(test_images, noisy_out.pixels) - noisy_psnr
        metrics[f"{kind}.denoise_psnr_gain_db"] = float(gain.mean())
        metrics[f"{kind}.noise_auroc"] = noise_auroc(test_scores[kind], noisy_out.scores)
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
            reconstruct(models, kind, unclipped).scores,
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


def run(cfg: Config, paths: Paths) -> dict[str, float]:
    """Compute every metric, draw every figure, write metrics.json, latent_boxes.json, report."""
    ev = cfg.evaluate
    clock = _Clock()
    models = load_models(paths)
    data = Splits.load(cfg, paths)
    paths.eval_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}

    test_out, found = reconstructions(models, data, ev.anomaly_fpr)
    test_scores = {kind: out.scores for kind, out in test_out.items()}
    metrics.update(found)
    metrics.update(detector_metrics(paths, data, ev.anomaly_fpr))
    clock.lap("reconstructions and anomaly thresholds")

    metrics.update(
        likelihood_metrics(
            models["vae_decoder"], data.test_images, test_out["vae"], ev.nll_samples, ev.seed
        )
    )
    clock.lap(f"ELBO and importance-sampled NLL (K={ev.nll_samples})")

    train_z = train_latents(models, data.train_images)
    test_z = {kind: test_out[kind].z for kind in ("ae", "vae")}
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
    notes = report.measurement_notes(cfg, judge.record, len(data.test_images), n_fid)
    write_text_atomic(
        report_path(paths),
        report.render_report(metrics, fig, config_to_toml(cfg), library_versions(), notes),
    )
    for key, value in metrics.items():
        print(f"evaluate: {key:<38} {value:.6g}")
    return metrics


def evaluate_inputs(paths: Paths) -> list[Path]:
    return [
        paths.dataset,
        paths.keras_file("denoiser"),
        paths.keras_file("compact", "decoder"),
        *(
            paths.keras_file(kind, part)
            for kind in DETECTOR_KINDS
            for part in ("encoder", "decoder")
        ),
        paths.detector_calibration,
    ] + [
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
