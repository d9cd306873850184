"""The edge kit measured: size, cold start and one-digit latency of the VAE decoder in fp32 and
int8, as ONNX and as ORT format, from Python and from Node.js, in one run.

    python -m bench.edge --run artifacts --calls 2000 --repeats 3 --starts 5

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
Writes ``bench/results/edge.json`` (``--json``), with the edge folder's operator list and its
ORT-against-ONNX check.
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
from typing import Any

import numpy as np

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
from export.bundle import Bundle
from export.edge import build_edge

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


def render(report: dict[str, Any]) -> str:
    """The run's three tables, from its result file."""
    sizes = report["sizes"]
    base = next(r["bytes"] for r in sizes if r["format"] == "onnx" and r["precision"] == "fp32")
    lines = [
        f"machine: {report['machine']}",
        f"VAE decoder; {report['calls']} calls x {report['repeats']} repeats; "
        f"{report['starts']} cold starts per row",
        "",
        table(
            ["file", "precision", "bytes", "vs fp32 .onnx"],
            [
                [r["file"], r["precision"], f"{r['bytes']:,}", f"{r['bytes'] / base:.2f}x"]
                for r in sizes
            ],
        ),  # fmt: skip
        "",
    ]
    latency = sorted(report["latency"], key=lambda r: (r["client"] != "Python", r["format"],
                                                        r["precision"]))  # fmt: skip
    ref = next(r for r in latency if (r["client"], r["format"], r["precision"]) ==
               ("Python", "onnx", "fp32"))  # fmt: skip
    rows = [
        [r["client"], f".{r['format']}", r["precision"], f"{r['p50_us']:,.0f}",
         f"{r['p99_us']:,.0f}", f"{r['p50_us'] / ref['p50_us']:.2f}x",
         f"{r['p99_us'] / ref['p99_us']:.2f}x"]
        for r in latency
    ]  # fmt: skip
    lines += [
        table(
            [
                "client",
                "format",
                "precision",
                "p50 µs",
                "p99 µs",
                "p50 vs Python fp32 .onnx",
                "p99 vs Python fp32 .onnx",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]
    starts = sorted(report["cold_start"], key=lambda r: (r["process"], r["format"],
                                                          r["precision"]))  # fmt: skip
    ref = statistics.median(next(r for r in starts if (r["process"], r["format"], r["precision"])
                                 == ("Python Bundle", "onnx", "fp32"))["seconds"])  # fmt: skip
    rows = [
        [r["process"], f".{r['format']}", r["precision"], f"{statistics.median(r['seconds']):.3f}",
         f"{min(r['seconds']):.3f}", f"{statistics.median(r['seconds']) / ref:.2f}x"]
        for r in starts
    ]  # fmt: skip
    lines += [
        table(
            [
                "process (cold start to first digit)",
                "format",
                "precision",
                "median s",
                "min s",
                "vs Python Bundle fp32 .onnx",
            ],
            rows,
        ),  # fmt: skip
        "",
        render_load(report["load"]),
    ]
    return "\n".join(lines)


def render_operators(report: dict[str, Any]) -> str:
    """The edge folder's ``required_operators.config`` lines and its conversion check."""
    check = report["edge_check"]
    worst = {
        "fp32": max(v for k, v in check["max_abs_diff"].items() if "int8" not in k),
        "int8": max((v for k, v in check["max_abs_diff"].items() if "int8" in k), default=None),
    }
    text = "```\n" + "\n".join(report["operators"]) + "\n```\n\n"
    text += (
        f"Every `.ort` against its `.onnx` on {check['inputs']} seeded inputs (tolerance "
        f"{check['atol']:g}): largest difference {worst['fp32']:.2g} for the fp32 files"
    )
    if worst["int8"] is not None:
        text += f", {worst['int8']:.2g} for the int8 ones"
    return text + "."


def index_line(r: dict[str, Any]) -> str:
    """The line of the benchmarks' index: this result's headline figure."""
    size = {(x["format"], x["precision"]): x["bytes"] for x in r["sizes"]}
    node = next(
        x
        for x in r["latency"]
        if (x["client"], x["format"], x["precision"]) == ("Node", "ort", "fp32")
    )
    return (
        f"int8 `.ort` {size['ort', 'int8'] / size['onnx', 'fp32']:.0%} of the fp32 `.onnx`; "
        f"Node fp32 `.ort` p50 {node['p50_us']:,.0f} µs"
    )


def main(argv: list[str] | None = None) -> None:
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
    parser.add_argument("--json", type=Path, default=result_path("edge"), help="result file")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
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
        edge_manifest = manifests["ort"]
        sizes = [
            {"file": file_of(f, p), "format": f, "precision": p, "bytes": size(f, p)}
            for f, p in VARIANTS
        ]
    report = {
        "machine": machine(),
        "command": command_line(),
        "run": str(args.run),
        "calls": args.calls,
        "repeats": args.repeats,
        "warmup": WARMUP,
        "starts": args.starts,
        "sizes": sizes,
        "latency": [
            {
                "client": c,
                "format": f,
                "precision": p,
                "p50_us": statistics.median(r[0] for r in v),
                "p99_us": statistics.median(r[1] for r in v),
                "repeats_us": v,
            }
            for (c, f, p), v in latency.items()
        ],  # fmt: skip
        "cold_start": [
            {"process": n, "format": f, "precision": p, "seconds": t}
            for (n, f, p), t in starts.items()
        ],
        "operators": edge_manifest["edge"]["operators"],
        "edge_check": edge_manifest["edge"]["check"],
        "onnxruntime": edge_manifest["edge"]["onnxruntime"],
        "load": load_report(load_start),
    }
    write_result(args.json, report)
    print(render(report))


if __name__ == "__main__":
    main()
