"""``report.html``: one self-contained page with every metric, figure, the config and versions.

    html = render_report(metrics, figures, config_toml, versions)   # figures: {name: png path}
    write_text_atomic(paths.out / "report.html", html)

Figures are embedded as base64 ``data:image/png`` URIs and the CSS is inline, so the page opens
offline and references nothing outside itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.latents import GAP_PERCENTILE, VAE_GRID_QUANTILES

# One line per metric: what it measures. The report and docs/evaluation.md list these.
METRIC_DOCS: dict[str, str] = {
    "ae.recon_mse": "AE: mean per-pixel squared error of the reconstructed test digits.",
    "vae.recon_mse": "VAE: mean per-pixel squared error of test digits decoded from z_mean.",
    "vae.elbo_nats": "VAE: test ELBO, E_q[log p(x|z)] - KL, nats per image (higher is better); on grey levels it stays below -reference.bernoulli_entropy_floor_nats.",
    "vae.kl_nats": "VAE: mean KL(q(z|x) || N(0, I)) on the test digits, nats.",
    "vae.nll_is_nats": "VAE: importance-sampled negative log-likelihood -log p(x), nats (lower is better); on grey levels it cannot fall below reference.bernoulli_entropy_floor_nats.",
    "vae.nll_is_k": "Importance samples K per test digit behind vae.nll_is_nats.",
    "reference.bernoulli_entropy_floor_nats": "Mean over test digits of the summed binary entropy of the pixels: the Bernoulli NLL a perfect decoder (p = x) scores, the floor under vae.nll_is_nats (0 on binarized data).",
    "ae.latent_knn_acc": "AE: k-NN (k = 5 by default) label accuracy of test latents against the train latents.",
    "vae.latent_knn_acc": "VAE: k-NN label accuracy of test z_mean against the train z_mean.",
    "ae.latent_empty_frac": "AE: share of a 30x30 grid over its train latents' 1st-99th percentile box whose cells lie farther from every train latent than 99% of test latents (r99): the gaps.",
    "vae.latent_empty_frac": "VAE: the same over the 1st-99th percentile box of its train z_mean (the same rule as the AE's).",
    "vae.latent_empty_frac_prior": "VAE: the same gap share over the prior's N(0, 1) 0.05-0.95 quantile box, the region of vae_grid.png.",
    "classifier.test_acc": "Test accuracy of the CNN digit classifier that judges decoded digits.",
    "classifier.dead_units": "Units of the classifier's 128-unit feature layer (the FID features) that are zero on every test digit.",
    "ae.grid_confident_frac": "AE: share of a decoded 30x30 grid over its train latents' 1st-99th percentile box the classifier labels with p >= 0.9.",
    "vae.grid_confident_frac": "VAE: the same over its train z_mean's 1st-99th percentile box (the same rule as the AE's).",
    "vae.grid_confident_frac_prior": "VAE: the same over the prior's N(0, 1) 0.05-0.95 quantile box.",
    "compact.grid_confident_frac": "Compact decoder: the same over the VAE's train z_mean box (it decodes the VAE's latent).",
    "compact.grid_confident_frac_prior": "Compact decoder: the same over the VAE's prior box.",
    "ae.sample_fid": "AE: Frechet distance of classifier features, digits decoded from a Gaussian fitted to its train latents vs test digits (lower is better).",
    "vae.sample_fid": "VAE: Frechet distance of classifier features, digits decoded from N(0, I) prior samples vs test digits (lower is better).",
    "compact.sample_fid": "Compact decoder: the same prior samples decoded by the compact decoder distilled from the VAE's (lower is better).",
    "ae.recon_fid": "AE: the same distance for its reconstructions of the test digits: what its decoder can reach.",
    "vae.recon_fid": "VAE: the same for its reconstructions (decoded z_mean) of the test digits.",
    "reference.fid_train_test": "The same distance between real train and test digits: the best a generator can hope for.",
    "ae.denoise_psnr_gain_db": "AE: mean PSNR of its output minus PSNR of the noisy input, dB.",
    "vae.denoise_psnr_gain_db": "VAE: mean PSNR of its output minus PSNR of the noisy input, dB.",
    "denoise.psnr_gain_db": "Denoiser: mean PSNR of its output minus PSNR of the noisy input, dB.",
    "denoise.class_kept": "Denoiser: share of noisy test digits the classifier labels, once denoised, as it labels the clean digit.",
    "denoise.noisy_class_kept": "The same share for the noisy inputs themselves, before denoising (the baseline).",
    "ae.anomaly_threshold": "AE: score (per-image MSE) exceeded by the configured share (1%) of validation digits.",
    "vae.anomaly_threshold": "VAE: score (-ELBO at z_mean, nats) exceeded by the configured share (1%) of validation digits.",
    "ae.test_fpr": "AE: fraction of clean test digits scored above the AE threshold.",
    "vae.test_fpr": "VAE: fraction of clean test digits scored above the VAE threshold.",
    "detector.anomaly_threshold": "Detector (the bundle's default score): its threshold, calibrated at evaluate.anomaly_fpr on the validation digits.",
    "detector.test_fpr": "Detector: share of clean test digits above its threshold (the false-positive rate at the calibrated threshold).",
    "ae.noise_auroc": "AE: AUROC of its score separating noisy test digits (Gaussian noise clipped to [0, 1], which also brightens them) from clean ones.",
    "vae.noise_auroc": "VAE: AUROC of its score separating noisy test digits (clipped noise) from clean ones.",
    "ae.noise_auroc_unclipped": "AE: the same AUROC with the same noise left unclipped (zero-mean, brightness unchanged on average).",
    "vae.noise_auroc_unclipped": "VAE: the same AUROC with unclipped, zero-mean noise.",
}

FIGURE_CAPTIONS: dict[str, str] = {
    "digits": "Real test digits with their labels.",
    "latent_scatter": "Test digits in the 2-D latent: AE z beside VAE z_mean, coloured by label.",
    "latent_gaps": "Test latents with the empty cells (red) of the 30x30 grid behind latent_empty_frac, over each model's train-latent 1st-99th percentile box.",
    "vae_grid": "VAE decoder over the standard normal's 0.05-0.95 quantiles, decoded in one call.",
    "ae_grid": "AE decoder over the 1st-99th percentile box of its test latents.",
    "denoise": "Noisy test digits, the AE's, the VAE's and the denoiser's outputs, and the clean originals.",
    "anomalies": "Test digits with the highest anomaly scores (score / label).",
    "training_curves": "Train and validation losses per epoch of both models.",
}

SCORE_DEFINITIONS = (
    "AE anomaly score: the per-image mean squared reconstruction error. "
    "VAE anomaly score: the negative ELBO at the posterior mean, i.e. the Bernoulli negative "
    "log-likelihood of the image under the pixels decoded from z_mean plus KL(q(z|x) || N(0, I)), "
    "in nats. Higher is more anomalous; the threshold is the score exceeded by the configured "
    "fraction of validation digits (export.scoring)."
)

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { margin-bottom: 0.2em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
td.num { font-family: ui-monospace, monospace; text-align: right; white-space: nowrap; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.95em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
"""


def png_data_uri(path: Path) -> str:
    """``data:image/png;base64,...`` of a PNG file (checked by its signature)."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{path}: not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _metric_rows(metrics: Mapping[str, float]) -> str:
    rows = []
    for key, value in metrics.items():
        shown = f"{int(value):d}" if key.endswith("_k") else f"{value:.6g}"
        doc = METRIC_DOCS.get(key, "")
        rows.append(
            f"<tr><td><code>{html.escape(key)}</code></td><td class='num'>{shown}</td>"
            f"<td>{html.escape(doc)}</td></tr>"
        )
    return "\n".join(rows)


def render_report(
    metrics: Mapping[str, float],
    figures: Mapping[str, Path],
    config_toml: str,
    versions: Mapping[str, str],
    notes: Mapping[str, str] | None = None,
) -> str:
    """The report as one HTML string; ``figures`` maps a figure name to its PNG file."""
    figure_html = "\n".join(
        f"<figure id='{html.escape(name)}'><img alt='{html.escape(name)}' "
        f"src='{png_data_uri(path)}'><figcaption><b>{html.escape(name)}.png</b>: "
        f"{html.escape(FIGURE_CAPTIONS.get(name, ''))}</figcaption></figure>"
        for name, path in figures.items()
    )
    version_rows = "\n".join(
        f"<tr><td>{html.escape(lib)}</td><td>{html.escape(v)}</td></tr>"
        for lib, v in versions.items()
    )
    note_items = "\n".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in (notes or {}).items()
    )
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mnist-vae evaluation report</title>
<style>{CSS}</style>
</head>
<body>
<h1>mnist-vae: evaluation report</h1>
<p>Autoencoder and variational autoencoder on the real MNIST test split. Created {created}.</p>
<h2>Metrics</h2>
<table>
<tr><th>metric</th><th>value</th><th>meaning</th></tr>
{_metric_rows(metrics)}
</table>
<h2>Anomaly scores</h2>
<p>{html.escape(SCORE_DEFINITIONS)}</p>
<h2>How the numbers are measured</h2>
<ul>
{note_items}
</ul>
<h2>Figures</h2>
{figure_html}
<h2>Configuration</h2>
<pre>{html.escape(config_toml)}</pre>
<h2>Versions</h2>
<table>
<tr><th>library</th><th>version</th></tr>
{version_rows}
</table>
</body>
</html>
"""


def measurement_notes(
    cfg: Config, record: dict[str, Any], n_test: int, n_fid: int
) -> dict[str, str]:
    """How each group of numbers was obtained, for the report."""
    ev = cfg.evaluate
    return {
        "Test split": f"{n_test:,} digits; binarized: {cfg.data.binarize}.",
        "ELBO and NLL": (
            f"K = {ev.nll_samples} samples z_k ~ q(z|x) per digit; ELBO = mean_k log p(x|z_k) "
            "minus the closed-form KL; NLL = -log mean_k p(x|z_k) p(z_k) / q(z_k|x) "
            "(importance-weighted bound, Burda et al. 2016). On grey-level pixels the Bernoulli "
            "NLL cannot go below reference.bernoulli_entropy_floor_nats, the summed binary "
            "entropy H(x) of the pixels (what a decoder with p = x scores); on binarized data the "
            "floor is 0."
        ),
        "Classifier": (
            f"CNN trained {record['epochs']} epochs on the train split "
            f"({'reused from an earlier run' if record['reused'] else 'trained in this run'}, "
            f"{record['train_seconds']} s); its test accuracy is classifier.test_acc, its "
            "feature units silent on every test digit classifier.dead_units."
        ),
        "Latent gaps": (
            f"r99 = the {GAP_PERCENTILE:g}th percentile of the distances from each test latent "
            "to its nearest train latent (Euclidean, exact, each model its own); a cell of a "
            f"{ev.confident_grid_size}x{ev.confident_grid_size} grid is empty when its centre is "
            "farther than r99 from every train latent. The box is each model's own train "
            "latents' 1st-99th percentile box (one rule for both); _prior: the VAE's N(0, 1) "
            f"{VAE_GRID_QUANTILES[0]:g}-{VAE_GRID_QUANTILES[1]:g} quantile box. Meant for the "
            "2-D latent: with more axes the grid spans the first two, the others at the box "
            "centre."
        ),
        "Grid confidence": (
            f"the same {ev.confident_grid_size}x{ev.confident_grid_size} grids (each model's own "
            "train-latent box, and the VAE's prior box for _prior) decoded; a point counts "
            f"when the classifier's top probability >= {ev.confident_prob:g}."
        ),
        "FID": (
            f"{n_fid:,} images per set vs the first {n_fid:,} test digits, compared in the "
            "classifier's 128-unit feature layer (Gaussian Frechet distance): VAE samples "
            "z ~ N(0, I), AE samples z ~ N(mean, covariance) fitted to its train latents, both "
            "decoded to pixel probabilities; recon_fid: each model's reconstructions of those "
            "test digits; reference.fid_train_test: a seeded random choice of real train digits."
        ),
        "Denoising": (
            f"Gaussian noise sigma = {ev.noise_sigma:g}, clipped to [0, 1]; gain = mean over "
            "test digits of PSNR(output) - PSNR(noisy input), peak 1.0. noise_auroc ranks the "
            "clean and the noisy test digits by each model's anomaly score. denoise.class_kept: "
            "share of test digits the classifier gives the same label denoised as clean."
        ),
        "Noise AUROC": (
            "noise_auroc uses the clipped noise above, which keeps only the upward half of the "
            "noise on the black background and so also brightens a digit: a score can win on "
            "brightness alone. noise_auroc_unclipped ranks the clean digits against the same "
            "noise draw left unclipped: zero-mean, the brightness unchanged on average."
        ),
        "k-NN": f"k = {ev.knn_k}, Euclidean, train latents as reference.",
    }
