"""The edge kit measured: size, cold start and one-digit latency of the VAE decoder in fp32 and
int8, as ONNX and as ORT format, from Python and from Node.js, in one run.

    .venv/bin/python bench/edge.py --run RUN --calls 2000 --repeats 3 --starts 5

The ORT-format folder is written first by ``python -m export edge`` (into a temporary folder;
``--edge DIR`` reuses one). Four files: the bundle's ``vae_decoder.onnx`` and
``vae_decoder.int8.onnx``, and their ``.ort`` conversions.

- latency: one latent (batch 1) per call, one ONNX Runtime intra-op thread. Python:
  ``Bundle.generate`` (input checks included, as ``bench/latency.py``); Node:
  ``export/node/client.mjs bench`` (``session.run``, which onnxruntime-node runs off the main
  thread and returns as a promise). ``--calls`` calls after 100 warm-up calls, ``--repeats``
  times; medians of the per-repeat p50 and p99.
- cold start: wall time of a fresh process until its first digit is decoded and it exits.
  Python ``Bundle``: ``Bundle.load(DIR, precision).generate`` (every sha256 checked, every
  session of the bundle opened). Python decoder only and Node: the manifest read, the decoder
  file's sha256 checked, one session opened, one latent decoded (Node: ``client.mjs decode``).
  Python runs in the runtime-only environment (``.venv-runtime``, or ``--runtime-python``).
  ``--starts`` fresh processes per row, interleaved, after one untimed start of each.

Ratios are against the Python fp32 ``.onnx`` row of the same table. The load average and the
busiest other processes are printed with the tables: on a shared machine they say what else ran.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_RUN, REPO, machine, table  # noqa: E402

from export.bundle import Bundle  # noqa: E402
from export.edge import build_edge  # noqa: E402

CLIENT = REPO / "export" / "node" / "client.mjs"
VARIANTS = (("onnx", "fp32"), ("onnx", "int8"), ("ort", "fp32"), ("ort", "int8"))
WARMUP = 100

DECODER_ONLY = """
import hashlib, json, sys
import numpy as np, onnxruntime as ort
folder, role = sys.argv[1], sys.argv[2]
manifest = json.load(open(folder + "/manifest.json"))
entry = manifest["models"][role]
data = open(folder + "/" + entry["file"], "rb").read()
assert hashlib.sha256(data).hexdigest() == manifest["files"][entry["file"]]["sha256"]
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
digit = session.run(None, {"z": np.zeros((1, manifest["latent_dim"]), np.float32)})[0]
assert digit.shape == (1, 28, 28)
"""
BUNDLE = """
import sys
from export.bundle import Bundle
digit = Bundle.load(sys.argv[1], sys.argv[2], threads=1).generate([[0.0, 0.0]])
assert digit.shape == (1, 28, 28)
"""


def role(precision: str) -> str:
    return "vae_decoder_int8" if precision == "int8" else "vae_decoder"


def python_latency(folder: Path, precision: str, calls: int) -> tuple[float, float]:
    bundle = Bundle.load(folder, precision, threads=1)
    z = np.random.default_rng(0).standard_normal((calls + WARMUP, bundle.latent_dim))
    z = z.astype(np.float32)
    times = np.empty(calls)
    for i in range(WARMUP + calls):
        started = time.perf_counter()
        bundle.generate(z[i : i + 1], "vae")
        if i >= WARMUP:
            times[i - WARMUP] = time.perf_counter() - started
    return float(np.percentile(times, 50)) * 1e6, float(np.percentile(times, 99)) * 1e6


def node_latency(folder: Path, precision: str, calls: int) -> tuple[float, float]:
    out = subprocess.run(
        ["node", str(CLIENT), "bench", "--bundle", str(folder), "--precision", precision,
         "--threads", "1", "--calls", str(calls), "--warmup", str(WARMUP)],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    result = json.loads(out)
    return float(result["p50_us"]), float(result["p99_us"])


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def busiest_processes(n: int = 6) -> list[str]:
    """The processes using the most CPU right now, other than this one and its children."""
    out = subprocess.run(
        ["ps", "-eo", "pid,ppid,ni,pcpu,etime,args", "--sort=-pcpu"],
        capture_output=True, text=True, check=False,
    ).stdout.splitlines()[1:]  # fmt: skip
    me = os.getpid()
    rows = []
    for line in out:
        pid, ppid, ni, pcpu, etime, args = line.split(None, 5)
        if me in (int(pid), int(ppid)) or float(pcpu) < 5.0:
            continue
        rows.append(f"  nice {ni:>3}  {pcpu:>5}% cpu  up {etime:>11}  {args[:110]}")
    return rows[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with export/")
    parser.add_argument(
        "--edge", type=Path, help="an edge folder of that bundle (default: write one)"
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument(
        "--runtime-python",
        type=Path,
        default=REPO / ".venv-runtime" / "bin" / "python",
        help="interpreter of the runtime-only environment (default .venv-runtime's)",
    )
    args = parser.parse_args()
    bundle_dir = (args.run / "export").resolve()
    runtime_python = str(args.runtime_python if args.runtime_python.exists() else sys.executable)
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        edge_dir = args.edge.resolve() if args.edge else Path(tmp) / "edge"
        if not args.edge:
            build_edge(bundle_dir, edge_dir)
        folders = {"onnx": bundle_dir, "ort": edge_dir}
        manifests = {k: json.loads((f / "manifest.json").read_text()) for k, f in folders.items()}

        def file_of(fmt: str, precision: str) -> str:
            return manifests[fmt]["models"][role(precision)]["file"]

        def size(fmt: str, precision: str) -> int:
            return manifests[fmt]["files"][file_of(fmt, precision)]["bytes"]

        # latency, interleaved by repeat
        latency: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
        for _ in range(args.repeats):
            for fmt, precision in VARIANTS:
                for language, fn in (("Python", python_latency), ("Node", node_latency)):
                    result = fn(folders[fmt], precision, args.calls)
                    latency.setdefault((language, fmt, precision), []).append(result)
                    print(f"  latency {language} {fmt} {precision}: {result}", file=sys.stderr)
        # cold start
        cases = {}
        for fmt, precision in VARIANTS:
            folder = str(folders[fmt])
            cases[("Python Bundle", fmt, precision)] = [
                runtime_python, "-c", BUNDLE, folder, precision,
            ]  # fmt: skip
            cases[("Python decoder only", fmt, precision)] = [
                runtime_python, "-c", DECODER_ONLY, folder, role(precision),
            ]  # fmt: skip
            cases[("Node", fmt, precision)] = [
                "node", str(CLIENT), "decode", "--bundle", folder, "--precision", precision,
                "--z", "0,0", "--json",
            ]  # fmt: skip
        for command in cases.values():
            wall(command)  # warm the file cache
        starts: dict[tuple[str, str, str], list[float]] = {k: [] for k in cases}
        for _ in range(args.starts):
            for key, command in cases.items():
                starts[key].append(wall(command))
        load = os.getloadavg()
        others = busiest_processes()

    print(f"machine: {machine()}")
    print(f"bundle: {bundle_dir}; VAE decoder; {args.calls} calls x {args.repeats} repeats; "
          f"{args.starts} cold starts per row")  # fmt: skip
    print()
    base = size("onnx", "fp32")
    print(table(
        ["file", "precision", "bytes", "vs fp32 .onnx"],
        [[file_of(f, p), p, f"{size(f, p):,}", f"{size(f, p) / base:.2f}x"] for f, p in VARIANTS],
    ))  # fmt: skip
    print()
    medians = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
               for k, v in latency.items()}  # fmt: skip
    base50, base99 = medians[("Python", "onnx", "fp32")]
    rows = [
        [language, f".{fmt}", precision, f"{p50:,.0f}", f"{p99:,.0f}", f"{p50 / base50:.2f}x",
         f"{p99 / base99:.2f}x"]
        for (language, fmt, precision), (p50, p99) in medians.items()
    ]  # fmt: skip
    rows.sort(key=lambda r: (r[0] != "Python", r[1], r[2]))
    print(table(["client", "format", "precision", "p50 µs", "p99 µs", "p50 vs Python fp32 .onnx",
                 "p99 vs Python fp32 .onnx"], rows))  # fmt: skip
    print()
    base = statistics.median(starts[("Python Bundle", "onnx", "fp32")])
    rows = [
        [name, f".{fmt}", precision, f"{statistics.median(t):.3f}", f"{min(t):.3f}",
         f"{statistics.median(t) / base:.2f}x"]
        for (name, fmt, precision), t in starts.items()
    ]  # fmt: skip
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    print(table(["process (cold start to first digit)", "format", "precision", "median s",
                 "min s", "vs Python Bundle fp32 .onnx"], rows))  # fmt: skip
    print()
    print("load average (1, 5, 15 min) at the end: {:.2f} {:.2f} {:.2f}".format(*load))
    print("busiest other processes at the end:" if others else "no other process above 5% cpu")
    for line in others:
        print(line)


if __name__ == "__main__":
    main()
