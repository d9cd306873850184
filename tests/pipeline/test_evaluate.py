"""The evaluate stage on the smoke run: metrics, figures, report.html and classifier reuse."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SMOKE_CONFIG, run_cli
from PIL import Image

from export.scoring import gaussian_kl
from pipeline.common import Paths
from pipeline.evaluate import evaluate_outputs
from pipeline.figures import EMPTY_CELL_RGBA, FIGURES, read_history
from pipeline.latents import figure_grid
from pipeline.measures import empty_cells
from pipeline.report import METRIC_DOCS

pytestmark = pytest.mark.slow

SPEC_KEYS = [
    "ae.recon_mse",
    "vae.recon_mse",
    "vae.elbo_nats",
    "vae.kl_nats",
    "vae.nll_is_nats",
    "vae.nll_is_k",
    "reference.bernoulli_entropy_floor_nats",
    "ae.latent_knn_acc",
    "vae.latent_knn_acc",
    "ae.latent_empty_frac",
    "vae.latent_empty_frac",
    "vae.latent_empty_frac_prior",
    "classifier.test_acc",
    "classifier.dead_units",
    "ae.grid_confident_frac",
    "vae.grid_confident_frac",
    "vae.grid_confident_frac_prior",
    "ae.sample_fid",
    "vae.sample_fid",
    "ae.recon_fid",
    "vae.recon_fid",
    "reference.fid_train_test",
    "ae.denoise_psnr_gain_db",
    "vae.denoise_psnr_gain_db",
    "denoise.psnr_gain_db",
    "denoise.class_kept",
    "denoise.noisy_class_kept",
    "ae.anomaly_threshold",
    "vae.anomaly_threshold",
    "ae.test_fpr",
    "vae.test_fpr",
    "ae.noise_auroc",
    "vae.noise_auroc",
    "ae.noise_auroc_unclipped",
    "vae.noise_auroc_unclipped",
    "denoise.class_kept",
    "denoise.noisy_class_kept",
]
FRACTIONS = [
    "ae.latent_knn_acc",
    "vae.latent_knn_acc",
    "classifier.test_acc",
    "ae.latent_empty_frac",
    "vae.latent_empty_frac",
    "vae.latent_empty_frac_prior",
    "ae.grid_confident_frac",
    "vae.grid_confident_frac",
    "vae.grid_confident_frac_prior",
    "ae.noise_auroc",
    "vae.noise_auroc",
    "ae.noise_auroc_unclipped",
    "vae.noise_auroc_unclipped",
]
FIDS = ["ae.sample_fid", "vae.sample_fid", "ae.recon_fid", "vae.recon_fid"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_metrics(out: Path) -> dict[str, float]:
    return json.loads((out / "eval" / "metrics.json").read_text())


def test_every_metric_is_present_finite_and_in_range(smoke_run: Path):
    metrics = load_metrics(smoke_run)
    for key in SPEC_KEYS:
        assert key in metrics, f"{key} missing from metrics.json"
        assert isinstance(metrics[key], float) and np.isfinite(metrics[key]), key
    assert set(metrics) <= set(METRIC_DOCS), "every metric has a one-line meaning"
    assert metrics["vae.nll_is_k"] == 8.0  # smoke.toml's nll_samples
    assert metrics["vae.elbo_nats"] < 0 < metrics["vae.kl_nats"]
    # grey-level pixels: no Bernoulli decoder scores below their entropy, about 45 nats a digit
    floor = metrics["reference.bernoulli_entropy_floor_nats"]
    assert 30.0 < floor < metrics["vae.nll_is_nats"]
    assert metrics["vae.elbo_nats"] < -floor - metrics["vae.kl_nats"]
    for key in FRACTIONS:
        assert 0.0 <= metrics[key] <= 1.0, key
    # real train digits resemble the test digits more than anything a smoke model decodes
    for key in FIDS:
        assert 0.0 <= metrics["reference.fid_train_test"] < metrics[key], key
    # batch norm keeps the feature units firing; the plain CNN left a third of them dead
    dead = metrics["classifier.dead_units"]
    assert dead == int(dead) and 0 <= dead < 13
    # 12 epochs over 512 digits reach ~0.85; with batch-norm statistics that never settled the
    # classifier answers one class for everything (~0.1), and its FID features mean little
    assert metrics["classifier.test_acc"] > 0.6


def test_kl_metric_equals_the_closed_form_on_the_encoder_output(smoke_run: Path):
    from models import load_model
    from pipeline.config import load_config
    from pipeline.data import load_split

    cfg = load_config(SMOKE_CONFIG)
    images, _ = load_split(smoke_run / "data" / "mnist.npz", "test", cfg.data)
    z_mean, z_log_var = load_model(smoke_run / "vae" / "encoder.keras").predict(images, verbose=0)
    metrics = load_metrics(smoke_run)
    assert metrics["vae.kl_nats"] == pytest.approx(gaussian_kl(z_mean, z_log_var).mean(), rel=1e-5)


def assert_png(data: bytes, what: str) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE), f"{what} is not a PNG"
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.width >= 300 and img.height >= 150, f"{what} is only {img.size}"
        assert np.asarray(img.convert("L")).std() > 5, f"{what} is blank"
        return img.size


def test_figures_are_valid_pngs(smoke_run: Path):
    for name in FIGURES:
        assert_png((smoke_run / "eval" / f"{name}.png").read_bytes(), f"{name}.png")


def test_gap_figure_marks_the_empty_cells(smoke_run: Path):
    assert "latent_gaps" in FIGURES
    with Image.open(smoke_run / "eval" / "latent_gaps.png") as img:
        rgb = np.asarray(img.convert("RGB")).astype(float)
    # an empty cell with no test digit on it: the translucent red over the white background
    *colour, alpha = EMPTY_CELL_RGBA
    over_white = 255.0 * (alpha * np.array(colour) + (1.0 - alpha))
    cell_pixels = np.mean(np.all(np.abs(rgb - over_white) < 4.0, axis=-1))
    metrics = load_metrics(smoke_run)
    if metrics["ae.latent_empty_frac"] + metrics["vae.latent_empty_frac"] > 0.05:
        assert cell_pixels > 0.005, "empty cells not drawn"
    else:
        assert cell_pixels < 0.05


def test_pipeline_grids_are_the_runtimes_grid_latents(smoke_run: Path):
    """The grid figure's latents (``latents.figure_grid``) and the gap measure's cells
    (``measures.empty_cells``) are the points the runtime's ``Bundle.grid_latents`` gives over
    the same box, in the same order: a grid cell means one latent point everywhere."""
    from export.bundle import Bundle

    boxes = json.loads((smoke_run / "eval" / "latent_boxes.json").read_text())
    bundle = Bundle.load(smoke_run / "export")
    assert bundle.manifest["latent_boxes"] == boxes  # the same box on both sides
    for kind in ("ae", "vae"):
        for side in (1, 4, 7):
            runtime = bundle.grid_latents(side, kind)
            assert runtime.shape == (side * side, bundle.latent_dim)
            np.testing.assert_array_equal(figure_grid(boxes[kind], side), runtime)
        # one train latent on a runtime grid point: only that cell of the measure is filled
        side = 5
        runtime = bundle.grid_latents(side, kind)
        low, high = boxes[kind]["low"], boxes[kind]["high"]
        for cell in (0, side - 1, 7, side * side - 1):
            empty = empty_cells(runtime[[cell]], 1e-6, low, high, side)
            assert np.flatnonzero(~empty).tolist() == [cell], (kind, cell)


def test_report_embeds_every_figure_and_lists_every_metric(smoke_run: Path):
    page = (smoke_run / "eval" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    sources = re.findall(r"""src=['"]([^'"]*)['"]""", page)
    assert len(sources) == len(FIGURES)
    for name, src in zip(FIGURES, sources, strict=True):
        assert src.startswith("data:image/png;base64,"), name
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data == (smoke_run / "eval" / f"{name}.png").read_bytes(), name
        assert_png(data, f"embedded {name}")
    # nothing outside the page: no links, no remote or local URLs, no imports
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"(?i)(https?:|file:|//[a-z]|href=|@import|url\(|<script|<link)", text)
    metrics = load_metrics(smoke_run)
    for key in metrics:
        assert f"<code>{key}</code>" in page, f"{key} not listed"
        assert html.escape(METRIC_DOCS[key]) in page, f"{key}'s meaning not listed"
    assert "negative ELBO" in page and "mean squared reconstruction error" in page
    assert "[evaluate]" in page and "tensorflow" in page  # the config and the versions


def test_evaluate_outputs_cover_every_file_written(smoke_run: Path):
    written = {p.relative_to(smoke_run) for p in (smoke_run / "eval").iterdir()}
    declared = {p.relative_to(smoke_run) for p in evaluate_outputs(Paths(smoke_run))}
    assert written == declared
    record = json.loads((smoke_run / "stages" / "evaluate.json").read_text())
    assert set(record["outputs"]) == {str(p) for p in declared}


def test_training_history_is_read_for_the_curves(smoke_run: Path):
    history = read_history(smoke_run / "vae" / "history.csv")
    assert len(history["loss"]) == len(history["val_loss"]) >= 1
    assert "val_kl" in history


def test_classifier_is_reused_when_its_data_is_unchanged(smoke_run: Path, tmp_path: Path):
    out = tmp_path / "run"
    shutil.copytree(smoke_run, out, ignore=shutil.ignore_patterns("tfds"))
    before = json.loads((out / "eval" / "classifier.json").read_text())
    proc = run_cli(
        ["--config", str(SMOKE_CONFIG), "--out", str(out), "--stages", "evaluate", "--force"]
    )
    assert "classifier up to date" in proc.stdout
    after = json.loads((out / "eval" / "classifier.json").read_text())
    assert after == before
    assert (
        load_metrics(out)["classifier.test_acc"] == load_metrics(smoke_run)["classifier.test_acc"]
    )
    # the same seeds give the same numbers on a rerun
    for key, value in load_metrics(smoke_run).items():
        assert load_metrics(out)[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key

    # a classifier whose record does not match its file is retrained, not trusted
    (out / "eval" / "classifier.json").write_text(json.dumps({**before, "sha256": "0" * 64}))
    proc = run_cli(
        ["--config", str(SMOKE_CONFIG), "--out", str(out), "--stages", "evaluate", "--force"]
    )
    assert "training the digit classifier" in proc.stdout
    assert (
        json.loads((out / "eval" / "classifier.json").read_text())["fingerprint"]
        == (before["fingerprint"])
    )
