"""Stage `train_detector`: the model behind the bundle's default anomaly score.

    python run_pipeline.py --stages train_detector --set detector.epochs=20

The 2-D AE and VAE are drawn to be looked at: through two numbers every input is pulled towards
some digit, and their Bernoulli likelihood on grey levels rewards inputs with little ink. This
stage trains a scoring model of its own (``[detector]``), as the denoiser is a denoising model
of its own:

- a class-conditional VAE of the digits (``models.build_detector``): an MLP whose encoder also
  reads the digit's class and whose decoder is told it, trained on the train split with the
  labels (negative ELBO plus ``class_weight`` times the class cross-entropy). Scored, its
  decoder reads the encoder's class: an input that is no digit of that class costs nats;
- a VAE of the same trunk (the *background*) trained on the train digits with their shape
  destroyed and their strokes kept (``detector.background``: 7 x 7 patches permuted, or the
  digit turned or mirrored; a fresh draw every batch, ``pipeline.fitting.transform_batch``).
  The log likelihood ratio of the two (Ren et al. 2019, "Likelihood Ratios for
  Out-of-Distribution Detection") cancels what both models find easy or hard in any stroke
  image (little ink, grey edges) and keeps what only a digit explains.

The score (``export.scoring.detector_score``) is the largest of three terms: the negative ELBO,
its coarse deviance (``coarse_block``: where the ink is, not its edges), and the ratio, each
put on the negative ELBO's scale by its median and 99th percentile on the first half of the
clean validation digits (``calibration.json``). The evaluate stage calibrates its threshold
on the whole validation split, as for the other scores.

Both fits are ``pipeline.fitting.fit_model`` runs with ``[train]``'s settings (and
``detector.epochs`` / ``background_epochs``): each checkpoints and resumes like the AE's.
Writes ``detector/`` (``model.keras``, ``encoder.keras``, ``decoder.keras``, ``history.csv``,
``summary.json``, ``calibration.json``) and ``background/`` (the same files but the last).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from export.files import sha256_file, sha256_json, write_json_atomic, write_text_atomic
from export.scoring import Calibration, detector_reconstruct, detector_terms, reconstruct_and_score
from pipeline.checkpoint import CheckpointStore
from pipeline.common import Paths, Stage
from pipeline.config import Config
from pipeline.data import load_split
from pipeline.detection import predictor
from pipeline.fitting import (
    CHECKPOINT_DIR,
    checkpoint_key,
    fit_model,
    fit_summary,
    history_csv,
    save_keras_atomic,
    transform_batch,
)

KINDS = ("detector", "background")
CLASSES = 10


def detector_inputs(paths: Paths) -> list[Path]:
    """The files the stage reads: the dataset."""
    return [paths.dataset]


def detector_outputs(paths: Paths) -> list[Path]:
    """Both models' files and the calibration."""
    return [*paths.model_files("detector"), *paths.model_files("background"),
            paths.detector_calibration]  # fmt: skip


def fit_config(cfg: Config, epochs: int) -> Config:
    """``cfg`` with ``train.epochs`` set to one of the detector's budgets."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))


def onehot(labels: np.ndarray) -> np.ndarray:
    return np.eye(CLASSES, dtype=np.float32)[labels]


def fit_and_save(
    kind: str, cfg: Config, paths: Paths, epochs: int, dataset_sha: str, **fit: Any
) -> dict[str, Any]:
    """Fit ``kind`` ("detector" or "background"), write its three Keras files and history;
    returns the summary's common fields."""
    from models import submodel

    fit_cfg = fit_config(cfg, epochs)
    checkpoint_dir = paths.model_dir(kind) / CHECKPOINT_DIR
    key = sha256_json(
        {
            "fit": checkpoint_key(kind, fit_cfg, dataset_sha),
            "detector": cfg.section("detector"),
        }
    )
    model, history, seconds = fit_model(
        kind, fit_cfg, checkpoint_dir=checkpoint_dir, checkpoint_key=key, **fit
    )
    save_keras_atomic(model, paths.keras_file(kind, "model"))
    for part in ("encoder", "decoder"):
        save_keras_atomic(submodel(model, f"{kind}_{part}"), paths.keras_file(kind, part))
    # the background's loss is its negative ELBO (recon = loss - kl); the detector's adds the
    # class cross-entropy, kept in its own column
    write_text_atomic(
        paths.history_file(kind), history_csv(history, 1.0 if kind == "background" else None)
    )
    CheckpointStore(checkpoint_dir, "").clear()
    return {
        **fit_summary(kind, model, history, seconds, cfg.train.jit_compile),
        "epoch_budget": epochs,
        "history": history,
    }


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    """Fit both models, calibrate the terms, write everything; returns the detector's summary."""
    import tensorflow as tf

    from models import submodel

    d = cfg.detector
    train, train_labels = load_split(paths.dataset, "train", cfg.data)
    val, val_labels = load_split(paths.dataset, "validation", cfg.data)
    dataset_sha = sha256_file(paths.dataset)
    fg = fit_and_save(
        "detector", cfg, paths, d.epochs, dataset_sha,
        train_images=train, val_images=val,
        train_inputs=(train, onehot(train_labels)), val_inputs=(val, onehot(val_labels)),
    )  # fmt: skip
    # the background's early stopping: the validation digits under one fixed draw
    val_background = transform_batch(tf.constant(val), d.background, cfg.train.seed, -1).numpy()
    bg = fit_and_save(
        "background", cfg, paths, d.background_epochs, dataset_sha,
        train_images=train, val_images=val_background, transform=d.background,
    )  # fmt: skip

    from models import load_model

    detector = load_model(paths.keras_file("detector", "model"))
    background = load_model(paths.keras_file("background", "model"))
    encode_fg = predictor(submodel(detector, "detector_encoder"))
    decode_fg = predictor(submodel(detector, "detector_decoder"))
    encode_bg = predictor(submodel(background, "background_encoder"))
    decode_bg = predictor(submodel(background, "background_decoder"))
    # the terms are put on one scale by the first half of the clean validation digits
    half = val[: len(val) // 2]
    fg_out = detector_reconstruct(half, encode_fg, decode_fg)
    bg_out = reconstruct_and_score("vae", half, encode_bg, decode_bg)
    terms = detector_terms(half, fg_out, bg_out, d.coarse_block)
    calibration = Calibration.fit(terms)
    write_json_atomic(
        paths.detector_calibration,
        {
            **calibration.to_json(),
            "coarse_block": d.coarse_block,
            "background": d.background,
            "calibrated_on": f"the first {len(half):,} validation digits",
            "quantile": "centre: median; scale: 99th percentile minus median",
        },
    )
    val_classes = np.argmax(predictor(submodel(detector, "detector_encoder"))(val)[2], axis=1)
    fg_history, bg_history = fg.pop("history"), bg.pop("history")
    summary = {
        **fg,
        "loss": "summed Bernoulli NLL + KL + class_weight x class cross-entropy, nats/image",
        "val_kl_at_best": float(fg_history["val_kl"][fg["best_epoch"] - 1]),
        "val_class_accuracy": float(np.mean(val_classes == val_labels)),
        "background": {**bg, "transform": d.background, "loss": "negative ELBO, nats/image"},
        "calibration": calibration.to_json(),
    }
    write_json_atomic(paths.summary_file("detector"), summary)
    write_json_atomic(paths.summary_file("background"), {**bg, "transform": d.background})
    del fg_history, bg_history
    print(
        f"train_detector: best val_loss {fg['best_val_loss']:.2f} (detector) and "
        f"{bg['best_val_loss']:.2f} (background, {d.background}) in "
        f"{fg['seconds'] + bg['seconds']:.0f} s; class accuracy on validation "
        f"{summary['val_class_accuracy']:.4f} -> {paths.model_dir('detector')}"
    )
    return summary


STAGE = Stage(
    name="train_detector",
    run=run,
    sections=("data", "train", "detector"),
    inputs=detector_inputs,
    outputs=detector_outputs,
)
