"""Stage `export`: the trained encoders and decoders as ONNX, checked against Keras, with a manifest.

    python run_pipeline.py --stages export

Writes ``export/`` under ``--out``: ``ae_encoder.onnx``, ``ae_decoder.onnx``,
``vae_encoder.onnx`` (outputs ``z_mean``, ``z_log_var``), ``vae_decoder.onnx``,
``compact_decoder.onnx`` (the small decoder of the VAE's latent, ``pipeline.compact``), the int8
decoders ``*_decoder.int8.onnx`` (of several quantizations, the one chosen by measured drift
and speed: ``pipeline.quantization``), ``denoiser.onnx`` (noisy images -> pixels, checked on noisy test
digits), the anomaly scorers ``ae_scorer.onnx`` and
``vae_scorer.onnx`` (images -> score, anomaly; ``pipeline.scorers``), the detector's four models
and its scorer ``detector_scorer.onnx`` (the default score; ``pipeline.detector_export``), the
``.keras`` models
under ``keras/``, ``validation_scores.npz`` (the validation digits' AE and VAE scores by the
exported models: the reference of the runtime's p-values), ``test_latents.npz`` (the test
digits' latent positions and labels, for plots and the latent explorer) and ``manifest.json``
(checksums, shapes, thresholds, latent boxes, versions). Every ONNX file carries its own
description in its metadata (``write_metadata``).
Encoder and decoder are converted separately: the VAE's ``Sampling`` layer has no ONNX
equivalent. Every ONNX model must match Keras, element-wise within
``parity_atol + parity_rtol * max|Keras|`` (the output's largest magnitude), on
``export.parity_samples`` test digits (the scorers: match ``export.scoring``), or the stage
fails and leaves the previous ``export/`` untouched: the bundle is built in a temporary folder
and renamed into place only at the end.
Conversion and the parity check are ``pipeline.conversion``'s, quantization
``pipeline.quantization``'s; this module
gathers the stage's inputs, writes the test latents and the manifest, and swaps the folder in.
The runtime that reads the bundle is the TensorFlow-free package ``export``
(``python -m export``).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from export.bundle import FORMAT_VERSION, MANIFEST, SCORES
from export.files import atomic_folder, sha256_file, sha256_json, write_json_atomic
from export.scoring import reconstruct_and_score
from pipeline import quantization
from pipeline.common import Paths, Stage, library_versions, load_denoiser, load_models
from pipeline.config import Config
from pipeline.conversion import (
    ExportError,
    OnnxModel,
    describe,
    export_checked,
    keras_outputs,
    measure_drift,
    set_metadata,
)
from pipeline.data import load_split
from pipeline.detection import read_calibration
from pipeline.detector_export import anomaly_entry, export_detector, onnx_detector_scores
from pipeline.measures import add_noise
from pipeline.scorers import export_scorer

KINDS = ("ae", "vae")
PRIOR_SAMPLES = 256  # extra decoder inputs drawn from N(0, I) for the parity and drift checks
TEST_LATENTS = "test_latents.npz"
VALIDATION_SCORES = "validation_scores.npz"
DENOISER = "denoiser"  # its role in the manifest and its folder under --out
COMPACT = "compact"  # the compact decoder's folder under --out (role "compact_decoder")
DETECTOR = "detector"  # the default score's model (pipeline.detector)


def export_inputs(paths: Paths) -> list[Path]:
    """Every Keras file of the models, the evaluation's thresholds and boxes, the data."""
    return [
        *(path for kind in (*KINDS, COMPACT, DENOISER) for path in paths.keras_files(kind)),
        *(
            paths.keras_file(kind, part)
            for kind in (DETECTOR, "background")
            for part in ("encoder", "decoder")
        ),
        paths.detector_calibration,
        paths.summary_file(DENOISER),  # the noise it was trained on
        paths.eval_dir / "metrics.json",
        paths.eval_dir / "latent_boxes.json",
        paths.dataset,
    ]


def export_outputs(paths: Paths) -> list[Path]:
    """The manifest and every file it lists (so an altered or missing file reruns the stage)."""
    manifest = paths.export_dir / MANIFEST
    try:
        files = json.loads(manifest.read_text())["files"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return [manifest]
    return [manifest, *(paths.export_dir / name for name in files)]


def _latent_inputs(z_test: np.ndarray, seed: int) -> np.ndarray:
    """Decoder inputs for the checks: encoded test digits plus draws from the prior."""
    prior = np.random.default_rng(seed).standard_normal((PRIOR_SAMPLES, z_test.shape[1]))
    return np.concatenate([z_test, prior.astype(np.float32)]).astype(np.float32)


def write_test_latents(
    folder: Path, images: np.ndarray, labels: np.ndarray, encoders: dict[str, OnnxModel]
) -> dict[str, Any]:
    """Where the test digits lie in both latent spaces, for plots and the latent explorer.

    images (n, 28, 28) float32, labels (n,) -> ``folder/test_latents.npz`` holding ``labels``
    (n,) uint8, ``vae_z_mean`` and ``ae_z`` (n, latent_dim) float16 (positions to draw, not
    to compute with), both from the exported ONNX encoders ``encoders["vae_encoder"]`` and
    ``encoders["ae_encoder"]``. Returns its manifest entry.
    """
    arrays = {
        "labels": labels.astype(np.uint8),
        "vae_z_mean": encoders["vae_encoder"].run(images)[0].astype(np.float16),
        "ae_z": encoders["ae_encoder"].run(images)[0].astype(np.float16),
    }
    np.savez(folder / TEST_LATENTS, **arrays)
    return {
        "file": TEST_LATENTS,
        "split": "test",
        "count": len(images),
        "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in arrays.items()},
        "source": "the exported ONNX encoders (VAE: z_mean)",
    }


def write_validation_scores(
    folder: Path, images: np.ndarray, opened: dict[str, OnnxModel], paths: Paths
) -> dict[str, Any]:
    """The anomaly scores of the validation digits by the exported fp32 ONNX models: the
    reference the runtime's p-values and ``--fpr`` thresholds are computed against.

    images (m, 28, 28) float32 -> ``folder/validation_scores.npz`` holding ``ae``, ``vae`` and
    ``detector`` (m,) float32, in ``export.scoring``'s definitions. Returns its manifest entry.
    """
    arrays = {
        kind: reconstruct_and_score(
            kind,
            images,
            opened[f"{kind}_encoder"].run,
            lambda z, kind=kind: opened[f"{kind}_decoder"].run(z)[0],
        ).scores
        for kind in ("ae", "vae")
    }
    arrays[DETECTOR] = onnx_detector_scores(opened, images, *read_calibration(paths))
    np.savez(folder / VALIDATION_SCORES, **arrays)
    return {
        "file": VALIDATION_SCORES,
        "split": "validation",
        "count": len(images),
        "source": "the exported fp32 ONNX models",
    }


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def export_autoencoder(
    kind: str,
    models: dict[str, Any],
    images: np.ndarray,
    folder: Path,
    cfg: Config,
    calibration: np.ndarray,
) -> tuple[dict[str, dict[str, Any]], dict[str, OnnxModel], dict[str, dict[str, float]]]:
    """The encoder and decoder of ``kind`` ("ae" or "vae") as ONNX, and the decoder's int8 copy.

    images: (n, 28, 28) the parity digits; the decoder is checked on their latents plus
    ``PRIOR_SAMPLES`` prior draws. calibration: (m, 28, 28) the validation digits, whose
    latents the int8 candidates are calibrated on (``export_int8``). Returns (manifest entries,
    opened files, parity records), each keyed by role ("vae_encoder", "vae_decoder",
    "vae_decoder_int8").
    """
    encoder, decoder = models[f"{kind}_encoder"], models[f"{kind}_decoder"]
    z = _latent_inputs(keras_outputs(encoder, images)[0], cfg.train.seed)
    entries, opened, parity = {}, {}, {}
    for part, model, x in (("encoder", encoder, images), ("decoder", decoder, z)):
        role = f"{kind}_{part}"
        opened[role], parity[role] = export_checked(model, role, x, folder, cfg)
        entries[role] = {"file": opened[role].path.name, "precision": "fp32"}
    if cfg.export.int8:
        role = f"{kind}_decoder"
        int8_role = f"{role}_int8"
        entries[int8_role], opened[int8_role] = export_int8(
            role, opened[role], opened[f"{kind}_encoder"], images, calibration, folder, cfg
        )
    return entries, opened, parity


def export_compact(
    models: dict[str, Any],
    opened: dict[str, OnnxModel],
    images: np.ndarray,
    folder: Path,
    cfg: Config,
    calibration: np.ndarray,
) -> tuple[dict[str, dict[str, Any]], dict[str, OnnxModel], dict[str, dict[str, float]]]:
    """The compact decoder (``pipeline.compact``) as ONNX and its int8 copy, checked on the
    VAE's latents of the parity digits ``images`` and prior draws, as the VAE decoder is.
    Returns (manifest entries, opened files, parity records) keyed "compact_decoder" and
    "compact_decoder_int8"."""
    role = "compact_decoder"
    z = _latent_inputs(opened["vae_encoder"].run(images)[0], cfg.train.seed)
    onnx_model, parity = export_checked(models[role], role, z, folder, cfg)
    entries = {role: {"file": onnx_model.path.name, "precision": "fp32", "decodes": "vae"}}
    files = {role: onnx_model}
    if cfg.export.int8:
        entries[f"{role}_int8"], files[f"{role}_int8"] = export_int8(
            role, onnx_model, opened["vae_encoder"], images, calibration, folder, cfg
        )
        entries[f"{role}_int8"]["decodes"] = "vae"
    return entries, files, {role: parity}


def export_int8(
    role: str,
    fp32: OnnxModel,
    encoder: OnnxModel,
    images: np.ndarray,
    calibration: np.ndarray,
    folder: Path,
    cfg: Config,
) -> tuple[dict[str, Any], OnnxModel]:
    """The int8 copy of the decoder ``role`` (``pipeline.quantization`` chooses how), and its
    manifest entry with the drift it measured on the parity digits' latents.

    encoder: the exported fp32 encoder of the latent space the decoder reads; images: (n, 28,
    28) the parity (test) digits; calibration: (m, 28, 28) the validation digits.
    """
    # the latents a deployment would decode: the exported encoder's, plus prior draws
    z_ort = _latent_inputs(encoder.run(images)[0], cfg.train.seed)
    # the validation digits, never the test digits, decide: the candidates calibrate on one half
    # of them (their latents and other prior draws) and are chosen by their drift on the other
    # half; the test latents only measure the one kept (drift_vs_fp32)
    half = len(calibration) // 2
    z_cal = _latent_inputs(encoder.run(calibration[:half])[0], cfg.train.seed + 1)
    held_out = calibration[half : half + len(images)]
    z_choose = _latent_inputs(encoder.run(held_out)[0], cfg.train.seed + 2)
    int8, method, choice = quantization.choose(fp32, folder / f"{role}.int8.onnx", z_cal, z_choose)
    drift = measure_drift(fp32, int8, z_ort)
    choice["calibration"] = {"validation_digits": half, "prior_draws": PRIOR_SAMPLES}
    choice["chosen_on"] = {"validation_digits": len(held_out), "prior_draws": PRIOR_SAMPLES}
    entry = {
        "file": int8.path.name,
        "precision": "int8",
        "quantization": method,
        "quantization_choice": choice,
        "drift_vs_fp32": {
            **drift,
            "test_digits": len(images),
            "prior_draws": PRIOR_SAMPLES,
            "seed": cfg.train.seed,
        },
    }
    print(
        f"export: {role} int8: {int8.path.stat().st_size:,} bytes "
        f"(fp32 {fp32.path.stat().st_size:,}), pixel drift max {drift['max_abs']:.4f} "
        f"mean {drift['mean_abs']:.5f} (one at a time: max "
        f"{drift['max_abs_one_at_a_time']:.4f})"
    )
    return entry, int8


def export_denoiser(
    paths: Paths, images: np.ndarray, folder: Path, cfg: Config
) -> tuple[dict[str, Any], OnnxModel, dict[str, float]]:
    """The denoiser as ONNX, checked on ``images`` (n, 28, 28) under the noise it was trained
    on; returns (its manifest entry, the opened file, its parity record)."""
    sigma = json.loads(paths.summary_file(DENOISER).read_text())["noise_sigma"]
    noisy = add_noise(images, sigma, seed=cfg.train.seed)
    opened, parity = export_checked(load_denoiser(paths), DENOISER, noisy, folder, cfg)
    entry = {
        "file": opened.path.name,
        "precision": "fp32",
        "trained_on": {"noise": "clip(x + N(0, sigma^2), 0, 1) per pixel", "sigma": sigma},
    }
    return entry, opened, parity


def export_scorers(
    opened: dict[str, OnnxModel],
    images: np.ndarray,
    metrics: dict[str, float],
    folder: Path,
    cfg: Config,
) -> tuple[dict[str, dict[str, Any]], dict[str, OnnxModel]]:
    """``ae_scorer.onnx`` and ``vae_scorer.onnx`` (``pipeline.scorers``): the fp32 encoder and
    decoder in ``opened`` and the score at the calibrated threshold, one graph each, checked
    against ``export.scoring`` on the parity digits ``images`` and noisy copies of them.
    Returns (manifest entries, opened files), keyed by role ("vae_scorer")."""
    entries, scorers = {}, {}
    for kind in KINDS:
        role = f"{kind}_scorer"
        scorers[role], entries[role] = export_scorer(
            kind,
            opened[f"{kind}_encoder"],
            opened[f"{kind}_decoder"],
            images,
            metrics[f"{kind}.anomaly_threshold"],
            cfg.evaluate.anomaly_fpr,
            folder,
            seed=cfg.train.seed,
        )
    return entries, scorers


def write_metadata(
    cfg: Config, paths: Paths, entries: dict[str, dict[str, Any]], opened: dict[str, OnnxModel]
) -> None:
    """Every ONNX file describes itself in its ``metadata_props`` (``conversion.describe``,
    beside the scorers' own score, threshold and fpr); written before the files are hashed.

    ``latent_dim`` is the model's own bottleneck: the bundle's latent size, or the denoiser's,
    the detector's or its background's.
    """
    latent_dim = entries["vae_decoder"]["inputs"][0]["shape"][-1]
    for role, entry in entries.items():
        dim = latent_dim
        if role == DENOISER:
            dim = json.loads(paths.summary_file(DENOISER).read_text())["latent_dim"]
        elif role.startswith(DETECTOR):
            dim = cfg.detector.latent_dim
        elif role.startswith("background"):
            dim = cfg.detector.background_latent_dim
        set_metadata(opened[role], describe(role, entry, dim, FORMAT_VERSION))


def copy_keras_models(paths: Paths, folder: Path) -> None:
    """Every ``.keras`` file of the models into ``folder/keras/`` as ``<kind>_<name>``."""
    keras_dir = folder / "keras"
    keras_dir.mkdir()
    for kind in (*KINDS, COMPACT, DENOISER, DETECTOR, "background"):
        for path in paths.keras_files(kind):
            shutil.copyfile(path, keras_dir / f"{kind}_{path.name}")


def build_bundle(cfg: Config, paths: Paths, folder: Path) -> dict[str, Any]:
    """Convert, check and write every file of the bundle into ``folder``; returns the manifest."""
    metrics = json.loads((paths.eval_dir / "metrics.json").read_text())
    missing = [
        f"{k}.anomaly_threshold"
        for k in (*KINDS, DETECTOR)
        if f"{k}.anomaly_threshold" not in metrics
    ]
    if missing:
        raise ExportError(f"{paths.eval_dir / 'metrics.json'} lacks {missing}; rerun evaluate")
    boxes = json.loads((paths.eval_dir / "latent_boxes.json").read_text())
    models = load_models(paths)
    test_images, test_labels = load_split(paths.dataset, "test", cfg.data)
    images = test_images[: cfg.export.parity_samples]
    validation_images, _ = load_split(paths.dataset, "validation", cfg.data)

    entries: dict[str, dict[str, Any]] = {}
    opened: dict[str, OnnxModel] = {}  # each saved file's one session, keyed like ``entries``
    parity: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        kind_entries, kind_opened, kind_parity = export_autoencoder(
            kind, models, images, folder, cfg, validation_images
        )
        entries.update(kind_entries)
        opened.update(kind_opened)
        parity.update(kind_parity)
    compact_entries, compact_opened, compact_parity = export_compact(
        models, opened, images, folder, cfg, validation_images
    )
    entries.update(compact_entries)
    opened.update(compact_opened)
    parity.update(compact_parity)
    entries[DENOISER], opened[DENOISER], parity[DENOISER] = export_denoiser(
        paths, images, folder, cfg
    )
    scorer_entries, scorers = export_scorers(opened, images, metrics, folder, cfg)
    entries.update(scorer_entries)
    detector_entries, detector_opened, detector_parity = export_detector(
        paths, images, folder, cfg, metrics["detector.anomaly_threshold"]
    )
    entries.update(detector_entries)
    opened.update(detector_opened)
    parity.update(detector_parity)
    opened.update(scorers)
    test_latents = write_test_latents(folder, test_images, test_labels, opened)
    validation_scores = write_validation_scores(folder, validation_images, opened, paths)
    for key, entry in entries.items():
        entry.update(opened[key].io_spec())
        entry["opset"] = opened[key].opset
    write_metadata(cfg, paths, entries, opened)
    copy_keras_models(paths, folder)
    files = {
        p.relative_to(folder).as_posix(): _file_entry(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    e = cfg.export
    return {
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "latent_dim": int(models["vae_decoder"].inputs[0].shape[-1]),
        "input": {
            "shape": [28, 28],
            "layouts": ["(n, 28, 28)", "(n, 784)", "(n, 28, 28, 1)"],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "uint8": "accepted and scaled by 1/255",
        },
        "models": entries,
        "files": files,
        "parity": {
            "samples": len(images),
            "atol": e.parity_atol,
            "rtol": e.parity_rtol,
            "models": parity,
        },
        "anomaly": {
            "fpr": cfg.evaluate.anomaly_fpr,
            "calibrated_on": "validation split, fp32 Keras models (evaluate stage)",
            "validation_scores": validation_scores,
            "default": DETECTOR,  # the score Bundle.score and the CLI use unless told otherwise
            DETECTOR: anomaly_entry(paths, metrics["detector.anomaly_threshold"]),
            **{
                kind: {"score": SCORES[kind], "threshold": metrics[f"{kind}.anomaly_threshold"]}
                for kind in KINDS
            },
        },
        "latent_boxes": boxes,
        "test_latents": test_latents,
        "versions": library_versions(),
        "config_fingerprint": sha256_json(cfg.to_dict()),
    }


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    """Build the bundle in a temporary folder beside ``export/``, then rename it into place."""
    with atomic_folder(paths.export_dir, replace=True) as folder:
        manifest = build_bundle(cfg, paths, folder)
        write_json_atomic(folder / MANIFEST, manifest)
    return manifest


STAGE = Stage(
    name="export",
    run=run,
    sections=("data", "train", "evaluate", "export"),  # train: the seed of the prior draws
    inputs=export_inputs,
    outputs=export_outputs,
)
