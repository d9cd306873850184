"""Stage `ingest`: real MNIST through tensorflow-datasets into ``data/mnist.npz``.

    python run_pipeline.py --stages ingest --mirror ../shared/data/mnist

With a mirror (``--mirror DIR`` or ``MNIST_MIRROR``) tfds builds from the four original IDX files
in DIR. Each file is first checked against the SHA-256 that tfds registers for its ``mnist``
builder: a missing file would otherwise send tfds to the network, and a wrong one must never be
used. Splits: train = tfds train[:55000], validation = tfds train[55000:], test = tfds test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from export.files import atomic_path, sha256_file, write_json_atomic
from pipeline.common import Paths, Stage
from pipeline.config import Config

TRAIN_SPLIT_SIZE = 55_000  # tfds' train has 60,000; the last 5,000 are the validation split
SPLITS = ("train", "validation", "test")


class MirrorError(RuntimeError):
    """The offline MNIST mirror is missing a file or holds a file that fails its checksum."""


class DatasetCacheError(RuntimeError):
    """tensorflow-datasets' prepared MNIST (under the tfds data dir) cannot be read."""


def registered_checksums() -> dict[str, tuple[str, int]]:
    """tfds' registered ``{filename: (sha256, bytes)}`` for the ``mnist`` builder."""
    import tensorflow_datasets as tfds

    infos = tfds.builder_cls("mnist").url_infos
    return {info.filename: (info.checksum, int(info.size)) for info in infos.values()}


def verify_mirror(mirror: Path) -> dict[str, str]:
    """Check the mirror's four IDX files against tfds' registered sums; return {filename: sha256}.

    Raises ``MirrorError`` naming the first missing or mismatching file.
    """
    mirror = Path(mirror)
    if not mirror.is_dir():
        raise MirrorError(f"MNIST mirror {mirror} is not a directory")
    verified = {}
    for filename, (expected, size) in sorted(registered_checksums().items()):
        path = mirror / filename
        if not path.is_file():
            raise MirrorError(f"MNIST mirror {mirror} is missing {filename}")
        actual = sha256_file(path)
        if actual != expected:
            raise MirrorError(
                f"MNIST mirror file {path} fails its checksum: sha256 {actual}, "
                f"expected {expected} ({size:,} bytes) as registered by tensorflow-datasets"
            )
        verified[filename] = actual
    return verified


def mirror_from_env(explicit: Path | None) -> Path | None:
    """``--mirror`` wins over ``MNIST_MIRROR``; None means tfds downloads."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("MNIST_MIRROR")
    return Path(env) if env else None


def load_tfds_mnist(
    data_dir: Path, mirror: Path | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tfds' ``train`` and ``test`` as uint8 images (n, 28, 28) and int64 labels (n,)."""
    import tensorflow_datasets as tfds

    kwargs: dict[str, Any] = {}
    if mirror is not None:
        kwargs["download_and_prepare_kwargs"] = {
            "download_config": tfds.download.DownloadConfig(manual_dir=str(mirror))
        }
    else:
        print("ingest: no mirror given (--mirror or MNIST_MIRROR): tfds will download MNIST")
    try:
        splits = tfds.load(
            "mnist",
            split=["train", "test"],
            data_dir=str(data_dir),
            batch_size=-1,
            as_supervised=True,
            **kwargs,
        )
        arrays = {}
        for name, (images, labels) in zip(("train", "test"), tfds.as_numpy(splits), strict=True):
            arrays[name] = (images[..., 0].astype(np.uint8), labels.astype(np.int64))
    except Exception as err:
        # tfds reports a truncated record or a mangled dataset_info.json from deep inside
        # TensorFlow; say which folder is at fault and how to recover.
        cache = Path(data_dir) / "mnist"
        if not cache.exists():
            raise
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        raise DatasetCacheError(
            f"tensorflow-datasets could not read its prepared MNIST under {cache} "
            f"({type(err).__name__}: {first_line}); the cache is damaged: delete {cache} and "
            "rerun, it is rebuilt from the mirror"
        ) from err
    return arrays


def split_mnist(
    arrays: dict[str, tuple[np.ndarray, np.ndarray]], cfg: Config
) -> dict[str, np.ndarray]:
    """tfds' train/test -> the pipeline's train/validation/test, cut to the configured sizes."""
    train_images, train_labels = arrays["train"]
    test_images, test_labels = arrays["test"]
    if len(train_images) != 60_000 or len(test_images) != 10_000:
        raise RuntimeError(
            f"tfds mnist has {len(train_images)} train / {len(test_images)} test images, "
            "expected 60,000 / 10,000"
        )
    parts = {
        "train": (train_images[:TRAIN_SPLIT_SIZE], train_labels[:TRAIN_SPLIT_SIZE]),
        "validation": (train_images[TRAIN_SPLIT_SIZE:], train_labels[TRAIN_SPLIT_SIZE:]),
        "test": (test_images, test_labels),
    }
    sizes = {
        "train": cfg.data.train_size,
        "validation": cfg.data.validation_size,
        "test": cfg.data.test_size,
    }
    out = {}
    for split, (images, labels) in parts.items():
        out[f"{split}_images"] = images[: sizes[split]]
        out[f"{split}_labels"] = labels[: sizes[split]]
    return out


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    """Build MNIST with tfds, write ``data/mnist.npz`` (uint8 pixels) and ``data/summary.json``."""
    mirror = paths.mirror
    checksums = verify_mirror(mirror) if mirror is not None else {}
    arrays = split_mnist(load_tfds_mnist(paths.tfds_data_dir, mirror), cfg)
    with atomic_path(paths.dataset) as tmp, tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    summary = {
        "source": "tensorflow_datasets mnist",
        "mirror": str(mirror) if mirror is not None else None,
        "mirror_sha256": checksums,
        "pixels": "uint8 in the file; load_split returns float32 in [0, 1]",
        "splits": {
            split: {
                "images": int(len(arrays[f"{split}_labels"])),
                "label_counts": np.bincount(arrays[f"{split}_labels"], minlength=10).tolist(),
            }
            for split in SPLITS
        },
    }
    write_json_atomic(paths.dataset_summary, summary)
    counts = ", ".join(f"{s} {summary['splits'][s]['images']:,}" for s in SPLITS)
    print(f"ingest: {counts} -> {paths.dataset}")
    return summary


def ingest_inputs(paths: Paths) -> list[Path]:
    """Files whose content the ingest fingerprint covers: the mirror's IDX files, if any."""
    if paths.mirror is None:
        return []
    return [Path(paths.mirror) / name for name in sorted(registered_checksums())]


def ingest_outputs(paths: Paths) -> list[Path]:
    """``data/mnist.npz`` and ``data/summary.json``."""
    return [paths.dataset, paths.dataset_summary]


STAGE = Stage(
    name="ingest", run=run, sections=("data",), inputs=ingest_inputs, outputs=ingest_outputs
)
