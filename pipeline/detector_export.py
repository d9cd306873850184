"""The detector in the bundle: its four models as ONNX (parity checked), its scorer graph
(checked against ``export.scoring.detector_score``), and its validation scores.

    entries, opened, parity = export_detector(paths, images, folder, cfg, threshold)

Called by the export stage (``pipeline.bundler``) beside the AE's and VAE's exports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export import scoring
from pipeline.common import Paths
from pipeline.config import Config
from pipeline.conversion import OnnxModel, export_checked
from pipeline.detection import keras_reconstruction, load_detector, read_calibration
from pipeline.detector_graph import DEFINITION, PARTS, build_detector_scorer
from pipeline.measures import add_noise
from pipeline.scorers import CHECK_NOISE_SIGMA, compare_scorer

ROLE = "detector_scorer"


def onnx_halves(opened: dict[str, OnnxModel]) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """(encode, decode) of both models on their ONNX Runtime sessions."""
    return (
        (opened["detector_encoder"].run, lambda x: opened["detector_decoder"].run(x)[0]),
        (opened["background_encoder"].run, lambda z: opened["background_decoder"].run(z)[0]),
    )


def onnx_detector_scores(
    opened: dict[str, OnnxModel], images: np.ndarray, calibration: scoring.Calibration, block: int
) -> np.ndarray:
    """``export.scoring.detector_score`` on the exported models' own sessions: (n,) float32."""
    return scoring.detector_score(images, *onnx_halves(opened), calibration, block)[0]


def check_detector_scorer(
    scorer: OnnxModel, expected: np.ndarray, images: np.ndarray, threshold: float
) -> dict[str, Any]:
    """The graph's scores and flags against ``expected`` (n,) (``pipeline.scorers.compare_scorer``)."""
    return compare_scorer(
        ROLE, scorer, expected, images, threshold,
        "export.scoring.detector_score on the four fp32 models' sessions",
    )  # fmt: skip


def export_detector(
    paths: Paths, images: np.ndarray, folder: Path, cfg: Config, threshold: float
) -> tuple[dict[str, dict[str, Any]], dict[str, OnnxModel], dict[str, dict[str, float]]]:
    """The detector's models and scorer graph into ``folder``; images (n, 28, 28): the parity
    digits. Returns (manifest entries, opened files, parity records) keyed by role."""
    import onnx

    models = load_detector(paths)
    calibration, block = read_calibration(paths)
    fg = keras_reconstruction(models, images)
    prior = np.random.default_rng(cfg.train.seed).standard_normal((256, fg.z.shape[1]))
    # the decoder's inputs: the digits' own [z_mean, class], and prior draws with every class
    classes = np.eye(scoring.CLASSES, dtype=np.float32)[np.arange(256) % scoring.CLASSES]
    z_class = np.concatenate(
        [
            scoring.class_inputs(fg.z, models["detector_encoder"].predict(images, verbose=0)[2]),
            np.concatenate([prior.astype(np.float32), classes], axis=1),
        ]
    )
    bg_z = models["background_encoder"].predict(images, verbose=0)[0]
    bg_prior = np.random.default_rng(cfg.train.seed + 1).standard_normal((256, bg_z.shape[1]))
    inputs = {
        "detector_encoder": images,
        "detector_decoder": z_class,
        "background_encoder": images,
        "background_decoder": np.concatenate([bg_z, bg_prior.astype(np.float32)]),
    }
    entries, opened, parity = {}, {}, {}
    for role in PARTS:
        opened[role], parity[role] = export_checked(models[role], role, inputs[role], folder, cfg)
        entries[role] = {"file": opened[role].path.name, "precision": "fp32", "part_of": "detector"}
    proto = build_detector_scorer(
        {role: opened[role].proto for role in PARTS},
        calibration,
        block,
        threshold,
        cfg.evaluate.anomaly_fpr,
    )
    path = folder / f"{ROLE}.onnx"
    onnx.save(proto, path)
    scorer = OnnxModel.open(path, proto)
    noisy = add_noise(images, CHECK_NOISE_SIGMA, seed=cfg.train.seed)
    checked = np.concatenate([images, noisy])
    check = check_detector_scorer(
        scorer, onnx_detector_scores(opened, checked, calibration, block), checked, threshold
    )
    check.update(clean=len(images), noisy=len(noisy), noise_sigma=CHECK_NOISE_SIGMA)
    print(
        f"export: {ROLE} max relative |scorer - export.scoring| = {check['max_rel_diff']:.1e} "
        f"on {check['inputs']} digits ({check['flagged']} flagged, "
        f"{check['anomaly_mismatches']} flags differ), {path.stat().st_size:,} bytes"
    )
    opened[ROLE] = scorer
    entries[ROLE] = {
        "file": path.name,
        "precision": "fp32",
        "score": "detector",
        "threshold": float(threshold),
        "fpr": float(cfg.evaluate.anomaly_fpr),
        "built_from": list(PARTS),
        "check": check,
    }
    return entries, opened, parity


def anomaly_entry(paths: Paths, threshold: float) -> dict[str, Any]:
    """The detector's entry of the manifest's ``anomaly`` section: its score's definition, its
    threshold and calibration (what ``export.bundle.Bundle`` needs to compute it)."""
    calibration, block = read_calibration(paths)
    return {
        "score": DEFINITION,
        "threshold": float(threshold),
        "calibration": calibration.to_json(),
        "coarse_block": block,
    }
