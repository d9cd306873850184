"""Wall time from a fresh process to the first generated digit: the TensorFlow-free runtime
against loading the ``.keras`` VAE decoder with TensorFlow.

    python -m bench.cold_start --run artifacts --repeats 5

Each measurement starts a new Python process and waits for it to exit after one digit:
interpreter start, imports, loading (the runtime verifies every sha256 of the bundle first),
decoding one latent. The runtime runs in the runtime-only environment (``--runtime-python``,
default ``.venv-runtime``, which ``make test`` builds: numpy, onnxruntime, Pillow only) when it
exists, else in this interpreter; the Keras decoder in this interpreter (``.venv``), called
directly (``decoder(z)``) and through ``predict``. Writes ``bench/results/cold_start.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_RUN,
    REPO,
    command_line,
    load_report,
    machine,
    render_load,
    result_path,
    table,
    write_result,
)
from pipeline.common import Paths

RUNTIME = """
from export.bundle import Bundle
digit = Bundle.load({bundle!r}).generate([[0.0, 0.0]])
assert digit.shape == (1, 28, 28)
"""
KERAS = """
import keras, numpy as np
import models
decoder = keras.saving.load_model({decoder!r}, safe_mode=True)
digit = np.asarray({call})
assert digit.shape == (1, 28, 28)
"""


def wall(python: str, code: str) -> float:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    subprocess.run([python, "-c", code], cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def render(report: dict[str, Any]) -> str:
    """The run's table, from its result file."""
    times = report["seconds"]
    base = statistics.median(next(iter(times.values())))
    rows = [
        [name, f"{statistics.median(t):.2f}", f"{min(t):.2f}",
         f"{statistics.median(t) / base:.1f}x"]
        for name, t in times.items()
    ]  # fmt: skip
    return "\n".join(
        [
            f"machine: {report['machine']}",
            f"{report['repeats']} fresh processes each (interleaved), after one untimed start",
            "",
            table(["process", "median s", "min s", "vs runtime"], rows),
            "",
            render_load(report["load"]),
        ]
    )


def index_line(r: dict[str, Any]) -> str:
    """The line of the benchmarks' index: this result's headline figure."""
    medians = [statistics.median(t) for t in r["seconds"].values()]
    return f"runtime {medians[0]:.2f} s to the first digit, Keras {min(medians[1:]):.2f} s"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with export/")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--runtime-python",
        type=Path,
        default=REPO / ".venv-runtime" / "bin" / "python",
        help="interpreter of the runtime-only environment (default .venv-runtime's)",
    )
    parser.add_argument("--json", type=Path, default=result_path("cold_start"), help="result file")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    run = args.run.resolve()
    separate = args.runtime_python.exists()
    runtime_env = "runtime-only environment" if separate else "this interpreter"
    python_rt = str(args.runtime_python) if separate else sys.executable
    decoder = str(Paths(run).keras_file("vae", "decoder"))
    cases = {
        f"runtime (ONNX Runtime, {runtime_env})": (python_rt, RUNTIME.format(bundle=str(run / "export"))),
        "Keras decoder(z) (TensorFlow)": (
            sys.executable,
            KERAS.format(decoder=decoder, call="decoder(np.zeros((1, 2), np.float32))"),
        ),
        "Keras decoder.predict(z) (TensorFlow)": (
            sys.executable,
            KERAS.format(decoder=decoder, call="decoder.predict(np.zeros((1, 2), np.float32), verbose=0)"),
        ),
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in cases}
    for python, code in cases.values():
        wall(python, code)  # warm the file cache, as a second start would find it
    for _ in range(args.repeats):  # interleaved, so drifting load hits every case alike
        for name, (python, code) in cases.items():
            times[name].append(wall(python, code))
            print(f"  {name}: {times[name][-1]:.2f} s", file=sys.stderr)
    report = {
        "machine": machine(),
        "command": command_line(),
        "run": str(args.run),
        "repeats": args.repeats,
        "seconds": times,
        "load": load_report(load_start),
    }
    write_result(args.json, report)
    print(render(report))


if __name__ == "__main__":
    main()
