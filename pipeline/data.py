"""Reading the ingest stage's output: one split as float32 pixels in [0, 1].

images, labels = load_split(paths.dataset, "validation", cfg.data)  # (5000, 28, 28), (5000,)
data = Splits.load(cfg, paths)  # every split at once
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.common import Paths
from pipeline.config import Config, DataConfig

SPLITS = ("train", "validation", "test")


def load_split(
    dataset: Path, split: str, data_cfg: DataConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """images (n, 28, 28) float32 in [0, 1] and labels (n,) int64 of ``split``.

    With ``data_cfg.binarize`` the pixels are statically binarized (> threshold -> 1.0).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    key = f"{split}_images"
    try:
        with np.load(dataset, allow_pickle=False) as npz:  # never unpickle: no code runs
            if key not in npz:
                raise KeyError(f"{dataset} has no {key!r}; it holds {sorted(npz.files)}")
            raw = npz[key]
            labels = npz[f"{split}_labels"].astype(np.int64)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{dataset}: cannot read the {split} split ({err}); rerun the ingest stage (--force)"
        ) from err
    if raw.dtype != np.uint8 or raw.shape[1:] != (28, 28):
        raise ValueError(f"{dataset}:{key} is {raw.dtype} {raw.shape}, expected uint8 (n, 28, 28)")
    images = raw.astype(np.float32) / np.float32(255.0)
    if data_cfg is not None and data_cfg.binarize:
        images = (images > data_cfg.binarize_threshold).astype(np.float32)
    return images, labels


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
