"""Faults: SIGKILL at random points, a full disk, an unwritable --out, a missing mirror, a damaged
tfds cache and a second run on the same --out. Each ends in a clear error or a clean resume,
never in half-written or lost artifacts."""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SMOKE_CONFIG, run_cli

from export.files import TEMPORARY_GLOB, TEMPORARY_GLOBS, sha256_file
from pipeline.runner import locked_out

pytestmark = pytest.mark.slow

KILL_TIMEOUT_S = 240  # per attempt: a marker that never shows up fails the test, not CI


def _copy_run(smoke_run: Path, dest: Path, parts: tuple[str, ...]) -> Path:
    """A copy of (parts of) the smoke run: e.g. ("data",) is an ingested, untrained run."""
    dest.mkdir()
    (dest / "stages").mkdir()
    for part in parts:
        shutil.copytree(smoke_run / part, dest / part)
        stage = {
            "data": "ingest",
            "ae": "train_ae",
            "vae": "train_vae",
            "compact": "train_compact",
            "denoiser": "train_denoiser",
            "detector": "train_detector",
            "background": "train_detector",
            "eval": "evaluate",
        }[part]
        shutil.copy(smoke_run / "stages" / f"{stage}.json", dest / "stages")
    return dest


def _stage_records_match(out: Path) -> list[str]:
    """Stage records whose output checksums do not match the files (should be none)."""
    bad = []
    for record_file in sorted((out / "stages").glob("*.json")):
        record = json.loads(record_file.read_text())
        for rel, digest in record["outputs"].items():
            if sha256_file(out / rel) != digest:
                bad.append(f"{record_file.name}: {rel}")
    return bad


def _wait_for(log: Path, proc: subprocess.Popen, marker: str, timeout: float) -> bool:
    """True once ``marker`` is in ``log``; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker in log.read_text(errors="replace"):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(
        f"{marker!r} did not appear within {timeout} s:\n{log.read_text()[-3000:]}"
    )


def test_sigkill_at_random_points_then_rerun_completes(
    smoke_run: Path, mirror: Path, tfds_dir: Path, tmp_path: Path
):
    """Kill the pipeline with SIGKILL during training, evaluation and export; rerun it."""
    import onnxruntime as ort

    import models
    from export.bundle import Bundle

    out = _copy_run(smoke_run, tmp_path / "run", ("data",))
    args = [
        *("--config", str(SMOKE_CONFIG), "--out", str(out), "--mirror", str(mirror)),
        *("--set", "train.epochs=4", "--set", "train.patience=4"),
    ]
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONUNBUFFERED": "1",  # the markers must reach the log as they happen
        "TFDS_DATA_DIR": str(tfds_dir),
    }
    # Where to strike: each marker is followed by a random delay of up to its bound. A smoke
    # epoch takes well under a second on idle cores, so the training delays stay short: a longer
    # one would let training finish before the kill and leave the later markers nothing to hit.
    markers = [
        ("Epoch 2/4", 0.05),  # train_ae, epoch 2: resumes after epoch 1
        ("resuming after epoch", 0.05),  # train_ae again, as it resumes
        ("Epoch 4/4", 0.05),  # the last epoch of whichever model is training
        ("[evaluate] running", 1.0),
        ("[export] running", 1.0),
        ("export: ae_decoder ", 0.2),  # mid-export: part of the bundle is in its temporary folder
    ]
    rng = random.Random(20240611)
    kills, logs = [], []
    for attempt, (marker, max_delay) in enumerate(markers):
        log = tmp_path / f"attempt{attempt}.log"
        with log.open("w") as fh:
            proc = subprocess.Popen(
                [sys.executable, str(REPO / "run_pipeline.py"), *args],
                cwd=REPO,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                if _wait_for(log, proc, marker, KILL_TIMEOUT_S):
                    time.sleep(rng.uniform(0.0, max_delay))
                    if proc.poll() is None:
                        os.killpg(proc.pid, signal.SIGKILL)
                        running = [ln for ln in log.read_text().splitlines() if "] running" in ln]
                        kills.append((marker, running[-1] if running else "start-up"))
                proc.wait(timeout=60)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        logs.append(log.read_text())
    run_cli(args, env_extra={"TFDS_DATA_DIR": str(tfds_dir)})

    print(f"SIGKILLs survived: {len(kills)}: {kills}")
    assert len(kills) >= 4, f"only {len(kills)} kills landed: {kills}"
    assert any("resuming after epoch" in text for text in logs), "no run resumed a checkpoint"
    # complete, loadable, consistent, and nothing half-written left behind
    for kind in ("ae", "vae", "denoiser"):  # smoke.toml's denoiser.epochs is 4 too
        history = (out / kind / "history.csv").read_text().splitlines()
        assert [row.split(",")[0] for row in history[1:]] == ["1", "2", "3", "4"]
        assert not (out / kind / "checkpoint").exists()
    for path in sorted(out.rglob("*.keras")):
        models.load_model(path)  # safe mode
    assert (out / "eval" / "metrics.json").is_file()
    Bundle.load(out / "export")  # checks every file against the manifest's sha256
    onnx_files = sorted((out / "export").rglob("*.onnx"))
    assert len(onnx_files) >= 4
    for path in onnx_files:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert _stage_records_match(out) == []
    assert [p for g in TEMPORARY_GLOBS for p in out.rglob(g)] == []
    info = json.loads((out / "run.json").read_text())
    assert {s["status"] for s in info["stages"].values()} <= {"ran", "skipped"}


def _limit_file_size(max_bytes: int):
    def apply() -> None:  # runs in the child: files it writes may not grow past max_bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead

    return apply


def test_disk_full_during_training_is_a_clear_error_and_keeps_artifacts(
    smoke_run: Path, mirror: Path, tfds_dir: Path, tmp_path: Path
):
    out = _copy_run(smoke_run, tmp_path / "run", ("data", "ae"))
    before = {p.name: sha256_file(p) for p in (out / "ae").iterdir()}
    proc = subprocess.run(
        [
            *(sys.executable, str(REPO / "run_pipeline.py"), "--config", str(SMOKE_CONFIG)),
            *("--out", str(out), "--mirror", str(mirror), "--stages", "train_ae", "--force"),
        ],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TFDS_DATA_DIR": str(tfds_dir)},
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limit_file_size(128 * 1024),  # the checkpoint of epoch 1 is ~1.3 MB
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: stage train_ae failed:")
    assert "cannot write " in error and "File too large (errno 27" in error, error
    assert "Traceback" not in proc.stderr
    assert {p.name: sha256_file(p) for p in (out / "ae").iterdir() if p.is_file()} == before
    assert _stage_records_match(out) == []
    # with room again, the same command resumes cleanly and the earlier record still holds
    again = run_cli(
        ["--config", str(SMOKE_CONFIG), "--out", str(out), "--mirror", str(mirror)]
        + ["--stages", "train_ae"],
        env_extra={"TFDS_DATA_DIR": str(tfds_dir)},
    )
    assert "[train_ae] up to date" in again.stdout
    assert list(out.rglob(TEMPORARY_GLOB)) == []


@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
def test_unwritable_out_is_a_clear_error(tmp_path: Path, where: str):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    out = blocker if where == "is_a_file" else blocker / "run"
    proc = run_cli(["--config", str(SMOKE_CONFIG), "--out", str(out)], check=False)
    assert proc.returncode == 1
    assert f"error: cannot write to --out {out}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert blocker.read_text() == "not a folder"


def test_missing_mirror_is_a_clear_error_and_keeps_the_dataset(
    smoke_run: Path, tfds_dir: Path, tmp_path: Path
):
    out = _copy_run(smoke_run, tmp_path / "run", ("data",))
    before = sha256_file(out / "data" / "mnist.npz")
    proc = run_cli(
        ["--config", str(SMOKE_CONFIG), "--out", str(out), "--stages", "ingest"]
        + ["--mirror", str(tmp_path / "no-such-mirror")],
        env_extra={"TFDS_DATA_DIR": str(tfds_dir)},
        check=False,
    )
    assert proc.returncode == 1
    assert "no-such-mirror is not a directory" in proc.stderr
    assert sha256_file(out / "data" / "mnist.npz") == before


def test_damaged_tfds_cache_is_a_clear_error(
    smoke_run: Path, mirror: Path, tfds_dir: Path, tmp_path: Path
):
    out = _copy_run(smoke_run, tmp_path / "run", ("data",))
    cache = tmp_path / "tfds"
    shutil.copytree(tfds_dir / "mnist", cache / "mnist")
    (record,) = (cache / "mnist").rglob("mnist-train.tfrecord*")
    data = record.read_bytes()
    record.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk or a kill
    before = sha256_file(out / "data" / "mnist.npz")
    proc = run_cli(
        ["--config", str(SMOKE_CONFIG), "--out", str(out), "--mirror", str(mirror)]
        + ["--stages", "ingest", "--force"],
        env_extra={"TFDS_DATA_DIR": str(cache)},
        check=False,
    )
    assert proc.returncode == 1
    assert f"could not read its prepared MNIST under {cache / 'mnist'}" in proc.stderr
    assert "the cache is damaged" in proc.stderr and "Traceback" not in proc.stderr
    assert sha256_file(out / "data" / "mnist.npz") == before


def test_second_run_on_the_same_out_is_refused(tmp_path: Path):
    out = tmp_path / "run"
    with locked_out(out):
        proc = run_cli(["--config", str(SMOKE_CONFIG), "--out", str(out)], check=False)
    assert proc.returncode == 1
    assert f"another run is writing to {out}" in proc.stderr


def test_temporaries_of_a_killed_run_are_removed_but_not_tfds(tmp_path: Path, capsys):
    from pipeline.common import Paths
    from pipeline.config import Config
    from pipeline.runner import run_stages

    out = tmp_path / "run"
    stale = [
        out / "ae" / ".model.k2j4.tmp.keras",
        out / ".run.x1.tmp.json",
        out / ".export.tmp.abc" / "ae_encoder.onnx",  # a bundle being built
        out / ".export.old.def" / "export" / "manifest.json",  # one being retired
    ]
    tfds_file = out / "tfds" / ".dataset_info.q.tmp.json"  # tfds' own business
    for path in [*stale, tfds_file]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    keep = out / "ae" / "model.keras"
    keep.write_text("complete")
    run_stages(Config(), Paths(out), [])
    assert not any(p.exists() for p in stale)
    assert not (out / ".export.tmp.abc").exists() and not (out / ".export.old.def").exists()
    assert tfds_file.exists() and keep.exists()
    assert "removed 4 temporary file(s) or folder(s)" in capsys.readouterr().out
