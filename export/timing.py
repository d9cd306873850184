"""One-thread latency of ONNX models, one input row per call: what an edge device pays per digit.

    p50 = p50_us([fp32_path, int8_path], [z, z])     # microseconds, medians over rounds

Every file gets a session with the runtime's options on one intra-op thread
(``export.bundle.session_options(threads=1)``). Each round times every file in turn, the order
rotating from round to round, so that a machine that slows down or speeds up during the
measurement touches every file alike; the result is the median over rounds of each round's
p50. The export stage chooses int8 decoders with it (``pipeline.quantization``) and the edge
command the ORT-format optimization level of each file (``export.edge``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.bundle import session_options

CALLS = 300  # calls per file and round
ROUNDS = 5
WARMUP = 30  # untimed calls per file and round


def p50_us(
    files: Sequence[Path],
    inputs: Sequence[np.ndarray],
    calls: int = CALLS,
    rounds: int = ROUNDS,
    warmup: int = WARMUP,
) -> list[float]:
    """The p50 in microseconds of one ``session.run`` per file, batch 1, one thread.

    files: ONNX or ORT-format models; inputs: per file, rows (m, ...) of its one input, fed one
    at a time in turn.
    """
    if len(files) != len(inputs):
        raise ValueError(f"{len(files)} files but {len(inputs)} inputs")
    sessions = [
        ort.InferenceSession(str(f), session_options(threads=1), providers=["CPUExecutionProvider"])
        for f in files
    ]
    feeds = [
        [
            {s.get_inputs()[0].name: np.ascontiguousarray(x[i : i + 1], np.float32)}
            for i in range(len(x))
        ]
        for s, x in zip(sessions, inputs, strict=True)
    ]
    p50s: list[list[float]] = [[] for _ in files]
    for r in range(rounds):
        for i in [(r + k) % len(files) for k in range(len(files))]:
            session, rows = sessions[i], feeds[i]
            for k in range(warmup):
                session.run(None, rows[k % len(rows)])
            times = []
            for k in range(calls):
                started = time.perf_counter()
                session.run(None, rows[k % len(rows)])
                times.append(time.perf_counter() - started)
            p50s[i].append(statistics.median(times) * 1e6)
    return [statistics.median(values) for values in p50s]
