"""One-class novelty benchmark on MNIST, protocol of Ruff et al. 2018 ("Deep One-Class
Classification"), with the published Deep SVDD and OCGAN rows beside ours.

    python bench/one_class.py --data /tmp/full/data/mnist.npz --quiet   # MLP, latent 16, 1 seed
    python bench/one_class.py --render bench/one_class.json --plot bench/one_class.png

For each digit d: train the pipeline's AE and VAE (``pipeline.train.fit_model``) on the class-d
images of the train split only, early-stopping on the class-d images of the validation split;
score all 10,000 test digits; AUROC with d normal and the other nine digits anomalous
(``export.metrics.roc_auc``). Pixels are in [0, 1] (``pipeline.data.load_split``); no other
preprocessing. Each score is reported under its own name (see ``SCORES``). ``--seeds N`` repeats
everything with seeds ``train.seed + i`` and reports the mean and the standard deviation.

Writes ``bench/one_class.json`` (``--json``) and prints a markdown table (``--markdown`` also
writes it to a file, ``--plot`` draws it); ``--render`` redraws a stored result without training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: python bench/one_class.py
    sys.path.insert(0, str(REPO))

from export.metrics import roc_auc  # noqa: E402
from export.scoring import (  # noqa: E402
    bernoulli_nll,
    gaussian_kl,
    negative_elbo,
    reconstruction_mse,
)
from pipeline.common import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402
from pipeline.config import Config, load_config, validate  # noqa: E402
from pipeline.data import load_split  # noqa: E402

DIGITS = tuple(range(10))
DEFAULT_JSON = REPO / "bench" / "one_class.json"
PREDICT_BATCH = 2048
IS_ROWS = 16_384  # latent samples decoded per call in importance_sampled_nll (~50 MB of pixels)

# AUROC in percent, digits 0..9, as published.
PUBLISHED: dict[str, tuple[float, ...]] = {
    "One-class Deep SVDD (Ruff et al. 2018)": (
        98.0,
        99.7,
        91.7,
        91.9,
        94.9,
        88.5,
        98.3,
        94.6,
        93.9,
        96.5,
    ),
    "OCGAN (Perera et al. 2019)": (99.8, 99.9, 94.2, 96.3, 97.5, 98.0, 99.1, 98.1, 93.9, 98.1),
}
PUBLISHED_MEANS = {
    "One-class Deep SVDD (Ruff et al. 2018)": 94.8,
    "OCGAN (Perera et al. 2019)": 97.5,
}
TARGET_MEAN = 95.0  # our best score's mean AUROC must beat Deep SVDD's 94.8

# Every score: higher = more anomalous.
SCORES: dict[str, str] = {
    "ae_mse": "AE reconstruction mean squared error (export.scoring.reconstruction_mse)",
    "ae_bce": "AE Bernoulli NLL of the image under its reconstruction, nats",
    "vae_neg_elbo": "VAE negative ELBO at z = z_mean (export.scoring.negative_elbo), nats",
    "vae_is_nll": "VAE importance-sampled -log p(x) with K posterior samples, nats",
    "vae_recon": "VAE Bernoulli NLL at z = z_mean alone (the ELBO's reconstruction term)",
    "vae_mse": "VAE reconstruction mean squared error at z = z_mean",
    "vae_kl": "VAE KL(q(z|x) || N(0, I)) alone (the ELBO's latent term)",
    "ae_vae_mse": "ae_mse + vae_mse: both models' reconstruction errors, a fixed two-model ensemble",
}


def one_class_split(
    images: np.ndarray, labels: np.ndarray, digit: int, limit: int | None = None
) -> np.ndarray:
    """The images of class ``digit`` (the first ``limit`` of them): (n, 28, 28) -> (m, 28, 28)."""
    if digit not in DIGITS:
        raise ValueError(f"digit must be in 0..9, got {digit}")
    selected = images[labels == digit]
    if limit is not None:
        selected = selected[:limit]
    if len(selected) == 0:
        raise ValueError(f"no images of digit {digit} in this split")
    return selected


def anomaly_targets(labels: np.ndarray, digit: int) -> np.ndarray:
    """(n,) bool: True for the anomalies, the test digits other than ``digit``."""
    return np.asarray(labels) != digit


def importance_sampled_nll(
    decoder: Any,
    images: np.ndarray,
    z_mean: np.ndarray,
    z_log_var: np.ndarray,
    samples: int,
    seed: int,
) -> np.ndarray:
    """-log p(x) ~= -log mean_k p(x | z_k) p(z_k) / q(z_k | x), z_k ~ q(z | x) = N(z_mean, exp(z_log_var)).

    images (n, 28, 28) in [0, 1]; z_mean, z_log_var (n, d) -> (n,) float64 nats. The Bernoulli
    likelihood is ``export.scoring.bernoulli_nll``, the one the other scores use. Unlike the
    negative ELBO it tightens towards -log p(x) as ``samples`` grows.
    """
    rng = np.random.default_rng(seed)
    mu = np.asarray(z_mean, np.float64)
    log_var = np.asarray(z_log_var, np.float64)
    eps = rng.standard_normal((samples, *mu.shape))  # (K, n, d)
    z = mu + np.exp(0.5 * log_var) * eps
    # log N(z; 0, I) - log N(z; mu, sigma^2); the 2*pi terms cancel
    log_w = -0.5 * np.sum(z**2, axis=2) + 0.5 * np.sum(eps**2 + log_var, axis=2)  # (K, n)
    chunk = max(1, IS_ROWS // samples)  # images per decoder call, K samples each
    for start in range(0, len(images), chunk):
        part = slice(start, start + chunk)
        n = len(images[part])
        flat_z = z[:, part].reshape(samples * n, -1).astype(np.float32)
        pixels = decoder.predict(flat_z, batch_size=PREDICT_BATCH, verbose=0)
        repeated = np.broadcast_to(images[part], (samples, *images[part].shape))
        nll = bernoulli_nll(repeated.reshape(samples * n, *images.shape[1:]), pixels)
        log_w[:, part] -= nll.reshape(samples, n)
    top = log_w.max(axis=0)  # log-mean-exp, shifted so the largest weight is exp(0)
    return -(top + np.log(np.mean(np.exp(log_w - top), axis=0)))


def score_images(
    ae: Any, vae: Any, images: np.ndarray, nll_samples: int, seed: int
) -> dict[str, np.ndarray]:
    """Every score in ``SCORES`` for ``images`` (n, 28, 28): {name: (n,)}; the VAE decodes z_mean."""
    from models import submodel

    ae_pixels = ae.predict(images, batch_size=PREDICT_BATCH, verbose=0)
    encoder, decoder = submodel(vae, "vae_encoder"), submodel(vae, "vae_decoder")
    z_mean, z_log_var = encoder.predict(images, batch_size=PREDICT_BATCH, verbose=0)
    vae_pixels = decoder.predict(z_mean, batch_size=PREDICT_BATCH, verbose=0)
    ae_mse, vae_mse = reconstruction_mse(images, ae_pixels), reconstruction_mse(images, vae_pixels)
    return {
        "ae_mse": ae_mse,
        "ae_bce": bernoulli_nll(images, ae_pixels),
        "vae_neg_elbo": negative_elbo(images, vae_pixels, z_mean, z_log_var),
        "vae_is_nll": importance_sampled_nll(decoder, images, z_mean, z_log_var, nll_samples, seed),
        "vae_recon": bernoulli_nll(images, vae_pixels),
        "vae_mse": vae_mse,
        "vae_kl": gaussian_kl(z_mean, z_log_var),
        "ae_vae_mse": ae_mse + vae_mse,
    }


def run_digit(
    cfg: Config,
    digit: int,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    nll_samples: int,
    train_limit: int | None = None,
) -> dict[str, Any]:
    """Train AE and VAE on class ``digit``, score the whole test split; AUROC per score."""
    from pipeline.train import fit_model

    train = one_class_split(*splits["train"], digit, train_limit)
    val = one_class_split(*splits["validation"], digit)
    test_images, test_labels = splits["test"]
    targets = anomaly_targets(test_labels, digit)
    record: dict[str, Any] = {
        "digit": digit,
        "train_images": len(train),
        "validation_images": len(val),
        "test_normal": int((~targets).sum()),
        "test_anomalies": int(targets.sum()),
    }
    fitted = {}
    for kind in ("ae", "vae"):
        model, history, seconds = fit_model(kind, cfg, train, val)
        fitted[kind] = model
        best = int(np.argmin(history["val_loss"]))
        record[kind] = {
            "epochs_run": len(history["loss"]),
            "best_epoch": best + 1,
            "best_val_loss": float(history["val_loss"][best]),
            "seconds": round(seconds, 2),
        }
    started = time.perf_counter()
    scores = score_images(fitted["ae"], fitted["vae"], test_images, nll_samples, cfg.train.seed)
    record["scoring_seconds"] = round(time.perf_counter() - started, 2)
    record["auroc"] = {name: roc_auc(values, targets) for name, values in scores.items()}
    return record


def summarize(runs: list[dict[str, Any]], digits: list[int]) -> dict[str, Any]:
    """Per score: AUROC (fraction) per digit and its mean, averaged over seeds, with the spread
    (population standard deviation over seeds; 0 for one seed)."""
    summary = {}
    for name in SCORES:
        table = np.array([[run["digits"][str(d)]["auroc"][name] for d in digits] for run in runs])
        per_seed_mean = table.mean(axis=1)
        summary[name] = {
            "per_digit": table.mean(axis=0).tolist(),
            "per_digit_std": table.std(axis=0).tolist(),
            "mean": float(per_seed_mean.mean()),
            "mean_std": float(per_seed_mean.std()),
        }
    return summary


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def format_table(result: dict[str, Any]) -> str:
    """Markdown: one row per score (AUROC %, mean over seeds, ± std when several) and the
    published rows; then our best score's shortfall per digit against the target."""
    digits = result["digits"]
    seeds = len(result["runs"])
    s = result["setting"]
    lines = [
        f"AUROC (%) per normal digit; {s['architecture']} AE/VAE, latent {s['latent_dim']}, "
        f"beta {s['beta']}, up to {s['epochs']} epochs (patience {s['patience']}), "
        f"K = {s['nll_samples']} importance samples, {seeds} seed(s) {s['seeds']}; "
        f"{result['preprocessing']}.",
        "",
        "| score | " + " | ".join(str(d) for d in digits) + " | mean |",
        "| --- |" + " ---: |" * (len(digits) + 1),
    ]
    for name, row in result["summary"].items():
        cells = [
            _pct(m) + (f" ± {_pct(sd)}" if seeds > 1 else "")
            for m, sd in zip(row["per_digit"], row["per_digit_std"], strict=True)
        ]
        mean = _pct(row["mean"]) + (f" ± {_pct(row['mean_std'])}" if seeds > 1 else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    if digits == list(DIGITS):
        for label, row in PUBLISHED.items():
            cells = " | ".join(f"{v:.1f}" for v in row)
            lines.append(f"| {label} | {cells} | {PUBLISHED_MEANS[label]:.1f} |")
    best = result["best"]
    lines += ["", f"Best score: `{best['score']}`, mean AUROC {_pct(best['mean'])} %"]
    if digits == list(DIGITS):
        verdict = "meets" if 100 * best["mean"] >= TARGET_MEAN else "falls short of"
        lines[-1] += f" ({verdict} the {TARGET_MEAN:.1f} % target)."
        per_digit = result["summary"][best["score"]]["per_digit"]
        for label, row in PUBLISHED.items():
            behind = [
                f"{d} ({_pct(per_digit[i])} vs {row[d]:.1f})"
                for i, d in enumerate(digits)
                if 100 * per_digit[i] < row[d]
            ]
            lines.append(
                f"Below {label.split(' (')[0]} on digit(s): " + ", ".join(behind) + "."
                if behind
                else f"At or above {label.split(' (')[0]} on every digit."
            )
    cpu = result.get("cpu_seconds")  # absent in results written before it was recorded
    lines.append(
        f"Wall time {result['seconds'] / 60:.1f} min"
        + (f" ({cpu / 60:.1f} CPU-min)" if cpu is not None else "")
        + f" on {result['machine']['cpus']} CPU cores "
        f"(load average {result['machine']['loadavg_start']} at start, "
        f"{result['machine']['loadavg_end']} at end)."
    )
    return "\n".join(lines)


def plot_auroc(result: dict[str, Any], path: Path) -> None:
    """Grouped bars per digit: our best score beside the published rows (AUROC %), to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    digits = result["digits"]
    best = result["best"]["score"]
    rows = {f"ours: {best}": [100 * v for v in result["summary"][best]["per_digit"]]}
    if digits == list(DIGITS):
        rows.update({label: list(row) for label, row in PUBLISHED.items()})
    fig, ax = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / len(rows)
    x = np.arange(len(digits))
    for i, (label, values) in enumerate(rows.items()):
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, [str(d) for d in digits])
    ax.set_xlabel("normal digit")
    ax.set_ylabel("AUROC (%)")
    ax.set_ylim(min(75.0, min(min(v) for v in rows.values()) - 2), 100.0)
    ax.axhline(TARGET_MEAN, color="grey", lw=0.8, ls="--")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(rows), fontsize=8)
    ax.set_title("One-class novelty on MNIST (test split, 10,000 digits)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)


def benchmark_config(cfg: Config, args: argparse.Namespace) -> Config:
    """The pipeline config with the benchmark's model and training settings applied."""
    model = dataclasses.replace(
        cfg.model,
        architecture=args.architecture,
        latent_dim=args.latent_dim,
        beta=args.beta,
    )
    train = dataclasses.replace(
        cfg.train,
        epochs=args.epochs,
        patience=args.patience,
        verbose="quiet" if args.quiet else cfg.train.verbose,
    )
    cfg = dataclasses.replace(cfg, model=model, train=train)
    validate(cfg)  # replace() skips the range checks load_config makes
    return cfg


def dataset_path(args: argparse.Namespace, cfg: Config) -> Path:
    """``--data``, else ``--out``/data/mnist.npz, running the ingest stage there if it is missing."""
    if args.data is not None:
        if not args.data.is_file():
            raise FileNotFoundError(f"--data {args.data}: no such file (expected an mnist.npz)")
        return args.data
    from pipeline.common import Paths

    paths = Paths(out=args.out)
    if not paths.dataset.is_file():
        from pipeline.ingest import mirror_from_env
        from pipeline.runner import run_stages

        mirror = mirror_from_env(args.mirror)
        tfds_dir = os.environ.get("TFDS_DATA_DIR")
        paths = Paths(out=args.out, mirror=mirror, tfds_dir=Path(tfds_dir) if tfds_dir else None)
        run_stages(cfg, paths, ["ingest"])
    return paths.dataset


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_benchmark(
    cfg: Config,
    dataset: Path,
    digits: list[int],
    seeds: int,
    nll_samples: int,
    train_limit: int | None = None,
) -> dict[str, Any]:
    """All runs (seeds x digits) and their summary, as written to ``one_class.json``."""
    splits = {
        split: load_split(dataset, split, cfg.data) for split in ("train", "validation", "test")
    }
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    runs = []
    total, done = seeds * len(digits), 0
    for i in range(seeds):
        seed = cfg.train.seed + i
        seeded = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        per_digit = {}
        for digit in digits:
            record = run_digit(seeded, digit, splits, nll_samples, train_limit)
            per_digit[str(digit)] = record
            done += 1
            elapsed = time.perf_counter() - started
            eta = elapsed / done * (total - done)
            best = max(record["auroc"], key=record["auroc"].get)
            print(
                f"[{done}/{total}] seed {seed} digit {digit}: "
                + " ".join(f"{k} {_pct(v)}" for k, v in record["auroc"].items())
                + f" | best {best} | {elapsed / 60:.1f} min elapsed, ~{eta / 60:.1f} min left",
                flush=True,
            )
        runs.append({"seed": seed, "digits": per_digit})
    summary = summarize(runs, digits)
    best_score = max(summary, key=lambda name: summary[name]["mean"])
    m = cfg.model
    return {
        "protocol": (
            "Ruff et al. 2018: train on the train-split images of digit d only (validation: the "
            "validation-split images of d), score all test images, AUROC with d normal and the "
            "other nine digits anomalous"
        ),
        "preprocessing": (
            "pixels in [0, 1], statically binarized"
            if cfg.data.binarize
            else "pixels in [0, 1], no other preprocessing"
        ),
        "dataset": str(dataset),
        "setting": {
            "architecture": m.architecture,
            "latent_dim": m.latent_dim,
            "beta": m.beta,
            "hidden_units": list(m.hidden_units),
            "conv_filters": list(m.conv_filters),
            "epochs": cfg.train.epochs,
            "patience": cfg.train.patience,
            "batch_size": cfg.train.batch_size,
            "learning_rate": cfg.train.learning_rate,
            "nll_samples": nll_samples,
            "train_limit": train_limit,
            "seeds": [cfg.train.seed + i for i in range(seeds)],
        },
        "scores": SCORES,
        "digits": digits,
        "runs": runs,
        "summary": summary,
        "best": {"score": best_score, "mean": summary[best_score]["mean"]},
        "published": {
            label: {"per_digit": list(row), "mean": PUBLISHED_MEANS[label]}
            for label, row in PUBLISHED.items()
        },
        "seconds": round(time.perf_counter() - started, 1),
        # CPU time of all threads: on shared cores wall time overstates the cost
        "cpu_seconds": round(_cpu_seconds() - cpu_started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_start": loadavg_start,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--data", type=Path, help="an ingested mnist.npz")
    where.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts"),
        help="pipeline output folder holding data/mnist.npz; ingested there when missing",
    )
    parser.add_argument("--mirror", type=Path, help="offline MNIST mirror (default $MNIST_MIRROR)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.toml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE"
    )
    parser.add_argument("--architecture", choices=("mlp", "conv"), default="mlp")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=30, help="upper bound per model and digit")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--nll-samples", type=int, default=8, help="K for vae_is_nll")
    parser.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9", help="comma-separated")
    parser.add_argument("--seeds", type=int, default=1, help="runs with seeds train.seed + i")
    parser.add_argument(
        "--train-limit", type=int, help="use at most this many train images per digit"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="result file")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--plot", type=Path, help="also draw the per-digit bars here (.png)")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="train nothing: print the table (and --markdown/--plot) of a stored result",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-epoch Keras output")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.nll_samples < 1:
        parser.error("--seeds and --nll-samples must be positive")
    try:
        args.digits = sorted({int(d) for d in args.digits.split(",") if d.strip()})
    except ValueError:
        parser.error(f"--digits {args.digits!r}: expected comma-separated digits 0..9")
    if not args.digits or any(d not in DIGITS for d in args.digits):
        parser.error(f"--digits {args.digits}: expected digits 0..9")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        result = json.loads(args.render.read_text())
        return _report(result, args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # every digit brings new models, so Keras' predict functions are retraced by design
    tf.get_logger().setLevel("ERROR")
    cfg = benchmark_config(load_config(args.config, args.overrides), args)
    dataset = dataset_path(args, cfg)
    result = run_benchmark(
        cfg, dataset, args.digits, args.seeds, args.nll_samples, args.train_limit
    )
    write_json_atomic(args.json, result)
    print(f"wrote {args.json}")
    return _report(result, args)


def _report(result: dict[str, Any], args: argparse.Namespace) -> int:
    table = format_table(result)
    if args.markdown is not None:
        write_text_atomic(args.markdown, table + "\n")
    if args.plot is not None:
        plot_auroc(result, args.plot)
        print(f"wrote {args.plot}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
