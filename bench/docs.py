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
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO, RESULTS, table
from export.files import write_json_atomic, write_text_atomic
from pipeline.report import METRIC_DOCS

TRAINING_STAGES = ("ingest", "train_ae", "train_vae", "train_denoiser")
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


# -- capturing a run's figures ------------------------------------------------------------------


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"docs: {path} not found: run the pipeline first") from None


def runtime_flags(run: Path) -> dict[str, Any]:
    """The runtime (``export.bundle.Bundle``, no TensorFlow) flagging the run's test digits."""
    from export.bundle import Bundle
    from pipeline.data import load_split

    test, _ = load_split(run / "data" / "mnist.npz", "test")
    bundle = Bundle.load(run / "export")
    return {
        "test_digits": len(test),
        "flagged": {kind: int(bundle.is_anomaly(test, model=kind).sum()) for kind in ("vae", "ae")},
    }


def capture(run: Path) -> dict[str, Any]:
    """Everything the pages quote from the run folder ``run``, in one JSON-able dict."""
    info = read_json(run / "run.json")
    manifest = read_json(run / "export" / "manifest.json")
    summaries = {
        kind: read_json(run / kind / "summary.json")
        for kind in ("ae", "vae", "denoiser")
        if (run / kind / "summary.json").is_file()
    }
    classifier = run / "eval" / "classifier.json"
    data = read_json(run / "data" / "summary.json")
    return {
        "run": run.name,
        "seed": info["seed"],
        "versions": info["versions"],
        "config": info["config"],
        "stage_seconds": {name: s["seconds"] for name, s in info["stages"].items()},
        "splits": {name: split["images"] for name, split in data["splits"].items()},
        "summaries": summaries,
        "metrics": read_json(run / "eval" / "metrics.json"),
        "classifier": read_json(classifier) if classifier.is_file() else None,
        "manifest": {
            **{key: value for key, value in manifest.items() if key != "files"},
            "files": {name: {"bytes": f["bytes"]} for name, f in manifest["files"].items()},
        },
        "runtime": runtime_flags(run),
    }


# -- the pipeline's figures -----------------------------------------------------------------------


def training_result(summary: dict[str, Any]) -> str:
    ran, best = summary["epochs_run"], summary["best_epoch"]
    text = (
        f"{ran} epochs ({summary['seconds_per_epoch']:.1f} s each), best val loss "
        f"**{summary['best_val_loss']:.2f}** nats/image at epoch {best} "
        f"(train {summary['train_loss_at_best']:.2f})"
    )
    if "val_kl_at_best" in summary:
        text += f", val KL {summary['val_kl_at_best']:.2f}"
    if "ended_by" in summary:
        text += f"; ended by the {summary['ended_by'].replace('_', ' ')}"
    return text


def run_summary_block(run: dict[str, Any]) -> str:
    """The stage table of the default run: wall time and result of every stage."""
    seconds, versions, splits = run["stage_seconds"], run["versions"], run["splits"]
    classifier = run["classifier"]
    evaluate = f"{len(run['metrics'])} metrics, figures and report"
    if classifier is not None:
        evaluate += (
            f"; the digit classifier (test accuracy {classifier['test_acc']:.4f}) took "
            f"{classifier['train_seconds']:.0f} s to train when it was made and is reused while "
            "the data are unchanged"
        )
    results = {
        "ingest": "tfds built from the mirror: "
        + " / ".join(f"{splits[s]:,}" for s in ("train", "validation", "test"))
        + " digits (train / validation / test)",
        "evaluate": evaluate,
        "export": f"{len(run['manifest']['files'])} files in the bundle, parity checked",
    }
    for kind, stage in (("ae", "train_ae"), ("vae", "train_vae"), ("denoiser", "train_denoiser")):
        if kind in run["summaries"]:
            results[stage] = training_result(run["summaries"][kind])
    training = sum(seconds.get(name, 0.0) for name in TRAINING_STAGES)
    lines = [
        f"`run_pipeline.py` (`{run['run']}/run.json`, seed {run['seed']}; Python "
        f"{versions['python']}, TensorFlow {versions.get('tensorflow', '?')}, Keras "
        f"{versions.get('keras', '?')}): **{sum(seconds.values()):.0f} s** for the whole "
        f"pipeline, of which ingest and training took **{training:.0f} s**.",
        "",
        "| stage | wall time | result |",
        "| --- | ---: | --- |",
    ]
    for name, value in seconds.items():
        lines.append(f"| {name} | {value:.1f} s | {results.get(name, '')} |")
    return "\n".join(lines) + "\n"


def format_metric(key: str, value: float) -> str:
    if key.endswith(("_k", "dead_units")):
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def metrics_block(run: dict[str, Any]) -> str:
    """Every metric of ``eval/metrics.json`` with its value and meaning."""
    lines = ["| key | default run | meaning |", "| --- | ---: | --- |"]
    for key, value in run["metrics"].items():
        lines.append(f"| `{key}` | {format_metric(key, value)} | {METRIC_DOCS.get(key, '')} |")
    return "\n".join(lines) + "\n"


def verdicts_block(run: dict[str, Any]) -> str:
    """What the measures say about the article's claims, decided by the numbers."""
    m = run["metrics"]
    lines = []
    if {"ae.latent_empty_frac", "vae.latent_empty_frac"} <= m.keys():
        ae, vae = m["ae.latent_empty_frac"], m["vae.latent_empty_frac"]
        verdict = "fewer" if vae < ae else "no fewer"
        lines.append(
            f"- **Gaps.** The VAE's latent has {verdict} gaps than the AE's: {vae:.1%} of the "
            f"cells of its train-latent box are empty against the AE's {ae:.1%} "
            "(`*.latent_empty_frac`, one rule for both models)."
        )
    if {"denoise.psnr_gain_db", "denoise.class_kept"} <= m.keys():
        lines.append(
            f"- **Denoising.** The denoiser gains {m['denoise.psnr_gain_db']:+.2f} dB of PSNR "
            f"and keeps the digit's class on {m['denoise.class_kept']:.1%} of the noisy test "
            "digits (`denoise.*`)."
        )
    if {"ae.sample_fid", "vae.sample_fid"} <= m.keys():
        better = "VAE" if m["vae.sample_fid"] < m["ae.sample_fid"] else "AE"
        lines.append(
            f"- **Generation.** The {better}'s samples are closer to real digits (sample FID "
            f"AE {m['ae.sample_fid']:.1f}, VAE {m['vae.sample_fid']:.1f}; train vs test digits "
            f"{m.get('reference.fid_train_test', float('nan')):.2f})."
        )
    return "\n".join(lines) + "\n"


def export_sizes_block(run: dict[str, Any]) -> str:
    """Sizes of the fp32 and int8 decoders and the int8 drift, from the bundle's manifest."""
    manifest = run["manifest"]
    files, models = manifest["files"], manifest["models"]
    lines = [
        "| model | fp32 | int8 | int8 method | mean drift | max drift (one batch) | max drift (one latent at a time) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in ("vae", "ae"):
        fp32 = files[models[f"{kind}_decoder"]["file"]]["bytes"]
        int8_model = models.get(f"{kind}_decoder_int8")
        if int8_model is None:
            continue
        int8, drift = files[int8_model["file"]]["bytes"], int8_model["drift_vs_fp32"]
        method = int8_model.get("quantization_choice", {}).get("method", "dynamic")
        lines.append(
            f"| {kind.upper()} decoder | {fp32:,} B | {int8:,} B ({int8 / fp32:.0%}) | `{method}` | "
            f"{drift['mean_abs']:.5f} | {drift['max_abs']:.4f} | {drift['max_abs_one_at_a_time']:.4f} |"
        )
    parity = manifest["parity"]
    worst = max(parity["models"].items(), key=lambda item: item[1]["worst_ratio_to_tolerance"])
    lines += [
        "",
        f"Parity on {parity['samples']:,} test digits: the largest ORT-Keras difference of any "
        f"model is {max(m['max_abs_diff'] for m in parity['models'].values()):.2g} "
        f"({worst[0]}: {worst[1]['worst_ratio_to_tolerance']:.0%} of its allowance).",
    ]
    scorers = [f"{k}_scorer" for k in ("vae", "ae") if f"{k}_scorer" in models]
    if scorers:
        sizes = ", ".join(
            f"`{models[s]['file']}` {files[models[s]['file']]['bytes'] / 1e6:.1f} MB"
            for s in scorers
        )
        lines += ["", f"Scorer graphs: {sizes}."]
    return "\n".join(lines) + "\n"


def quantization_block(run: dict[str, Any]) -> str:
    """Every int8 candidate the export stage measured for each decoder, and the one it kept."""
    model, train = run["config"]["model"], run["config"]["train"]
    shape = model["hidden_units"] if model["architecture"] == "mlp" else model["conv_filters"]
    epochs = {k: run["summaries"][k]["epochs_run"] for k in ("ae", "vae")}
    lines = [
        f"`{run['run']}`: {model['architecture']} {shape}, latent {model['latent_dim']}, "
        f"{epochs['ae']} (AE) and {epochs['vae']} (VAE) epochs of a budget of {train['epochs']}; "
        f"the export stage took {run['stage_seconds']['export']:.1f} s:",
        "",
        "| decoder | method | mean drift | max drift | size of fp32 | within the targets | kept |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, choice in choices(run).items():
        for row in choice["candidates"]:
            lines.append(
                f"| {kind.upper()} | `{row['method']}` | {row['mean_abs']:.5f} | "
                f"{candidate_max(row):.4f} | {row['size_ratio']:.0%} | "
                f"{'yes' if row['within_targets'] else 'no'} | "
                f"{'**kept**' if row['method'] == choice['method'] else ''} |"
            )
    return "\n".join(lines) + "\n"


def choices(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    models = run["manifest"]["models"]
    return {
        kind: models[f"{kind}_decoder_int8"]["quantization_choice"]
        for kind in ("vae", "ae")
        if "quantization_choice" in models.get(f"{kind}_decoder_int8", {})
    }


def candidate_max(row: dict[str, Any]) -> float:
    return max(row["max_abs"], row["max_abs_one_at_a_time"])


def quantization_findings_block(run: dict[str, Any]) -> str:
    """The int8 table read in words: the max drift of each family of candidates, per decoder."""

    def span(methods: tuple[str, ...]) -> str:
        values = [
            candidate_max(row)
            for choice in choices(run).values()
            for row in choice["candidates"]
            if row["method"] in methods
        ]
        return f"{min(values):.2g}-{max(values):.2g}" if values else "-"

    def per_kind(method: str) -> str:
        parts = []
        for kind, choice in choices(run).items():
            row = next((r for r in choice["candidates"] if r["method"] == method), None)
            if row is not None:
                parts.append(f"{candidate_max(row):.2g} ({kind.upper()})")
        return " and ".join(parts)

    kept = {kind: choice["method"] for kind, choice in choices(run).items()}
    means = [
        row["mean_abs"]
        for kind, choice in choices(run).items()
        for row in choice["candidates"]
        if row["method"] == kept[kind]
    ]
    return (
        f"On `{run['run']}`: the static candidates drift most (max "
        f"{span(('static_qdq', 'static_qdq_per_tensor'))}), dynamic quantization is between "
        f"(max {span(('dynamic',))}); rounding only the weights to nearest gives a max drift of "
        f"{per_kind('weight_only_rtn')}, and GPTQ's compensated rounding "
        f"{per_kind('weight_only_gptq')}, with mean drifts of "
        f"{min(means):.5f}-{max(means):.5f} for the decoders kept "
        f"({', '.join(f'{k.upper()} `{m}`' for k, m in kept.items())}).\n"
    )


def manifest_excerpt_block(run: dict[str, Any]) -> str:
    """The top of the bundle's manifest: everything but the per-file and per-model lists."""
    manifest = run["manifest"]
    excerpt = {
        key: manifest[key]
        for key in ("format_version", "latent_dim", "input", "anomaly", "latent_boxes")
        if key in manifest
    }
    excerpt["models"] = {
        name: {k: v for k, v in model.items() if k in ("file", "precision", "opset")}
        for name, model in manifest["models"].items()
    }
    body = ",\n".join(f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in excerpt.items())
    return "```json\n{\n" + body + "\n}\n```\n"


def runtime_scores_block(run: dict[str, Any]) -> str:
    """The runtime's flags on the run's test digits beside the evaluate stage's ``test_fpr``."""
    flagged, n = run["runtime"]["flagged"], run["runtime"]["test_digits"]
    metrics = run["metrics"]
    return (
        f"On `{run['run']}`, scoring its {n:,} test digits with the bundle flags "
        f"{flagged['vae']} with the VAE and {flagged['ae']} with the AE "
        f"({flagged['vae'] / n:.2%} and {flagged['ae'] / n:.2%}; the evaluate "
        f"stage's `test_fpr` on the same digits: {metrics['vae.test_fpr']:.2%} and "
        f"{metrics['ae.test_fpr']:.2%}).\n"
    )


def binarized_block(run: dict[str, Any]) -> str:
    """The likelihood benchmark's numbers from a run of ``configs/binarized.toml``."""
    m, vae = run["metrics"], run["summaries"]["vae"]
    return (
        "\n".join(
            [
                f"From `{run['run']}` (VAE: {vae['epochs_run']} epochs, best at epoch "
                f"{vae['best_epoch']}, best val loss {vae['best_val_loss']:.2f} nats):",
                "",
                "| | this project, 2-D latent |",
                "| --- | ---: |",
                f"| test ELBO (nats) | {m['vae.elbo_nats']:.2f} |",
                f"| KL (nats) | {m['vae.kl_nats']:.2f} |",
                f"| test NLL, K = {m['vae.nll_is_k']:.0f} (nats) | {m['vae.nll_is_nats']:.2f} |",
            ]
        )
        + "\n"
    )


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


def script_block(module: str) -> Callable[[dict[str, Any]], str]:
    """The block of ``bench.MODULE``: its ``render`` of its result file."""

    def block(report: dict[str, Any]) -> str:
        import importlib

        return as_markdown(importlib.import_module(module).render(report))

    return block


def vae_choices_block(lines: list[dict[str, Any]]) -> str:
    from bench.vae_choices import render, seed_groups

    summary = seed_groups(lines)
    return render(lines) + "\n" + (f"\n{summary}\n" if summary else "")


def one_class_block(result: dict[str, Any]) -> str:
    from bench.one_class import format_table

    return format_table(result).rstrip("\n") + "\n"


def edge_operators_block(report: dict[str, Any]) -> str:
    from bench.edge import render_operators

    return render_operators(report) + "\n"


def corruptions_findings_block(report: dict[str, Any]) -> str:
    """The corruption table read in words: means, the corruptions each score misses, the choice."""
    scores, test = report["bundle_scores"], report["test"]
    means = {
        m: (
            statistics.mean(v["auroc"] for v in s["corruptions"].values()),
            statistics.mean(v["flagged"] for v in s["corruptions"].values()),
        )
        for m, s in scores.items()
    }
    chosen = report["choice"]["chosen"]
    best_auroc = max(test, key=lambda c: test[c]["mean_auroc"])
    lines = [
        "- **Mean over the fifteen corruptions**: "
        + "; ".join(
            f"{m.upper()} AUROC {auroc:.3f}, {flagged:.1%} flagged"
            for m, (auroc, flagged) in means.items()
        )
        + ".",
    ]
    for m, s in scores.items():
        missed = [n for n, v in s["corruptions"].items() if v["flagged"] <= 2 * s["clean_fpr"]]
        lines.append(
            f"- **Flagged at most twice the clean rate by the {m.upper()}** "
            f"({s['clean_fpr']:.1%} of clean test digits): " + (", ".join(missed) or "none") + "."
        )
    lines.append(
        f"- **Choice on validation**: `{chosen}` "
        f"({report['choice']['validation_b'][chosen]['mean_flagged']:.1%} flagged on half B); on "
        f"test, after the choice, `{chosen}` flags {test[chosen]['mean_flagged']:.1%} at a clean "
        f"FPR of {test[chosen]['clean_fpr']:.1%}; the highest mean AUROC on test is "
        f"`{best_auroc}`'s ({test[best_auroc]['mean_auroc']:.3f}, against "
        f"{test[chosen]['mean_auroc']:.3f})."
    )
    return "\n".join(lines) + "\n"


# -- the index of the benchmarks: one line each ------------------------------------------------


def _scoring(r: dict[str, Any]) -> str:
    rates = {(x["method"], x["batch"]): x["images_per_s"] for x in r["rates"]}
    ort, keras = rates["ORT fp32", 256], rates["Keras model.predict", 256]
    return f"ORT fp32 at batch 256: {ort:,.0f} images/s, {ort / keras:.1f}x Keras `predict`"


def _latency(r: dict[str, Any]) -> str:
    row = next(x for x in r["rows"] if x["precision"] == "fp32" and x["threads"] == 1)
    return f"VAE decoder fp32, 1 thread: p50 {row['p50_us']:,.0f} µs, p99 {row['p99_us']:,.0f} µs"


def _cold_start(r: dict[str, Any]) -> str:
    medians = [statistics.median(t) for t in r["seconds"].values()]
    return f"runtime {medians[0]:.2f} s to the first digit, Keras {min(medians[1:]):.2f} s"


def _edge(r: dict[str, Any]) -> str:
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


def _runtime_decode(r: dict[str, Any]) -> str:
    row = next(x for x in r["rows"] if x["call"].startswith("score (vae"))
    return (
        f"VAE score of 1,024 images: fp32 {row['fp32_ms']:.1f} ms, int8/fp32 "
        f"{row['int8_ms'] / row['fp32_ms']:.2f}"
    )


def _explorer_decode(r: dict[str, Any]) -> str:
    key = "vae_fp32"
    return (
        f"VAE fp32 per frame: browser {statistics.median(r['browser_ms'][key]):.3f} ms, "
        f"Python {statistics.median(r['python_ms'][key]):.3f} ms"
    )


def _training(r: dict[str, Any]) -> str:
    rows = [x for x in r["per_setting"] if x["model"] == "vae" and x["xla"]]
    batch = r["batch_size"]
    on = next(x["seconds"] for x in rows if x["checkpoint"] and x["batch"] == batch)
    off = next(x["seconds"] for x in rows if not x["checkpoint"] and x["batch"] == batch)
    return f"VAE {off:.2f} s/epoch; a checkpoint after every epoch {(on - off) / off:+.1%}"


def _vae_choices(lines: list[dict[str, Any]]) -> str:
    best = min(lines, key=lambda x: x["val_neg_elbo"])
    return f"{len(lines)} setups; best val -ELBO {best['val_neg_elbo']:.2f} (`{best['name']}`)"


def _stream_memory(r: dict[str, Any]) -> str:
    last = r["results"][-1]
    return (
        f"{last['images']:,} images at {last['scoring_images_per_s']:,.0f} images/s, peak RSS "
        f"{last['peak_rss_kib'] / 1024:,.0f} MiB"
    )


def _one_class(r: dict[str, Any]) -> str:
    h = r["headline"]
    return f"`{h['score']}` mean AUROC {100 * h['mean']:.2f} ± {100 * h['std']:.2f} %"


def _corruptions(r: dict[str, Any]) -> str:
    vae = r["bundle_scores"]["vae"]["corruptions"].values()
    return (
        f"VAE mean AUROC {statistics.mean(v['auroc'] for v in vae):.3f}; default kept: "
        f"`{r['choice']['chosen']}`"
    )


def _soak(r: dict[str, Any]) -> str:
    return f"{r['kills']} SIGKILLs: {'equal' if r['equal'] else 'NOT equal'} to the unbroken run"


def _default_run(r: dict[str, Any]) -> str:
    return f"{sum(r['stage_seconds'].values()):.0f} s for the whole pipeline"


# name: (result file, page under docs/benchmarks/, command, headline)
BENCHMARKS: dict[str, tuple[str, str, str, Callable[[Any], str]]] = {
    "pipeline": ("default_run", "../../README.md#measured-on-this-machine",
                 "make run, then python -m bench.docs --run artifacts --capture", _default_run),
    "scoring": ("scoring", "scoring.md", "python -m bench.scoring --run artifacts", _scoring),
    "latency": ("latency", "latency.md", "python -m bench.latency --run artifacts", _latency),
    "cold start": ("cold_start", "cold-start.md", "python -m bench.cold_start --run artifacts",
                   _cold_start),
    "edge kit": ("edge", "edge.md", "python -m bench.edge --run artifacts", _edge),
    "runtime decode": ("runtime_decode", "runtime-decode.md",
                       "python -m bench.runtime_decode --run artifacts", _runtime_decode),
    "explorer decode": ("explorer_decode", "explorer-decode.md",
                        "python -m bench.explorer_decode --run artifacts", _explorer_decode),
    "streaming memory": ("stream_memory", "stream-memory.md",
                         "python -m bench.stream_memory --run artifacts", _stream_memory),
    "training throughput": ("training", "training.md", "python -m bench.training --run artifacts",
                            _training),
    "training setup": ("vae_choices", "vae-choices.md",
                       "python -m bench.vae_choices --run artifacts --candidate ...", _vae_choices),
    "one-class novelty": ("one_class", "one-class.md", "python -m bench.one_class --quiet",
                          _one_class),
    "corruptions": ("corruptions", "corruptions.md", "python -m bench.corruptions --run artifacts",
                    _corruptions),
    "kill-and-resume soak": ("soak", "soak.md", "python -m bench.soak --kills 100", _soak),
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
    for label, (name, page, command, headline) in BENCHMARKS.items():
        result = load_result(name)
        figure = headline(result) if result is not None else "not measured yet"
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
    "run-summary": ("default_run", run_summary_block),
    "metrics": ("default_run", metrics_block),
    "verdicts": ("default_run", verdicts_block),
    "export-sizes": ("default_run", export_sizes_block),
    "quantization-mlp": ("default_run", quantization_block),
    "quantization-findings": ("default_run", quantization_findings_block),
    "manifest-excerpt": ("default_run", manifest_excerpt_block),
    "runtime-scores": ("default_run", runtime_scores_block),
    "binarized": ("binarized_run", binarized_block),
    "quantization-conv": ("conv_run", quantization_block),
    "scoring": ("scoring", script_block("bench.scoring")),
    "latency": ("latency", script_block("bench.latency")),
    "cold-start": ("cold_start", script_block("bench.cold_start")),
    "edge": ("edge", script_block("bench.edge")),
    "edge-operators": ("edge", edge_operators_block),
    "runtime-decode": ("runtime_decode", script_block("bench.runtime_decode")),
    "explorer-decode": ("explorer_decode", script_block("bench.explorer_decode")),
    "training": ("training", script_block("bench.training")),
    "vae-choices": ("vae_choices", vae_choices_block),
    "stream-memory": ("stream_memory", script_block("bench.stream_memory")),
    "one-class": ("one_class", one_class_block),
    "corruptions": ("corruptions", script_block("bench.corruptions")),
    "corruptions-findings": ("corruptions", corruptions_findings_block),
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
            write_json_atomic(path, capture(folder))
            print(f"docs: captured {folder} into {path.relative_to(REPO)}")
    return update_pages(args.root, args.check)


if __name__ == "__main__":
    sys.exit(main())
