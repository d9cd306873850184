"""The bundle's denoiser: ``Bundle.denoise`` and ``python -m export denoise`` on noisy smoke digits,
bundles exported before the denoiser, and bad inputs. Runs in the runtime-only environment."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_export_cli as cli  # tests/ is on sys.path (rootdir conftest)
from PIL import Image

from export.bundle import Bundle, BundleError


@pytest.fixture(scope="module")
def clean(test_digits: np.ndarray) -> np.ndarray:
    """The smoke run's test digits, (n, 28, 28) float32 in [0, 1]."""
    return test_digits[:200].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def noisy(clean: np.ndarray, bundle: Bundle) -> np.ndarray:
    """``clean`` with the clipped Gaussian noise the denoiser was trained on."""
    sigma = bundle.denoiser_sigma()
    noise = np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32)
    return np.clip(clean + np.float32(sigma) * noise, 0.0, 1.0)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((np.asarray(a, np.float64) - b) ** 2))


def test_denoise_returns_digits_in_range_for_every_layout(bundle_dir: Path, noisy: np.ndarray):
    bundle = Bundle.load(bundle_dir)
    out = bundle.denoise(noisy)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(bundle.denoise(noisy.reshape(-1, 784)), out)
    np.testing.assert_array_equal(bundle.denoise(noisy[3]), out[3:4])  # one image
    as_uint8 = np.rint(noisy * 255).astype(np.uint8)
    np.testing.assert_allclose(bundle.denoise(as_uint8), out, atol=0.02)
    int8 = Bundle.load(bundle_dir, precision="int8")  # the denoiser stays fp32
    np.testing.assert_array_equal(int8.denoise(noisy), out)


def test_denoise_follows_the_digit_not_the_noise(
    bundle_dir: Path, clean: np.ndarray, noisy: np.ndarray
):
    """Even the smoke run's briefly trained denoiser (a few dozen steps on 512 digits, too few
    to beat the noisy input's PSNR) answers two noise draws of a digit alike and lands nearer
    the clean digit than the noise; the full run's gain is the evaluate stage's metric."""
    bundle = Bundle.load(bundle_dir)
    out = bundle.denoise(noisy)
    other_noise = np.random.default_rng(1).standard_normal(clean.shape).astype(np.float32)
    other = np.clip(clean + np.float32(bundle.denoiser_sigma()) * other_noise, 0.0, 1.0)
    assert mse(out, bundle.denoise(other)) < 0.25 * mse(noisy, other)
    assert mse(out, clean) < mse(out, noisy)


def _bundle_without_denoiser(bundle_dir: Path, dest: Path) -> Path:
    """A copy of the bundle as exported before the denoiser existed."""
    copy = Path(shutil.copytree(bundle_dir, dest))
    manifest = json.loads((copy / "manifest.json").read_text())
    name = manifest["models"].pop("denoiser")["file"]
    manifest["parity"]["models"].pop("denoiser")
    for listed in (name, "keras/denoiser_model.keras"):
        manifest["files"].pop(listed)
        (copy / listed).unlink()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_a_bundle_without_denoiser_loads_and_says_so(
    bundle_dir: Path, noisy: np.ndarray, tmp_path: Path
):
    old = Bundle.load(_bundle_without_denoiser(bundle_dir, tmp_path / "old"))
    assert old.reconstruct(noisy[:4], "ae").shape == (4, 28, 28)  # the rest works as before
    with pytest.raises(BundleError, match=r"old: the bundle has no denoiser .*train_denoiser"):
        old.denoise(noisy)
    np.save(tmp_path / "noisy.npy", noisy)
    proc = cli(
        ["denoise", "--bundle", str(tmp_path / "old"), "noisy.npy", "--out", "out.npy"],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "the bundle has no denoiser" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.npy").exists()


def test_cli_writes_an_array_a_grid_and_a_folder(
    bundle_dir: Path, noisy: np.ndarray, tmp_path: Path
):
    np.save(tmp_path / "noisy.npy", noisy)
    expected = Bundle.load(bundle_dir).denoise(noisy)
    args = ["denoise", "--bundle", str(bundle_dir), "noisy.npy", "--batch-size", "64"]
    proc = cli([*args, "--out", "clean.npy"], tmp_path)
    assert "wrote 200 denoised digits to clean.npy" in proc.stdout
    np.testing.assert_allclose(np.load(tmp_path / "clean.npy"), expected, atol=1e-6)

    cli([*args, "--out", "grid.png", "--columns", "20", "--scale", "2"], tmp_path)
    with Image.open(tmp_path / "grid.png") as img:
        assert img.size == (2 * (20 * 30 - 2), 2 * (10 * 30 - 2)) and img.mode == "L"

    cli([*args, "--out", "pngs"], tmp_path)
    files = sorted((tmp_path / "pngs").iterdir())
    assert [p.name for p in files] == [f"{i:06d}.png" for i in range(200)]
    with Image.open(files[7]) as img:
        assert img.size == (28, 28) and img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), np.rint(expected[7] * 255).astype(np.uint8))
    # the folder reads back as an input of the runtime, in the same order
    cli(["denoise", "--bundle", str(bundle_dir), "pngs", "--out", "again.npy"], tmp_path)
    assert np.load(tmp_path / "again.npy").shape == (200, 28, 28)

    proc = cli([*args, "--out", "pngs"], tmp_path, check=False)  # never overwrites a folder
    assert proc.returncode == 2 and "exists and is not an empty folder" in proc.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_cli_rejects_bad_input_with_one_line_and_writes_nothing(
    bundle_dir: Path, noisy: np.ndarray, tmp_path: Path
):
    bad = noisy[:5].copy()
    bad[3, 1, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    for out in ("out.npy", "out.png", "out"):
        proc = cli(
            ["denoise", "--bundle", str(bundle_dir), "bad.npy", "--out", out], tmp_path, check=False
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (
            "error: bad.npy[3]: pixel value nan, expected finite floats in [0, 1]"
        )
        assert not (tmp_path / out).exists()
    proc = cli(
        ["denoise", "--bundle", str(bundle_dir), "bad.npy", "--out", "x.gif"], tmp_path, check=False
    )
    assert proc.returncode == 2 and "expected a .npy file, a .png file or a folder" in proc.stderr
    proc = cli(
        ["denoise", "--bundle", str(bundle_dir), "missing.npy", "--out", "y.npy"],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "missing.npy: no such file or folder" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy"]
