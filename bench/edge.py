"""The edge kit measured: size, one-digit latency and memory of every decoder (the VAE's, the
AE's, the compact one) in fp32 and int8, as ONNX and as ORT format, from Python and Node.js,
and the cold start of the VAE decoder, in one run.

    python -m bench.edge --run artifacts --calls 2000 --repeats 3 --starts 5

The ORT-format folder is written first by ``python -m export edge`` (into a temporary folder;
``--edge DIR`` reuses one).

- latency: one latent (batch 1) per call, one ONNX Runtime intra-op thread. Python:
  ``Bundle.generate`` (its input checks included); Node: ``export/node/client.mjs bench``
  (``session.run``, which onnxruntime-node runs off the main thread and returns as a promise).
  ``--calls`` calls after 100 warm-up calls, ``--repeats`` times, every file in turn within a
  repeat; medians of the per-repeat p50 and p99.
- memory: the resident set (VmRSS) of a fresh process that has read the manifest, opened one
  session on the decoder file (one thread) and decoded one latent, Python (the runtime-only
  environment) and Node; ``--starts`` processes per file, medians. ONNX Runtime reports no
  allocator statistics of its own through either API, so the process's RSS is the measure; the
  RSS of the same process before the session opens is recorded beside it.
- cold start (the VAE decoder): wall time of a fresh process until its first digit is decoded
  and it exits. Python ``Bundle``: ``Bundle.load(DIR, precision).generate`` (every sha256
  checked; the bundle opens the decoder's session on this first use). Python decoder only and Node: the manifest
  read, the decoder file's sha256 checked, one session opened, one latent decoded (Node:
  ``client.mjs decode``).

Ratios are against the same decoder's fp32 ``.onnx`` in the same client. The load average and
the busiest other processes are recorded with the tables: on a shared machine they say what else
ran. Writes ``bench/results/edge.json`` (``--json``), with the edge folder's operator list, its
ORT-against-ONNX check and each file's chosen optimization level.
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
DECODERS = {  # name -> (model, decoder) as Bundle.generate and client.mjs take them
    "vae": ("vae", "full"),
    "ae": ("ae", "full"),
    "compact": ("vae", "compact"),
}
VARIANTS = (("onnx", "fp32"), ("onnx", "int8"), ("ort", "fp32"), ("ort", "int8"))
WARMUP = 100

# a fresh Python process: the manifest, the decoder file's sha256, one session, one decode;
# prints its RSS before the session and after the decode (kB)
DECODER_ONLY = """
import hashlib, json, sys
import numpy as np, onnxruntime as ort

def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])

folder, role = sys.argv[1], sys.argv[2]
manifest = json.load(open(folder + "/manifest.json"))
entry = manifest["models"][role]
data = open(folder + "/" + entry["file"], "rb").read()
assert hashlib.sha256(data).hexdigest() == manifest["files"][entry["file"]]["sha256"]
before = rss()
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
del data
z = session.get_inputs()[0]
digit = session.run(None, {z.name: np.zeros((1, z.shape[1]), np.float32)})[0]
assert digit.shape == (1, 28, 28)
print(json.dumps({"before_kb": before, "after_kb": rss()}))
"""
# the same in Node (onnxruntime-node from the repository's node_modules)
NODE_MEMORY = """
const { readFileSync } = require("node:fs");
const crypto = require("node:crypto");
const ort = require(process.argv[3]);
const [folder, role] = [process.argv[1], process.argv[2]];
const manifest = JSON.parse(readFileSync(folder + "/manifest.json", "utf8"));
const entry = manifest.models[role];
const data = readFileSync(folder + "/" + entry.file);
if (crypto.createHash("sha256").update(data).digest("hex") !== manifest.files[entry.file].sha256) {
  throw new Error("sha256");
}
const before = process.memoryUsage().rss;
ort.InferenceSession.create(data, { intraOpNumThreads: 1, interOpNumThreads: 1 }).then(async (s) => {
  const dim = entry.inputs[0].shape[1];
  await s.run({ [s.inputNames[0]]: new ort.Tensor("float32", new Float32Array(dim), [1, dim]) });
  console.log(JSON.stringify({ before_kb: before / 1024, after_kb: process.memoryUsage().rss / 1024 }));
});
"""
BUNDLE = """
import sys
from export.bundle import Bundle
digit = Bundle.load(sys.argv[1], sys.argv[2], threads=1).generate([[0.0, 0.0]])
assert digit.shape == (1, 28, 28)
"""


def role(name: str, precision: str) -> str:
    base = "compact_decoder" if name == "compact" else f"{name}_decoder"
    return f"{base}_int8" if precision == "int8" else base


def python_latency(folder: Path, name: str, precision: str, calls: int) -> tuple[float, float]:
    bundle = Bundle.load(folder, precision, threads=1)
    model, decoder = DECODERS[name]
    z = np.random.default_rng(0).standard_normal((calls + WARMUP, bundle.latent_dim))
    if model == "ae":  # the AE's latents are its encoder's range, not N(0, 1)
        box = bundle.manifest["latent_boxes"]["ae"]
        z = np.asarray(box["low"]) + (np.asarray(box["high"]) - box["low"]) * (z * 0.2 + 0.5)
    z = z.astype(np.float32)
    times = np.empty(calls)
    for i in range(WARMUP + calls):
        started = time.perf_counter()
        bundle.generate(z[i : i + 1], model, decoder)
        if i >= WARMUP:
            times[i - WARMUP] = time.perf_counter() - started
    return float(np.percentile(times, 50)) * 1e6, float(np.percentile(times, 99)) * 1e6


def node_latency(folder: Path, name: str, precision: str, calls: int) -> tuple[float, float]:
    model, decoder = DECODERS[name]
    out = subprocess.run(
        ["node", str(CLIENT), "bench", "--bundle", str(folder), "--model", model, "--decoder",
         decoder, "--precision", precision, "--threads", "1", "--calls", str(calls),
         "--warmup", str(WARMUP)],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    result = json.loads(out)
    return float(result["p50_us"]), float(result["p99_us"])


def memory(command: list[str]) -> dict[str, float]:
    out = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def _row_key(r: dict[str, Any]) -> tuple:
    return (
        list(DECODERS).index(r["decoder"]),
        r["client"] != "Python",
        r["format"],
        r["precision"],
    )


def fp32_onnx(rows: list[dict[str, Any]], field: str) -> dict[tuple[str, str], float]:
    """{(decoder, client): ``field`` of its fp32 .onnx row}: what the other rows are against."""
    return {
        (r["decoder"], r["client"]): r[field]
        for r in rows
        if (r["format"], r["precision"]) == ("onnx", "fp32")
    }


def render(report: dict[str, Any]) -> str:
    """The run's tables, from its result file."""
    sizes = {(r["decoder"], r["format"], r["precision"]): r["bytes"] for r in report["sizes"]}
    lines = [
        f"machine: {report['machine']}",
        f"{report['calls']} calls x {report['repeats']} repeats per file; "
        f"{report['starts']} fresh processes per memory and cold-start row",
        "",
        table(
            ["decoder", "file", "bytes", "vs its fp32 .onnx", "optimization (.ort)"],
            [
                [
                    r["decoder"],
                    r["file"],
                    f"{r['bytes']:,}",
                    f"{r['bytes'] / sizes[r['decoder'], 'onnx', 'fp32']:.2f}x",
                    r.get("level", ""),
                ]
                for r in report["sizes"]
            ],
        ),  # fmt: skip
        "",
    ]
    latency = sorted(report["latency"], key=_row_key)
    base = fp32_onnx(latency, "p50_us")
    onnx = {(r["decoder"], r["client"], r["precision"]): r["p50_us"] for r in latency
            if r["format"] == "onnx"}  # fmt: skip
    rows = [
        [r["decoder"], r["client"], f".{r['format']}", r["precision"], f"{r['p50_us']:,.1f}",
         f"{r['p99_us']:,.0f}", f"{r['p50_us'] / base[r['decoder'], r['client']]:.2f}x",
         f"{r['p50_us'] / onnx[r['decoder'], r['client'], r['precision']]:.2f}x"]
        for r in latency
    ]  # fmt: skip
    lines += [
        table(
            [
                "decoder",
                "client",
                "format",
                "precision",
                "p50 µs",
                "p99 µs",
                "p50 vs fp32 .onnx",
                "p50 vs its .onnx",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]
    mem = sorted(report["memory"], key=_row_key)
    base = fp32_onnx(mem, "after_mib")
    rows = [
        [r["decoder"], r["client"], f".{r['format']}", r["precision"], f"{r['before_mib']:.1f}",
         f"{r['after_mib']:.1f}", f"{r['after_mib'] - base[r['decoder'], r['client']]:+.1f}"]
        for r in mem
    ]  # fmt: skip
    lines += [
        table(
            [
                "decoder",
                "client",
                "format",
                "precision",
                "RSS before the session MiB",
                "RSS after one digit MiB",
                "vs fp32 .onnx MiB",
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
                "process (VAE decoder, cold start to first digit)",
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
    """The line of the benchmarks' index: this result's headline figures."""
    p50 = {
        (x["decoder"], x["client"], x["format"], x["precision"]): x["p50_us"] for x in r["latency"]
    }
    vae = p50["vae", "Python", "onnx", "int8"] / p50["vae", "Python", "onnx", "fp32"]
    return (
        f"VAE int8 p50 {vae:.2f}x its fp32 (Python, one thread); compact int8 "
        f"{p50['compact', 'Python', 'onnx', 'int8']:,.1f} µs"
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
    ort_node = str(REPO / "node_modules" / "onnxruntime-node")
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        edge_dir = args.edge.resolve() if args.edge else Path(tmp) / "edge"
        if not args.edge:
            build_edge(bundle_dir, edge_dir)
        folders = {"onnx": bundle_dir, "ort": edge_dir}
        manifests = {k: json.loads((f / "manifest.json").read_text()) for k, f in folders.items()}
        cases = [(d, f, p) for d in DECODERS for f, p in VARIANTS]
        # latency, every file in turn within a repeat
        latency: dict[tuple[str, str, str, str], list[tuple[float, float]]] = {}
        for _ in range(args.repeats):
            for name, fmt, precision in cases:
                for language, fn in (("Python", python_latency), ("Node", node_latency)):
                    result = fn(folders[fmt], name, precision, args.calls)
                    latency.setdefault((name, language, fmt, precision), []).append(result)
                    print(
                        f"  latency {name} {language} {fmt} {precision}: {result}", file=sys.stderr
                    )
        # memory of fresh processes, interleaved
        mem: dict[tuple[str, str, str, str], list[dict[str, float]]] = {}
        for _ in range(args.starts):
            for name, fmt, precision in cases:
                folder, r = str(folders[fmt]), role(name, precision)
                for client, command in (
                    ("Python", [runtime_python, "-c", DECODER_ONLY, folder, r]),
                    ("Node", ["node", "-e", NODE_MEMORY, folder, r, ort_node]),
                ):
                    mem.setdefault((name, client, fmt, precision), []).append(memory(command))
        # cold start of the VAE decoder
        starts_cases = {}
        for fmt, precision in VARIANTS:
            folder = str(folders[fmt])
            starts_cases[("Python Bundle", fmt, precision)] = [
                runtime_python, "-c", BUNDLE, folder, precision,
            ]  # fmt: skip
            starts_cases[("Python decoder only", fmt, precision)] = [
                runtime_python, "-c", DECODER_ONLY, folder, role("vae", precision),
            ]  # fmt: skip
            starts_cases[("Node", fmt, precision)] = [
                "node", str(CLIENT), "decode", "--bundle", folder, "--precision", precision,
                "--z", "0,0", "--json",
            ]  # fmt: skip
        for command in starts_cases.values():
            wall(command)  # warm the file cache
        starts: dict[tuple[str, str, str], list[float]] = {k: [] for k in starts_cases}
        for _ in range(args.starts):
            for key, command in starts_cases.items():
                starts[key].append(wall(command))
        edge_manifest = manifests["ort"]
        sizes = []
        for name, fmt, precision in cases:
            entry = manifests[fmt]["models"][role(name, precision)]
            row = {"decoder": name, "file": entry["file"], "format": fmt, "precision": precision,
                   "bytes": manifests[fmt]["files"][entry["file"]]["bytes"]}  # fmt: skip
            if fmt == "ort":
                row["level"] = entry["ort"]["optimization"]
            sizes.append(row)
        choices = {
            r: manifests["onnx"]["models"][r]["quantization_choice"]
            for r in (role(n, "int8") for n in DECODERS)
        }
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
                "decoder": d,
                "client": c,
                "format": f,
                "precision": p,
                "p50_us": statistics.median(r[0] for r in v),
                "p99_us": statistics.median(r[1] for r in v),
                "repeats_us": v,
            }
            for (d, c, f, p), v in latency.items()
        ],
        "memory": [
            {
                "decoder": d,
                "client": c,
                "format": f,
                "precision": p,
                "before_mib": statistics.median(x["before_kb"] for x in v) / 1024,
                "after_mib": statistics.median(x["after_kb"] for x in v) / 1024,
                "processes": len(v),
            }
            for (d, c, f, p), v in mem.items()
        ],
        "cold_start": [
            {"process": n, "format": f, "precision": p, "seconds": t}
            for (n, f, p), t in starts.items()
        ],
        "quantization_choices": choices,
        "operators": edge_manifest["edge"]["operators"],
        "edge_check": edge_manifest["edge"]["check"],
        "optimization_rule": edge_manifest["edge"].get("optimization_rule"),
        "onnxruntime": edge_manifest["edge"]["onnxruntime"],
        "load": load_report(load_start),
    }
    write_result(args.json, report)
    print(render(report))


if __name__ == "__main__":
    main()
