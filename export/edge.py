"""The edge kit: a bundle's models in ONNX Runtime's ORT format, with what a reduced build needs.

    python -m export edge --bundle artifacts/export --out edge/

Every model of the bundle (encoders, decoders fp32 and int8, the denoiser, the scorers where the
bundle has them) is converted by onnxruntime's own converter
(``onnxruntime.tools.convert_onnx_models_to_ort``, optimization style Fixed) into ``<name>.ort``.
The folder gets ``required_operators.config`` (the operators of all of them, the input of
ONNX Runtime's ``--include_ops_by_config`` for a build that holds only those kernels), a
``README.md`` describing each model, and a ``manifest.json`` in the bundle's format whose
models point at the ``.ort`` files, so ``Bundle.load(DIR)`` and the Node client read the folder
as they read a bundle. Every ``.ort`` is checked against its ``.onnx`` before the folder appears
(it is written under a temporary name and renamed into place).

The converter imports the ``onnx`` package, which the runtime does not need: it comes with the
``edge`` extra (``pip install 'mnist-vae[edge]'``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export.bundle import MANIFEST, Bundle
from export.files import atomic_folder, sha256_file, write_json_atomic, write_text_atomic

EXTRA = "edge"
OPERATORS = "required_operators.config"
README = "README.md"
LEVEL_VARIABLE = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"  # read by the converter
CHECK_ROWS = 64  # inputs every .ort is run on against its .onnx
CHECK_ATOL = 1e-5  # |ort - onnx| allowed (float32 rounding of differently fused kernels)

# what each graph input and output holds, by its name (for README.md)
MEANINGS = {
    "images": "float32 pixels in [0, 1]; 8-bit grey levels divided by 255",
    "z": "float32 latent vectors, unscaled (VAE: the prior is N(0, I); AE: the encoder's own "
    "range, see the latent boxes below)",
    "z_mean": "float32 mean of q(z|x): the image's position in the latent plane",
    "z_log_var": "float32 log-variance of q(z|x)",
    "pixels": "float32 in [0, 1] (times 255, rounded, for 8-bit grey levels)",
    "score": "float32 anomaly score, higher is more anomalous",
    "anomaly": "bool, score above the calibrated threshold",
}


class EdgeError(RuntimeError):
    """The edge kit cannot be built: the converter is missing, or a converted model differs."""


def _converter() -> Any:
    """onnxruntime's ORT-format converter module, or an EdgeError naming the extra."""
    try:
        import onnx  # noqa: F401  (the converter imports it; fail here with the extra's name)
        from onnxruntime.tools import convert_onnx_models_to_ort
    except ImportError as err:
        raise EdgeError(
            f"the edge command needs the {err.name or 'onnx'} package, which onnxruntime's "
            f"ORT-format converter imports: pip install 'mnist-vae[{EXTRA}]' (the {EXTRA} extra)"
        ) from None
    return convert_onnx_models_to_ort


def optimization_level(entry: dict[str, Any]) -> str:
    """The converter's optimization level for a model: "all" (its default), except for the
    weight-only int8 decoders. Their int8 weights are dequantized by Cast and Mul nodes, which
    the optimizer would fold into float32 weights (a .ort as large as the fp32 one); without
    optimizations the .ort keeps the 8-bit weights and dequantizes them on every call."""
    method = entry.get("quantization_choice", {}).get("method", "")
    return "disable" if method.startswith("weight_only") else "all"


@contextlib.contextmanager
def _environment(name: str, value: str) -> Any:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def _quiet(log: io.StringIO) -> Any:
    """The converter prints a line per model into ``log``; its config writer's INFO line is
    dropped."""
    logger = logging.getLogger("ort_format_model.utils")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(log):
            yield
    finally:
        logger.setLevel(level)


def _convert(sources: dict[str, Path], levels: dict[str, str], out: Path) -> dict[str, Path]:
    """Convert each ``sources[role]`` (.onnx) at ``levels[role]``; returns role -> .ort in out."""
    convert = _converter()
    converted = {}
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=out) as tmp:
        for level in sorted(set(levels.values())):
            src, dst = Path(tmp) / level, Path(tmp) / f"{level}.ort"
            src.mkdir()
            roles = [role for role, lv in levels.items() if lv == level]
            for role in roles:
                shutil.copyfile(sources[role], src / sources[role].name)
            log = io.StringIO()
            try:
                with _environment(LEVEL_VARIABLE, level), _quiet(log):
                    convert.convert_onnx_models_to_ort(
                        src, output_dir=dst, optimization_styles=[convert.OptimizationStyle.Fixed]
                    )
            except Exception as err:  # the converter raises whatever ONNX Runtime raised
                raise EdgeError(f"converting {roles} to ORT format failed: {err}") from None
            suffix = "" if level == "all" else f".{level}"
            for role in roles:
                made = dst / f"{sources[role].stem}{suffix}.ort"
                converted[role] = out / f"{sources[role].stem}.ort"
                made.replace(converted[role])
    return converted


def write_operators(models: list[Path], out: Path) -> list[str]:
    """``out`` (required_operators.config) for ``models`` by the converter's own function, with
    the models named by file name; returns its operator lines (``domain;opset;op,op``)."""
    _converter()
    from onnxruntime.tools.ort_format_model import create_config_from_models

    with _quiet(io.StringIO()):
        create_config_from_models(models, out, enable_type_reduction=False)
    lines = out.read_text().splitlines()
    names = {str(p): p.name for p in models}
    lines = [
        f"# - {names.get(line[4:], line[4:])}" if line.startswith("# - ") else line
        for line in lines
    ]
    out.write_text("\n".join(lines) + "\n")
    return [line for line in lines if line and not line.startswith("#")]


def _check_inputs(session: ort.InferenceSession, latent_dim: int) -> np.ndarray:
    """Seeded inputs for the .ort/.onnx comparison: latents from N(0, 4 I) for a latent input,
    uniform pixels for an image input."""
    shape = session.get_inputs()[0].shape
    rng = np.random.default_rng(0)
    if session.get_inputs()[0].name == "z":
        return (2.0 * rng.standard_normal((CHECK_ROWS, latent_dim))).astype(np.float32)
    return rng.random((CHECK_ROWS, *shape[1:]), dtype=np.float32)


def check_converted(onnx_path: Path, ort_path: Path, latent_dim: int) -> float:
    """Run both files on the same inputs; raise EdgeError unless every output agrees within
    CHECK_ATOL (booleans exactly). Returns the largest absolute difference."""
    a = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(ort_path), providers=["CPUExecutionProvider"])
    x = _check_inputs(a, latent_dim)
    feed = {a.get_inputs()[0].name: x}
    worst = 0.0
    for name, u, v in zip(
        [o.name for o in a.get_outputs()], a.run(None, feed), b.run(None, feed), strict=True
    ):
        if u.dtype == np.bool_:
            diff = float(np.count_nonzero(u != v))
        else:
            diff = float(np.max(np.abs(u.astype(np.float64) - v), initial=0.0))
        if not diff <= CHECK_ATOL:
            raise EdgeError(
                f"{ort_path.name}: output {name} differs from {onnx_path.name} by {diff}"
            )
        worst = max(worst, diff)
    return worst


def _io_line(args: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"`{a['name']}` ({', '.join(str(d) for d in a['shape'])}) {a['dtype']}" for a in args
    )


def readme(manifest: dict[str, Any], source: Path, operators: list[str]) -> str:
    """README.md of the edge folder: each model's inputs, outputs, meaning and size."""
    models, files = manifest["models"], manifest["files"]
    rows = [
        "| model | file | precision | inputs | outputs | bytes | .onnx bytes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for role, entry in models.items():
        rows.append(
            f"| {role} | `{entry['file']}` | {entry['precision']} | {_io_line(entry['inputs'])} "
            f"| {_io_line(entry['outputs'])} | {files[entry['file']]['bytes']:,} "
            f"| {entry['source']['bytes']:,} |"
        )
    names = sorted(
        {a["name"] for e in models.values() for a in (*e["inputs"], *e["outputs"])}
        & MEANINGS.keys()
    )
    boxes = manifest.get("latent_boxes", {})
    anomaly = manifest.get("anomaly", {})
    lines = [
        "# mnist-vae edge kit",
        "",
        f"The models of the bundle `{source}` (manifest sha256 "
        f"`{manifest['edge']['bundle_manifest_sha256'][:16]}...`) in ONNX Runtime's ORT format, "
        f"converted by onnxruntime {manifest['edge']['onnxruntime']}'s "
        "`convert_onnx_models_to_ort` (optimization style Fixed). `manifest.json` lists every "
        "file with its sha256 in the bundle's format, its models pointing at the `.ort` files: "
        "`export.bundle.Bundle.load(DIR)` and `node export/node/client.mjs --bundle DIR` read "
        "this folder as they read the bundle. `batch` is the batch axis; `.ort` files load in any "
        "ONNX Runtime build, including a reduced one (below).",
        "",
        *rows,
        "",
        "Inputs and outputs:",
        "",
        *(f"- `{name}`: {MEANINGS[name]}" for name in names),
        "",
    ]
    if boxes:
        lines += ["Latent boxes (where the decoders were trained to be used):", ""]
        for kind, box in boxes.items():
            lines.append(f"- {kind}: low {box['low']}, high {box['high']}")
        lines.append("")
    if anomaly:
        lines += [
            f"Anomaly thresholds (calibrated at a false-positive rate of {anomaly.get('fpr')} on "
            "the validation split; anomalous = score above it):",
            "",
        ]
        for kind in ("ae", "vae"):
            if kind in anomaly:
                lines.append(
                    f"- {kind}: {anomaly[kind]['score']} > {anomaly[kind]['threshold']:.6g}"
                )
        lines.append("")
    int8 = [r for r, e in models.items() if e["ort"]["optimization"] == "disable"]
    if int8:
        lines += [
            f"{', '.join(int8)}: weight-only int8, converted without graph optimizations so that "
            "their weights stay 8-bit in the `.ort` (the optimizer would fold the `Cast` and "
            "`Mul` that dequantize them into float32 weights); they are dequantized on every "
            "call. The `.onnx` of the bundle, loaded by a full ONNX Runtime, is folded once at "
            "load instead.",
            "",
        ]
    lines += [
        "## A reduced ONNX Runtime build",
        "",
        f"`{OPERATORS}` names every operator these models use (domain; opset; operators):",
        "",
        "```",
        *operators,
        "```",
        "",
        "An ONNX Runtime build with only these kernels, from ONNX Runtime's source tree:",
        "",
        "```bash",
        f"./build.sh --config MinSizeRel --minimal_build --include_ops_by_config {OPERATORS} \\",
        "    --disable_ml_ops --disable_exceptions --disable_rtti --build_shared_lib --skip_tests",
        "```",
        "",
        "A minimal build reads only `.ort` files.",
        "",
    ]
    return "\n".join(lines)


def build_edge(bundle_dir: Path, out: Path, replace: bool = False) -> dict[str, Any]:
    """Write the edge folder ``out`` from the bundle at ``bundle_dir``; returns its manifest.

    The bundle's checksums are verified first; ``out`` must not exist or be an empty folder,
    unless ``replace`` (then it is swapped for the new one at the end).
    """
    _converter()  # before anything is read: a missing extra is the likeliest failure
    if out.exists() and not replace and not (out.is_dir() and not any(out.iterdir())):
        raise EdgeError(f"--out {out}: exists and is not an empty folder (--force replaces it)")
    bundle = Bundle.load(bundle_dir)
    source = bundle.manifest
    with atomic_folder(out, replace=replace) as tmp:
        sources = {role: bundle_dir / e["file"] for role, e in source["models"].items()}
        levels = {role: optimization_level(e) for role, e in source["models"].items()}
        converted = _convert(sources, levels, tmp)
        operators = write_operators(list(converted.values()), tmp / OPERATORS)
        models, check = {}, {}
        for role, entry in source["models"].items():
            check[role] = check_converted(sources[role], converted[role], bundle.latent_dim)
            models[role] = {
                **entry,
                "file": converted[role].name,
                "source": {
                    "file": entry["file"],
                    "sha256": source["files"][entry["file"]]["sha256"],
                    "bytes": source["files"][entry["file"]]["bytes"],
                },
                "ort": {"optimization_style": "Fixed", "optimization": levels[role]},
            }
        scores = source.get("anomaly", {}).get("validation_scores")
        if scores is not None:  # the reference of the p-values
            shutil.copyfile(bundle_dir / scores["file"], tmp / scores["file"])
        manifest = {
            key: value for key, value in source.items() if key not in ("files", "test_latents")
        }
        manifest["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        manifest["models"] = models
        manifest["edge"] = {
            "bundle": str(bundle_dir),
            "bundle_manifest_sha256": sha256_file(bundle_dir / MANIFEST),
            "converter": "onnxruntime.tools.convert_onnx_models_to_ort, optimization style Fixed",
            "onnxruntime": ort.__version__,
            "required_operators": OPERATORS,
            "operators": operators,
            "check": {
                "inputs": CHECK_ROWS,
                "atol": CHECK_ATOL,
                "max_abs_diff": check,
            },
        }
        manifest["files"] = {}
        for path in sorted(tmp.iterdir()):
            if path.is_file():
                manifest["files"][path.name] = {
                    "sha256": sha256_file(path),
                    "bytes": path.stat().st_size,
                }
        text = readme(manifest, bundle_dir, operators)
        write_text_atomic(tmp / README, text)
        manifest["files"][README] = {"sha256": sha256_file(tmp / README), "bytes": len(text)}
        manifest["files"] = dict(sorted(manifest["files"].items()))
        write_json_atomic(tmp / MANIFEST, manifest)
    return manifest
