"""Config: defaults file, overrides, type checks and errors that name the key."""

from __future__ import annotations

import tomllib

import pytest
from conftest import REPO, SMOKE_CONFIG

from pipeline.config import Config, ConfigError, config_to_toml, load_config


def test_default_toml_matches_built_in_defaults():
    assert load_config(REPO / "configs" / "default.toml") == Config()


def test_smoke_config_is_small():
    cfg = load_config(SMOKE_CONFIG)
    assert cfg.data.train_size <= 1000
    assert cfg.train.epochs <= 2
    assert cfg.denoiser.epochs <= 4


def test_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "train.epochs=3",
            "train.learning_rate=1",  # an int widens to float
            "model.architecture=conv",  # a bare word is a string
            "model.hidden_units=[128, 64]",
            "train.jit_compile=false",
        ],
    )
    assert cfg.train.epochs == 3
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
    assert cfg.model.architecture == "conv"
    assert cfg.model.hidden_units == (128, 64)
    assert cfg.train.jit_compile is False


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.train.epochs = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "unknown config key train.epoch"),
        ("trian.epochs=3", "unknown section 'trian'"),
        ("train.epochs=three", "train.epochs: expected int, got str"),
        ("train.epochs=2.5", "train.epochs: expected int, got float"),
        ("train.jit_compile=1", "train.jit_compile: expected bool, got int"),
        ("model.hidden_units=64", "model.hidden_units: expected a list of int"),
        ("model.hidden_units=[64, 'x']", "model.hidden_units[1]: expected int"),
        ("data.train_size=-5", "data.train_size must be positive, got -5"),
        ("data.validation_size=6000", "data.validation_size must be at most 5,000"),
        ("model.architecture=rnn", "model.architecture must be 'mlp' or 'conv'"),
        ("evaluate.anomaly_fpr=1.5", "evaluate.anomaly_fpr must be in (0, 1)"),
        ("denoiser.noise_sigma=0", "denoiser.noise_sigma must be in (0, 1], got 0.0"),
        ("denoiser.hidden_units=[]", "denoiser.hidden_units must be positive ints"),
        ("denoiser.latent_dim=0", "denoiser.latent_dim must be positive, got 0"),
        ("train.epochs", "expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nlatent = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(bad) in str(info.value)
    assert "model.latent" in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(SMOKE_CONFIG, ["model.beta=0.5", "evaluate.noise_sigma=0.25"])
    text = config_to_toml(cfg)
    tomllib.loads(text)  # valid TOML
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert load_config(path) == cfg


def test_binarized_benchmark_config():
    cfg = load_config(REPO / "configs" / "binarized.toml")
    assert cfg.data.binarize and cfg.data.binarize_threshold == 0.5
    assert cfg.evaluate.nll_samples == 1000
    assert cfg.model == Config().model  # the default 2-D model, only the data differ
