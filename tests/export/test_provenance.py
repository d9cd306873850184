"""Provenance of the PNGs `python -m export generate` writes, and `verify` telling generated,
altered, foreign and other-bundle pictures apart, on a smoke bundle and real test digits."""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
from conftest import run_export_cli as cli  # tests/ is on sys.path (rootdir conftest)
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from export import provenance
from export.bundle import Bundle, sha256_file


def record_of(path: Path) -> dict:
    with Image.open(path) as img:
        return json.loads(img.text[provenance.KEY])


def rewrite(path: Path, out: Path, pixels: np.ndarray | None = None, text: str | None = None):
    """Save ``path`` again as ``out`` with other pixels and/or another provenance text."""
    with Image.open(path) as img:
        original = img.text[provenance.KEY]
        array = np.asarray(img).copy()
    info = PngInfo()
    info.add_itxt(provenance.KEY, original if text is None else text)
    Image.fromarray(array if pixels is None else pixels).save(out, pnginfo=info)


def verify(image: Path, bundle_dir: Path, cwd: Path):
    proc = cli(["verify", str(image), "--bundle", bundle_dir], cwd, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_sample_png_records_its_making_and_verifies(bundle_dir: Path, tmp_path: Path):
    cli(
        ["generate", "--bundle", bundle_dir, "--n", "12", "--seed", "7", "--out", "s.png"], tmp_path
    )
    entry = record_of(tmp_path / "s.png")
    bundle = Bundle.load(bundle_dir)
    assert entry["bundle_manifest_sha256"] == sha256_file(Path(bundle_dir) / "manifest.json")
    assert entry["decoder"] == {
        "file": "vae_decoder.onnx",
        "sha256": bundle.manifest["files"]["vae_decoder.onnx"]["sha256"],
    }
    assert (entry["model"], entry["precision"], entry["mode"], entry["seed"]) == (
        "vae",
        "fp32",
        "sample",
        7,
    )
    assert metadata.version("mnist-vae") in entry["tool"]
    # the recorded latents are the float32 prior draws, digit for digit
    np.testing.assert_array_equal(np.float32(entry["z"]), bundle.prior_latents(12, seed=7))
    code, out = verify(tmp_path / "s.png", bundle_dir, tmp_path)
    assert code == 0 and out.startswith("generated:") and "12 digits" in out, out


def test_grid_png_records_every_cell_and_int8_verifies(bundle_dir: Path, tmp_path: Path):
    cli(
        ["generate", "--bundle", bundle_dir, "--grid", "5", "--model", "ae", "--scale", "2"]
        + ["--precision", "int8", "--out", "g.png"],
        tmp_path,
    )
    entry = record_of(tmp_path / "g.png")
    bundle = Bundle.load(bundle_dir, precision="int8")
    assert entry["precision"] == "int8" and entry["decoder"]["file"] == "ae_decoder.int8.onnx"
    assert entry["grid_side"] == 5 and entry["layout"] == {"columns": 5, "scale": 2, "padding": 2}
    np.testing.assert_array_equal(np.float32(entry["z"]), bundle.grid_latents(5, "ae"))
    code, out = verify(tmp_path / "g.png", bundle_dir, tmp_path)
    assert code == 0 and "int8" in out, out


def test_given_latents_verify(bundle_dir: Path, tmp_path: Path):
    cli(["generate", "--bundle", bundle_dir, "--z", "0.4,0.4;-1,2", "--out", "z.png"], tmp_path)
    four = float(np.float32(0.4))  # the float32 the decoder saw, exactly
    assert record_of(tmp_path / "z.png")["z"] == [[four, four], [-1.0, 2.0]]
    assert verify(tmp_path / "z.png", bundle_dir, tmp_path)[0] == 0


def test_altered_pixels_and_altered_records_are_caught(bundle_dir: Path, tmp_path: Path):
    cli(["generate", "--bundle", bundle_dir, "--n", "9", "--out", "d.png"], tmp_path)
    with Image.open(tmp_path / "d.png") as img:
        pixels = np.asarray(img).copy()
    # one pixel, one grey level: the smallest edit a PNG can hold
    pixels[10, 11] = pixels[10, 11] + 1 if pixels[10, 11] < 255 else 254
    rewrite(tmp_path / "d.png", tmp_path / "pixel.png", pixels=pixels)
    code, out = verify(tmp_path / "pixel.png", bundle_dir, tmp_path)
    assert code == 1 and out.startswith("altered:") and "1 of" in out and "row 10" in out, out

    entry = record_of(tmp_path / "d.png")
    entry["z"][0][0] += 0.5  # the pixels stay those of the seed's draws
    rewrite(tmp_path / "d.png", tmp_path / "z.png", text=json.dumps(entry))
    code, out = verify(tmp_path / "z.png", bundle_dir, tmp_path)
    assert code == 1 and "not the prior draws of seed 0" in out, out

    entry = record_of(tmp_path / "d.png")
    entry["mode"], entry["seed"] = "z", None  # claims given latents: decoded, they differ
    entry["z"][0][0] += 0.5
    rewrite(tmp_path / "d.png", tmp_path / "zz.png", text=json.dumps(entry))
    code, out = verify(tmp_path / "zz.png", bundle_dir, tmp_path)
    assert code == 1 and "pixels differ" in out, out

    rewrite(tmp_path / "d.png", tmp_path / "json.png", text="{not json")
    code, out = verify(tmp_path / "json.png", bundle_dir, tmp_path)
    assert code == 1 and "not valid JSON" in out, out

    with Image.open(tmp_path / "d.png") as img:  # cropped, record kept
        info = PngInfo()
        info.add_itxt(provenance.KEY, img.text[provenance.KEY])
        img.crop((0, 0, 40, 40)).save(tmp_path / "crop.png", pnginfo=info)
    code, out = verify(tmp_path / "crop.png", bundle_dir, tmp_path)
    assert code == 1 and "40 x 40" in out, out


def test_foreign_images_carry_no_provenance(export_run: Path, bundle_dir: Path, tmp_path: Path):
    with np.load(export_run / "data" / "mnist.npz", allow_pickle=False) as npz:
        digit = npz["test_images"][0]
    Image.fromarray(digit).save(tmp_path / "real.png")
    Image.fromarray(digit).convert("RGB").save(tmp_path / "real.jpg", quality=95)
    for name in ("real.png", "real.jpg"):
        code, out = verify(tmp_path / name, bundle_dir, tmp_path)
        assert code == 3 and out.startswith("no-provenance:"), out
    (tmp_path / "notes.png").write_text("not a picture")
    code, out = verify(tmp_path / "notes.png", bundle_dir, tmp_path)
    assert code == 2 and "notes.png: not an image" in out, out
    code, out = verify(tmp_path / "missing.png", bundle_dir, tmp_path)
    assert code == 2 and "missing.png: no such file" in out, out
    code, out = verify(tmp_path / "real.png", str(tmp_path), tmp_path)
    assert code == 2 and "manifest.json: missing" in out, out


def test_picture_of_another_bundle(bundle_dir: Path, tmp_path: Path):
    cli(["generate", "--bundle", bundle_dir, "--n", "4", "--out", "d.png"], tmp_path)
    other = tmp_path / "other"
    shutil.copytree(bundle_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["created"] = "2000-01-01T00:00:00+00:00"  # same models, another bundle
    (other / "manifest.json").write_text(json.dumps(manifest))
    code, out = verify(tmp_path / "d.png", str(other), tmp_path)
    assert code == 4 and out.startswith("other-bundle:"), out


def test_npy_output_is_unchanged(bundle_dir: Path, tmp_path: Path):
    cli(["generate", "--bundle", bundle_dir, "--n", "5", "--seed", "3", "--out", "s.npy"], tmp_path)
    np.testing.assert_array_equal(
        np.load(tmp_path / "s.npy"), Bundle.load(bundle_dir).sample(5, seed=3)
    )
