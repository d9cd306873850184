"""Provenance of generated PNGs: what made the picture, written into it, and a check of it.

    text = provenance.record(bundle, z, "vae", mode="sample", seed=0, columns=10)
    save_grid(bundle.generate(z), "digits.png", columns=10, text=text)
    result = provenance.verify("digits.png", "artifacts/export")
    result.status                      # "generated", "altered", "other-bundle" or "no-provenance"

The record is one JSON text chunk (PNG iTXt, key ``mnist-vae``): the sha256 of the bundle's
``manifest.json`` and of the decoder file, the model, decoder and precision, every latent point (one per
digit, float32 values written exactly), the seed of prior draws, the grid layout and the tool's
version. ``verify`` decodes the recorded latents again with the same bundle and compares the
picture pixel for pixel (after the uint8 quantization of the PNG).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from export.bundle import DECODERS, MANIFEST, MODELS, PRECISIONS, Bundle, BundleError
from export.files import sha256_file
from export.images import picture

KEY = "mnist-vae"
RECORD_FORMAT = 1
MODES = ("sample", "grid", "z")
# exit status of ``python -m export verify`` per verdict; 2 stays argparse's and input errors'
EXIT_STATUS = {"generated": 0, "altered": 1, "no-provenance": 3, "other-bundle": 4}


class ProvenanceError(ValueError):
    """The file cannot be checked at all: missing, or not an image."""


def tool_version() -> str:
    """The installed version of this package (``mnist-vae``)."""
    try:
        return metadata.version("mnist-vae")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def decoder_file(bundle: Bundle, model: str, decoder: str = "full") -> str:
    """The decoder file ``bundle`` runs for ``model`` (and ``decoder``) at its precision."""
    return bundle.manifest["models"][bundle.decoder_role(model, decoder)]["file"]


def record(
    bundle: Bundle,
    z: np.ndarray,
    model: str,
    *,
    mode: str,
    seed: int | None = None,
    side: int | None = None,
    columns: int | None = None,
    scale: int = 1,
    padding: int = 2,
    decoder_kind: str = "full",
) -> dict[str, str]:
    """The PNG text chunks describing digits decoded from ``z`` (n, latent_dim) by ``bundle``.

    ``mode``: "sample" (z drawn from the prior with ``seed``), "grid" (the ``side`` x ``side``
    lattice of ``Bundle.grid_latents``) or "z" (given latents). ``columns``, ``scale`` and
    ``padding`` are those given to ``save_grid``; ``decoder_kind`` the ``decoder`` given to
    ``Bundle.generate`` ("full" or "compact").
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    z = np.asarray(z, dtype=np.float32)
    decoder = decoder_file(bundle, model, decoder_kind)
    entry = {
        "format": RECORD_FORMAT,
        "tool": f"mnist-vae {tool_version()} (python -m export generate)",
        "bundle_manifest_sha256": sha256_file(bundle.directory / MANIFEST),
        "model": model,
        "precision": bundle.precision,
        "decoder_kind": decoder_kind,
        "decoder": {"file": decoder, "sha256": bundle.manifest["files"][decoder]["sha256"]},
        "mode": mode,
        "seed": seed if mode == "sample" else None,
        "grid_side": side if mode == "grid" else None,
        "layout": {"columns": columns, "scale": scale, "padding": padding},
        # float32 -> Python float is exact, and JSON keeps every digit of a Python float
        "z": [[float(v) for v in row] for row in z],
    }
    return {KEY: json.dumps(entry, separators=(",", ":"))}


@dataclass(frozen=True)
class Verdict:
    """What ``verify`` found: ``status`` (a key of ``EXIT_STATUS``) and why, in words."""

    status: str
    detail: str
    record: dict[str, Any] | None = None

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.status]


def read_record(path: Path) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The picture's pixels (h, w) uint8 and its provenance record, or None when it has none.

    Raises ``ProvenanceError`` when the file is missing or not an image; a record that is not
    valid JSON comes back as ``{"unreadable": ...}``.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise ProvenanceError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            text = dict(getattr(img, "text", {}) or {})
            pixels = np.asarray(img if img.mode == "L" else img.convert("L"))
    except (UnidentifiedImageError, OSError) as err:
        raise ProvenanceError(f"{path}: not an image Pillow can read ({err})") from None
    if KEY not in text:
        return pixels, None
    try:
        entry = json.loads(text[KEY])
    except json.JSONDecodeError as err:
        return pixels, {"unreadable": f"the {KEY!r} text chunk is not valid JSON ({err})"}
    return pixels, entry if isinstance(entry, dict) else {"unreadable": "not a JSON object"}


def _check_record(entry: dict[str, Any]) -> str | None:
    """Why the record cannot describe a picture of this bundle, or None if it can."""
    if "unreadable" in entry:
        return entry["unreadable"]
    if entry.get("format") != RECORD_FORMAT:
        return f"record format {entry.get('format')!r}, expected {RECORD_FORMAT}"
    if entry.get("model") not in MODELS or entry.get("precision") not in PRECISIONS:
        return f"unknown model {entry.get('model')!r} or precision {entry.get('precision')!r}"
    if entry.get("mode") not in MODES:
        return f"unknown mode {entry.get('mode')!r}"
    if entry.get("decoder_kind", "full") not in DECODERS:
        return f"unknown decoder kind {entry.get('decoder_kind')!r}"
    if not isinstance(entry.get("layout"), dict) or not isinstance(entry.get("z"), list):
        return "the record lacks its layout or latents"
    return None


def _render(bundle: Bundle, entry: dict[str, Any]) -> np.ndarray | str:
    """The picture the record describes (h, w) uint8, or why it cannot be made."""
    model, mode = entry["model"], entry["mode"]
    try:
        z = np.asarray(entry["z"], dtype=np.float32)
    except (ValueError, TypeError) as err:
        return f"recorded latents unusable: {err}"
    if z.ndim != 2 or z.shape[1] != bundle.latent_dim or not np.isfinite(z).all():
        return f"recorded latents have shape {z.shape}, expected finite (n, {bundle.latent_dim})"
    if mode == "sample":
        seed = entry.get("seed")
        if model != "vae" or not isinstance(seed, int):
            return "a prior sample needs model 'vae' and an integer seed"
        if not np.array_equal(z, bundle.prior_latents(len(z), seed)):
            return f"the recorded latents are not the prior draws of seed {seed}"
    elif mode == "grid":
        side = entry.get("grid_side")
        if not isinstance(side, int) or side * side != len(z):
            return f"grid side {side!r} does not fit {len(z)} recorded latents"
        if not np.array_equal(z, bundle.grid_latents(side, model)):
            return f"the recorded latents are not the {side} x {side} grid of this bundle"
    layout = entry["layout"]
    try:
        result = picture(
            bundle.generate(z, model, entry.get("decoder_kind", "full")),
            columns=layout.get("columns"),
            scale=int(layout.get("scale", 1)),
            padding=int(layout.get("padding", 2)),
        )
    except (ValueError, TypeError) as err:
        return f"recorded layout unusable: {err}"
    return np.asarray(result)


def verify(path: str | Path, bundle_dir: str | Path) -> Verdict:
    """Decide whether the PNG at ``path`` is exactly what its record says ``bundle_dir`` made."""
    path, bundle_dir = Path(path), Path(bundle_dir)
    if not (bundle_dir / MANIFEST).is_file():
        raise BundleError(f"{bundle_dir / MANIFEST}: missing; is {bundle_dir} an export bundle?")
    pixels, entry = read_record(path)
    if entry is None:
        return Verdict("no-provenance", f"{path}: carries no {KEY!r} provenance record")
    problem = _check_record(entry)
    if problem:
        return Verdict("altered", f"{path}: provenance record damaged: {problem}", entry)
    manifest_sha = sha256_file(bundle_dir / MANIFEST)
    if entry.get("bundle_manifest_sha256") != manifest_sha:
        return Verdict(
            "other-bundle",
            f"{path}: made by the bundle whose manifest sha256 is "
            f"{entry.get('bundle_manifest_sha256')}, not by {bundle_dir} ({manifest_sha})",
            entry,
        )
    bundle = Bundle.load(bundle_dir, precision=entry["precision"])
    kind = entry.get("decoder_kind", "full")  # records made before the compact decoder: full
    try:
        decoder = decoder_file(bundle, entry["model"], kind)
    except (ValueError, BundleError) as err:
        return Verdict("altered", f"{path}: provenance record inconsistent: {err}", entry)
    expected_decoder = {"file": decoder, "sha256": bundle.manifest["files"][decoder]["sha256"]}
    if entry.get("decoder") != expected_decoder:
        return Verdict(
            "altered",
            f"{path}: the record names decoder {entry.get('decoder')}, but this bundle's "
            f"{entry['model']} {kind} {entry['precision']} decoder is {expected_decoder}",
            entry,
        )
    expected = _render(bundle, entry)
    if isinstance(expected, str):
        return Verdict("altered", f"{path}: provenance record inconsistent: {expected}", entry)
    if expected.shape != pixels.shape:
        return Verdict(
            "altered",
            f"{path}: picture is {pixels.shape[1]} x {pixels.shape[0]} pixels, its record "
            f"describes {expected.shape[1]} x {expected.shape[0]}",
            entry,
        )
    diff = np.abs(expected.astype(np.int16) - pixels.astype(np.int16))
    if diff.any():
        row, col = np.argwhere(diff)[0]
        return Verdict(
            "altered",
            f"{path}: {int((diff > 0).sum())} of {diff.size} pixels differ from the digits "
            f"decoded again from its record (max {int(diff.max())} levels; first at row {row}, "
            f"column {col})",
            entry,
        )
    n = len(entry["z"])
    how = {"sample": f"prior draws, seed {entry['seed']}", "grid": "latent grid", "z": "given z"}
    return Verdict(
        "generated",
        f"{path}: generated by {bundle_dir} ({n} digits, {entry['model']} "
        f"{'' if kind == 'full' else kind + ' '}decoder {entry['precision']}, "
        f"{how[entry['mode']]}); pixel-exact",
        entry,
    )
