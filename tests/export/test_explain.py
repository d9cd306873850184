"""Scores that explain themselves, on the smoke run's real digits: p-values against the bundle's
validation scores, run-time threshold overrides (--fpr, --threshold), and per-pixel maps
(Bundle.pixel_scores, score --maps). Runs in the runtime-only environment too."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import read_run_digits, run_export_cli  # tests/ is on sys.path (rootdir conftest)

from export import scoring
from export.bundle import Bundle, BundleError


@pytest.fixture(scope="module")
def run_splits(export_run: Path) -> dict[str, np.ndarray]:
    """The run's validation and test digits as float32 in [0, 1]."""
    return {
        s: read_run_digits(export_run, s).astype(np.float32) / 255.0 for s in ("validation", "test")
    }


def ks_uniform_distance(p: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the empirical distribution of ``p`` and U(0, 1)."""
    p = np.sort(np.asarray(p, np.float64))
    n = len(p)
    upper = np.arange(1, n + 1) / n - p
    lower = p - np.arange(0, n) / n
    return float(max(upper.max(), lower.max()))


KS_CRITICAL_1PCT = 1.628  # sqrt(-log(0.01 / 2) / 2): reject uniformity above this / sqrt(n)


@pytest.mark.parametrize("model", ["ae", "vae"])
def test_p_values_are_uniform_for_normal_digits(bundle, run_splits, model):
    """The validation digits, rescored by the runtime from their pixels, reproduce the stored
    reference and get p-values that a KS test at 1% cannot tell from uniform."""
    stored = bundle.validation_scores(model)
    rescored = bundle.score(run_splits["validation"], model)
    np.testing.assert_allclose(np.sort(rescored), stored, rtol=1e-5)
    p = bundle.p_values(rescored, model)
    assert p.min() > 0 and p.max() <= 1
    distance = ks_uniform_distance(p)
    assert distance < KS_CRITICAL_1PCT / math.sqrt(len(p)), distance
    # and the same test tells them from the p-values of the same digits brightened by 0.5
    bright = np.clip(run_splits["validation"] + np.float32(0.5), 0.0, 1.0)
    assert ks_uniform_distance(bundle.p_values(bundle.score(bright, model), model)) > 0.5
    # an image scoring above every validation digit gets the smallest p-value there is
    assert bundle.p_values(np.array([stored.max() + 1.0]), model)[0] == 1 / (len(stored) + 1)


def test_p_values_definition():
    p = scoring.p_values([0.0, 1.0, 2.5, 9.0], reference=[1.0, 2.0, 3.0])
    np.testing.assert_allclose(p, [1.0, 1.0, 0.5, 0.25])  # (1 + #{ref >= s}) / (m + 1)
    with pytest.raises(ValueError, match="no reference"):
        scoring.p_values([1.0], [])


@pytest.mark.parametrize("model", ["ae", "vae"])
def test_pixel_maps_add_up_to_the_score(bundle, run_splits, model):
    images = run_splits["test"][:40]
    scores, maps = bundle.score_and_maps(images, model)
    assert maps.shape == (40, 28, 28) and maps.dtype == np.float32 and (maps >= 0).all()
    np.testing.assert_array_equal(scores, bundle.score(images, model))
    np.testing.assert_array_equal(maps, bundle.pixel_scores(images, model))
    if model == "ae":
        np.testing.assert_allclose(maps.mean(axis=(1, 2)), scores, rtol=1e-4)
    else:
        z_mean, z_log_var = bundle.posterior(images)
        total = maps.sum(axis=(1, 2), dtype=np.float64) + scoring.gaussian_kl(z_mean, z_log_var)
        np.testing.assert_allclose(total, scores, rtol=1e-4)
    # a bright square pasted on a digit lights up its own pixels in the map
    marked = images.copy()
    marked[:, 2:6, 2:6] = 1.0
    marked_maps = bundle.pixel_scores(marked, model)
    assert (marked_maps[:, 2:6, 2:6].mean(axis=(1, 2)) > maps[:, 2:6, 2:6].mean(axis=(1, 2))).all()
    top = scoring.top_fraction_mean(marked_maps, 0.05)
    assert (top > scoring.top_fraction_mean(maps, 0.05)).mean() > 0.9
    assert (top >= marked_maps.reshape(40, -1).mean(axis=1)).all()  # the top 5% >= the mean


def test_top_fraction_mean():
    maps = np.zeros((2, 28, 28), np.float32)
    maps[0, 0, :10] = 1.0  # 10 of 784 pixels
    maps[1] = 0.5
    np.testing.assert_allclose(scoring.top_fraction_mean(maps, 10 / 784), [1.0, 0.5])
    np.testing.assert_allclose(scoring.top_fraction_mean(maps, 1.0), [10 / 784, 0.5], rtol=1e-6)
    with pytest.raises(ValueError, match="fraction"):
        scoring.top_fraction_mean(maps, 0.0)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_fpr_and_threshold_override_the_calibrated_threshold(
    export_run, bundle, run_splits, tmp_path
):
    np.save(tmp_path / "test.npy", run_splits["test"])
    args = ["score", "test.npy", "--bundle", str(export_run / "export"), "--model", "vae"]
    run_export_cli([*args, "--fpr", "0.05", "--out", "fpr.csv"], tmp_path)
    flagged = np.mean([r["anomaly"] == "1" for r in _rows(tmp_path / "fpr.csv")])
    n = len(run_splits["test"])
    assert abs(flagged - 0.05) < 3 * math.sqrt(0.05 * 0.95 / n)  # about 5% of clean digits
    threshold = bundle.threshold_at(0.05, "vae")
    scores = bundle.score(run_splits["test"], "vae")
    assert flagged == np.mean(scores > threshold)
    proc = run_export_cli(
        [*args, "--threshold", f"{np.median(scores)}", "--out", "t.csv"], tmp_path
    )
    rows = _rows(tmp_path / "t.csv")
    assert [r["anomaly"] == "1" for r in rows] == (scores > np.median(scores)).tolist()
    assert "given by --threshold" in proc.stderr
    both = run_export_cli([*args, "--fpr", "0.1", "--threshold", "1"], tmp_path, check=False)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    bad = run_export_cli([*args, "--fpr", "1.5", "--out", "x.csv"], tmp_path, check=False)
    assert bad.returncode == 2 and "--fpr must be in (0, 1)" in bad.stderr


def test_maps_folder_holds_each_inputs_maps_in_row_order(export_run, bundle, run_splits, tmp_path):
    from PIL import Image

    digits = (run_splits["test"][:30] * 255).round().astype(np.uint8)
    np.save(tmp_path / "a.npy", digits[:20])
    (tmp_path / "pngs").mkdir()
    for i in range(20, 30):
        Image.fromarray(digits[i]).save(tmp_path / "pngs" / f"{i}.png")
    run_export_cli(
        ["score", "a.npy", "pngs", "--bundle", str(export_run / "export"), "--model", "ae"]
        + ["--batch-size", "8", "--maps", "maps", "--out", "s.csv"],
        tmp_path,
    )
    maps_a = np.load(tmp_path / "maps" / "a.npy.maps.npy", allow_pickle=False)
    maps_png = np.load(tmp_path / "maps" / "pngs.maps.npy", allow_pickle=False)
    assert maps_a.shape == (20, 28, 28) and maps_png.shape == (10, 28, 28)
    assert maps_a.dtype == np.float16
    expected = bundle.pixel_scores(digits, "ae")
    np.testing.assert_allclose(maps_a, expected[:20], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(maps_png, expected[20:], rtol=1e-3, atol=1e-6)
    top = _rows(tmp_path / "maps" / "most_anomalous.csv")
    scores = bundle.score(digits, "ae")
    assert len(top) == 30 and [float(r["score"]) for r in top][:5] == pytest.approx(
        np.sort(scores)[::-1][:5], rel=1e-6
    )
    with Image.open(tmp_path / "maps" / "most_anomalous.png") as picture:
        assert picture.size[0] > 28 * 8


def test_a_bundle_without_validation_scores_still_scores(export_run, run_splits, tmp_path):
    old = Path(shutil.copytree(export_run / "export", tmp_path / "old"))
    manifest = json.loads((old / "manifest.json").read_text())
    entry = manifest["anomaly"].pop("validation_scores")
    del manifest["files"][entry["file"]]
    (old / entry["file"]).unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="stores no validation scores"):
        Bundle.load(old).p_values(np.zeros(3))
    np.save(tmp_path / "test.npy", run_splits["test"][:10])
    proc = run_export_cli(["score", "test.npy", "--bundle", str(old), "--out", "s.csv"], tmp_path)
    assert {r["p_value"] for r in _rows(tmp_path / "s.csv")} == {""}
    assert "stores no validation scores" in proc.stderr
    proc = run_export_cli(
        ["score", "test.npy", "--bundle", str(old), "--fpr", "0.1"], tmp_path, check=False
    )
    assert proc.returncode == 2 and "stores no validation scores" in proc.stderr
