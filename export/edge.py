"""The edge kit: a bundle's models in ONNX Runtime's ORT format, with what a reduced build needs.

    python -m export edge --bundle artifacts/export --out edge/

Every model of the bundle (encoders, decoders fp32 and int8, the denoiser, the scorers where the
bundle has them) is converted by onnxruntime's own converter
(``onnxruntime.tools.convert_onnx_models_to_ort``, optimization style Fixed) into ``<name>.ort``,
at each portable optimization level (disable, basic, extended); each file's level is chosen by
measurement (``choose_level``: no ``.ort`` may be slower than its ``.onnx`` by more than 10% per
call on one thread; of those that are not, the smallest, so that 8-bit weights stay 8-bit) and
recorded in the manifest with the timings. The folder gets ``required_operators.config`` (the operators of all of them, the input of
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

from export import timing
from export.bundle import MANIFEST, Bundle
from export.files import atomic_folder, sha256_file, write_json_atomic, write_text_atomic
from export.timing import p50_us

EXTRA = "edge"
OPERATORS = "required_operators.config"
README = "README.md"
LEVEL_VARIABLE = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"  # read by the converter
CHECK_ROWS = 64  # inputs every .ort is run on against its .onnx
CHECK_ATOL = 1e-5  # |ort - onnx| allowed (float32 rounding of differently fused kernels)
# the portable optimization levels ("all" adds layout changes for the converting machine's CPU)
LEVELS = ("disable", "basic", "extended")
SLOWER_THAN_ONNX = 1.10  # a .ort may take this much of its .onnx's time per call, no more
TIMING_CALLS = 200  # calls per file and round when the levels are timed
TIMING_ROWS = 64  # distinct inputs cycled through

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


def sample_inputs(session: ort.InferenceSession, latent_dim: int, rows: int) -> np.ndarray:
    """Seeded inputs of a model: latents from N(0, 4 I) for a latent input, uniform pixels for
    an image input; (rows, ...) float32."""
    shape = session.get_inputs()[0].shape
    rng = np.random.default_rng(0)
    if session.get_inputs()[0].name == "z":
        dim = shape[-1] if isinstance(shape[-1], int) else latent_dim  # the model's own latent
        return (2.0 * rng.standard_normal((rows, dim))).astype(np.float32)
    return rng.random((rows, *shape[1:]), dtype=np.float32)


def choose_level(onnx_p50: float, levels: dict[str, dict[str, float]]) -> str:
    """The optimization level kept for one model: among the levels whose ``.ort`` decodes one
    input within ``SLOWER_THAN_ONNX`` of its ``.onnx``'s p50, the smallest file (then the
    fastest); if none is, the fastest.

    levels: level -> {"p50_us", "bytes"} of its ``.ort``.
    """
    near = {lv: m for lv, m in levels.items() if m["p50_us"] <= SLOWER_THAN_ONNX * onnx_p50}
    if near:
        return min(near, key=lambda lv: (near[lv]["bytes"], near[lv]["p50_us"]))
    return min(levels, key=lambda lv: levels[lv]["p50_us"])


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


def _convert(sources: dict[str, Path], level: str, out: Path) -> dict[str, Path]:
    """Convert every ``sources[role]`` (.onnx) at optimization ``level`` into ``out``; returns
    role -> its .ort there."""
    convert = _converter()
    converted = {}
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=out) as tmp:
        src, dst = Path(tmp) / "onnx", Path(tmp) / "ort"
        src.mkdir()
        for path in sources.values():
            shutil.copyfile(path, src / path.name)
        log = io.StringIO()
        try:
            with _environment(LEVEL_VARIABLE, level), _quiet(log):
                convert.convert_onnx_models_to_ort(
                    src, output_dir=dst, optimization_styles=[convert.OptimizationStyle.Fixed]
                )
        except Exception as err:  # the converter raises whatever ONNX Runtime raised
            raise EdgeError(f"converting to ORT format at level {level} failed: {err}") from None
        suffix = "" if level == "all" else f".{level}"
        for role, path in sources.items():
            converted[role] = out / f"{path.stem}.{level}.ort"
            (dst / f"{path.stem}{suffix}.ort").replace(converted[role])
    return converted


def measure_levels(
    sources: dict[str, Path], candidates: dict[str, dict[str, Path]], latent_dim: int
) -> dict[str, dict[str, Any]]:
    """Every model's one-thread p50 as ``.onnx`` and as ``.ort`` at each level (one input per
    call, ``export.timing``) and the level ``choose_level`` keeps: role -> record."""
    records = {}
    for role, onnx_path in sources.items():
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        x = sample_inputs(session, latent_dim, TIMING_ROWS)
        files = [onnx_path, *(candidates[level][role] for level in LEVELS)]
        onnx_p50, *level_p50 = p50_us(files, [x] * len(files), calls=TIMING_CALLS)
        # the choice and the ratio from the figures as recorded, so the manifest checks out
        onnx_p50 = round(onnx_p50, 2)
        levels = {
            level: {"p50_us": round(p50, 2), "bytes": candidates[level][role].stat().st_size}
            for level, p50 in zip(LEVELS, level_p50, strict=True)
        }
        chosen = choose_level(onnx_p50, levels)
        records[role] = {
            "optimization": chosen,
            "onnx_p50_us": onnx_p50,
            "levels": levels,
            "ratio_to_onnx": round(levels[chosen]["p50_us"] / onnx_p50, 3),
        }
    return records


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


def check_converted(onnx_path: Path, ort_path: Path, latent_dim: int) -> float:
    """Run both files on the same inputs; raise EdgeError unless every output agrees within
    CHECK_ATOL (booleans exactly). Returns the largest absolute difference."""
    a = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(ort_path), providers=["CPUExecutionProvider"])
    x = sample_inputs(a, latent_dim, CHECK_ROWS)
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
        default = anomaly.get("default", "vae")
        for kind in ("detector", "ae", "vae"):
            if kind in anomaly:
                what = "detector_scorer.ort" if kind == "detector" else anomaly[kind]["score"]
                mark = " (the default)" if kind == default else ""
                lines.append(f"- {kind}{mark}: {what} > {anomaly[kind]['threshold']:.6g}")
        lines.append("")
    lines += [
        "Optimization level of each `.ort` (chosen by measurement when the folder was written: "
        f"among the levels whose `.ort` decodes one input within {SLOWER_THAN_ONNX - 1:.0%} of "
        "its `.onnx`'s one-thread p50, the smallest file, then the fastest):",
        "",
        "| model | level | .ort p50 us | .onnx p50 us |",
        "| --- | --- | --- | --- |",
        *(
            f"| {role} | {e['ort']['optimization']} "
            f"| {e['ort']['levels'][e['ort']['optimization']]['p50_us']:.1f} "
            f"| {e['ort']['onnx_p50_us']:.1f} |"
            for role, e in models.items()
        ),
        "",
        "A weight-only int8 file kept at level `disable` holds 8-bit weights that are "
        "dequantized on every call; at `basic` or above the converter folds them into float32 "
        "weights, as ONNX Runtime does when it loads the `.onnx`.",
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
        with tempfile.TemporaryDirectory(prefix=".levels-", dir=tmp) as work:
            candidates = {level: _convert(sources, level, Path(work)) for level in LEVELS}
            measured = measure_levels(sources, candidates, bundle.latent_dim)
            converted = {}
            for role, path in sources.items():
                converted[role] = tmp / f"{path.stem}.ort"
                candidates[measured[role]["optimization"]][role].replace(converted[role])
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
                "ort": {"optimization_style": "Fixed", **measured[role]},
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
            "optimization_rule": "per file, among the levels whose .ort decodes one input within "
            f"{SLOWER_THAN_ONNX:.0%} of its .onnx's p50 (one thread, batch 1, medians of "
            f"{timing.ROUNDS} rounds of {TIMING_CALLS} calls), the smallest file, then the "
            "fastest; if none is, the fastest",
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
