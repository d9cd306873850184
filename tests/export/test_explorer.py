"""The latent explorer on a smoke bundle: the site's files, its errors, `--serve`, and the page
itself in headless Chromium (Debian's, driven by playwright-core) decoding what the runtime does.

The browser test needs `npm ci` (onnxruntime-web, playwright-core) and /usr/bin/chromium;
`make test` installs both. Its screenshot is saved under pytest's temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import run_export_cli as cli  # tests/ is on sys.path (rootdir conftest)
from PIL import Image

from export import explorer
from export.bundle import Bundle, sha256_file

REPO = Path(__file__).resolve().parents[2]
ORT_DIST = REPO / "node_modules" / "onnxruntime-web" / "dist"
BROWSER_SCRIPT = REPO / "tests" / "export" / "browser" / "explorer_check.mjs"
TOLERANCE = 1e-4  # page pixels vs Bundle.generate, float32 decoders
# the int8 decoders quantize their activations at run time on each platform's own int8 kernels
# (WebAssembly's are not x86's): the page and the runtime agree to far below the int8 drift
INT8_TOLERANCE = 5e-3


def need_ort_dist() -> Path:
    if not all((ORT_DIST / name).is_file() for name in explorer.ORT_FILES):
        pytest.fail(
            f"onnxruntime-web missing at {ORT_DIST}: run `npm ci` in {REPO} (make test does)"
        )
    return ORT_DIST


@pytest.fixture(scope="module")
def site(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    cli(
        ["explorer", "--bundle", str(bundle_dir), "--out", str(out / "site")]
        + ["--ort-dist", str(need_ort_dist())],
        out,
    )
    return out / "site"


def test_page_files_ship_with_the_package():
    # in the runtime environment this is the non-editable install: package data must be there
    for name in explorer.PAGE_FILES:
        assert (explorer.WEB / name).is_file(), name


def test_export_stage_wrote_the_test_digits_positions(export_run: Path, bundle_dir: Path):
    bundle = Bundle.load(bundle_dir)
    entry = bundle.manifest["test_latents"]
    assert bundle.manifest["files"][entry["file"]]["sha256"] == sha256_file(
        bundle_dir / entry["file"]
    )
    with np.load(export_run / "data" / "mnist.npz", allow_pickle=False) as npz:
        images, labels = npz["test_images"], npz["test_labels"]
    with np.load(bundle_dir / entry["file"], allow_pickle=False) as npz:
        assert entry["count"] == len(images) == len(npz["labels"])
        np.testing.assert_array_equal(npz["labels"], labels)
        for key, model in (("vae_z_mean", "vae"), ("ae_z", "ae")):
            assert npz[key].dtype == np.float16
            z = bundle.encode(images, model)
            # float16 keeps 11 significant bits
            np.testing.assert_allclose(npz[key], z, rtol=2e-3, atol=2e-3)


def test_site_holds_the_page_decoders_positions_and_one_wasm(site: Path, bundle_dir: Path):
    bundle = Bundle.load(bundle_dir)
    config = json.loads((site / "explorer.json").read_text())
    for name in explorer.PAGE_FILES:
        assert (site / name).read_bytes() == (explorer.WEB / name).read_bytes()
    assert sorted(p.name for p in (site / "ort").iterdir()) == sorted(explorer.ORT_FILES)
    assert [p.name for p in site.rglob("*.wasm")] == ["ort-wasm-simd-threaded.wasm"]
    assert (
        config["onnxruntime_web"]
        == json.loads((ORT_DIST.parent / "package.json").read_text())["version"]
    )
    decoders = {
        r for r in bundle.manifest["models"] if r.removesuffix("_int8").endswith("_decoder")
    } - {"detector_decoder", "background_decoder"}  # the detector's decode no digits
    assert (
        set(config["decoders"])
        == decoders
        == {
            "ae_decoder",
            "vae_decoder",
            "ae_decoder_int8",
            "vae_decoder_int8",
            "compact_decoder",
            "compact_decoder_int8",
        }
    )
    for entry in config["decoders"].values():
        assert sha256_file(site / entry["file"]) == entry["sha256"]
    assert not list(site.rglob("*encoder*"))  # the page only decodes
    assert config["bundle"]["manifest_sha256"] == sha256_file(bundle_dir / "manifest.json")

    points = json.loads((site / "points.json").read_text())
    with np.load(bundle_dir / "test_latents.npz", allow_pickle=False) as npz:
        assert points["labels"] == npz["labels"].tolist()
        for model, key in (("vae", "vae_z_mean"), ("ae", "ae_z")):
            xy = np.asarray(points[model]).reshape(-1, 2)
            np.testing.assert_allclose(xy, npz[key][:, :2], atol=5.1e-4)
            extent = config["models"][model]["extent"]
            inside = (xy >= extent["low"]).all(axis=1) & (xy <= extent["high"]).all(axis=1)
            assert inside.mean() > 0.98, (model, inside.mean())
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    assert size < 20e6, size


def test_missing_onnxruntime_web_is_a_clear_error(bundle_dir: Path, tmp_path: Path):
    proc = cli(
        ["explorer", "--bundle", str(bundle_dir), "--out", "site", "--ort-dist", "nowhere"],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert "onnxruntime-web not found at nowhere" in proc.stderr and "npm ci" in proc.stderr
    assert not (tmp_path / "site").exists()


def test_bundle_without_positions_needs_points_from(
    export_run: Path, bundle_dir: Path, tmp_path: Path
):
    old = tmp_path / "old"
    shutil.copytree(bundle_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["test_latents"], manifest["files"]["test_latents.npz"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    (old / "test_latents.npz").unlink()
    args = ["explorer", "--bundle", str(old), "--out", "site", "--ort-dist", str(need_ort_dist())]
    proc = cli(args, tmp_path, check=False)
    assert proc.returncode == 2 and "lists no test_latents" in proc.stderr
    assert "--points-from" in proc.stderr

    shutil.copytree(bundle_dir, tmp_path / "device")  # listed but left out of a copy
    (tmp_path / "device" / "test_latents.npz").unlink()
    device = cli([*args[:2], str(tmp_path / "device"), *args[3:]], tmp_path, check=False)
    assert device.returncode == 2 and "test_latents.npz: missing" in device.stderr
    assert "--points-from" in device.stderr

    source = f"{export_run / 'data' / 'mnist.npz'}:test_images"
    cli([*args, "--points-from", source], tmp_path)
    points = json.loads((tmp_path / "site" / "points.json").read_text())
    with np.load(export_run / "data" / "mnist.npz", allow_pickle=False) as npz:
        images = npz["test_images"]
    assert points["labels"] is None and points["count"] == len(images)
    z = Bundle.load(old).encode(images, "ae")[:, :2]
    np.testing.assert_allclose(np.reshape(points["ae"], (-1, 2)), z, atol=5.1e-4)


def test_serve_answers_on_localhost_with_wasm_and_module_types(bundle_dir: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "MNIST_VAE_BUNDLE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "export", "explorer", "--bundle", str(bundle_dir), "--serve"]
        + ["--port", "0", "--ort-dist", str(need_ort_dist())],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(120, proc.kill)  # a hung server cannot hang the suite
    watchdog.start()
    try:
        url = folder = None
        for line in proc.stdout:  # "wrote the explorer to DIR ...", then "serving ... at URL"
            if line.startswith("wrote the explorer to "):
                folder = Path(line.split()[4])
            if line.startswith("serving the explorer at "):
                url = line.split()[4]
                break
        assert url and url.startswith("http://127.0.0.1:"), proc.stderr.read()
        assert folder is not None and (folder / "index.html").is_file()
        base = url.rsplit("/", 1)[0]
        with urllib.request.urlopen(url, timeout=30) as r:
            assert b"latent explorer" in r.read()
        for path, mime in (
            ("ort/ort-wasm-simd-threaded.wasm", "application/wasm"),
            ("ort/ort.wasm.bundle.min.mjs", "text/javascript"),
            ("explorer.js", "text/javascript"),
        ):
            with urllib.request.urlopen(f"{base}/{path}", timeout=30) as r:
                assert r.headers["Content-Type"].startswith(mime), (path, r.headers)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        watchdog.cancel()
    assert proc.returncode == 0, proc.stderr.read()
    assert not folder.exists()  # without --out the site lived in a temporary folder


def test_serve_on_a_busy_port_is_a_clear_error(bundle_dir: Path, tmp_path: Path):
    server, url = explorer.start_server(tmp_path)  # holds a port
    port = url.split(":")[2].split("/")[0]
    try:
        proc = cli(
            ["explorer", "--bundle", str(bundle_dir), "--serve", "--port", port]
            + ["--ort-dist", str(need_ort_dist())],
            tmp_path,
            check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr


def browser_tools() -> tuple[str, str]:
    """node and Debian's chromium, or a failure saying how to get them."""
    node = shutil.which("node")
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
    playwright = REPO / "node_modules" / "playwright-core"
    if not (node and chromium and playwright.is_dir()):
        pytest.fail(
            f"the browser test needs node ({node}), chromium ({chromium}) and {playwright}: "
            "`make browser-deps` installs them (npm ci; apt-get install chromium)"
        )
    return node, chromium


@pytest.mark.slow
def test_page_decodes_what_the_runtime_generates(
    site: Path, bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    node, chromium = browser_tools()
    out = tmp_path_factory.mktemp("browser")
    server, url = explorer.start_server(site)
    try:
        proc = subprocess.run(
            [node, str(BROWSER_SCRIPT), url, str(out), chromium],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=200,
        )
    finally:
        server.shutdown()
        server.server_close()
    result_path = out / "result.json"
    assert result_path.is_file(), f"no result; exit {proc.returncode}\n{proc.stderr[-4000:]}"
    result = json.loads(result_path.read_text())
    assert result["failure"] is None, (result["failure"], result["state"], result["console"])
    assert proc.returncode == 0, proc.stderr[-4000:]

    # offline: nothing left 127.0.0.1, and the page fetched its own files
    assert result["blocked"] == []
    assert result["origin"].startswith("http://127.0.0.1:")
    assert all(u.startswith(result["origin"] + "/") for u in result["requests"])
    fetched = {u.removeprefix(result["origin"] + "/") for u in result["requests"]}
    assert {"ort/ort-wasm-simd-threaded.wasm", "models/vae_decoder.onnx"} <= fetched
    assert "models/ae_decoder.int8.onnx" in fetched
    assert not [line for line in result["console"] if line.startswith(("error", "pageerror"))]

    config = json.loads((site / "explorer.json").read_text())
    bundles = {p: Bundle.load(bundle_dir, precision=p) for p in ("fp32", "int8")}
    samples = result["samples"]
    assert [(s["model"], s["precision"], s["decoder"]) for s in samples] == [
        ("vae", "fp32", "full"),
        ("ae", "fp32", "full"),
        ("vae", "int8", "full"),
        ("ae", "int8", "full"),
        ("ae", "fp32", "full"),
        ("vae", "fp32", "full"),
        ("vae", "fp32", "compact"),  # the compact decoder at the same point
    ]
    assert "models/compact_decoder.onnx" in fetched
    for s in samples:
        # the latent point is the one under the pointer (to a fraction of a CSS pixel)
        low, high = (np.asarray(config["models"][s["model"]]["extent"][k]) for k in ("low", "high"))
        expected = [low[0] + s["u"] * (high[0] - low[0]), high[1] - s["v"] * (high[1] - low[1])]
        np.testing.assert_allclose(s["z"][:2], expected, atol=float((high - low).max()) / 360)
        # and its digit is what the runtime decodes there
        pixels = np.asarray(s["pixels"], np.float32).reshape(28, 28)
        bundle = bundles[s["precision"]]
        reference = bundle.generate(np.float32([s["z"]]), s["model"], s["decoder"])[0]
        diff = float(np.abs(pixels - reference).max())
        allowed = INT8_TOLERANCE if s["precision"] == "int8" else TOLERANCE
        assert diff <= allowed, (s["model"], s["precision"], diff)
        assert s["ms"] >= 0
    # the digits differ from point to point far beyond the tolerance (a stuck page would not)
    assert np.abs(np.subtract(samples[0]["pixels"], samples[5]["pixels"])).max() > 100 * TOLERANCE

    with Image.open(out / "explorer.png") as shot:
        assert shot.width >= 800 and shot.height >= 600
        assert np.asarray(shot.convert("L")).std() > 10  # drawn, not blank
