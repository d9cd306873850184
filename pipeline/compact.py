"""Stage `train_compact`: a compact VAE decoder for small devices, distilled from the VAE's.

    python run_pipeline.py --stages train_compact --set compact.epochs=10

The VAE decoder (``[model]``, about 1.5 M weights) is drawn to be measured, not to run on a
microcontroller. This stage fits a decoder of ``[compact]``'s shape (``models.CompactSpec``:
Fourier features of the latent, two ReLU layers, a low-rank map to the logits; about 84 k
weights) to reproduce it: its inputs are latents, its targets the VAE decoder's pixels on them
(soft targets, the same summed Bernoulli cross-entropy as the other models' loss). The latents
are the train digits' z_mean, one posterior draw z_mean + exp(z_log_var / 2) * eps per train
digit and ``compact.prior_draws`` draws from N(0, I), one seeded set; early stopping and the
weights kept follow the validation digits' z_mean and as many prior draws. It is fitted by
``pipeline.fitting.fit_model`` with the ``[train]`` settings but ``compact.epochs``,
``batch_size`` and ``learning_rate``, so it checkpoints and resumes like the other models.

Writes under ``compact/``: ``decoder.keras`` (z (n, d) -> pixels (n, 28, 28)), ``history.csv``
and ``summary.json``. The evaluate stage judges its digits beside the VAE decoder's; the export
stage writes it in fp32 and int8 beside the full decoders.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from export.files import sha256_file, sha256_json, write_json_atomic, write_text_atomic
from pipeline.checkpoint import CheckpointStore
from pipeline.common import PREDICT_BATCH, Paths, Stage
from pipeline.config import Config
from pipeline.data import load_split
from pipeline.fitting import (
    CHECKPOINT_DIR,
    checkpoint_key,
    fit_model,
    fit_summary,
    history_csv,
    save_keras_atomic,
)

KIND = "compact"  # the model kind for pipeline.fitting and the folder under --out


def compact_inputs(paths: Paths) -> list[Path]:
    """The dataset and the VAE's encoder (the latents) and decoder (the teacher)."""
    return [paths.dataset, paths.keras_file("vae", "encoder"), paths.keras_file("vae", "decoder")]


def compact_outputs(paths: Paths) -> list[Path]:
    """``decoder.keras``, ``history.csv`` and ``summary.json`` under ``compact/``."""
    return paths.model_files(KIND)


def fit_config(cfg: Config) -> Config:
    """``cfg`` with ``[train]``'s epochs, batch size and learning rate of ``[compact]``."""
    c = cfg.compact
    train = dataclasses.replace(
        cfg.train, epochs=c.epochs, batch_size=c.batch_size, learning_rate=c.learning_rate
    )
    return dataclasses.replace(cfg, train=train)


def distillation_latents(
    z_mean: np.ndarray, z_log_var: np.ndarray, prior_draws: int, seed: int
) -> np.ndarray:
    """The latents the compact decoder learns from: (2 n + prior_draws, d) float32.

    z_mean, z_log_var: (n, d), the VAE encoder's posterior of the train digits; every digit
    gives its z_mean and one draw of q(z|x), and ``prior_draws`` more come from N(0, I), where
    a user samples.
    """
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(z_mean.shape, dtype=np.float32)
    posterior = z_mean + np.exp(0.5 * z_log_var) * eps
    prior = rng.standard_normal((prior_draws, z_mean.shape[1]), dtype=np.float32)
    return np.concatenate([z_mean, posterior, prior]).astype(np.float32)


def validation_latents(z_mean: np.ndarray, seed: int) -> np.ndarray:
    """The validation digits' z_mean (n, d) and as many prior draws: (2 n, d) float32."""
    prior = np.random.default_rng(seed).standard_normal(z_mean.shape, dtype=np.float32)
    return np.concatenate([z_mean, prior]).astype(np.float32)


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    """Distil the compact decoder and write its artifacts; returns the summary.

    Resumes from ``compact/checkpoint/`` when a run of the same config, data and VAE was
    interrupted; the checkpoint is removed once every artifact is written.
    """
    from models import load_model

    encoder = load_model(paths.keras_file("vae", "encoder"))
    teacher = load_model(paths.keras_file("vae", "decoder"))
    train_images, _ = load_split(paths.dataset, "train", cfg.data)
    val_images, _ = load_split(paths.dataset, "validation", cfg.data)
    seed = cfg.train.seed
    z_mean, z_log_var = encoder.predict(train_images, batch_size=PREDICT_BATCH, verbose=0)
    z_train = distillation_latents(z_mean, z_log_var, cfg.compact.prior_draws, seed)
    val_mean, _ = encoder.predict(val_images, batch_size=PREDICT_BATCH, verbose=0)
    z_val = validation_latents(val_mean, seed + 1)
    # the teacher's pixels are the targets: one pass, kept for every epoch
    targets = teacher.predict(z_train, batch_size=PREDICT_BATCH * 8, verbose=0)
    val_targets = teacher.predict(z_val, batch_size=PREDICT_BATCH * 8, verbose=0)

    fit_cfg = fit_config(cfg)
    out = paths.model_dir(KIND)
    checkpoint_dir = out / CHECKPOINT_DIR
    key = sha256_json(
        {
            "fit": checkpoint_key(KIND, fit_cfg, sha256_file(paths.dataset)),
            "compact": cfg.section("compact"),
            "teacher": [sha256_file(p) for p in compact_inputs(paths)[1:]],
        }
    )
    model, history, seconds = fit_model(
        KIND,
        fit_cfg,
        targets,
        val_targets,
        checkpoint_dir=checkpoint_dir,
        checkpoint_key=key,
        val_inputs=z_val,
        train_inputs=z_train,
    )

    save_keras_atomic(model, paths.keras_file(KIND, "decoder"))
    write_text_atomic(paths.history_file(KIND), history_csv(history, None))
    pixels = model.predict(z_val, batch_size=PREDICT_BATCH * 8, verbose=0)
    distance = np.abs(pixels - val_targets)
    n_val = len(val_mean)
    summary = {
        **fit_summary(KIND, model, history, seconds, cfg.train.jit_compile),
        "loss": "summed Bernoulli cross-entropy to the VAE decoder's pixels over 784 pixels, "
        "nats/latent",
        "distillation_latents": len(z_train),
        # |compact - VAE decoder| per pixel on the validation digits' z_mean and prior draws
        "val_mean_abs_diff": float(distance[:n_val].mean()),
        "prior_mean_abs_diff": float(distance[n_val:].mean()),
        **{k: v for k, v in cfg.section("compact").items() if k != "hidden_units"},
        "hidden_units": list(cfg.compact.hidden_units),
    }
    write_json_atomic(paths.summary_file(KIND), summary)
    print(
        f"train_{KIND}: {summary['parameters']:,} parameters, best val_loss "
        f"{summary['best_val_loss']:.2f} nats at epoch {summary['best_epoch']}/"
        f"{summary['epochs_run']}, mean |compact - VAE decoder| {summary['val_mean_abs_diff']:.4f} "
        f"(validation z_mean) {summary['prior_mean_abs_diff']:.4f} (prior) in {seconds:.0f} s "
        f"-> {out}"
    )
    CheckpointStore(checkpoint_dir, "").clear()
    return summary


STAGE = Stage(
    name="train_compact",
    run=run,
    sections=("data", "model", "train", "compact"),
    inputs=compact_inputs,
    outputs=compact_outputs,
)
