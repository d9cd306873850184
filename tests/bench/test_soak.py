"""The soak's comparison of two run folders (bench/soak/compare.py), on a small hand-made one:
what may differ (timestamps, wall times, generated names) does not count, and any other change
is found; and its kill plan (bench/soak/plan.py)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from bench.soak import compare, plan, runner  # noqa: E402

WEIGHTS = np.arange(6, dtype=np.float32).reshape(2, 3) / 7


def _write_keras(path: Path, kernel: np.ndarray, saved: str, shared_id: int, opt: str) -> None:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        layer = h5.create_group("layers/dense/vars")
        layer.attrs["name"] = "dense"
        layer.create_dataset("0", data=kernel)
        optimizer = h5.create_group("optimizer/vars")
        optimizer.attrs["name"] = opt
        optimizer.create_dataset("0", data=np.int64(3))
    config = {
        "config": {"layers": [{"initializer": {"shared_object_id": shared_id}}] * 2},
        "compile_config": {"optimizer": {"config": {"name": opt}}},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3", "date_saved": saved}))
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", buffer.getvalue())


def _write_onnx(path: Path, kernel: np.ndarray, init_name: str, doc: str) -> None:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["z", init_name], ["pixels"], name=f"node_{init_name}")],
        "tiny",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(kernel, init_name)],
        doc_string=doc,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _make_run(
    out: Path,
    *,
    kernel: np.ndarray = WEIGHTS,
    stamp: str = "2026-01-01T00:00:00+00:00",
    seconds: float = 1.5,
    shared_id: int = 140001,
    init_name: str = "W__120",
    opt: str = "adam",
    provenance: str = "trained in this run, 2.5 s",
) -> Path:
    _write_keras(out / "ae" / "model.keras", kernel, stamp, shared_id, opt)
    rng = np.random.default_rng(0)
    (out / "data").mkdir(parents=True)
    np.savez(
        out / "data" / "mnist.npz",
        test_images=rng.integers(0, 256, (4, 28, 28), np.uint8),
        test_labels=np.arange(4, dtype=np.int64),
    )
    (out / "eval").mkdir()
    (out / "eval" / "metrics.json").write_text(json.dumps({"ae.recon_mse": 0.25, "n": 8.0}))
    (out / "eval" / "report.html").write_text(f"<p>Created {stamp}.</p><li>({provenance})</li>")
    _write_onnx(out / "export" / "decoder.onnx", kernel, init_name, f"converted from f_{seconds}")
    onnx_bytes = (out / "export" / "decoder.onnx").read_bytes()
    manifest = {
        "created": stamp,
        "files": {
            "decoder.onnx": {
                "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
                "bytes": len(onnx_bytes),
            }
        },
        "latent_dim": 2,
    }
    (out / "export" / "manifest.json").write_text(json.dumps(manifest))
    summary = {"epochs_run": 2, "best_val_loss": 396.75, "seconds": seconds}
    (out / "ae" / "summary.json").write_text(json.dumps(summary))
    (out / "ae" / "history.csv").write_text("epoch,loss\n1,539.5\n2,448.5\n")
    run_info = {
        "config": {"train": {"epochs": 2}},
        "seed": 1234,
        "versions": {"numpy": "2"},
        "out": str(out),
        "mirror": "/mirror",
        "started": stamp,
        "stages": {"train_ae": {"status": "ran", "seconds": seconds, "fingerprint": stamp}},
    }
    (out / "run.json").write_text(json.dumps(run_info))
    (out / "stages").mkdir()
    record = {"stage": "train_ae", "fingerprint": stamp, "outputs": {"ae/model.keras": stamp}}
    (out / "stages" / "train_ae.json").write_text(json.dumps(record))
    (out / "tfds").mkdir()
    (out / "tfds" / "dataset_info.json").write_text(stamp)  # tensorflow-datasets' cache
    (out / ".lock").touch()
    return out


def _failing(checks: list[compare.Check]) -> dict[str, compare.Check]:
    return {f"{c.category}:{c.what}": c for c in checks if not c.equal}


def test_allowed_differences_compare_equal(tmp_path: Path):
    ref = _make_run(tmp_path / "ref")
    other = _make_run(
        tmp_path / "other",
        stamp="2026-06-30T23:59:59+00:00",
        seconds=9.25,
        shared_id=139999,
        init_name="W__121",
        provenance="reused from an earlier run, 2.5 s",
    )
    checks = compare.compare_runs(ref, other)
    assert _failing(checks) == {}
    categories = {row["category"] for row in compare.summarize(checks)}
    assert {"keras weights", "keras config", "onnx outputs", "onnx graph", "metrics"} <= categories
    assert {"manifest", "arrays", "summaries", "report", "bookkeeping", "bytes"} <= categories


def _one_ulp(out: Path) -> None:
    kernel = WEIGHTS.copy()
    kernel[1, 2] = np.nextafter(kernel[1, 2], np.float32(1))
    _write_keras(out / "ae" / "model.keras", kernel, "x", 140001, "adam")


ALTERATIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "a weight one ulp off": (_one_ulp, "keras weights:ae/model.keras"),
    "another optimizer name": (
        lambda out: _write_keras(out / "ae" / "model.keras", WEIGHTS, "x", 140001, "adam_1"),
        "keras config:ae/model.keras",
    ),
    "a metric": (
        lambda out: (out / "eval" / "metrics.json").write_text(
            json.dumps({"ae.recon_mse": 0.25000000000000006, "n": 8.0})
        ),
        "metrics:eval/metrics.json",
    ),
    "an ONNX weight": (
        lambda out: _write_onnx(out / "export" / "decoder.onnx", WEIGHTS * 2, "W__120", "d"),
        "onnx outputs:export/decoder.onnx",
    ),
    "a leftover checkpoint": (
        lambda out: (out / "ae" / "checkpoint").mkdir() or (out / "ae" / "checkpoint" / "s").touch(),
        "files:",
    ),
    "a history row": (
        lambda out: (out / "ae" / "history.csv").write_text("epoch,loss\n1,539.5\n2,448.6\n"),
        "bytes:ae/history.csv",
    ),
    "the manifest's latent size": (
        lambda out: (out / "export" / "manifest.json").write_text(
            (out / "export" / "manifest.json").read_text().replace('"latent_dim": 2', '"latent_dim": 3')
        ),
        "manifest:export/manifest.json",
    ),
}  # fmt: skip


@pytest.mark.parametrize("alteration", list(ALTERATIONS))
def test_any_other_difference_is_found(tmp_path: Path, alteration: str):
    ref = _make_run(tmp_path / "ref")
    other = tmp_path / "other"
    shutil.copytree(ref, other)
    alter, expected = ALTERATIONS[alteration]
    alter(other)
    failing = _failing(compare.compare_runs(ref, other))
    assert any(key.startswith(expected) for key in failing), failing
    if alteration == "a weight one ulp off":
        assert list(failing) == [expected]  # the config, the ONNX file and the rest are equal
        assert 0 < failing[expected].max_abs_diff < 1e-6
    if alteration == "an ONNX weight":
        assert "onnx graph:export/decoder.onnx" in failing
        assert failing[expected].max_abs_diff > 0


def test_kills_are_shared_over_the_stages_and_charged_where_they_land():
    stages = ["ingest", "train_ae", "train_vae", "train_denoiser", "evaluate", "export"]
    rng = random.Random(0)
    assert plan.allocate(6, stages, rng) == dict.fromkeys(stages, 1)
    owed = plan.allocate(20, stages, rng)
    assert list(owed) == stages and sorted(owed.values()) == [3, 3, 3, 3, 4, 4]
    owed = {"ingest": 1, "train_ae": 2, "export": 0}
    budget = {"ingest": 1, "train_ae": 1, "export": 1}
    assert plan.targets_of(owed, budget) == ["ingest", "train_ae"]
    assert plan.settle(owed, budget, "ingest", "train_ae") == "train_ae"  # landed later
    assert plan.targets_of(owed, budget) == ["ingest"]  # train_ae's share of this pass is used
    assert plan.settle(owed, budget, "ingest", "export") == "ingest"  # export is owed nothing
    assert owed == {"ingest": 0, "train_ae": 1, "export": 0}
    assert plan.targets_of(owed, budget) == []


def test_the_stage_running_at_a_kill_is_the_last_running_line():
    log = "[ingest] up to date (fingerprint ab), skipped\n[train_ae] running\nEpoch 1/2\n"
    assert runner.last_stage(log) == ("train_ae", False)
    assert runner.last_stage(log + "[train_ae] done in 2.9 s\n") == ("train_ae", True)
    assert runner.last_stage("removed 1 temporary file(s)\n") == (None, False)
