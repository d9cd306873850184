"""Regenerate the figures README.md and BENCHMARKS.md quote from the files of the runs they name.

    .venv/bin/python bench/docs.py --run artifacts --binarized artifacts-binarized
    .venv/bin/python bench/docs.py --run artifacts --check     # exit 1 if a block is stale

Each generated block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``
and is rewritten whole from the run's ``run.json``, the training summaries, ``eval/metrics.json``
and ``export/manifest.json``; text outside the blocks is left alone. A block whose run is not
given (``--binarized``) keeps its text. Nothing in a block is typed by hand, so a
figure cannot go stale without ``--check`` saying so.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO, RESULTS
from export.files import write_text_atomic
from pipeline.common import Paths
from pipeline.report import METRIC_DOCS

TRAINING_STAGES = ("ingest", "train_ae", "train_vae", "train_denoiser")
BLOCK = re.compile(
    r"(<!-- generated:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)",
    re.DOTALL,
)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"docs: {path} not found: run the pipeline first") from None


def stage_seconds(run: Path) -> dict[str, float]:
    return {name: s["seconds"] for name, s in read_json(run / "run.json")["stages"].items()}


def training_result(run: Path, kind: str) -> str:
    summary = read_json(Paths(run).summary_file(kind))
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


def classifier_note(run: Path) -> str:
    """How the evaluate stage got its digit classifier (it is reused while the data is the same)."""
    path = run / "eval" / "classifier.json"
    if not path.is_file():
        return ""
    record = read_json(path)
    return (
        f"; the digit classifier (test accuracy {record['test_acc']:.4f}) took "
        f"{record['train_seconds']:.0f} s to train when it was made and is reused while the data "
        "are unchanged"
    )


def run_summary_block(run: Path) -> str:
    """The stage table of the default run: wall time and result of every stage."""
    seconds = stage_seconds(run)
    info = read_json(run / "run.json")
    versions = info["versions"]
    metrics = read_json(run / "eval" / "metrics.json")
    manifest = read_json(run / "export" / "manifest.json")
    results = {
        "ingest": "tfds built from the mirror: 55,000 / 5,000 / 10,000 digits",
        "train_ae": training_result(run, "ae"),
        "train_vae": training_result(run, "vae"),
        "evaluate": f"{len(metrics)} metrics, figures and report" + classifier_note(run),
        "export": f"{len(manifest['files'])} files in the bundle, parity checked",
    }
    if "train_denoiser" in seconds:
        results["train_denoiser"] = training_result(run, "denoiser")
    training = sum(seconds.get(name, 0.0) for name in TRAINING_STAGES)
    lines = [
        f"`run_pipeline.py` (`{run.name}/run.json`, seed {info['seed']}; Python "
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


def metrics_block(run: Path) -> str:
    """Every metric of ``eval/metrics.json`` with its value and meaning."""
    metrics = read_json(run / "eval" / "metrics.json")
    lines = ["| key | default run | meaning |", "| --- | ---: | --- |"]
    for key, value in metrics.items():
        lines.append(f"| `{key}` | {format_metric(key, value)} | {METRIC_DOCS.get(key, '')} |")
    return "\n".join(lines) + "\n"


def verdicts_block(run: Path) -> str:
    """What the measures say about the article's claims, decided by the numbers."""
    m = read_json(run / "eval" / "metrics.json")
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


def export_sizes_block(run: Path) -> str:
    """Sizes of the fp32 and int8 decoders and the int8 drift, from the bundle's manifest."""
    manifest = read_json(run / "export" / "manifest.json")
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
    return "\n".join(lines) + "\n"


def quantization_block(run: Path) -> str:
    """Every int8 candidate the export stage measured for each decoder, and the one it kept."""
    manifest = read_json(run / "export" / "manifest.json")
    config = read_json(run / "run.json")["config"]
    model, train = config["model"], config["train"]
    shape = model["hidden_units"] if model["architecture"] == "mlp" else model["conv_filters"]
    epochs = {k: read_json(run / k / "summary.json")["epochs_run"] for k in ("ae", "vae")}
    lines = [
        f"{model['architecture']} {shape}, latent {model['latent_dim']}, "
        f"{epochs['ae']} (AE) and {epochs['vae']} (VAE) epochs of a budget of {train['epochs']}:",
        "",
        "| decoder | method | mean drift | max drift | size of fp32 | within the targets | kept |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in ("vae", "ae"):
        choice = manifest["models"].get(f"{kind}_decoder_int8", {}).get("quantization_choice")
        if choice is None:
            continue
        for row in choice["candidates"]:
            worst = max(row["max_abs"], row["max_abs_one_at_a_time"])
            lines.append(
                f"| {kind.upper()} | `{row['method']}` | {row['mean_abs']:.5f} | {worst:.4f} | "
                f"{row['size_ratio']:.0%} | {'yes' if row['within_targets'] else 'no'} | "
                f"{'**kept**' if row['method'] == choice['method'] else ''} |"
            )
    return "\n".join(lines) + "\n"


def manifest_excerpt_block(run: Path) -> str:
    """The top of the bundle's manifest: everything but the per-file and per-model lists."""
    manifest = read_json(run / "export" / "manifest.json")
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


def runtime_scores_block(run: Path) -> str:
    """The runtime (``export.bundle.Bundle``, no TensorFlow) scoring the run's test digits."""
    import numpy as np

    from export.bundle import Bundle

    with np.load(run / "data" / "mnist.npz", allow_pickle=False) as npz:
        test = npz["test_images"].astype(np.float32) / np.float32(255.0)
    bundle = Bundle.load(run / "export")
    flagged = {kind: int(bundle.is_anomaly(test, model=kind).sum()) for kind in ("vae", "ae")}
    metrics = read_json(run / "eval" / "metrics.json")
    return (
        f"On `{run.name}`, scoring its {len(test):,} test digits with the bundle flags "
        f"{flagged['vae']} with the VAE and {flagged['ae']} with the AE "
        f"({flagged['vae'] / len(test):.2%} and {flagged['ae'] / len(test):.2%}; the evaluate "
        f"stage's `test_fpr` on the same digits: {metrics['vae.test_fpr']:.2%} and "
        f"{metrics['ae.test_fpr']:.2%}).\n"
    )


def binarized_block(run: Path) -> str:
    """The likelihood benchmark's numbers from a run of ``configs/binarized.toml``."""
    m = read_json(run / "eval" / "metrics.json")
    vae = read_json(Paths(run).summary_file("vae"))
    return (
        "\n".join(
            [
                f"From `{run.name}` (VAE: {vae['epochs_run']} epochs, best at epoch "
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


def vae_choices_block(path: Path) -> str:
    """The table and seed summary of ``bench/vae_choices.py``'s results file."""
    from bench.vae_choices import render, seed_groups

    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    summary = seed_groups(lines)
    return render(lines) + "\n" + (f"\n{summary}\n" if summary else "")


def stream_memory_block(path: Path) -> str:
    """``bench/stream_memory.py``'s last run (its JSON), as the script printed it."""
    from bench.stream_memory import render as render_run

    return "```\n" + render_run(read_json(path)) + "\n```\n"


def soak_block(path: Path) -> str:
    """``bench/soak.py``'s last run (its JSON summary), as ``soak.py --render`` prints it."""
    from bench.soak.report import render as render_soak

    return "```\n" + render_soak(read_json(path)).rstrip("\n") + "\n```\n"


def render(text: str, blocks: dict[str, Callable[[], str]]) -> str:
    """``text`` with every generated block named in ``blocks`` rewritten."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in blocks:
            return match.group(0)
        return match.group(1) + blocks[name]() + match.group(4)

    return BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the default run's --out")
    parser.add_argument("--binarized", type=Path, help="a run of configs/binarized.toml")
    parser.add_argument("--conv", type=Path, help="a run with model.architecture=conv")
    parser.add_argument(
        "--choices",
        type=Path,
        default=RESULTS / "vae_choices.jsonl",
        help="bench/vae_choices.py results",
    )
    parser.add_argument(
        "--stream-memory",
        type=Path,
        default=RESULTS / "stream_memory.json",
        help="bench/stream_memory.py results",
    )
    parser.add_argument(
        "--soak", type=Path, default=RESULTS / "soak.json", help="bench/soak.py results"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a block would change")
    args = parser.parse_args(argv)
    blocks: dict[str, Callable[[], str]] = {
        "run-summary": lambda: run_summary_block(args.run),
        "metrics": lambda: metrics_block(args.run),
        "verdicts": lambda: verdicts_block(args.run),
        "export-sizes": lambda: export_sizes_block(args.run),
        "quantization-mlp": lambda: quantization_block(args.run),
        "manifest-excerpt": lambda: manifest_excerpt_block(args.run),
        "runtime-scores": lambda: runtime_scores_block(args.run),
    }
    if args.binarized:
        blocks["binarized"] = lambda: binarized_block(args.binarized)
    if args.conv:
        blocks["quantization-conv"] = lambda: quantization_block(args.conv)
    if args.choices.is_file():
        blocks["vae-choices"] = lambda: vae_choices_block(args.choices)
    if args.soak.is_file():
        blocks["soak"] = lambda: soak_block(args.soak)
    if args.stream_memory.is_file():
        blocks["stream-memory"] = lambda: stream_memory_block(args.stream_memory)
    stale = []
    for doc in (REPO / "README.md", REPO / "BENCHMARKS.md"):
        text = doc.read_text()
        new = render(text, blocks)
        if new != text:
            stale.append(doc.name)
            if not args.check:
                write_text_atomic(doc, new)
    if args.check and stale:
        print(f"docs: stale generated blocks in {', '.join(stale)}", file=sys.stderr)
        return 1
    print(f"docs: {'rewrote ' + ', '.join(stale) if stale else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
