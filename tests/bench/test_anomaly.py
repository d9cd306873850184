"""bench/anomaly.py: the protocol's measurement (thresholds on clean digits only, every family
and corruption measured per seed with its spread), the choice rule, and the tables it renders."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from bench import anomaly
from bench.corruptions import CORRUPTIONS

N = 60


def ink(images: np.ndarray) -> np.ndarray:
    """A toy score: the mean grey level of each image."""
    return np.asarray(images, np.float32).reshape(len(images), -1).mean(axis=1)


@pytest.fixture(scope="module")
def measured(mirror_digits: np.ndarray) -> tuple[np.ndarray, dict, dict]:
    clean = mirror_digits[:N].astype(np.float32) / np.float32(255.0)
    labels = np.arange(N) % 10
    sets = {seed: anomaly.suites(clean, labels, seed) for seed in (0, 1)}
    return clean, sets, anomaly.measure(ink, clean, sets, fpr=0.05)


def test_suites_hold_every_family_and_corruption_on_valid_pixels(measured):
    _, sets, _ = measured
    expected = {f"foreign/{f}" for f in anomaly.foreign.FAMILIES} | {
        f"corrupt/{c}" for c in CORRUPTIONS
    }
    for by_name in sets.values():
        assert set(by_name) == expected
        for name, images in by_name.items():
            assert images.shape == (N, 28, 28) and images.dtype == np.float32, name
            assert images.min() >= 0.0 and images.max() <= 1.0, name


def test_measure_calibrates_on_clean_digits_and_keeps_the_spread(measured):
    clean, sets, result = measured
    reference = ink(clean)
    assert result["threshold"] == pytest.approx(anomaly.calibrate_threshold(reference, 0.05))
    assert np.mean(reference > result["threshold"]) <= 0.05
    letters = result["rows"]["foreign/letters"]["flagged"]
    per_seed = [
        float(np.mean(ink(s["foreign/letters"]) > result["threshold"])) for s in sets.values()
    ]
    assert letters["mean"] == pytest.approx(np.mean(per_seed))
    assert letters["min"] == pytest.approx(min(per_seed))
    assert letters["max"] == pytest.approx(max(per_seed))
    # inverted digits are mostly ink: the toy score flags them all and separates them perfectly
    assert result["rows"]["foreign/inverted"]["auroc"]["mean"] == pytest.approx(1.0)
    assert result["rows"]["foreign/inverted"]["flagged"]["mean"] == pytest.approx(1.0)
    assert len(result["clean_fpr_held_out"]) == 2
    summary = result["summary"]
    flagged = {f: result["rows"][f"foreign/{f}"]["flagged"]["mean"] for f in anomaly.FAMILIES}
    assert summary["weakest_flagged"] == min(flagged.values())
    assert summary["targets_met_count"] == sum(summary["targets_met"].values())


def candidate(held: list[float], met: int, weakest: float, auroc: float) -> dict:
    return {
        "clean_fpr_held_out": held,
        "summary": {
            "targets_met_count": met,
            "weakest_flagged": weakest,
            "mnistc_mean_auroc": auroc,
        },
    }


def test_pick_keeps_eligible_then_targets_then_weakest_then_auroc():
    ok = [0.01, 0.011]
    assert (
        anomaly.pick({"a": candidate([0.02, 0.01], 5, 1.0, 1.0), "b": candidate(ok, 0, 0, 0)})
        == "b"
    )
    assert anomaly.pick({"a": candidate(ok, 2, 0.9, 0.99), "b": candidate(ok, 3, 0.1, 0.5)}) == "b"
    assert anomaly.pick({"a": candidate(ok, 2, 0.5, 0.99), "b": candidate(ok, 2, 0.6, 0.5)}) == "b"
    assert anomaly.pick({"a": candidate(ok, 2, 0.5, 0.99), "b": candidate(ok, 2, 0.5, 0.9)}) == "a"
    assert anomaly.pick({"a": candidate([0.001, 0.01], 5, 1.0, 1.0)}) is None


def test_render_puts_every_score_side_by_side_and_marks_the_default(measured):
    _, _, result = measured
    scores = {}
    for model in ("detector", "vae", "ae"):
        scores[model] = copy.deepcopy(result)
        scores[model]["clean_test_fpr"] = 0.01
    report = {
        "command": "python -m bench.anomaly report",
        "machine": "test machine",
        "load": {"start": [0.0, 0.0, 0.0], "end": [0.0, 0.0, 0.0], "nice": 0},
        "seconds": 1.0,
        "run": "artifacts",
        "seeds": [0, 1],
        "default_model": "detector",
        "scores": scores,
        "scorer_graph_parity": {
            "model": "detector",
            "inputs": 10,
            "max_rel_diff": 1e-7,
            "anomaly_mismatches": 0,
        },
    }
    text = anomaly.render(report)
    assert "| **detector**" in text and "| vae " in text
    for name in [*anomaly.FAMILIES, *CORRUPTIONS]:
        assert f"| {name} " in text, name
    assert "detector AUROC" in text and "ae flagged" in text
    assert anomaly.index_line(report).startswith("detector: letters ")


def test_the_config_defaults_are_the_candidate_the_protocol_chose():
    """The committed choice (bench/results/anomaly_choice.json) decided [detector]'s defaults."""
    import json

    from bench.common import REPO
    from pipeline.config import load_config

    choice = json.loads(anomaly.CHOICE.read_text())
    assert choice["split"] == "validation" and choice["chosen"] in choice["candidates"]
    assert anomaly.pick(choice["candidates"]) == choice["chosen"]
    assert anomaly.label_of(load_config(None).detector) == choice["chosen"]
    assert (
        anomaly.label_of(load_config(REPO / "configs" / "default.toml").detector)
        == choice["chosen"]
    )
