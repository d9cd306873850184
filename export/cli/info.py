"""``python -m export info``: what a bundle holds, its models, thresholds and parity."""

from __future__ import annotations

import argparse
import json
from typing import Any

from export.bundle import DETECTOR
from export.cli.common import Parents, open_bundle

NAME = "info"


def add_parser(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(NAME, parents=[parents.sessions], help="describe the bundle")
    p.add_argument("--json", action="store_true", help="print the whole manifest")


def run(args: argparse.Namespace) -> int:
    bundle = open_bundle(args)
    m = bundle.manifest
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"bundle      {bundle.directory} (format {m['format_version']}, created {m['created']})")
    print(f"latent_dim  {m['latent_dim']}")
    print(f"input       28x28 float32 in [0, 1]; uint8 {m['input']['uint8']}")
    print("models")
    for role, entry in m["models"].items():
        size = m["files"][entry["file"]]["bytes"]
        ins = ", ".join(f"{i['name']}{tuple(i['shape'])}" for i in entry["inputs"])
        outs = ", ".join(f"{o['name']}{tuple(o['shape'])}" for o in entry["outputs"])
        line = f"  {role:<17} {entry['precision']:<5} {size:>10,} B  {ins} -> {outs}"
        if "drift_vs_fp32" in entry:
            d = entry["drift_vs_fp32"]
            line += f"  drift max {d['max_abs']:.4f} mean {d['mean_abs']:.5f}"
        print(line)
    a = m["anomaly"]
    for kind in bundle.scoring_models:
        default = " (default)" if kind == bundle.default_model else ""
        score = "the largest of its calibrated terms" if kind == DETECTOR else a[kind]["score"]
        print(f"anomaly     {kind}{default}: {score} > {a[kind]['threshold']:.6g} (fpr {a['fpr']})")
    worst = max(v["max_abs_diff"] for v in m["parity"]["models"].values())
    print(f"parity      max |ORT - Keras| {worst:.2e} on {m['parity']['samples']} test digits")
    return 0
