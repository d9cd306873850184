"""Runs stages in order, skipping those whose outputs exist with the same fingerprint.

    results = run_stages(cfg, paths, ["ingest", "train_ae"], force=False)

A stage's fingerprint hashes the config sections it reads and the content of its input files.
It is recorded under ``stages/<name>.json`` only after every output is written, so a stage that
was killed halfway is redone, never skipped. ``run.json`` records the resolved config, library
versions, the seed and each stage's status and wall time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import re
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from export.files import sha256_file, sha256_json, write_json_atomic, write_text_atomic
from pipeline import bundler, compact, denoiser, detector, evaluate, ingest, train
from pipeline.common import Paths, Stage, library_versions, remove_stale_temporaries
from pipeline.config import Config, config_to_toml

# every stage, in pipeline order; each module declares its own
STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        ingest.STAGE,
        train.AE_STAGE,
        train.VAE_STAGE,
        compact.STAGE,
        denoiser.STAGE,
        detector.STAGE,
        evaluate.STAGE,
        bundler.STAGE,
    )
}


class StageError(RuntimeError):
    """A stage failed; the message names the stage and the cause."""


LOCK_FILE = ".lock"
WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the file size limit is reached",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "no permission to write there",
}
# errors whose message says it all: no traceback for these
EXPLAINED_ERRORS: tuple[type[BaseException], ...] = (
    ingest.MirrorError,
    ingest.DatasetCacheError,
    OSError,
)


def describe_error(err: BaseException) -> str:
    """``err`` as one line; a full or unwritable disk says so and names the file."""
    text = " ".join(str(err).split())  # h5py's messages span lines
    code = getattr(err, "errno", None)
    if isinstance(err, OSError) and code in WRITE_ERRNOS:
        found = re.search(r"filename = '([^']+)'", text)  # h5py names the file in its text
        filename = err.filename or (found.group(1) if found else None)
        where = f"cannot write {filename}" if filename else "cannot write"
        return f"{where}: {os.strerror(code)} (errno {code}: {WRITE_ERRNOS[code]})"
    return text if isinstance(err, EXPLAINED_ERRORS) else f"{type(err).__name__}: {text}"


@contextlib.contextmanager
def locked_out(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` so two runs never write the same artifacts.

    The kernel drops the lock when the process dies, even by SIGKILL.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise StageError(f"cannot write to --out {out}: {describe_error(err)}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StageError(
                f"another run is writing to {out} (it holds {out / LOCK_FILE}); "
                "wait for it or choose another --out"
            ) from None
        yield
    finally:
        os.close(fd)


def _relative(path: Path, paths: Paths) -> str:
    try:
        return str(Path(path).relative_to(paths.out))
    except ValueError:
        return Path(path).name  # mirror files: their names, not where the mirror sits


def fingerprint(stage: Stage, cfg: Config, paths: Paths) -> str:
    """sha256 over the stage's config sections and the sha256 of each input file."""
    inputs = {}
    for path in stage.inputs(paths):
        inputs[_relative(path, paths)] = sha256_file(path) if Path(path).is_file() else "missing"
    return sha256_json(
        {
            "stage": stage.name,
            "config": {s: cfg.section(s) for s in stage.sections},
            "inputs": inputs,
        }
    )


def _record_path(stage: Stage, paths: Paths) -> Path:
    return paths.stages_dir / f"{stage.name}.json"


def is_up_to_date(stage: Stage, paths: Paths, print_: str) -> bool:
    """True when the recorded fingerprint equals ``print_`` and every output still matches."""
    record_file = _record_path(stage, paths)
    if not record_file.is_file():
        return False
    try:
        record = json.loads(record_file.read_text())
    except json.JSONDecodeError:
        return False
    if record.get("fingerprint") != print_:
        return False
    recorded = record.get("outputs", {})
    for path in stage.outputs(paths):
        rel = _relative(path, paths)
        if not path.is_file() or recorded.get(rel) != sha256_file(path):
            return False
    return True


def _write_record(stage: Stage, paths: Paths, print_: str) -> None:
    outputs = {}
    for path in stage.outputs(paths):
        if not path.is_file():
            raise StageError(f"stage {stage.name} finished without writing {path}")
        outputs[_relative(path, paths)] = sha256_file(path)
    write_json_atomic(
        _record_path(stage, paths),
        {
            "stage": stage.name,
            "fingerprint": print_,
            "outputs": outputs,
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )


def _load_run_json(paths: Paths) -> dict[str, Any]:
    try:
        return json.loads(paths.run_json.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def run_stages(
    cfg: Config, paths: Paths, names: list[str], force: bool = False
) -> dict[str, dict[str, Any]]:
    """Run ``names`` in pipeline order; returns {stage: {"status", "seconds", ...}}.

    Raises ``StageError`` after recording the failure in ``run.json``.
    """
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise StageError(f"unknown stage(s) {unknown}; expected some of {list(STAGES)}")
    with locked_out(paths.out):
        return _run_locked(cfg, paths, names, force)


def _run_locked(
    cfg: Config, paths: Paths, names: list[str], force: bool
) -> dict[str, dict[str, Any]]:
    stale = remove_stale_temporaries(paths.out, skip=(paths.tfds_data_dir,))
    if stale:
        print(f"removed {len(stale)} temporary file(s) or folder(s) left by an interrupted run")
    try:
        write_text_atomic(paths.config_toml, config_to_toml(cfg))
    except OSError as err:
        raise StageError(f"cannot write to --out {paths.out}: {describe_error(err)}") from err
    previous = _load_run_json(paths).get("stages", {})
    run_info: dict[str, Any] = {
        "config": cfg.to_dict(),
        "seed": cfg.train.seed,
        "versions": library_versions(),
        "out": str(paths.out),
        "mirror": str(paths.mirror) if paths.mirror is not None else None,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "stages": dict(previous),
    }
    results: dict[str, dict[str, Any]] = {}
    for name in [n for n in STAGES if n in names]:
        stage = STAGES[name]
        print_ = fingerprint(stage, cfg, paths)
        if not force and is_up_to_date(stage, paths, print_):
            results[name] = {"status": "skipped", "seconds": 0.0, "fingerprint": print_}
            print(f"[{name}] up to date (fingerprint {print_[:12]}), skipped")
        else:
            print(f"[{name}] running")
            started = time.perf_counter()
            try:
                stage.run(cfg, paths)
                _write_record(stage, paths, print_)
            except Exception as err:
                seconds = time.perf_counter() - started
                results[name] = {
                    "status": "failed",
                    "seconds": round(seconds, 2),
                    "error": describe_error(err),
                }
                run_info["stages"].update(results)
                with contextlib.suppress(OSError):  # a full disk may refuse run.json too
                    write_json_atomic(paths.run_json, run_info)
                if not isinstance(err, (*EXPLAINED_ERRORS, StageError)):
                    traceback.print_exc()
                raise StageError(f"stage {name} failed: {describe_error(err)}") from err
            seconds = time.perf_counter() - started
            results[name] = {"status": "ran", "seconds": round(seconds, 2), "fingerprint": print_}
            print(f"[{name}] done in {seconds:.1f} s")
        run_info["stages"].update(results)
        try:
            write_json_atomic(paths.run_json, run_info)
        except OSError as err:
            raise StageError(f"cannot write {paths.run_json}: {describe_error(err)}") from err
    return results
