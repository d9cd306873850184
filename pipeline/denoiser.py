"""Stage `train_denoiser`: a denoising autoencoder, noisy digits in and clean digits out.

    python run_pipeline.py --stages ingest,train_denoiser --set denoiser.epochs=10

The 2-D AE and VAE are shaped to draw their latent plane, not to denoise: through two numbers a
noisy digit often comes back as another digit. This stage trains a separate MLP autoencoder
(``[denoiser]``: a wider latent) on the train split, each batch with fresh clipped Gaussian
noise on its inputs and the clean digits as targets, and early-stops on the validation split
under one fixed draw of the same noise. It is fitted by ``pipeline.fitting.fit_model`` with the
``[train]`` settings but ``denoiser.epochs``, so it checkpoints every epoch and resumes like
the AE and VAE; the noise of a batch depends only on the seed and the batch's index.

Writes under ``denoiser/``: ``model.keras`` (images (n, 28, 28) -> pixels (n, 28, 28)),
``history.csv`` and ``summary.json``. The evaluate stage measures it (``measures.denoise_metrics``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from export.files import sha256_file, sha256_json, write_json_atomic, write_text_atomic
from pipeline.checkpoint import CheckpointStore
from pipeline.common import Paths, Stage, denoise
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
from pipeline.measures import add_noise, psnr

KIND = "denoiser"  # the model kind for pipeline.fitting and the folder under --out


def denoiser_inputs(paths: Paths) -> list[Path]:
    """The files the stage reads: the dataset."""
    return [paths.dataset]


def denoiser_outputs(paths: Paths) -> list[Path]:
    """``model.keras``, ``history.csv`` and ``summary.json`` under ``denoiser/``."""
    return paths.model_files(KIND)


def fit_config(cfg: Config) -> Config:
    """``cfg`` with ``train.epochs`` set to ``denoiser.epochs``: what ``fit_model`` reads."""
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, epochs=cfg.denoiser.epochs)
    )


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    """Fit the denoiser and write its artifacts; returns the summary written to ``summary.json``.

    Resumes from ``denoiser/checkpoint/`` when a run of the same config and data was interrupted;
    the checkpoint is removed once every artifact is written.
    """
    d = cfg.denoiser
    train_images, _ = load_split(paths.dataset, "train", cfg.data)
    val_images, _ = load_split(paths.dataset, "validation", cfg.data)
    # one fixed draw for early stopping, the same clipped noise the evaluate stage measures with
    val_noisy = add_noise(val_images, d.noise_sigma, seed=cfg.train.seed)
    fit_cfg = fit_config(cfg)
    out = paths.model_dir(KIND)
    checkpoint_dir = out / CHECKPOINT_DIR
    key = sha256_json(
        {
            "fit": checkpoint_key(KIND, fit_cfg, sha256_file(paths.dataset)),
            "denoiser": cfg.section("denoiser"),  # size and noise: another model, another run
        }
    )
    model, history, seconds = fit_model(
        KIND,
        fit_cfg,
        train_images,
        val_images,
        checkpoint_dir=checkpoint_dir,
        checkpoint_key=key,
        input_noise=d.noise_sigma,
        val_inputs=val_noisy,
    )

    save_keras_atomic(model, paths.keras_file(KIND))
    write_text_atomic(paths.history_file(KIND), history_csv(history, None))
    noisy_psnr = psnr(val_images, val_noisy)
    val_gain = psnr(val_images, denoise(model, val_noisy)) - noisy_psnr
    summary = {
        **fit_summary(KIND, model, history, seconds, cfg.train.jit_compile),
        "loss": "summed Bernoulli NLL of the clean digit over 784 pixels given the noisy one, "
        "nats/image",
        "latent_dim": d.latent_dim,
        "hidden_units": list(d.hidden_units),
        "noise_sigma": d.noise_sigma,
        "val_noisy_psnr_db": float(noisy_psnr.mean()),
        "val_psnr_gain_db": float(val_gain.mean()),
    }
    write_json_atomic(paths.summary_file(KIND), summary)
    print(
        f"train_{KIND}: best val_loss {summary['best_val_loss']:.2f} nats at epoch "
        f"{summary['best_epoch']}/{summary['epochs_run']}, validation PSNR gain "
        f"{summary['val_psnr_gain_db']:+.2f} dB (sigma {d.noise_sigma:g}) in {seconds:.0f} s "
        f"-> {out}"
    )
    CheckpointStore(checkpoint_dir, "").clear()
    return summary


STAGE = Stage(
    name="train_denoiser",
    run=run,
    sections=("data", "train", "denoiser"),
    inputs=denoiser_inputs,
    outputs=denoiser_outputs,
)
