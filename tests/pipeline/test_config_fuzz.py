"""Config fuzzing (hypothesis): any TOML-shaped input gives a valid Config or a ConfigError that
names the offending key; never another exception, never a silently accepted bad value."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections import Counter

import pytest
from conftest import case_counter  # tests/ is on sys.path (rootdir conftest)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import SECTIONS, Config, ConfigError, build_config, load_config

TRIED: Counter[str] = Counter()  # cases per property


EXHAUSTIVE: dict[str, int] = {}  # test name -> its case count when not FUZZ.max_examples


count_cases = case_counter("config fuzz", TRIED, lambda: FUZZ.max_examples, EXHAUSTIVE)


SCHEMA: dict[str, dict[str, typing.Any]] = {
    f.name: typing.get_type_hints(f.default_factory) for f in dataclasses.fields(Config)
}
KEYS = [(section, key) for section, types in SCHEMA.items() for key in types]

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400) | st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
toml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
key_names = st.sampled_from(sorted({k for _, k in KEYS})) | st.text(min_size=1, max_size=10)
section_names = st.sampled_from(SECTIONS) | st.text(min_size=1, max_size=10)
raw_configs = st.dictionaries(
    section_names,
    st.dictionaries(key_names, toml_values, max_size=4) | toml_values,
    max_size=4,
)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _finite_numbers(cfg: Config) -> bool:
    return all(
        not isinstance(v, float) or math.isfinite(v)
        for s in SECTIONS
        for v in cfg.section(s).values()
    )


def _ints_in_range(cfg: Config) -> bool:
    return all(
        abs(v) < 2**31 for s in SECTIONS for v in cfg.section(s).values() if isinstance(v, int)
    )


@FUZZ
@given(raw_configs)
def test_any_raw_config_is_valid_or_a_config_error(raw):
    TRIED["raw config tables"] += 1
    try:
        cfg = build_config(raw)
    except ConfigError as err:
        assert str(err), "an error must say what is wrong"
        return
    assert _finite_numbers(cfg) and _ints_in_range(cfg)
    assert build_config(cfg.to_dict()) == cfg  # what was accepted is a fixed point


def _wrong_type_values(annotation: typing.Any) -> st.SearchStrategy:
    if typing.get_origin(annotation) is tuple:
        return st.one_of(st.integers(), st.text(), st.lists(st.text(min_size=1), min_size=1))
    if annotation is bool:
        return st.one_of(st.integers(), st.floats(), st.text(), st.lists(st.booleans()))
    if annotation is int:
        return st.one_of(st.booleans(), st.floats(), st.text(), st.lists(st.integers()))
    if annotation is float:
        return st.one_of(st.booleans(), st.text(), st.lists(st.floats()))
    return st.one_of(st.booleans(), st.integers(), st.floats(), st.lists(st.text()))  # str


@FUZZ
@given(
    st.sampled_from(KEYS).flatmap(
        lambda sk: st.tuples(st.just(sk), _wrong_type_values(SCHEMA[sk[0]][sk[1]]))
    )
)
def test_a_wrong_type_names_the_key(case):
    (section, key), value = case
    TRIED["wrong types"] += 1
    with pytest.raises(ConfigError) as info:
        build_config({section: {key: value}})
    assert f"{section}.{key}" in str(info.value)


SIZE_KEYS = [
    (s, k)
    for s, k in KEYS
    if SCHEMA[s][k] is int
    and k not in ("seed", "patience", "opset", "warmup_epochs")
    and (s, k)
    not in (("compact", "rank"), ("compact", "prior_draws"), ("detector", "coarse_block"))
] + [  # 0 means none for compact.rank, compact.prior_draws and detector.coarse_block
    ("model", "hidden_units"),
    ("model", "conv_filters"),
    ("denoiser", "hidden_units"),
    ("compact", "hidden_units"),
    ("detector", "hidden_units"),
]


@FUZZ
@given(st.sampled_from(SIZE_KEYS), st.integers(max_value=0))
def test_a_size_of_zero_or_less_names_the_key(section_key, value):
    section, key = section_key
    TRIED["non-positive sizes"] += 1
    bad = [value] if typing.get_origin(SCHEMA[section][key]) is tuple else value
    with pytest.raises(ConfigError) as info:
        build_config({section: {key: bad}})
    assert f"{section}.{key}" in str(info.value)


FLOAT_KEYS = [(s, k) for s, k in KEYS if SCHEMA[s][k] is float]
NON_FINITE = [math.nan, math.inf, -math.inf]
EXHAUSTIVE["test_nan_and_inf_are_refused"] = len(FLOAT_KEYS) * len(NON_FINITE)


@FUZZ
@given(st.sampled_from(FLOAT_KEYS), st.sampled_from(NON_FINITE))
def test_nan_and_inf_are_refused(section_key, value):
    section, key = section_key
    TRIED["nan/inf floats"] += 1
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        build_config({section: {key: value}})


@FUZZ
@given(st.text(max_size=40))
def test_any_override_text_is_applied_or_a_config_error(text):
    TRIED["override strings"] += 1
    try:
        load_config(None, [text])
    except ConfigError as err:
        assert str(err)


@FUZZ
@given(st.sampled_from(KEYS), st.text(max_size=20))
def test_override_of_a_known_key_with_any_text(section_key, raw):
    section, key = section_key
    TRIED["known-key overrides"] += 1
    try:
        cfg = load_config(None, [f"{section}.{key}={raw}"])
    except ConfigError as err:
        assert f"{section}.{key}" in str(err) or "override" in str(err)
        return
    assert _finite_numbers(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [  # what fuzzing found before the checks existed: each was accepted or crashed
        ("train.learning_rate=nan", "train.learning_rate must be a finite number"),
        ("model.beta=inf", "model.beta must be a finite number"),
        ("train.learning_rate=1" + "0" * 400, "too large for a float"),  # was OverflowError
        ("train.epochs=99999999999999999999", "train.epochs: 99999999999999999999 is out of range"),
        ("train.epochs=3\n[x]", "must be a single TOML value"),
        ("train.strategy=parameter_server", "train.strategy must be default, mirrored or"),
    ],
)
def test_fuzzing_findings_stay_fixed(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert message in str(info.value)
