"""Reliability soak: SIGKILL the pipeline at random moments of every stage, resume it each time.

The killed-and-resumed result must be bit for bit the one of a run that was never interrupted.

    nice -n 10 .venv/bin/python bench/soak.py --kills 100 --mirror ../shared/data/mnist
    nice -n 10 .venv/bin/python bench/soak.py --kills 6 --out /tmp/soak --seed 1 --keep
    .venv/bin/python bench/soak.py --render bench/soak.json     # the tables of an earlier run

The pipeline is driven through its command line only (``run_pipeline.py --config C --out DIR
--mirror M``), in fresh processes, as a user would run it.

1. **Reference.** One uninterrupted run into ``OUT/reference``. Each stage's wall time (from its
   ``run.json``) is the first bound of the kill delays below; the stage names and their order
   come from there too.
2. **Kills.** ``--kills`` is shared over the stages as evenly as it divides (the stages that get
   one more are drawn): each stage is owed that many kills. The kills are spread over *passes*.
   A pass starts from an empty folder (``OUT/killed-<n>``) and is brought to completion by the
   same command run again and again. Each invocation is watched for the runner's
   ``[stage] running`` lines: at the first one of a stage still owed a kill, and killed fewer
   than ``--per-pass`` times in this pass, a delay is drawn uniformly between 0 and that
   stage's wall time, then the whole process group gets SIGKILL; stages owed nothing run on
   untouched. The wall time is the reference's until the stage is seen to finish in the soak,
   then the one it printed (``[name] done in N s``) the last time it finished, so the delays
   follow the load of the shared machine rather than the load during the reference run. A
   restarted stage may need less time than that (training resumes from its last checkpoint,
   evaluate reuses a classifier it had saved, ingest finds tfds' build done) and finish before
   its kill comes. If another stage owed a kill starts before then, the kill is aimed at that
   one instead, with a new delay drawn for it (the first stage is counted as *escaped*);
   otherwise the kill lands in whatever runs at that moment: a stage owed nothing, the gap
   after a ``[name] done`` line (between stages, or while the runner writes ``run.json`` after
   the last one), or nothing when the command completes first. Each kill is counted for the
   stage whose ``[name] running`` line was the last one printed before it (the output is read
   to its end after the kill, so no line is missed), marked *after its done line* when that
   stage had printed it, and charged to that stage's quota (to the aimed stage's when the
   landed one is owed nothing). A pass ends when an invocation completes;
   passes go on until every quota is used up, the last one finished by an invocation that is
   not killed. While ingest is owed kills, a pass begins with a real ingest
   (tensorflow-datasets builds MNIST from the mirror into the pass's own ``tfds/``, as in the
   reference), so ingest is hit again in each pass without removing or forcing anything; a kill
   during that build leaves whatever tfds left for the next invocation to cope with (the
   ``incomplete.*`` folders it leaves are listed in the JSON as ``tfds_leftovers``, not
   compared). Once ingest is owed nothing, a pass starts with a copy of the reference's
   ``tfds/`` and nothing else, so its ingest only reads that cache.
3. **Comparison.** Each finished pass is compared with the reference, file by file (everything
   under the run folder except ``tfds/``, tensorflow-datasets' cache, and ``.lock``):

   - the set of files: the same relative paths, so no checkpoint folder or temporary file is left
     behind and nothing is missing;
   - ``*.keras``, two checks. *keras weights*: every dataset of ``model.weights.h5`` (layer and
     optimizer variables) bit for bit. *keras config*: the same archive members, every attribute
     of ``model.weights.h5`` (the variables' owners' names), ``config.json`` value for value,
     any other member byte for byte. Allowed to differ: ``metadata.json``'s ``date_saved`` and
     the archive's member times (Keras stamps both at save time), and the numbers Keras writes
     as ``shared_object_id`` in ``config.json`` (``id()`` of an object several layers share, a
     memory address: two uninterrupted runs differ there), which are compared by their order of
     first appearance, so the sharing itself must be the same;
   - ``*.npz``: the same arrays (names, dtypes, shapes, bits);
   - ``*.onnx``: the outputs of ONNX Runtime (CPU, one thread) on fixed inputs (the reference's
     first 64 test digits for image inputs, seeded normal draws times 2 for latents), bit for
     bit; and the graph: opsets, producer, inputs, outputs, every node's type, domain,
     attributes and wiring in order, every initializer's bits. Allowed to differ: the names
     tf2onnx generates for nodes, intermediate tensors and initializers (it numbers them, and two
     uninterrupted runs were seen to differ there, e.g. ``Reshape_shape__120`` against ``__121``
     in ``denoiser.onnx``) and the graph's doc string (``converted from
     __inference_forward_<n>``, n a counter of the process's TensorFlow functions);
   - ``eval/metrics.json``: every key and value exactly, no tolerance;
   - ``export/manifest.json``: everything but ``created`` (a timestamp) and the ``sha256`` and
     ``bytes`` of the ``.keras`` and ``.onnx`` files it lists (their bytes differ as said above;
     their content is compared there);
   - ``summary.json`` files and ``eval/classifier.json``: everything but wall times
     (``seconds``, ``seconds_per_epoch``, ``train_seconds``) and the classifier's ``sha256``
     (of its ``.keras`` file);
   - ``eval/report.html``: the text, except the ``Created <timestamp>`` stamp and the classifier's
     ``(trained in this run, N s)`` / ``(reused from an earlier run, N s)`` note: a resumed
     evaluate may reuse the classifier an interrupted one had saved;
   - ``run.json``: config, seed, versions and mirror, the same stage names, each ``ran`` or
     ``skipped``; allowed to differ: ``started``, ``out`` and each stage's status, seconds and
     fingerprint (fingerprints hash input files, and ``.keras`` inputs embed their save time);
   - ``stages/*.json``: the stage name and the names of its outputs; allowed to differ:
     ``fingerprint``, the output checksums and ``finished`` (same reasons);
   - every other file (``history.csv``, figures, ``config.toml``, ``data/summary.json``,
     ``latent_boxes.json``, ...): byte for byte.

A table of kills per stage and of each comparison (equal or not, largest absolute difference)
is printed, and a JSON summary written (``--json``). The exit status is 0 when every pass
equals the reference and no restart failed; 1 when a comparison differs, a restart exited with
an error of its own (not our SIGKILL) or a stage line never came; 2 for bad arguments. Run
folders that equal the reference are deleted unless ``--keep``; the others, and every
attempt's output under ``OUT/logs``, are kept.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: python bench/soak.py
    sys.path.insert(0, str(REPO))

from bench.common import machine, table  # noqa: E402

DEFAULT_CONFIG = REPO / "configs" / "smoke.toml"
DEFAULT_JSON = REPO / "bench" / "soak.json"
MARKER = ".soak"  # in --out: the folder is this script's, its run folders may be replaced
EXCLUDED = ("tfds", ".lock")  # top-level entries of a run folder that are not compared
INGEST = "ingest"  # the stage that builds tensorflow-datasets' cache under tfds/
ONNX_BATCH = 64
LATENT_SCALE = 2.0
DIFFERENCES_SHOWN = 6  # below the tables; the JSON lists them all
ATTEMPT_TIMEOUT_S = 900.0  # a stage line (or the end) that never comes fails the soak

RUNNING = re.compile(r"^\[(?P<stage>[A-Za-z0-9_]+)\] running\s*$")
DONE = re.compile(r"^\[(?P<stage>[A-Za-z0-9_]+)\] done in (?P<seconds>[0-9.]+) s")
REPORT_MASKS = (
    (re.compile(r"Created [0-9T:+\-.Z]+"), "Created <time>"),
    (
        re.compile(r"\((?:trained in this run|reused from an earlier run), [0-9.]+ s\)"),
        "(<classifier provenance>)",
    ),
)
WALL_TIME_KEYS = frozenset({"seconds", "seconds_per_epoch", "train_seconds"})


# -- comparing two run folders ---------------------------------------------------------------------


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


def _worst(values: list[float | None]) -> float | None:
    numbers = [v for v in values if v is not None]
    return max(numbers) if numbers else None


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
                            notes.append(f"{name}:{key}: {note} (max abs {_fmt(worst)})")
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
        Check("keras weights", what, not notes, _worst(diffs), _notes(notes) or f"{arrays} arrays"),
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
    return Check(category, what, not notes, _worst(diffs), "; ".join(notes[:4]))


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
        outputs = Check("onnx outputs", what, not notes, _worst(diffs), "; ".join(notes))
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
    graph = Check("onnx graph", what, not notes, _worst(diffs), detail)
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
    with np.load(dataset, allow_pickle=False) as npz:
        return npz["test_images"][:ONNX_BATCH].astype(np.float32) / np.float32(255.0)


def compare_runs(ref: Path, other: Path) -> list[Check]:
    """Every check of ``other`` against the reference run ``ref`` (see the module docstring)."""
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
        row["max_abs_diff"] = _worst([row["max_abs_diff"], check.max_abs_diff])
    return list(rows.values())


# -- running and killing the pipeline --------------------------------------------------------------


class Child:
    """``run_pipeline.py`` in its own process group; its output lines timestamped as they come."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "run_pipeline.py"), *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: SIGKILL reaches every process it started
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with self.log.open("w") as fh:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                fh.write(line + "\n")
                fh.flush()
                with self.cond:
                    self.lines.append((time.monotonic(), line))
                    self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def next_running(
        self, stages: list[str], after: int, deadline: float
    ) -> tuple[str, tuple[float, str, int] | None]:
        """Wait for a ``[stage] running`` line of one of ``stages`` among the lines from index
        ``after`` on, until ``deadline`` (monotonic). Returns ("running", (time, stage, index
        after that line)), ("deadline", None) or ("ended", None) when the process ended first."""
        with self.cond:
            while True:
                for index in range(after, len(self.lines)):
                    t, line = self.lines[index]
                    match = RUNNING.match(line)
                    if match and match["stage"] in stages:
                        return "running", (t, match["stage"], index + 1)
                after = len(self.lines)
                if not self.reader.is_alive() and self.proc.poll() is not None:
                    return "ended", None
                left = deadline - time.monotonic()
                if left <= 0:
                    return "deadline", None
                self.cond.wait(min(left, 0.05))

    def kill(self) -> float | None:
        """SIGKILL the whole process group; the moment it was sent, None if it had ended."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return time.monotonic()

    def finish(self, timeout: float | None = None) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.wait()
        self.reader.join(timeout=30)
        return rc

    def text(self) -> str:
        with self.cond:
            return "\n".join(line for _, line in self.lines)


@dataclass
class Attempt:
    """One invocation of the pipeline command in a killed run folder."""

    pass_no: int
    index: int  # invocation number within the pass, from 1
    aimed: str | None  # the stage whose running line started the delay; None: no kill aimed
    outcome: str  # killed | completed | failed | timeout
    delay_s: float | None = None
    window_s: float | None = None  # the delay was drawn from [0, window_s]
    escaped: list[str] = field(default_factory=list)  # target stages done before their kill
    landed: str | None = None  # the stage whose running line was the last before the kill
    between_stages: bool = False  # the landed stage had printed its done line
    into_stage_s: float | None = None  # kill time minus the landed stage's running line
    returncode: int | None = None
    seconds: float = 0.0
    log: str = ""
    done: dict[str, float] = field(default_factory=dict)  # wall times of the stages it finished


def _last_stage(text: str) -> tuple[str | None, bool]:
    """(last stage with a running line, whether its done line followed) in ``text``."""
    last, done = None, False
    for line in text.splitlines():
        if match := RUNNING.match(line):
            last, done = match["stage"], False
        elif (match := DONE.match(line)) and match["stage"] == last:
            done = True
    return last, done


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TFDS_DATA_DIR",)}
    env["PYTHONUNBUFFERED"] = "1"  # the stage lines must come as they are printed
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def pipeline_args(config: Path, out: Path, mirror: Path) -> list[str]:
    return ["--config", str(config), "--out", str(out), "--mirror", str(mirror)]


def attempt_once(
    args: list[str],
    log: Path,
    stages: list[str],
    durations: dict[str, float],
    targets: list[str],
    rng: random.Random,
    pass_no: int,
    index: int,
) -> Attempt:
    """Run the command; kill it during the first of ``targets`` that runs (none: no kill)."""
    started = time.monotonic()
    child = Child(args, log, _child_env())
    attempt = Attempt(pass_no, index, None, "failed", log=str(log))
    killed_at = None
    try:
        if targets:
            event, seen = child.next_running(targets, 0, started + ATTEMPT_TIMEOUT_S)
            if event == "deadline":
                raise TimeoutError
            while event == "running":
                assert seen is not None
                moment, stage, after = seen
                if attempt.aimed is not None:
                    attempt.escaped.append(attempt.aimed)  # it finished before its kill came
                attempt.aimed = stage
                attempt.window_s = durations[stage]
                attempt.delay_s = round(rng.uniform(0.0, durations[stage]), 3)
                later = targets[targets.index(stage) + 1 :]
                event, seen = child.next_running(later, after, moment + attempt.delay_s)
            if event == "deadline":
                killed_at = child.kill()
        rc = child.finish(timeout=None if killed_at else ATTEMPT_TIMEOUT_S)
    except TimeoutError:
        child.kill()
        rc = child.finish()
        attempt.outcome = "timeout"
        attempt.returncode = rc
        attempt.seconds = round(time.monotonic() - started, 2)
        return attempt
    attempt.returncode = rc
    attempt.seconds = round(time.monotonic() - started, 2)
    for line in child.text().splitlines():
        if match := DONE.match(line):
            attempt.done[match["stage"]] = float(match["seconds"])
    if killed_at is not None and rc == -signal.SIGKILL:
        attempt.outcome = "killed"
        landed, done = _last_stage(child.text())
        attempt.landed = landed or "start-up"
        attempt.between_stages = done
        running = [t for t, line in child.lines if RUNNING.match(line)]
        if running:
            attempt.into_stage_s = round(killed_at - running[-1], 3)
    elif rc == 0:
        attempt.outcome = "completed"
    return attempt


def allocate(kills: int, stages: list[str], rng: random.Random) -> dict[str, int]:
    """``kills`` shared over ``stages`` as evenly as possible; the stages of the remainder drawn."""
    base, extra = divmod(kills, len(stages))
    lucky = set(rng.sample(range(len(stages)), extra))
    return {s: base + (i in lucky) for i, s in enumerate(stages)}


def targets_of(owed: dict[str, int], budget: dict[str, int]) -> list[str]:
    """The stages an invocation may be killed in: owed a kill overall and in this pass."""
    return [s for s, n in owed.items() if n > 0 and budget.get(s, 0) > 0]


def settle(owed: dict[str, int], budget: dict[str, int], aimed: str, landed: str) -> str:
    """Count a kill aimed at ``aimed`` that landed in ``landed``: against the landed stage when
    it is still owed kills, else against the aimed one. Returns the stage charged."""
    charged = landed if owed.get(landed, 0) > 0 else aimed
    owed[charged] -= 1
    budget[charged] = max(0, budget.get(charged, 0) - 1)
    return charged


def tfds_leftovers(run: Path) -> dict[str, int]:
    """The ``incomplete.*`` folders tensorflow-datasets left under ``tfds/`` (killed builds),
    with their sizes in bytes. Not a comparison: ``tfds/`` is tfds' cache, not an artifact."""
    found = {}
    for path in sorted((run / "tfds").rglob("incomplete.*")):
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            found[path.relative_to(run).as_posix()] = size
    return found


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise SystemExit(f"--out {out} is not empty and not a soak folder; choose another")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("run folders written by bench/soak.py\n")
    for entry in out.iterdir():
        if entry.name.startswith(("reference", "killed-", "logs")):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("numpy", "h5py", "onnx", "onnxruntime"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return "0" if value == 0 else f"{value:.3g}"


def soak(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    out = args.out
    _prepare_out(out)
    logs = out / "logs"
    logs.mkdir()
    config, mirror = args.config.resolve(), args.mirror.resolve()
    began = time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]

    reference = out / "reference"
    print(f"reference: an uninterrupted run into {reference}", flush=True)
    ref_attempt = attempt_once(
        pipeline_args(config, reference, mirror),
        logs / "reference.log",
        [],
        {},
        None,
        rng,
        0,
        1,
    )
    if ref_attempt.outcome != "completed":
        raise SystemExit(f"the reference run failed ({ref_attempt.returncode}): see {logs}")
    ref_info = json.loads((reference / "run.json").read_text())
    stages = list(ref_info["stages"])
    durations = {s: float(ref_info["stages"][s]["seconds"]) for s in stages}
    print(
        "reference stage seconds: "
        + ", ".join(f"{s} {durations[s]:.1f}" for s in stages)
        + f" ({ref_attempt.seconds:.1f} s with start-up)",
        flush=True,
    )

    attempts: list[Attempt] = []
    passes: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    owed = allocate(args.kills, stages, rng)
    quota = dict(owed)
    windows = dict(durations)  # each stage's latest wall time: the bound of its kill delays
    soak_began = time.monotonic()
    compare_seconds = 0.0
    pass_no = 0
    barren = 0  # consecutive passes in which no kill landed
    while sum(owed.values()) > 0 and not failures:
        pass_no += 1
        folder = out / f"killed-{pass_no}"
        budget = {s: min(n, args.per_pass) for s, n in owed.items()}
        cold = owed.get(INGEST, 0) > 0 or not (reference / "tfds").is_dir()
        if not cold:  # no kill owed to ingest: skip rebuilding tfds' cache, it is not compared
            shutil.copytree(reference / "tfds", folder / "tfds")
        pass_attempts: list[Attempt] = []
        while True:  # invocations of the same command until one completes
            index = len(pass_attempts) + 1
            attempt = attempt_once(
                pipeline_args(config, folder, mirror),
                logs / f"killed-{pass_no}-{index:03d}.log",
                stages,
                windows,
                targets_of(owed, budget),
                rng,
                pass_no,
                index,
            )
            pass_attempts.append(attempt)
            windows.update(attempt.done)  # the delays follow the stages' latest wall times
            if attempt.outcome == "killed":
                assert attempt.aimed is not None and attempt.landed is not None
                settle(owed, budget, attempt.aimed, attempt.landed)
                kills = sum(a.outcome == "killed" for a in [*attempts, *pass_attempts])
                where = attempt.landed + (
                    " (after its done line)" if attempt.between_stages else ""
                )
                print(
                    f"  pass {pass_no} kill {kills}/{args.kills}: "
                    f"{attempt.delay_s:.2f} s after [{attempt.aimed}] running, "
                    f"landed in {where} ({attempt.seconds:.1f} s)",
                    flush=True,
                )
            elif attempt.outcome == "completed":
                break
            else:
                failures.append({**asdict(attempt), "tail": Path(attempt.log).read_text()[-3000:]})
                print(f"  pass {pass_no}: invocation {index} {attempt.outcome}: {attempt.log}")
                break
        attempts += pass_attempts
        if failures:
            break  # nothing finished to compare
        started = time.monotonic()
        checks = compare_runs(reference, folder)
        compare_seconds += time.monotonic() - started
        equal = all(c.equal for c in checks)
        pass_kills = sum(a.outcome == "killed" for a in pass_attempts)
        passes.append(
            {
                "pass": pass_no,
                "folder": str(folder),
                "tfds_cache": "built" if cold else "copied from the reference",
                "invocations": len(pass_attempts),
                "kills": pass_kills,
                "equal": equal,
                "categories": summarize(checks),
                "differences": [asdict(c) for c in checks if not c.equal],
                "checks": len(checks),
                "tfds_leftovers": tfds_leftovers(folder),
            }
        )
        print(
            f"pass {pass_no}: {pass_kills} kills, {len(pass_attempts)} invocations, "
            f"{'equal to' if equal else 'DIFFERS from'} the reference ({len(checks)} checks); "
            f"kills still owed: {', '.join(f'{s} {n}' for s, n in owed.items() if n) or 'none'}",
            flush=True,
        )
        if equal and not args.keep:
            shutil.rmtree(folder)
        barren = barren + 1 if pass_kills == 0 else 0
        if barren == 3:  # the owed stages finish before any delay drawn for them ends
            failures.append(
                {"pass_no": pass_no, "outcome": f"no kill landed in 3 passes; still owed {owed}"}
            )
    soak_seconds = time.monotonic() - soak_began - compare_seconds

    killed = [a for a in attempts if a.outcome == "killed"]
    hit = {s: sum(a.landed == s for a in killed) for s in stages}
    other = sorted({a.landed for a in killed} - set(stages))
    hit.update({s: sum(a.landed == s for a in killed) for s in other})
    between = {s: sum(a.landed == s and a.between_stages for a in killed) for s in hit}
    aimed = {s: sum(a.aimed == s for a in killed) for s in stages}
    escaped = {s: sum(a.escaped.count(s) for a in attempts) for s in stages}
    invocations = len(attempts)
    equal = bool(passes) and all(p["equal"] for p in passes) and not failures
    return {
        "kills": len(killed),
        "kills_requested": args.kills,
        "per_pass": args.per_pass,
        "stages_hit": hit,
        "stages_hit_between": between,
        "stages_aimed": aimed,
        "quota": quota,
        "stages_escaped": escaped,
        "passes": len(passes),
        "invocations": invocations,
        "restarts": invocations - pass_no,
        "failures": failures,
        "equal": equal,
        "comparisons": passes,
        "seed": args.seed,
        "config": _shown(args.config),
        "durations": {
            "reference_stage_seconds": durations,
            "last_stage_seconds": windows,
            "reference_seconds": ref_attempt.seconds,
            "soak_seconds": round(soak_seconds, 1),
            "compare_seconds": round(compare_seconds, 1),
            "total_seconds": round(time.monotonic() - began, 1),
            "mean_kill_cycle_seconds": round(soak_seconds / len(killed), 2) if killed else None,
            "mean_invocation_seconds": (
                round(sum(a.seconds for a in attempts) / invocations, 2) if invocations else None
            ),
        },
        "versions": {"pipeline": ref_info.get("versions", {}), "soak": _versions()},
        "machine": machine(),
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "attempts": [asdict(a) for a in attempts],
    }


def render(summary: dict[str, Any]) -> str:
    stages = list(summary["stages_hit"])
    escaped = summary.get("stages_escaped", {})
    rows = [
        [s, summary["quota"].get(s, 0), escaped.get(s, 0), summary["stages_aimed"].get(s, 0)]
        + [summary["stages_hit"][s], summary["stages_hit_between"][s]]
        for s in stages
    ]
    rows.append(
        ["all", sum(summary["quota"].values()), sum(escaped.values())]
        + [sum(summary["stages_aimed"].values()), summary["kills"]]
        + [sum(summary["stages_hit_between"].values())]
    )
    d = summary["durations"]
    load = summary.get("load_average", {"start": ["?"] * 3, "end": ["?"] * 3})
    lines = [
        f"machine: {summary['machine']}",
        "load average (1, 5, 15 min) at the start {} {} {}, at the end {} {} {}".format(
            *load["start"], *load["end"]
        ),
        f"config {summary['config']}, seed {summary['seed']}, {summary['kills']} SIGKILLs "
        f"({summary['kills_requested']} requested, at most {summary['per_pass']} per stage and "
        "pass) over "
        f"{summary['passes']} pass(es) from empty folders; {summary['invocations']} invocations, "
        f"{summary['restarts']} restarts",
        "",
        table(
            ["stage", "quota", "escaped", "kills aimed", "kills landed", "after its done line"],
            rows,
        ),
        "",
    ]
    categories: dict[str, dict[str, Any]] = {}
    for pass_ in summary["comparisons"]:
        for row in pass_["categories"]:
            agg = categories.setdefault(
                row["category"], {"checks": 0, "equal": True, "max_abs_diff": None}
            )
            agg["checks"] += row["checks"]
            agg["equal"] = agg["equal"] and row["equal"]
            agg["max_abs_diff"] = _worst([agg["max_abs_diff"], row["max_abs_diff"]])
    lines.append(
        table(
            ["comparison with the reference", "checks", "equal", "max abs diff"],
            [
                [c, v["checks"], "yes" if v["equal"] else "NO", _fmt(v["max_abs_diff"])]
                for c, v in categories.items()
            ],
        )
    )
    differences = [(p["pass"], d) for p in summary["comparisons"] for d in p["differences"]]
    for pass_no, diff in differences[:DIFFERENCES_SHOWN]:
        worst = diff["max_abs_diff"]
        lines.append(
            f"  pass {pass_no}: {diff['category']} {diff['what']}: {diff['detail']}"
            + ("" if worst is None else f" (max abs {_fmt(worst)})")
        )
    if len(differences) > DIFFERENCES_SHOWN:
        lines.append(f"  ... {len(differences) - DIFFERENCES_SHOWN} more differences in the JSON")
    leftovers = [n for p in summary["comparisons"] for n in p["tfds_leftovers"].values()]
    if leftovers:
        lines.append(
            f"  tensorflow-datasets left {len(leftovers)} incomplete.* folder(s) under tfds/ "
            f"({sum(leftovers) / 2**20:.1f} MiB), from builds that were killed (not compared)"
        )
    for failure in summary["failures"]:
        lines.append(
            f"  FAILED: pass {failure['pass_no']} invocation {failure.get('index', '-')} "
            f"({failure['outcome']}, exit {failure.get('returncode', '-')}): "
            f"{failure.get('log', '')}"
        )
    lines += [
        "",
        f"reference run {d['reference_seconds']:.1f} s; kills and restarts "
        f"{d['soak_seconds']:.1f} s "
        f"(mean {_fmt(d['mean_kill_cycle_seconds'])} s per kill, "
        f"{_fmt(d['mean_invocation_seconds'])} s per invocation); comparisons "
        f"{d['compare_seconds']:.1f} s; total {d['total_seconds']:.1f} s",
        "result: "
        + ("EQUAL to the uninterrupted run" if summary["equal"] else "NOT EQUAL or failed"),
    ]
    return "\n".join(lines)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs to land (default 100)")
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="pipeline config (default: smoke)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the runs (default: a new one in /tmp)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help="summary file (default: bench/soak.json)"
    )
    parser.add_argument(
        "--mirror", type=Path, default=None, help="offline MNIST mirror (default: $MNIST_MIRROR)"
    )
    parser.add_argument(
        "--per-pass",
        type=int,
        default=3,
        help="most kills aimed at one stage in one pass from an empty folder (default 3)",
    )
    parser.add_argument("--keep", action="store_true", help="keep run folders that are equal")
    parser.add_argument(
        "--render", type=Path, default=None, help="print the tables of a summary file and exit"
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        summary = json.loads(args.render.read_text())
        print(render(summary))
        return 0 if summary["equal"] else 1
    if args.mirror is None:
        env = os.environ.get("MNIST_MIRROR")
        args.mirror = Path(env) if env else None
    if args.mirror is None or not (args.mirror / "train-images-idx3-ubyte.gz").is_file():
        print("error: give the offline MNIST mirror (--mirror or MNIST_MIRROR)", file=sys.stderr)
        return 2
    if args.kills < 1 or args.per_pass < 1:
        print("error: --kills and --per-pass must be at least 1", file=sys.stderr)
        return 2
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="mnist-vae-soak."))).resolve()
    summary = soak(args)
    summary["out"] = str(args.out)
    _write_json(args.json, summary)
    print()
    print(render(summary))
    print(f"wrote {args.json}")
    return 0 if summary["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
