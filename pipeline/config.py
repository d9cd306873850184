"""One frozen configuration for the whole pipeline, loaded from TOML and overridden from the CLI.

    cfg = load_config("configs/default.toml", overrides=["train.epochs=3", "model.latent_dim=8"])

Every key has a typed default below; a TOML file or an override naming an unknown key, or giving
a value of the wrong type, raises ``ConfigError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


@dataclass(frozen=True)
class DataConfig:
    train_size: int = 55_000  # images kept from the 55,000-image train split
    validation_size: int = 5_000  # the last 5,000 of tfds' train split; at most 5,000
    test_size: int = 10_000  # images kept from the 10,000-image test split
    binarize: bool = (
        False  # static binarization (pixel > binarize_threshold) for likelihood benchmarks
    )
    binarize_threshold: float = 0.5


@dataclass(frozen=True)
class ModelConfig:
    architecture: str = "mlp"  # "mlp" | "conv"
    latent_dim: int = 2  # 2 draws the pictures; larger scores better
    hidden_units: tuple[int, ...] = (1024, 512, 256, 128)  # mlp: encoder widths (decoder mirrors)
    conv_filters: tuple[int, ...] = (
        32,
        64,
    )  # conv: stride-2 encoder filters (decoder mirrors them)
    beta: float = 1.0  # weight of the KL term in the VAE loss
    dropout: float = 0.0  # mlp: dropout after every hidden layer while training; 0 = none


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1234  # seeds Python, NumPy, TensorFlow and Keras; one place
    epochs: int = 30  # the epoch budget (the schedule spans it); early stopping may end sooner
    batch_size: int = 256
    learning_rate: float = 2e-3  # peak learning rate (after warm-up)
    lr_schedule: str = "cosine"  # "cosine" (warm-up, then cosine decay over epochs) | "constant"
    warmup_epochs: int = 1  # cosine: linear warm-up from 0 over this many epochs
    final_lr_fraction: float = 0.01  # cosine: the rate at the last epoch, as a fraction of the peak
    patience: int = 5  # epochs without val-loss improvement before stopping
    checkpoint_seconds: float = 30.0  # a checkpoint at the first epoch end this long after the last
    jit_compile: bool = True  # XLA; about 1.4x faster on CPU
    verbose: str = (
        "auto"  # "auto" (bar on a terminal, a line per epoch otherwise) | "bar" | "epoch" | "quiet"
    )
    strategy: str = "default"  # tf.distribute: "default" | "mirrored" | "multi_worker" (TF_CONFIG)


@dataclass(frozen=True)
class DenoiserConfig:
    # An MLP autoencoder trained on noisy inputs with clean targets. Its batch size, learning
    # rate, patience, seed, XLA and strategy are [train]'s: it is the AE's architecture trained
    # the same way, so only its size, its noise and its epoch budget need their own keys.
    # latent_dim and epochs were chosen on the validation split (noisy validation loss, PSNR
    # gain); the run's own figures are in denoiser/summary.json
    latent_dim: int = 128  # bottleneck; 2 (the drawable AE) turns a noisy digit into another one
    hidden_units: tuple[int, ...] = (512, 256)  # encoder widths (decoder mirrors them)
    noise_sigma: float = 0.3  # clipped Gaussian input noise, as evaluate.noise_sigma measures
    epochs: int = 15  # upper bound (still improving: kept for the training time); early stopping


@dataclass(frozen=True)
class CompactConfig:
    # A small decoder distilled from the VAE's (train_compact) for devices: trained on the
    # train digits' latents (z_mean and one posterior draw each) and prior draws, the VAE
    # decoder's pixels as soft targets. Its seed, warm-up, schedule, patience and XLA are
    # [train]'s. Shape and recipe chosen on the validation split (sample FID, grid confidence).
    fourier_units: int = 64  # sin(W z + b) features of the latent
    fourier_scale: float = 4.0  # std of W at initialisation (z ~ N(0, I))
    hidden_units: tuple[int, ...] = (128, 128)  # ReLU layers after the Fourier features
    rank: int = 64  # linear bottleneck in front of the 784 logits (0: none)
    prior_draws: int = 55_000  # z ~ N(0, I) in the distillation set, beside 2 per train digit
    epochs: int = 15
    batch_size: int = 512
    learning_rate: float = 3e-3  # peak, after [train]'s warm-up


@dataclass(frozen=True)
class DetectorConfig:
    # The model behind the bundle's default anomaly score (train_detector): a class-conditional
    # VAE of the digits, and a VAE of the same trunk on the digits with their shape destroyed
    # (the background); the score is the largest of its terms, each set on the scale of the
    # others by clean validation digits. Seed, batch size, learning rate, schedule, patience
    # and XLA are [train]'s. Chosen on the validation split by bench/anomaly.py's protocol.
    latent_dim: int = 16  # style latent of the class-conditional VAE
    hidden_units: tuple[int, ...] = (512, 256)  # encoder widths of both VAEs (decoders mirror)
    class_weight: float = 10.0  # weight of the class cross-entropy beside the negative ELBO
    epochs: int = 30
    background: str = "shuffle4"  # "shuffle4" (7x7 patches permuted) | "dihedral" (turned)
    background_latent_dim: int = 16
    background_epochs: int = 15
    coarse_block: int = 2  # the coarse term's blocks (pixels per side); 0: no coarse term


@dataclass(frozen=True)
class EvaluateConfig:
    noise_sigma: float = 0.3  # Gaussian noise for the denoising figures and metrics
    nll_samples: int = 200  # K for the importance-sampled NLL
    anomaly_fpr: float = 0.01  # false-positive rate the anomaly threshold is calibrated at
    grid_size: int = 10  # digits per side of the decoded-grid figures
    confident_grid_size: int = 30  # points per side for grid_confident_frac, latent_empty_frac
    confident_prob: float = 0.9
    classifier_epochs: int = 5  # CNN digit classifier; retrained only when the data changes
    fid_samples: int = 10_000  # images per set behind every FID (capped by the split sizes)
    knn_k: int = 5
    figure_digits: int = 10  # columns of the sample-digit and denoising figures
    seed: int = 1234  # seeds the noise, the importance and generated samples, the classifier


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    parity_samples: int = 1_000
    parity_atol: float = 1e-5  # ORT vs Keras: |diff| <= parity_atol + parity_rtol * max|Keras|
    parity_rtol: float = 1e-6  # float32 keeps ~7 digits, relative to the output's range
    int8: bool = True  # also write int8 decoders (pipeline.quantization chooses how)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    compact: CompactConfig = field(default_factory=CompactConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def section(self, name: str) -> dict[str, Any]:
        return dataclasses.asdict(getattr(self, name))


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


BACKGROUNDS = ("shuffle4", "dihedral")  # detector.background
INT_LIMIT = 2**31 - 1  # every int setting ends up in a TensorFlow int32 or well below


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against the field's type; ints widen to floats, lists become tuples."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _) = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list of {item_type.__name__}, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{key}: {value} is too large for a float") from None
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected int, got bool {value!r}")
    if annotation is int and isinstance(value, int) and not -INT_LIMIT <= value <= INT_LIMIT:
        raise ConfigError(f"{key}: {value} is out of range (at most {INT_LIMIT:,} in size)")
    if not isinstance(value, annotation):
        raise ConfigError(
            f"{key}: expected {annotation.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _field_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _parse_override(text: str) -> tuple[str, str, Any]:
    """``"train.epochs=3"`` -> ("train", "epochs", 3); the value is read as TOML, else a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    if dotted.count(".") != 1:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    section, key = dotted.strip().split(".")
    try:
        parsed = tomllib.loads(f"v = {raw.strip()}")
    except tomllib.TOMLDecodeError:
        parsed = {"v": raw.strip()}  # bare words such as conv or auto
    if set(parsed) != {"v"}:
        raise ConfigError(f"override {text!r}: the value must be a single TOML value")
    value = parsed["v"]
    return section, key, value


def build_config(raw: dict[str, dict[str, Any]]) -> Config:
    """Validate a nested dict (TOML-shaped) against the schema and freeze it."""
    sections: dict[str, Any] = {}
    config_fields = {f.name: f for f in dataclasses.fields(Config)}
    for name in raw:
        if name not in config_fields:
            raise ConfigError(f"unknown config section {name!r}; expected one of {list(SECTIONS)}")
    for name, cfg_field in config_fields.items():
        section_cls = cfg_field.default_factory  # type: ignore[misc]
        types = _field_types(section_cls)
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{name}: expected a table, got {values!r}")
        checked = {}
        for key, value in values.items():
            if key not in types:
                raise ConfigError(
                    f"unknown config key {name}.{key}; expected one of {sorted(types)}"
                )
            checked[key] = _coerce(f"{name}.{key}", value, types[key])
        sections[name] = section_cls(**checked)
    cfg = Config(**sections)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    for section in SECTIONS:  # TOML allows nan and inf; no setting here means anything with them
        for key, value in cfg.section(section).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{key} must be a finite number, got {value}")
    positive = {
        "data.train_size": cfg.data.train_size,
        "data.validation_size": cfg.data.validation_size,
        "data.test_size": cfg.data.test_size,
        "model.latent_dim": cfg.model.latent_dim,
        "train.epochs": cfg.train.epochs,
        "train.batch_size": cfg.train.batch_size,
        "denoiser.latent_dim": cfg.denoiser.latent_dim,
        "denoiser.epochs": cfg.denoiser.epochs,
        "compact.fourier_units": cfg.compact.fourier_units,
        "compact.epochs": cfg.compact.epochs,
        "compact.batch_size": cfg.compact.batch_size,
        "detector.latent_dim": cfg.detector.latent_dim,
        "detector.epochs": cfg.detector.epochs,
        "detector.background_latent_dim": cfg.detector.background_latent_dim,
        "detector.background_epochs": cfg.detector.background_epochs,
        "evaluate.nll_samples": cfg.evaluate.nll_samples,
        "evaluate.grid_size": cfg.evaluate.grid_size,
        "evaluate.confident_grid_size": cfg.evaluate.confident_grid_size,
        "evaluate.classifier_epochs": cfg.evaluate.classifier_epochs,
        "evaluate.fid_samples": cfg.evaluate.fid_samples,
        "evaluate.knn_k": cfg.evaluate.knn_k,
        "evaluate.figure_digits": cfg.evaluate.figure_digits,
        "export.parity_samples": cfg.export.parity_samples,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    limits = {"data.train_size": 55_000, "data.validation_size": 5_000, "data.test_size": 10_000}
    for key, limit in limits.items():
        value = positive[key]
        if value > limit:
            raise ConfigError(f"{key} must be at most {limit:,}, got {value:,}")
    if cfg.model.architecture not in ("mlp", "conv"):
        raise ConfigError(
            f"model.architecture must be 'mlp' or 'conv', got {cfg.model.architecture!r}"
        )
    if any(u <= 0 for u in cfg.model.hidden_units) or not cfg.model.hidden_units:
        raise ConfigError(f"model.hidden_units must be positive ints, got {cfg.model.hidden_units}")
    if any(u <= 0 for u in cfg.model.conv_filters) or not cfg.model.conv_filters:
        raise ConfigError(f"model.conv_filters must be positive ints, got {cfg.model.conv_filters}")
    if len(cfg.model.conv_filters) > 2:
        raise ConfigError(
            f"model.conv_filters takes at most 2 stride-2 layers (28 -> 14 -> 7), got {cfg.model.conv_filters}"
        )
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {cfg.model.dropout}")
    if any(u <= 0 for u in cfg.denoiser.hidden_units) or not cfg.denoiser.hidden_units:
        raise ConfigError(
            f"denoiser.hidden_units must be positive ints, got {cfg.denoiser.hidden_units}"
        )
    if any(u <= 0 for u in cfg.compact.hidden_units):
        raise ConfigError(
            f"compact.hidden_units must be positive ints, got {cfg.compact.hidden_units}"
        )
    for key in ("rank", "prior_draws"):
        if getattr(cfg.compact, key) < 0:
            raise ConfigError(f"compact.{key} must be >= 0, got {getattr(cfg.compact, key)}")
    for key in ("fourier_scale", "learning_rate"):
        if getattr(cfg.compact, key) <= 0:
            raise ConfigError(f"compact.{key} must be positive, got {getattr(cfg.compact, key)}")
    if any(u <= 0 for u in cfg.detector.hidden_units) or not cfg.detector.hidden_units:
        raise ConfigError(
            f"detector.hidden_units must be positive ints, got {cfg.detector.hidden_units}"
        )
    if cfg.detector.background not in BACKGROUNDS:
        raise ConfigError(
            f"detector.background must be one of {', '.join(BACKGROUNDS)}, "
            f"got {cfg.detector.background!r}"
        )
    if cfg.detector.class_weight < 0:
        raise ConfigError(f"detector.class_weight must be >= 0, got {cfg.detector.class_weight}")
    if cfg.detector.coarse_block not in (0, 2, 4, 7, 14):
        raise ConfigError(
            f"detector.coarse_block must divide 28 (2, 4, 7, 14) or be 0, "
            f"got {cfg.detector.coarse_block}"
        )
    if not 0.0 < cfg.denoiser.noise_sigma <= 1.0:
        raise ConfigError(f"denoiser.noise_sigma must be in (0, 1], got {cfg.denoiser.noise_sigma}")
    if cfg.model.beta < 0:
        raise ConfigError(f"model.beta must be >= 0, got {cfg.model.beta}")
    if cfg.train.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate must be positive, got {cfg.train.learning_rate}")
    if cfg.train.lr_schedule not in ("cosine", "constant"):
        raise ConfigError(
            f"train.lr_schedule must be cosine or constant, got {cfg.train.lr_schedule!r}"
        )
    if cfg.train.warmup_epochs < 0:
        raise ConfigError(f"train.warmup_epochs must be >= 0, got {cfg.train.warmup_epochs}")
    if not 0.0 <= cfg.train.final_lr_fraction <= 1.0:
        raise ConfigError(
            f"train.final_lr_fraction must be in [0, 1], got {cfg.train.final_lr_fraction}"
        )
    if cfg.train.checkpoint_seconds < 0:
        raise ConfigError(
            f"train.checkpoint_seconds must be >= 0, got {cfg.train.checkpoint_seconds}"
        )
    if cfg.train.patience < 0:
        raise ConfigError(f"train.patience must be >= 0, got {cfg.train.patience}")
    if cfg.train.verbose not in ("auto", "bar", "epoch", "quiet"):
        raise ConfigError(
            f"train.verbose must be auto, bar, epoch or quiet, got {cfg.train.verbose!r}"
        )
    if cfg.train.strategy not in ("default", "mirrored", "multi_worker"):
        raise ConfigError(
            f"train.strategy must be default, mirrored or multi_worker, got {cfg.train.strategy!r}"
        )
    if not 0.0 < cfg.evaluate.anomaly_fpr < 1.0:
        raise ConfigError(f"evaluate.anomaly_fpr must be in (0, 1), got {cfg.evaluate.anomaly_fpr}")
    if not cfg.evaluate.noise_sigma >= 0.0:
        raise ConfigError(f"evaluate.noise_sigma must be >= 0, got {cfg.evaluate.noise_sigma}")
    if not 0.0 < cfg.evaluate.confident_prob <= 1.0:
        raise ConfigError(
            f"evaluate.confident_prob must be in (0, 1], got {cfg.evaluate.confident_prob}"
        )
    if not 0.0 < cfg.data.binarize_threshold < 1.0:
        raise ConfigError(
            f"data.binarize_threshold must be in (0, 1), got {cfg.data.binarize_threshold}"
        )
    if not 13 <= cfg.export.opset <= 18:
        raise ConfigError(f"export.opset must be in 13..18, got {cfg.export.opset}")
    if cfg.export.parity_atol <= 0:
        raise ConfigError(f"export.parity_atol must be positive, got {cfg.export.parity_atol}")
    if cfg.export.parity_rtol < 0:
        raise ConfigError(f"export.parity_rtol must be >= 0, got {cfg.export.parity_rtol}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (TOML; None for the built-in defaults) and apply ``section.key=value`` overrides."""
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        path = Path(path)
        try:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
    for text in overrides or []:
        section, key, value = _parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(
                f"override {text!r}: unknown section {section!r}; expected one of {list(SECTIONS)}"
            )
        raw.setdefault(section, {})[key] = value
    try:
        return build_config(raw)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None


def config_to_toml(cfg: Config) -> str:
    """Render a config as TOML (flat tables of scalars and lists), for ``config.toml`` beside a run."""
    lines = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(
                f"{key} = {json.dumps(list(value) if isinstance(value, tuple) else value)}"
            )
        lines.append("")
    return "\n".join(lines)
