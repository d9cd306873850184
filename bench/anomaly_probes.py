"""Probes beyond the detector's candidates: how far other means get on the families the default
score misses (printed letters, printed signs, overlaid digits). Validation only.

    python -m bench.anomaly_probes --run artifacts     # -> bench/results/anomaly_probes.json

``bench.anomaly`` chooses the default score among settings of the pipeline's detector; its weak
families are inputs made of strokes like a digit's. These probes ask whether models that have
seen other strokes do better, measured as the protocol measures (``bench.anomaly.measure``: the
threshold at the run's anomaly FPR on the clean validation digits, the validation suites of
seeds 0, 1, 2, the clean FPR held out on halves). The test split is not read.

Scores (``SCORES``):

- ``detector``: the run's detector, its calibration as the stage wrote it (the reference);
- ``strokes_ratio``: the detector's negative ELBO minus that of a VAE of the background's shape
  trained on stroke figures: the log likelihood ratio (Ren et al. 2019) against a model of pen
  strokes that form no digit;
- ``detector_and_strokes``: the largest of the detector's three terms and ``strokes_ratio``, put
  on one scale as the detector's are (``Calibration.fit`` on the first half of the clean
  validation digits);
- ``outlier_exposure``: a discriminative reference, not a likelihood: an MLP of the detector
  encoder's widths classifying the ten digits and the stroke figures as an eleventh class
  (outlier exposure, Hendrycks et al. 2019), scored by log p(figure | x) - log p(digit | x).

Stroke figures (``stroke_figures``): one to three pen strokes (segments, elliptic arcs,
quadratic curves) drawn with a round pen on a 112 x 112 canvas and framed as MNIST frames a
digit (``bench.foreign.frame_mnist``); no font and no glyph. As many as there are train digits
(seed: the config's train seed) train the background VAE and the classifier; another draw, as
many as the validation digits, stops the VAE's fit early.

Per glyph: every letter and sign of ``bench.foreign`` rendered ``GLYPH_DRAWS`` times, and the
share of them each score flags. The picture (``docs/benchmarks/anomaly_probes.png``): the
validation digits the detector scores highest, the neighbours of its threshold, above validation
letters that it lets through.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import anomaly, foreign
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
from export.files import atomic_path
from export.scoring import (
    Calibration,
    combine_terms,
    detector_reconstruct,
    detector_terms,
    reconstruct_and_score,
)
from pipeline.config import Config, load_config
from pipeline.data import load_split

RESULT = result_path("anomaly_probes")
PICTURE = REPO / "docs" / "benchmarks" / "anomaly_probes.png"
SCORES = ("detector", "strokes_ratio", "detector_and_strokes", "outlier_exposure")
GLYPH_DRAWS = 150
CLASSIFIER_EPOCHS = 10
CANVAS = 112
Terms = dict[str, np.ndarray]


# -- stroke figures -----------------------------------------------------------------------------


def stroke_figure(rng: np.random.Generator) -> np.ndarray:
    """One figure of one to three pen strokes, framed as MNIST frames a digit: (28, 28) float64."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(canvas)
    pen = int(rng.integers(6, 15))
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(3))
        if kind == 0:  # a segment
            p = rng.uniform(10, CANVAS - 10, 4)
            draw.line([(p[0], p[1]), (p[2], p[3])], fill=255, width=pen)
        elif kind == 1:  # an elliptic arc of 60 to 360 degrees
            cx, cy = rng.uniform(30, CANVAS - 30, 2)
            rx, ry = rng.uniform(12, 45) * np.array([1.0, rng.uniform(0.6, 1.4)])
            start = rng.uniform(0, 360)
            draw.arc([cx - rx, cy - ry, cx + rx, cy + ry], start, start + rng.uniform(60, 360),
                     fill=255, width=pen)  # fmt: skip
        else:  # a quadratic Bezier curve
            p0, p1, p2 = rng.uniform(10, CANVAS - 10, (3, 2))
            t = np.linspace(0.0, 1.0, 24)[:, None]
            points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
            draw.line([(float(x), float(y)) for x, y in points], fill=255, width=pen,
                      joint="curve")  # fmt: skip
    return foreign.frame_mnist(np.asarray(canvas, np.float64) / 255.0)


def stroke_figures(n: int, seed: int) -> np.ndarray:
    """``n`` stroke figures (n, 28, 28) float32 on the 256 grey levels, drawn from ``seed`` only."""
    rng = np.random.default_rng([seed, 0x5742])
    return foreign.to_levels(np.stack([stroke_figure(rng) for _ in range(n)]))


# -- the probes' models -------------------------------------------------------------------------


def fit_background(cfg: Config, train: np.ndarray, val: np.ndarray) -> tuple[Any, Any, dict]:
    """A VAE of the detector background's shape fitted on stroke figures, with the pipeline's
    own fit (``[train]``'s settings, ``detector.background_epochs``); (encode, decode, summary)."""
    from models import submodel
    from pipeline.detection import predictor
    from pipeline.detector import fit_config
    from pipeline.fitting import fit_model

    fit_cfg = fit_config(cfg, cfg.detector.background_epochs)
    model, history, seconds = fit_model("background", fit_cfg, train_images=train, val_images=val)
    best = int(np.argmin(history["val_loss"]))
    summary = {"epochs": len(history["val_loss"]), "best_epoch": best + 1,
               "best_val_loss": float(history["val_loss"][best]), "seconds": round(seconds, 1)}  # fmt: skip
    encode = predictor(submodel(model, "background_encoder"))
    decode = predictor(submodel(model, "background_decoder"))
    return encode, decode, summary


def fit_classifier(cfg: Config, digits: np.ndarray, labels: np.ndarray, figures: np.ndarray,
                   val: np.ndarray, val_labels: np.ndarray) -> tuple[Any, dict]:  # fmt: skip
    """An MLP (the detector encoder's widths) over 11 classes: the ten digits and the figures
    (class 10); returns (images -> logits (n, 11), summary)."""
    import keras

    keras.utils.set_random_seed(cfg.train.seed)
    model = keras.Sequential(
        [keras.Input((28 * 28,))]
        + [keras.layers.Dense(u, activation="relu") for u in cfg.detector.hidden_units]
        + [keras.layers.Dense(11)]
    )
    model.compile(
        keras.optimizers.Adam(cfg.train.learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=cfg.train.jit_compile,
    )
    x = np.concatenate([digits, figures]).reshape(-1, 28 * 28)
    y = np.concatenate([labels, np.full(len(figures), 10)])
    started = time.perf_counter()
    model.fit(x, y, batch_size=cfg.train.batch_size, epochs=CLASSIFIER_EPOCHS, shuffle=True,
              verbose=2)  # fmt: skip

    def logits(images: np.ndarray) -> np.ndarray:
        return model.predict(images.reshape(-1, 28 * 28), batch_size=4096, verbose=0)

    accuracy = float(np.mean(np.argmax(logits(val), axis=1) == val_labels))
    summary = {"epochs": CLASSIFIER_EPOCHS, "seconds": round(time.perf_counter() - started, 1),
               "val_digit_accuracy": accuracy}  # fmt: skip
    return logits, summary


# -- terms and scores ---------------------------------------------------------------------------


def other_log_odds(logits: np.ndarray) -> np.ndarray:
    """log p(class 10 | x) - log p(any of classes 0-9 | x) from logits (n, 11): (n,) float64."""
    logits = np.asarray(logits, np.float64)
    digits = logits[:, :10]
    top = digits.max(axis=1)  # log-sum-exp over the digits, shifted by their own maximum
    return logits[:, 10] - (top + np.log(np.sum(np.exp(digits - top[:, None]), axis=1)))


def probe_terms(images: np.ndarray, models: dict[str, Any], block: int) -> Terms:
    """Every raw term of images (n, 28, 28): the detector's three, ``strokes_ratio`` and
    ``outlier_exposure`` (n,) float64."""
    fg = detector_reconstruct(images, *models["detector"])
    bg = reconstruct_and_score("vae", images, *models["background"])
    terms = detector_terms(images, fg, bg, block)
    strokes = reconstruct_and_score("vae", images, *models["strokes"])
    terms["strokes_ratio"] = terms["nelbo"] - strokes.scores.astype(np.float64)
    terms["outlier_exposure"] = other_log_odds(models["classifier"](images))
    return terms


def scorers(detector: Calibration, both: Calibration) -> dict[str, Callable[[Terms], np.ndarray]]:
    """Each score of ``SCORES`` as a function of the terms of ``probe_terms``."""

    def pick(terms: Terms, calibration: Calibration) -> Terms:
        return {name: terms[name] for name in calibration.terms}

    return {
        "detector": lambda t: combine_terms(pick(t, detector), detector),
        "strokes_ratio": lambda t: t["strokes_ratio"],
        "detector_and_strokes": lambda t: combine_terms(pick(t, both), both),
        "outlier_exposure": lambda t: t["outlier_exposure"],
    }


def per_glyph(score: dict[str, Callable[[Terms], np.ndarray]], thresholds: dict[str, float],
              terms_of: Callable[[np.ndarray], Terms], seed: int) -> dict[str, dict[str, float]]:  # fmt: skip
    """{glyph: {score: share of GLYPH_DRAWS renders flagged}} for every letter and sign."""
    rng = np.random.default_rng([seed, 0x6C79])
    out = {}
    for char in foreign.LETTERS + foreign.SIGNS:
        terms = terms_of(foreign.glyphs(char, GLYPH_DRAWS, rng))
        out[char] = {n: float(np.mean(f(terms) > thresholds[n])) for n, f in score.items()}
    return out


def draw_neighbours(clean: np.ndarray, clean_scores: np.ndarray, letters: np.ndarray,
                    letter_scores: np.ndarray, threshold: float, path: Path) -> None:  # fmt: skip
    """The PNG: the 30 clean digits scored highest (three rows), a gap, then the first 30
    letters scored at or below ``threshold``; 2x upscaled, written atomically."""
    from PIL import Image

    top = clean[np.argsort(-clean_scores)[:30]]
    passed = letters[letter_scores <= threshold][:30]
    scale, cell = 2, 28 * 2 + 2
    picture = Image.new("L", (10 * cell, 7 * cell), 60)
    for block, images in enumerate((top, passed)):
        for k, image in enumerate(images):
            tile = Image.fromarray(np.uint8(np.round(image * 255))).resize(
                (28 * scale, 28 * scale), Image.NEAREST
            )
            row = block * 4 + k // 10
            picture.paste(tile, ((k % 10) * cell + 1, row * cell + 1))
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


# -- the run ------------------------------------------------------------------------------------


def probe(run: Path, out: Path, picture: Path) -> int:
    from pipeline.common import Paths
    from pipeline.detection import halves, load_detector, read_calibration

    started, load_start = time.perf_counter(), os.getloadavg()
    cfg = load_config(run / "config.toml")
    paths = Paths(run)
    train, train_labels = load_split(paths.dataset, "train", cfg.data)
    val, val_labels = load_split(paths.dataset, "validation", cfg.data)
    figures = stroke_figures(len(train), cfg.train.seed)
    val_figures = stroke_figures(len(val), cfg.train.seed + 1)
    encode, decode, background = fit_background(cfg, figures, val_figures)
    logits, classifier = fit_classifier(cfg, train, train_labels, figures, val, val_labels)
    calibration, block = read_calibration(paths)
    foreground, shuffled = halves(load_detector(paths))
    models = {"detector": foreground, "background": shuffled, "strokes": (encode, decode),
              "classifier": logits}  # fmt: skip

    def terms_of(images: np.ndarray) -> Terms:
        return probe_terms(images, models, block)

    clean = terms_of(val)
    both = Calibration.fit(
        {name: clean[name][: len(val) // 2] for name in (*calibration.terms, "strokes_ratio")}
    )
    score = scorers(calibration, both)
    sets: dict[int, dict[str, Terms]] = {}
    for seed in anomaly.SEEDS:
        inputs = anomaly.suites(val, val_labels, seed)
        sets[seed] = {name: terms_of(images) for name, images in inputs.items()}
        if seed == anomaly.SEEDS[0]:  # the picture's letters, kept rather than drawn again
            letters = inputs["foreign/letters"]
    fpr = cfg.evaluate.anomaly_fpr
    results = {name: anomaly.measure(f, clean, sets, fpr) for name, f in score.items()}
    thresholds = {name: r["threshold"] for name, r in results.items()}
    glyphs = per_glyph(score, thresholds, terms_of, cfg.train.seed)
    draw_neighbours(val, score["detector"](clean), letters,
                    score["detector"](sets[anomaly.SEEDS[0]]["foreign/letters"]),
                    thresholds["detector"], picture)  # fmt: skip
    report = {
        "command": command_line(),
        "machine": machine(),
        "load": load_report(load_start),
        "seconds": round(time.perf_counter() - started, 1),
        "run": str(run),
        "split": "validation",
        "seeds": list(anomaly.SEEDS),
        "fpr": fpr,
        "targets": anomaly.TARGETS,
        "training": {
            "stroke_figures": {
                "train": len(figures),
                "validation": len(val_figures),
                "seed": cfg.train.seed,
            },  # fmt: skip
            "background": background,
            "classifier": classifier,
        },
        "scores": results,
        "glyphs": glyphs,
        "glyph_draws": GLYPH_DRAWS,
        "picture": str(picture.relative_to(REPO)) if picture.is_relative_to(REPO) else str(picture),
    }
    write_result(out, report)
    print(render(report))
    return 0


# -- rendering ----------------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    """The probes on validation: one row per score against the targets, the hard families'
    AUROCs, then every glyph's share flagged."""
    scores = report["scores"]
    hard = ("letters", "signs", "overlaid")
    rows = []
    for name, r in scores.items():
        s = r["summary"]
        rows.append(
            [
                name,
                " / ".join(f"{x:.2%}" for x in r["clean_fpr_held_out"]),
                *(anomaly.spread(r["rows"][f"foreign/{f}"]["flagged"]) for f in hard),
                *(f"{r['rows'][f'foreign/{f}']['auroc']['mean']:.3f}" for f in hard),
                f"{s['weakest_family']} {anomaly.pct(s['weakest_flagged'])}",
                f"{s['mnistc_mean_auroc']:.3f}",
                anomaly.pct(s["mnistc_mean_flagged"]),
                f"{s['targets_met_count']}/5",
            ]
        )
    header = ["score", "held-out clean FPR", *(f"{f} flagged" for f in hard),
              *(f"{f} AUROC" for f in hard), "weakest family", "MNIST-C AUROC",
              "MNIST-C flagged", "targets met"]  # fmt: skip
    names = list(scores)
    glyph_rows = sorted(report["glyphs"].items(), key=lambda kv: kv[1]["detector"])
    t = report["training"]
    lines = [
        f"machine: {report['machine']}",
        f"{report['command']} on {report['run']}'s validation digits (the test split is not "
        f"read); seeds {', '.join(map(str, report['seeds']))} of the suites' draws; every score "
        f"at its threshold for {report['fpr']:.0%} of the clean validation digits",
        f"stroke figures: {t['stroke_figures']['train']:,} to fit, "
        f"{t['stroke_figures']['validation']:,} to stop early (seed {t['stroke_figures']['seed']}); "
        f"background VAE best validation loss {t['background']['best_val_loss']:.1f} nats at "
        f"epoch {t['background']['best_epoch']}/{t['background']['epochs']}; classifier "
        f"{t['classifier']['epochs']} epochs, validation digit accuracy "
        f"{t['classifier']['val_digit_accuracy']:.4f}",
        "",
        table(header, rows),
        "",
        f"every glyph of the letters and signs families, {report['glyph_draws']} renders each "
        "(random font, slant and stroke): share flagged by each score, sorted by the detector's",
        "",
        table(
            ["glyph", *names],
            [[f"`{g}`", *(f"{v[n]:.0%}" for n in names)] for g, v in glyph_rows],
        ),
        "",
        f"wall time {report['seconds']:.0f} s",
        render_load(report["load"]),
    ]
    return "\n".join(lines) + "\n"


def index_line(r: dict[str, Any]) -> str:
    """The line of the benchmarks' index: the best probe on letters against the detector."""
    rows = {n: s["rows"] for n, s in r["scores"].items()}
    best = max(rows, key=lambda n: rows[n]["foreign/letters"]["flagged"]["mean"])

    def shares(name: str) -> str:
        return ", ".join(
            f"{f} {anomaly.pct(rows[name][f'foreign/{f}']['flagged']['mean'])}"
            for f in ("letters", "signs", "overlaid")
        )

    return f"validation, flagged: detector {shares('detector')}; {best} {shares(best)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="a finished pipeline run")
    parser.add_argument("--out", type=Path, default=RESULT, help="result JSON")
    parser.add_argument("--picture", type=Path, default=PICTURE, help="the PNG to write")
    args = parser.parse_args(argv)
    return probe(args.run, args.out, args.picture)


if __name__ == "__main__":
    sys.exit(main())
