"""Comparing a killed-and-resumed run folder with the uninterrupted reference, file by file:
what may differ (timestamps, wall times, names generated per process) does not count, anything
else does. The rules, file by file, are in docs/benchmarks/soak.md ("Comparison").

    checks = compare_runs(Path("reference"), Path("killed-1"))
    rows = summarize(checks)    # one row per category: checks, all equal, max |difference|
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data import load_split

EXCLUDED = ("tfds", ".lock")  # top-level entries of a run folder that are not compared
ONNX_BATCH = 64
LATENT_SCALE = 2.0
REPORT_MASKS = (
    (re.compile(r"Created [0-9T:+\-.Z]+"), "Created <time>"),
    (
        re.compile(r"\((?:trained in this run|reused from an earlier run), [0-9.]+ s\)"),
        "(<classifier provenance>)",
    ),
)
WALL_TIME_KEYS = frozenset({"seconds", "seconds_per_epoch", "train_seconds"})


@dataclass
class Check:
    """One comparison: ``what`` is a file (or a file and a part of it)."""

    category: str
    what: str
    equal: bool
    max_abs_diff: float | None = None  # over numeric values, when there are any
    detail: str = ""


def _array_diff(a: np.ndarray, b: np.ndarray) -> tuple[bool, float | None, str]:
    """(bitwise equal, max |a - b| for numeric arrays of one shape, a note when they differ)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "USO" and b.dtype.kind in "USO" and a.shape == b.shape:  # names
        equal = a.tolist() == b.tolist()
        return equal, None, "" if equal else f"{a.tolist()!r} vs {b.tolist()!r}"[:200]
    if a.dtype != b.dtype or a.shape != b.shape:
        return False, math.inf, f"dtype/shape {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    equal = a.tobytes() == b.tobytes()
    if a.dtype.kind in "fciub" and a.size:
        with np.errstate(all="ignore"):
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        worst = float(np.nanmax(diff)) if not np.all(np.isnan(diff)) else 0.0
        note = "" if equal else f"{int(np.count_nonzero(a != b))} of {a.size} values differ"
        return equal, worst, note
    if equal:
        return True, None, ""
    if a.size <= 4:
        return False, None, f"{a.tolist()!r} vs {b.tolist()!r}"
    return False, None, "contents differ"


def max_known(values: list[float | None]) -> float | None:
    numbers = [v for v in values if v is not None]
    return max(numbers) if numbers else None


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return "0" if value == 0 else f"{value:.3g}"


def _h5_items(data: bytes) -> dict[str, tuple[str, Any]]:
    """Every group/dataset attribute and dataset of an HDF5 file: {path: (kind, value)}."""
    import h5py

    items: dict[str, tuple[str, Any]] = {}
    with h5py.File(io.BytesIO(data), "r") as h5:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                items[name] = ("dataset", np.asarray(obj[()]))
            for key, value in obj.attrs.items():
                items[f"{name}@{key}"] = ("attr", np.asarray(value))

        for key, value in h5.attrs.items():
            items[f"/@{key}"] = ("attr", np.asarray(value))
        h5.visititems(visit)
    return items


def _shared_ids_in_order(config: Any) -> Any:
    """A Keras config with each ``shared_object_id`` (Python's ``id()`` of an object shared by
    several layers, a memory address) replaced by its order of first appearance."""
    order: dict[Any, int] = {}

    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {
                k: order.setdefault(v, len(order)) if k == "shared_object_id" else walk(v)
                for k, v in obj.items()
            }
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    return walk(config)


def _notes(notes: list[str], limit: int = 4) -> str:
    return "; ".join(notes[:limit]) + (
        f"; +{len(notes) - limit} more" if len(notes) > limit else ""
    )


def compare_keras(a: Path, b: Path, what: str) -> list[Check]:
    """Two checks: the variables of ``model.weights.h5`` (numbers), and everything else."""
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        names_a, names_b = sorted(za.namelist()), sorted(zb.namelist())
        if names_a != names_b:
            note = f"members {names_a} vs {names_b}"
            return [
                Check("keras weights", what, False, math.inf, note),
                Check("keras config", what, False, None, note),
            ]
        diffs: list[float | None] = []
        notes: list[str] = []  # the variables
        config_notes: list[str] = []  # the rest
        arrays = 0
        for name in names_a:
            da, db = za.read(name), zb.read(name)
            if name == "metadata.json":
                ma, mb = json.loads(da), json.loads(db)
                ma.pop("date_saved", None)
                mb.pop("date_saved", None)
                if ma != mb:
                    config_notes.append(f"metadata.json {ma} vs {mb}")
            elif name.endswith(".h5"):
                ia, ib = _h5_items(da), _h5_items(db)
                if sorted(ia) != sorted(ib):
                    only = sorted(set(ia) ^ set(ib))[:5]
                    notes.append(f"{name}: different variables, e.g. {only}")
                    diffs.append(math.inf)
                    continue
                for key in sorted(ia):
                    kind, value = ia[key]
                    equal, worst, note = _array_diff(value, ib[key][1])
                    if kind == "dataset":
                        arrays += 1
                        diffs.append(worst)
                        if not equal:
                            notes.append(f"{name}:{key}: {note} (max abs {fmt(worst)})")
                    elif not equal:  # an attribute: a name, not a number the model computes with
                        config_notes.append(f"{name}:{key}: {note}")
            elif name.endswith(".json"):
                ja, jb = (_shared_ids_in_order(json.loads(d)) for d in (da, db))
                if ja != jb:
                    paths, _ = _json_diff(ja, jb)
                    config_notes.append(f"{name} {', '.join(paths[:3])}")
            elif da != db:
                config_notes.append(f"{name} differs")
    return [
        Check(
            "keras weights", what, not notes, max_known(diffs), _notes(notes) or f"{arrays} arrays"
        ),
        Check("keras config", what, not config_notes, None, _notes(config_notes)),
    ]


def compare_npz(a: Path, b: Path, what: str, category: str = "arrays") -> Check:
    with np.load(a, allow_pickle=False) as na, np.load(b, allow_pickle=False) as nb:
        if sorted(na.files) != sorted(nb.files):
            return Check(category, what, False, math.inf, f"arrays {na.files} vs {nb.files}")
        diffs, notes = [], []
        for key in sorted(na.files):
            equal, worst, note = _array_diff(na[key], nb[key])
            diffs.append(worst)
            if not equal:
                notes.append(f"{key}: {note}")
    return Check(category, what, not notes, max_known(diffs), "; ".join(notes[:4]))


def _json_diff(a: Any, b: Any, path: str = "") -> tuple[list[str], list[float]]:
    """Paths where two JSON values differ, and |a - b| of the numbers that differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        paths, diffs = [], []
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                paths.append(f"{path}/{key} (only in {'reference' if key in a else 'this run'})")
                continue
            p, d = _json_diff(a[key], b[key], f"{path}/{key}")
            paths += p
            diffs += d
        return paths, diffs
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path} (length {len(a)} vs {len(b)})"], []
        paths, diffs = [], []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            p, d = _json_diff(x, y, f"{path}[{i}]")
            paths += p
            diffs += d
        return paths, diffs
    numeric = (int, float)
    if isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool):
        same = a == b or (a != a and b != b)  # NaN equals NaN here
        return ([] if same else [path]), [abs(float(a) - float(b))] if not same else [0.0]
    if a == b:
        return [], []
    return [f"{path} ({a!r} vs {b!r})" if len(repr(a)) + len(repr(b)) < 80 else path], []


def _drop(obj: Any, keys: frozenset[str]) -> Any:
    """``obj`` without the given keys at any depth."""
    if isinstance(obj, dict):
        return {k: _drop(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [_drop(v, keys) for v in obj]
    return obj


def _json_check(category: str, what: str, a: Any, b: Any) -> Check:
    paths, diffs = _json_diff(a, b)
    return Check(category, what, not paths, max(diffs) if diffs else None, _notes(paths, 6))


def _manifest_view(manifest: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in manifest.items() if k != "created"}
    files = {}
    for name, entry in manifest.get("files", {}).items():
        if name.endswith((".keras", ".onnx")) and isinstance(entry, dict):
            entry = {k: v for k, v in entry.items() if k not in ("sha256", "bytes")}
        files[name] = entry
    view["files"] = files
    return view


def _run_json_view(info: dict[str, Any]) -> dict[str, Any]:
    stages = info.get("stages", {})
    return {
        **{k: info.get(k) for k in ("config", "seed", "versions", "mirror")},
        "stages": list(stages),
        "finished": all(s.get("status") in ("ran", "skipped") for s in stages.values()),
    }


def _stage_record_view(record: dict[str, Any]) -> dict[str, Any]:
    return {"stage": record.get("stage"), "outputs": sorted(record.get("outputs", {}))}


def _report_view(text: str) -> str:
    for pattern, replacement in REPORT_MASKS:
        text = pattern.sub(replacement, text)
    return text


def _onnx_inputs(session: Any, images: np.ndarray) -> dict[str, np.ndarray]:
    """Fixed inputs for every graph input: test digits for image inputs, else normal draws."""
    feeds = {}
    rng = np.random.default_rng(0)
    for spec in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else ONNX_BATCH for d in spec.shape]
        if spec.type != "tensor(float)":
            raise ValueError(f"input {spec.name} of type {spec.type}: no fixed input for it")
        if shape[-2:] == [28, 28] and len(images):
            n = shape[0]
            reps = -(-n // len(images))
            feeds[spec.name] = np.concatenate([images] * reps)[:n].reshape(shape)
        else:
            feeds[spec.name] = (LATENT_SCALE * rng.standard_normal(shape)).astype(np.float32)
    return feeds


def onnx_outputs(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX Runtime's outputs of ``path`` on the fixed inputs (CPU, one thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, _onnx_inputs(session, images)), strict=True))


def onnx_structure(path: Path) -> dict[str, Any]:
    """The graph with generated names replaced by their order of first use.

    Graph inputs and outputs keep their names (the bundle's interface); every other tensor and
    initializer is renamed ``t<k>``, k counting in node order, and node names and the graph's
    doc string (tf2onnx writes the TensorFlow function's name there, ``__inference_forward_<n>``
    with a per-process counter) are left out, so two graphs compare equal when they differ only
    in the names a converter made up.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    canonical: dict[str, str] = {}

    def name(n: str) -> str:
        if n == "" or n in keep:
            return n
        return canonical.setdefault(n, f"t{len(canonical)}")

    nodes = []
    for node in graph.node:
        attributes = []
        for attr in sorted(node.attribute, key=lambda a: a.name):
            attr = onnx.AttributeProto.FromString(attr.SerializeToString())
            attr.doc_string = ""
            attributes.append(attr.SerializeToString().hex())
        nodes.append(
            {
                "op": f"{node.domain}:{node.op_type}",
                "inputs": [name(i) for i in node.input],
                "outputs": [name(o) for o in node.output],
                "attributes": attributes,
            }
        )
    initializers = {name(t.name): numpy_helper.to_array(t) for t in graph.initializer}
    value_type = [(v.name, v.type.SerializeToString().hex()) for v in [*graph.input, *graph.output]]
    return {
        "meta": {
            "ir_version": model.ir_version,
            "opsets": sorted((o.domain, o.version) for o in model.opset_import),
            "producer": (model.producer_name, model.producer_version, model.doc_string),
            "graph": graph.name,
            "io": value_type,
        },
        "nodes": nodes,
        "initializers": initializers,
    }


def compare_onnx(a: Path, b: Path, what: str, images: np.ndarray) -> list[Check]:
    out_a, out_b = onnx_outputs(a, images), onnx_outputs(b, images)
    if sorted(out_a) != sorted(out_b):
        outputs = Check("onnx outputs", what, False, math.inf, f"{list(out_a)} vs {list(out_b)}")
    else:
        diffs, notes = [], []
        for key in sorted(out_a):
            equal, worst, note = _array_diff(out_a[key], out_b[key])
            diffs.append(worst)
            if not equal:
                notes.append(f"{key}: {note}")
        outputs = Check("onnx outputs", what, not notes, max_known(diffs), "; ".join(notes))
    sa, sb = onnx_structure(a), onnx_structure(b)
    notes, diffs = [], []
    if sa["meta"] != sb["meta"]:
        notes.append("opsets, producer or interface differ")
    if sa["nodes"] != sb["nodes"]:
        first = next(
            (i for i, (x, y) in enumerate(zip(sa["nodes"], sb["nodes"], strict=False)) if x != y),
            min(len(sa["nodes"]), len(sb["nodes"])),
        )
        notes.append(f"nodes differ from node {first} ({len(sa['nodes'])} vs {len(sb['nodes'])})")
    ia, ib = sa["initializers"], sb["initializers"]
    if sorted(ia) != sorted(ib):
        notes.append(f"initializers {len(ia)} vs {len(ib)}")
    else:
        for key in sorted(ia):
            equal, worst, note = _array_diff(ia[key], ib[key])
            diffs.append(worst)
            if not equal:
                notes.append(f"initializer {key}: {note}")
    same_bytes = a.read_bytes() == b.read_bytes()
    detail = "; ".join(notes[:4]) or (
        "identical bytes" if same_bytes else "equal apart from generated names"
    )
    graph = Check("onnx graph", what, not notes, max_known(diffs), detail)
    return [outputs, graph]


def run_files(run: Path) -> list[str]:
    """Relative paths of the files compared in a run folder (``tfds/`` and ``.lock`` excluded)."""
    files = []
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run)
        if rel.parts[0] in EXCLUDED or not (path.is_file() or path.is_symlink()):
            continue
        files.append(rel.as_posix())
    return files


def compare_file(ref: Path, other: Path, rel: str, images: np.ndarray) -> list[Check]:
    a, b = ref / rel, other / rel
    name = Path(rel).name
    if name.endswith(".keras"):
        return compare_keras(a, b, rel)
    if name.endswith(".npz"):
        return [compare_npz(a, b, rel)]
    if name.endswith(".onnx"):
        return compare_onnx(a, b, rel, images)
    if rel == "eval/metrics.json":
        return [_json_check("metrics", rel, json.loads(a.read_text()), json.loads(b.read_text()))]
    if rel == "export/manifest.json":
        va, vb = (_manifest_view(json.loads(p.read_text())) for p in (a, b))
        return [_json_check("manifest", rel, va, vb)]
    if name == "summary.json" or rel == "eval/classifier.json":
        keys = WALL_TIME_KEYS | ({"sha256"} if rel == "eval/classifier.json" else frozenset())
        va, vb = (_drop(json.loads(p.read_text()), keys) for p in (a, b))
        return [_json_check("summaries", rel, va, vb)]
    if rel == "run.json":
        va, vb = (_run_json_view(json.loads(p.read_text())) for p in (a, b))
        return [_json_check("bookkeeping", rel, va, vb)]
    if rel.startswith("stages/") and name.endswith(".json"):
        va, vb = (_stage_record_view(json.loads(p.read_text())) for p in (a, b))
        return [_json_check("bookkeeping", rel, va, vb)]
    if name == "report.html":
        equal = _report_view(a.read_text()) == _report_view(b.read_text())
        return [Check("report", rel, equal, None, "" if equal else "text differs")]
    equal = a.read_bytes() == b.read_bytes()
    return [Check("bytes", rel, equal, None, "" if equal else "bytes differ")]


def _test_images(ref: Path) -> np.ndarray:
    dataset = ref / "data" / "mnist.npz"
    if not dataset.is_file():
        return np.zeros((0, 28, 28), np.float32)
    return load_split(dataset, "test")[0][:ONNX_BATCH]


def compare_runs(ref: Path, other: Path) -> list[Check]:
    """Every check of ``other`` against the reference run ``ref`` (the rules: docs/benchmarks/soak.md)."""
    files_ref, files_other = run_files(ref), run_files(other)
    missing = sorted(set(files_ref) - set(files_other))
    extra = sorted(set(files_other) - set(files_ref))
    notes = [f"missing {missing[:5]}"] if missing else []
    notes += [f"extra {extra[:5]}"] if extra else []
    checks = [Check("files", f"{len(files_ref)} files", not notes, None, "; ".join(notes))]
    images = _test_images(ref)
    for rel in files_ref:
        if rel in files_other:
            try:
                checks += compare_file(ref, other, rel, images)
            except Exception as err:  # an unreadable file is a difference, not a crash
                checks.append(Check("unreadable", rel, False, None, f"{type(err).__name__}: {err}"))
    return checks


def summarize(checks: list[Check]) -> list[dict[str, Any]]:
    """One row per category: files checked, all equal, largest absolute difference."""
    rows: dict[str, dict[str, Any]] = {}
    for check in checks:
        row = rows.setdefault(
            check.category,
            {"category": check.category, "checks": 0, "equal": True, "max_abs_diff": None},
        )
        row["checks"] += 1
        row["equal"] = row["equal"] and check.equal
        row["max_abs_diff"] = max_known([row["max_abs_diff"], check.max_abs_diff])
    return list(rows.values())
