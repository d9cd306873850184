"""The detector's Keras side: its models loaded, its score computed by them, its calibration read.

    models = load_detector(paths)                       # foreground and background, safe mode
    calibration, block = read_calibration(paths)
    scores = keras_detector_scores(models, images, calibration, block)   # (n,) float32

The score's definition is ``export.scoring``'s (``detector_score``): the same function the
runtime computes from the exported ONNX models, here run on the Keras models. Used by the
``train_detector`` stage (to fit the calibration), the evaluate stage (thresholds and test
rates) and the export stage.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from export.scoring import Calibration, Reconstruction, detector_reconstruct, detector_score
from pipeline.common import PREDICT_BATCH, Paths


def predictor(model: Any) -> Any:
    """``model.predict`` over a batch of inputs, as a plain function."""
    return lambda x: model.predict(x, batch_size=PREDICT_BATCH, verbose=0)


def load_detector(paths: Paths) -> dict[str, Any]:
    """The detector's encoder and decoder and its background's, loaded in safe mode:
    {"detector_encoder", "detector_decoder", "background_encoder", "background_decoder"}."""
    from models import load_model

    return {
        f"{kind}_{part}": load_model(paths.keras_file(kind, part))
        for kind in ("detector", "background")
        for part in ("encoder", "decoder")
    }


def halves(models: dict[str, Any]) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """(encode, decode) of the foreground and of the background, as ``detector_score`` reads
    them."""
    return (
        (predictor(models["detector_encoder"]), predictor(models["detector_decoder"])),
        (predictor(models["background_encoder"]), predictor(models["background_decoder"])),
    )


def keras_reconstruction(models: dict[str, Any], images: np.ndarray) -> Reconstruction:
    """The class-conditional VAE's reconstruction of images (n, 28, 28)."""
    return detector_reconstruct(images, *halves(models)[0])


def keras_detector_scores(
    models: dict[str, Any], images: np.ndarray, calibration: Calibration, coarse_block: int
) -> np.ndarray:
    """The detector's score (n,) float32 of images (n, 28, 28), by its Keras models."""
    foreground, background = halves(models)
    return detector_score(images, foreground, background, calibration, coarse_block)[0]


def read_calibration(paths: Paths) -> tuple[Calibration, int]:
    """The calibration the ``train_detector`` stage wrote, and its coarse term's block."""
    record = json.loads(paths.detector_calibration.read_text())
    return Calibration.from_json(record), int(record["coarse_block"])
