"""Render every measured figure of README.md and docs/ from the committed results under
``bench/results/``; ``--check`` fails when a page no longer matches them.

    python -m bench.docs --run artifacts --capture     # a run's files -> bench/results/default_run.json
    python -m bench.docs --binarized artifacts-binarized --capture   # -> binarized_run.json
    python -m bench.docs                               # rewrite every generated block
    python -m bench.docs --check                       # exit 1 if a block is stale or hand-edited

A generated block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` and is
rewritten whole by ``BLOCKS[NAME]``; text outside the blocks is left alone. Rendering reads only
committed JSON (a clean clone has no pipeline run), so the pipeline's figures are first
*captured*: ``--capture`` copies what the pages quote from a run folder (``run.json``, the
summaries, ``eval/metrics.json``, the export manifest, the runtime's flags on the test digits)
into one JSON file. A block whose result file is not committed renders the command that makes it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import run_capture
from bench.common import REPO, RESULTS, table
from export.files import write_json_atomic, write_text_atomic

BLOCK = re.compile(
    r"(<!-- generated:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)",
    re.DOTALL,
)
OPENING = re.compile(r"<!-- generated:(?P<name>[a-z0-9-]+) -->")
CAPTURES = {  # --capture: which run becomes which result file
    "run": "default_run",
    "binarized": "binarized_run",
    "conv": "conv_run",
}


# -- the benchmarks -------------------------------------------------------------------------------


def as_markdown(text: str) -> str:
    """A script's printed report as Markdown: its tables as they are, every run of other lines
    in a code block (machine, settings, load)."""
    parts: list[tuple[bool, list[str]]] = []  # (is a table, lines)
    for line in text.strip("\n").split("\n"):
        is_table = line.startswith("|")
        if not parts or parts[-1][0] != is_table:
            parts.append((is_table, []))
        parts[-1][1].append(line)
    out = []
    for is_table, lines in parts:
        body = "\n".join(lines).strip("\n")
        if body:
            out.append(body if is_table else "```\n" + body + "\n```")
    return "\n\n".join(out) + "\n"


def script_block(module: str, function: str = "render") -> Callable[[dict[str, Any]], str]:
    """The block of ``module``: its ``render`` of its result file, as Markdown (``function``:
    another function of the module, whose text is Markdown already)."""

    def block(report: dict[str, Any]) -> str:
        text = getattr(importlib.import_module(module), function)(report)
        return as_markdown(text) if function == "render" else text.rstrip("\n") + "\n"

    return block


def vae_choices_block(lines: list[dict[str, Any]]) -> str:
    from bench.vae_choices import render, seed_groups

    summary = seed_groups(lines)
    return render(lines) + "\n" + (f"\n{summary}\n" if summary else "")


def one_class_block(result: dict[str, Any]) -> str:
    from bench.one_class import format_table

    return format_table(result).rstrip("\n") + "\n"


# -- the index of the benchmarks: one line each ------------------------------------------------

# name: (result file, page under docs/benchmarks/, command, the module whose index_line() it shows)
BENCHMARKS: dict[str, tuple[str, str, str, str]] = {
    "pipeline": ("default_run", "../../README.md#measured-on-this-machine",
                 "make run, then python -m bench.docs --run artifacts --capture",
                 "bench.run_capture"),
    "scoring": ("scoring", "scoring.md", "python -m bench.scoring --run artifacts",
                "bench.scoring"),
    "latency": ("latency", "latency.md", "python -m bench.latency --run artifacts",
                "bench.latency"),
    "cold start": ("cold_start", "cold-start.md", "python -m bench.cold_start --run artifacts",
                   "bench.cold_start"),
    "edge kit": ("edge", "edge.md", "python -m bench.edge --run artifacts", "bench.edge"),
    "runtime decode": ("runtime_decode", "runtime-decode.md",
                       "python -m bench.runtime_decode --run artifacts", "bench.runtime_decode"),
    "explorer decode": ("explorer_decode", "explorer-decode.md",
                        "python -m bench.explorer_decode --run artifacts",
                        "bench.explorer_decode"),
    "streaming memory": ("stream_memory", "stream-memory.md",
                         "python -m bench.stream_memory --run artifacts", "bench.stream_memory"),
    "training throughput": ("training", "training.md", "python -m bench.training --run artifacts",
                            "bench.training"),
    "training setup": ("vae_choices", "vae-choices.md",
                       "python -m bench.vae_choices --run artifacts --candidate ...",
                       "bench.vae_choices"),
    "one-class novelty": ("one_class", "one-class.md", "python -m bench.one_class --quiet",
                          "bench.one_class"),
    "corruptions": ("corruptions", "corruptions.md", "python -m bench.corruptions --run artifacts",
                    "bench.corruptions"),
    "anomaly detection": ("anomaly", "anomaly.md",
                          "python -m bench.anomaly choose|report --run artifacts",
                          "bench.anomaly"),
    "anomaly probes": ("anomaly_probes", "anomaly-probes.md",
                       "python -m bench.anomaly_probes --run artifacts", "bench.anomaly_probes"),
    "kill-and-resume soak": ("soak", "soak.md", "python -m bench.soak --kills 100",
                             "bench.soak.report"),
}  # fmt: skip


def result_file(name: str) -> Path:
    return RESULTS / (f"{name}.jsonl" if name == "vae_choices" else f"{name}.json")


def load_result(name: str) -> Any | None:
    path = result_file(name)
    if not path.is_file():
        return None
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def index_block() -> str:
    """One row per benchmark: its command, its headline figure, its page."""
    rows = []
    for label, (name, page, command, module) in BENCHMARKS.items():
        result = load_result(name)
        figure = "not measured yet"
        if result is not None:
            figure = importlib.import_module(module).index_line(result)
        rows.append([f"[{label}]({page})", f"`{command}`", figure])
    return table(["benchmark", "command", "headline (from its result file)"], rows) + "\n"


def machines_block() -> str:
    """The machines the results were measured on (their description without the load), each with
    the benchmarks measured there."""
    seen: dict[str, list[str]] = {}
    for label, (name, _, _, _) in BENCHMARKS.items():
        result = load_result(name)
        records = result if isinstance(result, list) else [result]
        for record in records:
            if isinstance(record, dict) and "machine" in record:
                machine = record["machine"]
                if isinstance(machine, dict):  # bench/one_class.py's own record
                    machine = f"{machine['cpus']} CPU cores; {machine['platform']}"
                machine = re.sub(r", load average [0-9. ]+$", "", machine)
                if label not in seen.setdefault(machine, []):
                    seen[machine].append(label)
    return "\n".join(f"- {m}: {', '.join(labels)}" for m, labels in seen.items()) + "\n"


# -- blocks, pages and the check ----------------------------------------------------------------

# block name -> (result file it reads, renderer); None: the block reads several files
BLOCKS: dict[str, tuple[str | None, Callable[[Any], str]]] = {
    "run-summary": ("default_run", run_capture.run_summary_block),
    "metrics": ("default_run", run_capture.metrics_block),
    "verdicts": ("default_run", run_capture.verdicts_block),
    "export-sizes": ("default_run", run_capture.export_sizes_block),
    "quantization-mlp": ("default_run", run_capture.quantization_block),
    "quantization-findings": ("default_run", run_capture.quantization_findings_block),
    "manifest-excerpt": ("default_run", run_capture.manifest_excerpt_block),
    "runtime-scores": ("default_run", run_capture.runtime_scores_block),
    "binarized": ("binarized_run", run_capture.binarized_block),
    "quantization-conv": ("conv_run", run_capture.quantization_block),
    "scoring": ("scoring", script_block("bench.scoring")),
    "latency": ("latency", script_block("bench.latency")),
    "cold-start": ("cold_start", script_block("bench.cold_start")),
    "edge": ("edge", script_block("bench.edge")),
    "edge-operators": ("edge", script_block("bench.edge", "render_operators")),
    "runtime-decode": ("runtime_decode", script_block("bench.runtime_decode")),
    "explorer-decode": ("explorer_decode", script_block("bench.explorer_decode")),
    "training": ("training", script_block("bench.training")),
    "vae-choices": ("vae_choices", vae_choices_block),
    "stream-memory": ("stream_memory", script_block("bench.stream_memory")),
    "one-class": ("one_class", one_class_block),
    "corruptions": ("corruptions", script_block("bench.corruptions")),
    "corruptions-findings": ("corruptions", script_block("bench.corruptions", "findings")),
    "anomaly-choice": ("anomaly_choice", script_block("bench.anomaly", "render_choice")),
    "anomaly": ("anomaly", script_block("bench.anomaly")),
    "anomaly-probes": ("anomaly_probes", script_block("bench.anomaly_probes")),
    "soak": ("soak", script_block("bench.soak.report")),
    "benchmarks-index": (None, lambda _: index_block()),
    "machines": (None, lambda _: machines_block()),
}


def how_to_make(name: str) -> str:
    """The text of a block whose result file is not committed: how to make it."""
    command = next((c for n, _, c, _ in BENCHMARKS.values() if n == name), None)
    flag = {v: k for k, v in CAPTURES.items()}.get(name)
    if flag is not None:
        command = f"python -m bench.docs --{flag} RUN --capture"
    return (
        f"*Not measured yet: `bench/results/{result_file(name).name}` is not committed. "
        f"`{command}` writes it; `python -m bench.docs` then fills this block.*\n"
    )


def render_block(name: str) -> str:
    source, renderer = BLOCKS[name]
    if source is None:
        return renderer(None)
    result = load_result(source)
    return how_to_make(source) if result is None else renderer(result)


def pages(root: Path) -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def render(text: str, blocks: dict[str, Callable[[], str]]) -> str:
    """``text`` with every generated block named in ``blocks`` rewritten."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in blocks:
            return match.group(0)
        return match.group(1) + blocks[name]() + match.group(4)

    return BLOCK.sub(replace, text)


def problems(text: str) -> list[str]:
    """Blocks of ``text`` that ``render`` cannot rewrite: unknown names, unclosed openings."""
    found = []
    closed = {m.group("name") for m in BLOCK.finditer(text)}
    for match in OPENING.finditer(text):
        name = match.group("name")
        if name not in BLOCKS:
            found.append(f"unknown generated block {name!r}")
        elif name not in closed:
            found.append(f"generated block {name!r} is not closed")
    return found


def update_pages(root: Path, check: bool) -> int:
    """Rewrite (or, with ``check``, compare) every generated block of the pages under ``root``."""
    rendered: dict[str, str] = {}

    def lazily(name: str) -> Callable[[], str]:
        def block() -> str:
            if name not in rendered:
                rendered[name] = render_block(name)
            return rendered[name]

        return block

    blocks = {name: lazily(name) for name in BLOCKS}
    stale, broken = [], []
    for page in pages(root):
        text = page.read_text()
        shown = page.relative_to(root).as_posix()
        broken += [f"{shown}: {p}" for p in problems(text)]
        new = render(text, blocks)
        if new != text:
            stale.append(shown)
            if not check:
                write_text_atomic(page, new)
    for line in broken:
        print(f"docs: {line}", file=sys.stderr)
    if check and stale:
        print(
            f"docs: stale or hand-edited generated blocks in {', '.join(stale)}; "
            "run python -m bench.docs to rewrite them from bench/results/",
            file=sys.stderr,
        )
        return 1
    print(f"docs: {'rewrote ' + ', '.join(stale) if stale else 'up to date'}")
    return 1 if broken else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="the default run's --out (with --capture)")
    parser.add_argument("--binarized", type=Path, help="a run of configs/binarized.toml")
    parser.add_argument("--conv", type=Path, help="a run with model.architecture=conv")
    parser.add_argument(
        "--capture",
        action="store_true",
        help="write the given runs' figures to bench/results/ before rendering",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a block would change")
    parser.add_argument(
        "--root", type=Path, default=REPO, help="the folder holding README.md and docs/"
    )
    args = parser.parse_args(argv)
    runs = {flag: getattr(args, flag) for flag in CAPTURES if getattr(args, flag) is not None}
    if runs and not args.capture:
        parser.error("--run, --binarized and --conv are read only with --capture")
    if args.capture:
        if args.check or not runs:
            parser.error("--capture needs --run, --binarized or --conv, and no --check")
        for flag, folder in runs.items():
            path = result_file(CAPTURES[flag])
            write_json_atomic(path, run_capture.capture(folder))
            print(f"docs: captured {folder} into {path.relative_to(REPO)}")
    return update_pages(args.root, args.check)


if __name__ == "__main__":
    sys.exit(main())
