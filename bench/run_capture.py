"""A pipeline run's figures: captured from its folder into one committed JSON file, and rendered
from that file into the pages' generated blocks.

    report = capture(Path("artifacts"))          # run.json, summaries, metrics, manifest, flags
    print(run_summary_block(report))             # the README's stage table

``python -m bench.docs --run artifacts --capture`` writes ``bench/results/default_run.json``
(``--binarized``, ``--conv``: the other captured runs); rendering reads only that file, so a
clean clone renders the pages without a pipeline run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.report import METRIC_DOCS

TRAINING_STAGES = (
    "ingest", "train_ae", "train_vae", "train_compact", "train_denoiser", "train_detector",
)  # fmt: skip
SCORING = ("detector", "vae", "ae")


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
        "flagged": {
            kind: int(bundle.is_anomaly(test, model=kind).sum()) for kind in bundle.scoring_models
        },
        "default": bundle.default_model,
    }


def capture(run: Path) -> dict[str, Any]:
    """Everything the pages quote from the run folder ``run``, in one JSON-able dict."""
    info = read_json(run / "run.json")
    manifest = read_json(run / "export" / "manifest.json")
    summaries = {
        kind: read_json(run / kind / "summary.json")
        for kind in ("ae", "vae", "compact", "denoiser", "detector")
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
    if "compact" in run["summaries"]:
        c = run["summaries"]["compact"]
        results["train_compact"] = (
            f"{c['parameters']:,} weights, {c['epochs_run']} epochs ({c['seconds_per_epoch']:.1f} s "
            f"each) on {c['distillation_latents']:,} latents; mean |compact - VAE decoder| "
            f"{c['val_mean_abs_diff']:.4f} (validation z_mean), {c['prior_mean_abs_diff']:.4f} (prior)"
        )
    if "detector" in run["summaries"]:
        d = run["summaries"]["detector"]
        b = d["background"]
        results["train_detector"] = (
            f"class-conditional VAE {d['epochs_run']} epochs ({d['seconds_per_epoch']:.1f} s each), "
            f"validation class accuracy {d['val_class_accuracy']:.4f}; background VAE "
            f"({b['transform']}) {b['epochs_run']} epochs ({b['seconds_per_epoch']:.1f} s each)"
        )
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
    names = {"vae_decoder": "VAE decoder", "ae_decoder": "AE decoder",
             "compact_decoder": "compact decoder"}  # fmt: skip
    for role, name in names.items():
        int8_model = models.get(f"{role}_int8")
        if role not in models or int8_model is None:
            continue
        fp32 = files[models[role]["file"]]["bytes"]
        int8, drift = files[int8_model["file"]]["bytes"], int8_model["drift_vs_fp32"]
        method = int8_model.get("quantization_choice", {}).get("method", "dynamic")
        lines.append(
            f"| {name} | {fp32:,} B | {int8:,} B ({int8 / fp32:.0%}) | `{method}` | "
            f"{drift['mean_abs']:.5f} | {drift['max_abs']:.4f} | {drift['max_abs_one_at_a_time']:.4f} |"
        )
    parity = manifest["parity"]
    worst = max(parity["models"].items(), key=lambda item: item[1]["worst_ratio_to_tolerance"])
    largest = max(parity["models"].items(), key=lambda item: item[1]["max_abs_diff"])
    lines += [
        "",
        f"Parity on {parity['samples']:,} test digits: the largest ORT-Keras difference of any "
        f"model is {largest[1]['max_abs_diff']:.2g} ({largest[0]}); the closest to its allowance "
        f"is {worst[0]} ({worst[1]['worst_ratio_to_tolerance']:.0%} of it).",
    ]
    scorers = [f"{k}_scorer" for k in ("detector", "vae", "ae") if f"{k}_scorer" in models]
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
        f"the export stage took {run['stage_seconds']['export']:.1f} s. Drift on the held-out "
        "validation latents and prior draws, p50 of one latent on one thread against the fp32 "
        "decoder's, measured in the same rounds at export:",
        "",
        "| decoder | method | mean drift | max drift | size of fp32 | p50 of fp32 | accurate | "
        "fast | kept |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, choice in choices(run).items():
        for row in choice["candidates"]:
            fast = row.get("latency_ratio")
            lines.append(
                f"| {kind} | `{row['method']}` | {row['mean_abs']:.5f} | "
                f"{candidate_max(row):.4f} | {row['size_ratio']:.0%} | "
                f"{'-' if fast is None else f'{fast:.2f}'} | "
                f"{'yes' if row.get('accurate', row.get('within_targets')) else 'no'} | "
                f"{'yes' if row.get('fast') else 'no'} | "
                f"{'**kept**' if row['method'] == choice['method'] else ''} |"
            )
    return "\n".join(lines) + "\n"


def choices(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    models = run["manifest"]["models"]
    return {
        kind: models[f"{kind}_decoder_int8"]["quantization_choice"]
        for kind in ("vae", "ae", "compact")
        if "quantization_choice" in models.get(f"{kind}_decoder_int8", {})
    }


def candidate_max(row: dict[str, Any]) -> float:
    return max(row["max_abs"], row["max_abs_one_at_a_time"])


def quantization_findings_block(run: dict[str, Any]) -> str:
    """The int8 table read in words: what each decoder kept, how it was chosen, what it costs."""
    parts = []
    for kind, choice in choices(run).items():
        kept = next(r for r in choice["candidates"] if r["method"] == choice["method"])
        fast = [r["method"] for r in choice["candidates"] if r.get("fast")]
        parts.append(
            f'- {kind}: `{choice["method"]}`, chosen by the rule\'s step "{choice.get("chosen_by", "")}": '
            f"mean drift {kept['mean_abs']:.5f}, max {candidate_max(kept):.4f}, "
            f"{kept['size_ratio']:.0%} of the fp32 file"
            + (
                f", p50 {kept['latency_ratio']:.2f} of the fp32 decoder's"
                if "latency_ratio" in kept
                else ""
            )
            + (
                f"; fast candidates: {', '.join(f'`{m}`' for m in fast)}"
                if fast
                else "; no candidate was fast"
            )
            + "."
        )
    return f"On `{run['run']}`:\n\n" + "\n".join(parts) + "\n"


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
    parts = [
        f"{flagged[kind]} with the {kind} ({flagged[kind] / n:.2%}; the evaluate stage's "
        f"`{kind}.test_fpr`: {metrics[f'{kind}.test_fpr']:.2%})"
        for kind in SCORING
        if kind in flagged
    ]
    return (
        f"On `{run['run']}`, scoring its {n:,} test digits the bundle flags "
        + ", ".join(parts)
        + ".\n"
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


def index_line(r: dict[str, Any]) -> str:
    """The line of the benchmarks' index for a captured run: its whole wall time."""
    return f"{sum(r['stage_seconds'].values()):.0f} s for the whole pipeline"
