"""Wall time from a fresh process to the first generated digit: the TensorFlow-free runtime
against loading the ``.keras`` VAE decoder with TensorFlow.

    .venv/bin/python bench/cold_start.py --run artifacts --repeats 5

Each measurement starts a new Python process and waits for it to exit after one digit:
interpreter start, imports, loading (the runtime verifies every sha256 of the bundle first),
decoding one latent. The runtime runs in ``.venv-runtime`` (numpy, onnxruntime, Pillow only;
``make test`` builds it) when present, else in this interpreter; the Keras decoder in this
interpreter (``.venv``), called directly (``decoder(z)``) and through ``predict``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_RUN, REPO, machine, table  # noqa: E402

from pipeline.common import Paths  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with export/")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    run = args.run.resolve()
    runtime_python = REPO / ".venv-runtime" / "bin" / "python"
    runtime_env = ".venv-runtime" if runtime_python.exists() else "this interpreter"
    python_rt = str(runtime_python) if runtime_python.exists() else sys.executable
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
    base = statistics.median(times[next(iter(cases))])
    rows = [
        [
            name,
            f"{statistics.median(t):.2f}",
            f"{min(t):.2f}",
            f"{statistics.median(t) / base:.1f}x",
        ]
        for name, t in times.items()
    ]
    print(f"machine: {machine()}")
    print(f"{args.repeats} fresh processes each (interleaved), after one untimed start")
    print()
    print(table(["process", "median s", "min s", "vs runtime"], rows))


if __name__ == "__main__":
    main()
