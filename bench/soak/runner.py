"""Running and killing the pipeline: one uninterrupted reference run, then passes from empty
folders, each invocation SIGKILLed at a random moment of a stage still owed a kill and run again
until it completes; each finished pass compared with the reference. The protocol is
docs/benchmarks/soak.md's.

    summary = soak(args)   # args: kills, per_pass, config, mirror, out, seed, keep
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import REPO, machine
from bench.soak.compare import compare_runs, summarize
from bench.soak.plan import allocate, settle, targets_of

MARKER = ".soak"  # in --out: the folder is the soak's, its run folders may be replaced
INGEST = "ingest"  # the stage that builds tensorflow-datasets' cache under tfds/
ATTEMPT_TIMEOUT_S = 900.0  # a stage line (or the end) that never comes fails the soak
RUNNING = re.compile(r"^\[(?P<stage>[A-Za-z0-9_]+)\] running\s*$")
DONE = re.compile(r"^\[(?P<stage>[A-Za-z0-9_]+)\] done in (?P<seconds>[0-9.]+) s")


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


def last_stage(text: str) -> tuple[str | None, bool]:
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
        landed, done = last_stage(child.text())
        attempt.landed = landed or "start-up"
        attempt.between_stages = done
        running = [t for t, line in child.lines if RUNNING.match(line)]
        if running:
            attempt.into_stage_s = round(killed_at - running[-1], 3)
    elif rc == 0:
        attempt.outcome = "completed"
    return attempt


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
    (out / MARKER).write_text("run folders written by python -m bench.soak\n")
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
