"""Runs stages in order, skipping those whose outputs exist with the same fingerprint.

    results = run_stages(cfg, paths, ["ingest", "train_ae"], force=False)

A stage's fingerprint hashes the config sections it reads and the content of its input files.
It is recorded under ``stages/<name>.json`` only after every output is written, so a stage that
was killed halfway is redone, never skipped. ``run.json`` records the resolved config, library
versions, the seed and each stage's status and wall time.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import evaluate, ingest, train
from pipeline import export as export_stage
from pipeline.common import (
    Paths,
    library_versions,
    sha256_file,
    sha256_json,
    write_json_atomic,
    write_text_atomic,
)
from pipeline.config import Config, config_to_toml


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Config, Paths], Any]
    sections: tuple[str, ...]  # config sections whose values the stage depends on
    inputs: Callable[[Paths], list[Path]]
    outputs: Callable[[Paths], list[Path]]


def _model_files(paths: Paths, kind: str) -> list[Path]:
    d = paths.model_dir(kind)
    return [d / name for name in (*train.MODEL_FILES, "history.csv", "summary.json")]


STAGES: dict[str, Stage] = {
    "ingest": Stage(
        "ingest",
        ingest.run,
        ("data",),
        ingest.ingest_inputs,
        lambda p: [p.dataset, p.dataset_summary],
    ),
    "train_ae": Stage(
        "train_ae",
        train.run_ae,
        ("data", "model", "train"),
        lambda p: [p.dataset],
        lambda p: _model_files(p, "ae"),
    ),
    "train_vae": Stage(
        "train_vae",
        train.run_vae,
        ("data", "model", "train"),
        lambda p: [p.dataset],
        lambda p: _model_files(p, "vae"),
    ),
    "evaluate": Stage(
        "evaluate",
        evaluate.run,
        ("data", "evaluate"),
        evaluate.evaluate_inputs,
        evaluate.evaluate_outputs,
    ),
    "export": Stage(
        "export",
        export_stage.run,
        ("data", "train", "evaluate", "export"),  # train: the seed of the prior draws
        export_stage.export_inputs,
        export_stage.export_outputs,
    ),
}


class StageError(RuntimeError):
    """A stage failed; the message names the stage and the cause."""


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
    paths.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths.config_toml, config_to_toml(cfg))
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
                    "error": f"{type(err).__name__}: {err}",
                }
                run_info["stages"].update(results)
                write_json_atomic(paths.run_json, run_info)
                if not isinstance(err, ingest.MirrorError | StageError):
                    traceback.print_exc()
                raise StageError(f"stage {name} failed: {err}") from err
            seconds = time.perf_counter() - started
            results[name] = {"status": "ran", "seconds": round(seconds, 2), "fingerprint": print_}
            print(f"[{name}] done in {seconds:.1f} s")
        run_info["stages"].update(results)
        write_json_atomic(paths.run_json, run_info)
    return results
