"""Which training setup buys the best VAE per second: candidates trained on the real data, chosen
on the validation split, with the test split measured beside it (never used to choose).

    python -m bench.vae_choices --run artifacts \
        --candidate "base=train.batch_size=128 train.lr_schedule=constant" \
        --candidate "wide=model.hidden_units=[1024,512]"
    python -m bench.vae_choices --render
    python -m bench.vae_choices ... --candidate "default@1235=train.seed=1235"

Each candidate is a name and ``section.key=value`` overrides of ``configs/default.toml``; it is
trained by ``pipeline.fitting.fit_model`` (as the train_vae stage does, without the checkpoint)
on the run's ``data/mnist.npz``. After training, the negative ELBO (K importance samples of
q(z|x), ``pipeline.likelihood``) is measured on the 5,000 validation and the 10,000 test digits
with the best-validation weights. One JSON line per candidate is appended to ``--jsonl``
(default ``bench/results/vae_choices.jsonl``) as soon as it finishes, so a long list survives an interruption; ``--render`` prints the table of every
line, ordered by validation -ELBO, with the load average each ran under. Candidates named
``NAME@SEED`` are also summarised as a group: mean and standard deviation over the seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import DEFAULT_RUN, REPO, RESULTS, table
from export.files import atomic_path

ELBO_SAMPLES = 16  # K per digit: the ELBO estimate's spread over 5,000 digits is ~0.01 nats


def negative_elbo(model: Any, images: Any, seed: int) -> float:
    """Mean -ELBO (nats) of ``images`` (n, 28, 28) under a trained VAE, K = ELBO_SAMPLES."""
    from models import submodel
    from pipeline.likelihood import vae_likelihood

    z_mean, z_log_var = submodel(model, "vae_encoder").predict(images, batch_size=2048, verbose=0)
    result = vae_likelihood(
        submodel(model, "vae_decoder"), images, z_mean, z_log_var, k=ELBO_SAMPLES, seed=seed,
        progress=False,
    )  # fmt: skip
    return float(-result["elbo"].mean())


def run_candidate(name: str, overrides: list[str], run: Path, config: Path) -> dict[str, Any]:
    from pipeline.config import load_config
    from pipeline.data import load_split
    from pipeline.fitting import fit_model

    cfg = load_config(config, ["train.verbose=quiet", *overrides])
    dataset = run / "data" / "mnist.npz"
    train, _ = load_split(dataset, "train", cfg.data)
    val, _ = load_split(dataset, "validation", cfg.data)
    test, _ = load_split(dataset, "test", cfg.data)
    started = time.perf_counter()
    model, history, seconds = fit_model("vae", cfg, train, val)
    best = min(range(len(history["val_loss"])), key=history["val_loss"].__getitem__)
    return {
        "name": name,
        "overrides": overrides,
        "parameters": int(model.count_params()),
        "epochs_run": len(history["val_loss"]),
        "best_epoch": best + 1,
        "train_seconds": round(seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "val_neg_elbo": negative_elbo(model, val, cfg.evaluate.seed),
        "test_neg_elbo": negative_elbo(model, test, cfg.evaluate.seed),
        "val_kl_at_best": history["val_kl"][best],
        "load_average": round(os.getloadavg()[0], 1),
    }


def seed_groups(lines: list[dict[str, Any]]) -> str:
    """Mean and standard deviation over the candidates named ``NAME@SEED`` (the same setup at
    several ``train.seed`` values)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        if "@" in line["name"]:
            groups.setdefault(line["name"].split("@")[0], []).append(line)
    out = []
    for name, group in groups.items():
        parts = [
            f"{name}: {len(group)} seeds ({', '.join(g['name'].split('@')[1] for g in group)})"
        ]
        for key, label in (("val_neg_elbo", "val -ELBO"), ("test_neg_elbo", "test -ELBO"),
                           ("train_seconds", "train s")):  # fmt: skip
            values = np.array([g[key] for g in group], np.float64)
            parts.append(
                f"{label} {values.mean():.2f} +- {values.std(ddof=1) if len(values) > 1 else 0:.2f}"
            )
        out.append("; ".join(parts))
    return "\n".join(out)


def render(lines: list[dict[str, Any]]) -> str:
    rows = [
        [r["name"], " ".join(r["overrides"]) or "(default)", f"{r['parameters']:,}",
         f"{r['best_epoch']}/{r['epochs_run']}", f"{r['val_neg_elbo']:.2f}",
         f"{r['test_neg_elbo']:.2f}", f"{r['train_seconds']:.0f}", f"{r['load_average']:.1f}"]
        for r in sorted(lines, key=lambda r: r["val_neg_elbo"])
    ]  # fmt: skip
    header = ["name", "overrides of configs/default.toml", "parameters", "best/ran epochs",
              "val -ELBO", "test -ELBO", "train s", "load avg"]  # fmt: skip
    return table(header, rows)


def append_line(path: Path, line: dict[str, Any]) -> None:
    """Add one result line: the file is rewritten whole under a temporary name and renamed, so
    a kill leaves the lines written so far intact."""
    old = path.read_text() if path.is_file() else ""
    with atomic_path(path) as tmp:
        tmp.write_text(old + json.dumps(line) + "\n")


def index_line(lines: list[dict[str, Any]]) -> str:
    """The line of the benchmarks' index: this result's headline figure."""
    best = min(lines, key=lambda x: x["val_neg_elbo"])
    return f"{len(lines)} setups; best val -ELBO {best['val_neg_elbo']:.2f} (`{best['name']}`)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with data/")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.toml")
    parser.add_argument(
        "--jsonl", type=Path, default=RESULTS / "vae_choices.jsonl", help="results, one line each"
    )
    parser.add_argument(
        "--candidate", action="append", default=[], metavar="NAME=OVERRIDE OVERRIDE ..."
    )
    parser.add_argument("--render", action="store_true", help="print the table and exit")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for spec in [] if args.render else args.candidate:
        name, _, overrides = spec.partition("=")
        result = run_candidate(name, overrides.split(), args.run, args.config)
        print(json.dumps(result), flush=True)
        append_line(args.jsonl, result)
    lines = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    print(render(lines))
    summary = seed_groups(lines)
    if summary:
        print()
        print(summary)


if __name__ == "__main__":
    main()
