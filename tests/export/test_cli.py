"""`python -m export` in a fresh process on a smoke bundle and real test digits."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_export_cli as cli  # tests/ is on sys.path (rootdir conftest)
from PIL import Image

from export.bundle import Bundle

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def test_npy(test_digits: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's test digits (uint8) as one .npy file."""
    images = test_digits[:200]
    path = tmp_path_factory.mktemp("inputs") / "test.npy"
    np.save(path, images)
    return path


def test_info(bundle_dir: Path, tmp_path: Path):
    out = cli(["info", "--bundle", bundle_dir], tmp_path).stdout
    assert "vae_decoder_int8" in out and "negative_elbo >" in out and "latent_dim  " in out
    manifest = json.loads(cli(["info", "--bundle", bundle_dir, "--json"], tmp_path).stdout)
    assert manifest["format_version"] == 1


def test_generate_png_grid_npy_and_given_z(bundle_dir: Path, tmp_path: Path):
    cli(["generate", "--bundle", bundle_dir, "--n", "100", "--out", "digits.png"], tmp_path)
    with Image.open(tmp_path / "digits.png") as img:
        assert img.size == (10 * 30 - 2, 10 * 30 - 2) and img.mode == "L"
    cli(
        ["generate", "--bundle", bundle_dir, "--n", "12", "--seed", "5", "--out", "s.npy"], tmp_path
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "s.npy"), Bundle.load(bundle_dir).sample(12, seed=5), atol=1e-6
    )
    cli(["generate", "--bundle", bundle_dir, "--z", "0.4,0.4;-1,2", "--out", "z.npy"], tmp_path)
    np.testing.assert_allclose(
        np.load(tmp_path / "z.npy"),
        Bundle.load(bundle_dir).generate([[0.4, 0.4], [-1.0, 2.0]]),
        atol=1e-6,
    )
    cli(
        ["generate", "--bundle", bundle_dir, "--grid", "6", "--model", "ae", "--scale", "2"]
        + ["--precision", "int8", "--out", "grid.png"],
        tmp_path,
    )
    with Image.open(tmp_path / "grid.png") as img:
        assert img.size == (2 * (6 * 30 - 2), 2 * (6 * 30 - 2))


def test_encode_csv_and_npy(bundle_dir: Path, test_npy: Path, tmp_path: Path):
    cli(["encode", "--bundle", bundle_dir, str(test_npy), "--out", "lat.csv"], tmp_path)
    rows = list(csv.DictReader((tmp_path / "lat.csv").open()))
    assert len(rows) == 200 and rows[199]["index"] == "199" and rows[0]["source"] == str(test_npy)
    d = Bundle.load(bundle_dir).latent_dim
    assert list(rows[0]) == ["source", "index"] + [f"z_{i}" for i in range(d)] + [
        f"z_log_var_{i}" for i in range(d)
    ]
    cli(
        ["encode", "--bundle", bundle_dir, str(test_npy), "--model", "ae", "--out", "z.npy"],
        tmp_path,
    )
    expected = Bundle.load(bundle_dir).encode(np.load(test_npy), "ae")
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), expected, atol=1e-6)


def test_score_csv_matches_the_api(bundle_dir: Path, test_npy: Path, tmp_path: Path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    images = np.load(test_npy)
    for i in range(3):
        Image.fromarray(images[i]).save(folder / f"{i}.png")
    cli(
        ["score", "--bundle", bundle_dir, str(test_npy), str(folder), "--chunk-size", "64"]
        + ["--out", "scores.csv"],
        tmp_path,
    )
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert list(rows[0]) == ["source", "index", "score", "p_value", "anomaly"]
    assert len(rows) == 203
    bundle = Bundle.load(bundle_dir)
    assert bundle.default_model == "detector"  # the CLI's score unless --model says otherwise
    expected = bundle.score(images)
    np.testing.assert_allclose([float(r["score"]) for r in rows[:200]], expected, rtol=1e-5)
    np.testing.assert_allclose(
        [float(r["p_value"]) for r in rows[:200]], bundle.p_values(expected), rtol=1e-5
    )
    assert [int(r["anomaly"]) for r in rows[:200]] == (expected > bundle.threshold()).tolist()
    assert [Path(r["source"]).name for r in rows[200:]] == ["0.png", "1.png", "2.png"]
    np.testing.assert_allclose([float(r["score"]) for r in rows[200:]], expected[:3], rtol=1e-5)
    stdout = cli(["score", "--bundle", bundle_dir, "--model", "ae", str(test_npy)], tmp_path)
    assert len(stdout.stdout.strip().splitlines()) == 201
    assert "scored 200 images with the ae score" in stdout.stderr
    ae = np.array([float(line.split(",")[2]) for line in stdout.stdout.splitlines()[1:]])
    np.testing.assert_allclose(ae, bundle.score(images, "ae"), rtol=1e-5)


def test_bad_input_and_tampered_bundle_exit_2(bundle_dir: Path, tmp_path: Path):
    bad = np.zeros((5, 28, 28), np.float32)
    bad[3, 1, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    proc = cli(
        ["score", "--bundle", bundle_dir, "bad.npy", "--strict", "--out", "s.csv"],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "bad.npy[3]: pixel value nan" in proc.stderr
    assert not (tmp_path / "s.csv").exists() and proc.stdout == ""
    copy = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    with (copy / "ae_encoder.onnx").open("ab") as fh:
        fh.write(b"\0")
    proc = cli(["info", "--bundle", str(copy)], tmp_path, check=False)
    assert proc.returncode == 2 and "ae_encoder.onnx: sha256 does not match" in proc.stderr
    proc = cli(["generate", "--bundle", bundle_dir, "--out", "x.gif"], tmp_path, check=False)
    assert proc.returncode == 2 and "expected a .png or .npy" in proc.stderr


def test_docs_python_example_runs_as_written(export_run: Path, mirror: Path, tmp_path: Path):
    """The Python example of docs/runtime-and-cli.md, at most 10 lines, on the smoke bundle."""
    page = (REPO / "docs" / "runtime-and-cli.md").read_text()
    section = page.split("## From Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 10
    assert '"artifacts/export"' in code and '"t10k-images-idx3-ubyte.gz"' in code
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "export").symlink_to(export_run / "export")
    (tmp_path / "t10k-images-idx3-ubyte.gz").symlink_to(mirror / "t10k-images-idx3-ubyte.gz")
    (tmp_path / "example.py").write_text(code)
    proc = subprocess.run(
        [sys.executable, "-P", "example.py"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "flagged, fpr 0.01" in proc.stdout
    with Image.open(tmp_path / "grid.png") as img:
        assert img.size == (2 * (10 * 30 - 2), 2 * (10 * 30 - 2))
