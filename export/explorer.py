"""The latent explorer: a static web page that decodes the 2-D latent plane live in the browser.

    python -m export explorer --bundle artifacts/export --out site/     # write the folder
    python -m export explorer --bundle artifacts/export --serve         # serve it on 127.0.0.1

The site is self-contained (no CDN): the page and its script (``export/web/``), the AE and VAE
decoders (fp32 and int8) copied from the bundle, the test digits' positions (``points.json``,
from the bundle's ``test_latents.npz``), ``explorer.json`` (extents, checksums) and
onnxruntime-web's WebAssembly build (run on one thread: no cross-origin isolation needed),
copied from npm's ``node_modules/onnxruntime-web/dist`` (``npm ci`` at the repository root installs it). Any
static web server can host the folder; browsers refuse WebAssembly from ``file://``.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import socketserver
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from export.bundle import MANIFEST, MODELS, Bundle
from export.files import sha256_file, write_text_atomic
from export.inputs import iter_chunks

WEB = Path(__file__).with_name("web")
PAGE_FILES = ("index.html", "explorer.js", "explorer.css")
# the ES-module build with the WebAssembly glue inlined, and the one .wasm it loads
ORT_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
ORT_PACKAGE = Path("node_modules") / "onnxruntime-web"
EXTENT_PERCENTILES = (0.5, 99.5)  # the plane spans these percentiles of the test positions
EXTENT_MARGIN = 0.08  # ... widened by this fraction of their range on each side
MIME = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}


class ExplorerError(RuntimeError):
    """Something the site needs is missing: onnxruntime-web's files or the digits' positions."""


def find_ort_dist(given: Path | None = None) -> Path:
    """onnxruntime-web's ``dist/`` folder: ``given``, $ORT_WEB_DIST, or node_modules above cwd."""
    if given is None and os.environ.get("ORT_WEB_DIST"):
        given = Path(os.environ["ORT_WEB_DIST"])
    candidates = (
        [given] if given else [p / ORT_PACKAGE / "dist" for p in (Path.cwd(), *Path.cwd().parents)]
    )
    for folder in candidates:
        if all((folder / name).is_file() for name in ORT_FILES):
            return folder
    where = given or Path.cwd() / ORT_PACKAGE / "dist"
    raise ExplorerError(
        f"onnxruntime-web not found at {where} (need {', '.join(ORT_FILES)}): run `npm ci` at "
        "the repository root (package.json pins onnxruntime-web), or pass --ort-dist DIR"
    )


def _ort_version(dist: Path) -> str:
    try:
        return json.loads((dist.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "unknown"


def digit_positions(bundle: Bundle, points_from: str | None = None) -> dict[str, Any]:
    """Positions to draw on each model's plane: ``{"labels": (n,) or None, "ae": (n, d),
    "vae": (n, d)}``, from the bundle's ``test_latents`` or encoded from ``points_from``."""
    entry = bundle.manifest.get("test_latents")
    if points_from is not None:
        chunks = list(iter_chunks([points_from]))
        images = np.concatenate([c.images for c in chunks])
        return {"labels": None, **{m: bundle.encode(images, m) for m in MODELS}}
    if entry is None:
        raise ExplorerError(
            f"{bundle.directory / MANIFEST} lists no test_latents (exported before the export "
            "stage wrote test_latents.npz): rerun the export stage, or pass --points-from "
            "IMAGES (e.g. t10k-images-idx3-ubyte.gz) to encode digits with this runtime"
        )
    path = bundle.directory / entry["file"]
    if not path.is_file():  # a bundle may be copied without it; Bundle.load checked the rest
        raise ExplorerError(
            f"{path}: missing (listed in {MANIFEST}); copy it from the export, or pass "
            "--points-from IMAGES to encode digits with this runtime"
        )
    with np.load(path, allow_pickle=False) as npz:
        missing = {"labels", "ae_z", "vae_z_mean"} - set(npz.files)
        if missing:
            raise ExplorerError(f"{path}: lacks the arrays {sorted(missing)}")
        return {
            "labels": npz["labels"],
            "ae": npz["ae_z"].astype(np.float32),
            "vae": npz["vae_z_mean"].astype(np.float32),
        }


def plane_extent(z: np.ndarray) -> dict[str, list[float]]:
    """The rectangle shown for one model: the central 99% of the positions on axes 0 and 1
    (n, d), widened by ``EXTENT_MARGIN``; ``low``/``high`` are (2,) lists."""
    low, high = np.percentile(z[:, :2], EXTENT_PERCENTILES, axis=0)
    pad = (high - low) * EXTENT_MARGIN
    return {"low": (low - pad).round(3).tolist(), "high": (high + pad).round(3).tolist()}


def _copy_decoders(bundle: Bundle, folder: Path) -> dict[str, dict[str, Any]]:
    """Copy every decoder of digits (the AE's, the VAE's, the compact one; fp32 and int8) into
    ``folder/models``; role -> {"file", "sha256", "precision"}."""
    (folder / "models").mkdir(parents=True, exist_ok=True)
    copied = {}
    for role, entry in bundle.manifest["models"].items():
        if role.removesuffix("_int8") not in ("ae_decoder", "vae_decoder", "compact_decoder"):
            continue
        name = entry["file"]
        shutil.copyfile(bundle.directory / name, folder / "models" / name)
        copied[role] = {
            "file": f"models/{name}",
            "sha256": bundle.manifest["files"][name]["sha256"],
            "precision": entry["precision"],
        }
    return copied


def build_site(
    bundle: Bundle,
    folder: str | Path,
    ort_dist: Path | None = None,
    points_from: str | None = None,
) -> Path:
    """Write the explorer for ``bundle`` (loaded fp32) into ``folder``; returns the folder."""
    if bundle.latent_dim < 2:
        raise ExplorerError(f"the explorer draws a 2-D plane; latent_dim is {bundle.latent_dim}")
    dist = find_ort_dist(ort_dist)
    positions = digit_positions(bundle, points_from)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in PAGE_FILES:
        shutil.copyfile(WEB / name, folder / name)
    (folder / "ort").mkdir(exist_ok=True)
    for name in ORT_FILES:
        shutil.copyfile(dist / name, folder / "ort" / name)
    decoders = _copy_decoders(bundle, folder)

    labels = positions["labels"]
    points = {
        "count": len(positions["vae"]),
        "labels": None if labels is None else [int(v) for v in labels],
        # x0, y0, x1, y1, ...: the first two latent axes, rounded for size
        **{m: positions[m][:, :2].astype(np.float64).round(3).ravel().tolist() for m in MODELS},
    }
    _write_json(folder / "points.json", points, compact=True)
    boxes = bundle.manifest["latent_boxes"]
    config = {
        "latent_dim": bundle.latent_dim,
        "models": {
            m: {
                "extent": plane_extent(positions[m]),
                # axes beyond the first two stay at the centre of the manifest's latent box
                "centre": [
                    (lo + hi) / 2 for lo, hi in zip(boxes[m]["low"], boxes[m]["high"], strict=True)
                ],
            }
            for m in MODELS
        },
        "decoders": decoders,
        "points": "points.json",
        "points_source": "bundle test_latents.npz" if points_from is None else points_from,
        "bundle": {
            "manifest_sha256": sha256_file(bundle.directory / MANIFEST),
            "created": bundle.manifest.get("created"),
        },
        "onnxruntime_web": _ort_version(dist),
    }
    _write_json(folder / "explorer.json", config)
    return folder


def _write_json(path: Path, data: Any, compact: bool = False) -> None:
    text = json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=2)
    write_text_atomic(path, text)


@contextlib.contextmanager
def site_folder(out: Path | None) -> Iterator[Path]:
    """``out``, or a temporary folder removed afterwards."""
    if out is not None:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="mnist-vae-explorer.") as tmp:
        yield Path(tmp)


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME}

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet; the page reports its own errors


def start_server(folder: str | Path, port: int = 0) -> tuple[socketserver.TCPServer, str]:
    """Serve ``folder`` on 127.0.0.1:``port`` (0: a free one) from a daemon thread.

    Returns the server (call ``shutdown()`` to stop it) and the page's URL.
    """
    handler = functools.partial(_Handler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/index.html"


def serve_forever(folder: Path, port: int = 8000) -> None:
    """Serve ``folder`` on 127.0.0.1 until Ctrl-C (or SIGTERM)."""
    try:
        server, url = start_server(folder, port)
    except OSError as err:
        raise ExplorerError(
            f"cannot listen on 127.0.0.1:{port} ({err.strerror}); pick another --port "
            "(0: any free one)"
        ) from None

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM too unwinds, so a temporary site is removed

    previous = signal.signal(signal.SIGTERM, stop)
    print(f"serving the explorer at {url} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.shutdown()
        server.server_close()
