"""A loaded export bundle: the ONNX encoders and decoders, their manifest, and what they compute.

    bundle = Bundle.load("artifacts/export")            # checks every sha256 first
    digits = bundle.sample(16, seed=0)                  # (16, 28, 28) float32 from the VAE prior
    small = bundle.sample(16, seed=0, decoder="compact")  # the same draws, the compact decoder
    z = bundle.encode(images, model="vae")              # (n, latent_dim): the posterior mean
    flags = bundle.is_anomaly(images)                   # (n,) bool: the default score (detector)
    vae = bundle.score(images, model="vae")             # (n,) the 2-D VAE's negative ELBO
    clean = bundle.denoise(noisy_images)                # (n, 28, 28) float32: the denoiser

Anomaly scores: ``model`` is the bundle's default (``default_model``: the detector, a scoring
model of its own, ``pipeline.detector``; bundles exported before it: the VAE) unless
``model="ae"`` or ``"vae"`` asks for the 2-D models' scores, the method of the classic
explanation of VAEs. ``precision="int8"`` swaps in the int8 decoders (encoders stay fp32). ``decoder="compact"``
decodes the VAE's latents with the compact decoder distilled from the VAE's (bundles exported
with the ``train_compact`` stage), an 84 k-weight model for small devices. The
anomaly thresholds were calibrated with the fp32 models; int8 scores move by the recorded drift.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export import scoring
from export.files import sha256_file
from export.inputs import as_images
from export.lattice import lattice

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
MODELS = ("ae", "vae")
PRECISIONS = ("fp32", "int8")
DECODERS = ("full", "compact")  # the model's own decoder, or the compact one (VAE latents)
COMPACT = "compact_decoder"  # its role in the manifest
SCORES = scoring.SCORES  # each model's anomaly score
DETECTOR = scoring.DETECTOR
DETECTOR_PARTS = (
    "detector_encoder",
    "detector_decoder",
    "background_encoder",
    "background_decoder",
)
DENOISER = "denoiser"  # its role in the manifest; bundles exported before it have none
# rows per session.run call: ONNX Runtime plans its buffers for the rows of a call, so this
# bounds its memory (1024 rows: a third less peak RSS than 4096 when scoring, and no slower)
BATCH = 1024


class BundleError(RuntimeError):
    """A bundle that cannot be used: missing or altered file, unknown format or model."""


@dataclass
class _Session:
    """One ONNX Runtime session and the names it reads and writes."""

    session: ort.InferenceSession
    input_name: str
    output_names: list[str]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        parts = [
            self.session.run(self.output_names, {self.input_name: x[i : i + BATCH]})
            for i in range(0, max(len(x), 1), BATCH)
        ]
        if len(parts) == 1:  # no concatenation, no copy: a one-digit call is ~15 us all told
            return dict(zip(self.output_names, parts[0], strict=True))
        return {
            name: np.concatenate([p[k] for p in parts], axis=0)
            for k, name in enumerate(self.output_names)
        }


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """ORT options for throughput: every graph optimisation, ``threads`` intra-op threads
    (None or 0: all available cores), sequential execution (the graphs are chains), and idle
    threads that sleep instead of spinning."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    # Spinning threads burn the cores they wait on; when other processes share those cores
    # a spinning pool is descheduled mid-operator and throughput falls 2-3x (bench/scoring.py)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _open_session(path: Path, threads: int | None = None) -> _Session:
    options = session_options(threads)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _Session(
        session,
        session.get_inputs()[0].name,
        [o.name for o in session.get_outputs()],
    )


def verify_files(directory: Path, manifest: dict[str, Any]) -> None:
    """Check every file the manifest lists against its sha256 and size; raise naming the file.

    The ONNX models must be present; the other files (the ``.keras`` models under ``keras/``)
    may be left out of a device's copy, since the runtime never reads them.
    """
    required = {entry["file"] for entry in manifest["models"].values()}
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            if name not in required:
                continue
            raise BundleError(f"{path}: missing (listed in {MANIFEST})")
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise BundleError(
                f"{path}: sha256 does not match {MANIFEST}; the file was altered or corrupted"
            )


class Bundle:
    """The exported AE, VAE (and compact decoder, denoiser, detector) as ONNX Runtime sessions
    (CPU), one per model, each opened when first used."""

    def __init__(
        self, directory: Path, manifest: dict[str, Any], precision: str, threads: int | None = None
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.precision = precision
        self.latent_dim = int(manifest["latent_dim"])
        self.threads = threads
        # session name -> its ONNX file; a session is opened on first use (``_session``): a
        # scoring job never pays for the decoders it does not run (~35 MiB less resident
        # memory when only the detector scores), a device that only generates opens one model
        self._files: dict[str, Path] = {}
        self._sessions: dict[str, _Session] = {}
        self._opening = threading.Lock()
        self._validation: dict[str, np.ndarray] = {}  # sorted validation scores, loaded on use
        models = manifest["models"]
        int8 = "_int8" if precision == "int8" else ""
        for kind in MODELS:
            self._files[f"{kind}_encoder"] = directory / models[f"{kind}_encoder"]["file"]
            self._files[f"{kind}_decoder"] = directory / models[f"{kind}_decoder{int8}"]["file"]
        for role in DETECTOR_PARTS:  # fp32 whatever the precision: they only score
            if role in models:
                self._files[role] = directory / models[role]["file"]
        if COMPACT in models:
            self._files[COMPACT] = directory / models[COMPACT + int8]["file"]
        if DENOISER in models:  # fp32 whatever the precision: it is no decoder
            self._files[DENOISER] = directory / models[DENOISER]["file"]

    def _session(self, name: str) -> _Session:
        """The session of ``name`` (e.g. "vae_decoder"), opened on first use, once (under a
        lock: Beam and user code may call one bundle from several threads)."""
        session = self._sessions.get(name)
        if session is None:
            with self._opening:
                session = self._sessions.get(name)
                if session is None:
                    session = _open_session(self._files[name], self.threads)
                    self._sessions[name] = session
        return session

    @classmethod
    def load(
        cls, directory: str | Path, precision: str = "fp32", threads: int | None = None
    ) -> Bundle:
        """Read ``directory/manifest.json`` and verify every listed file; each model's session
        opens when first used.

        threads: ONNX Runtime intra-op threads per session (None or 0: all available cores).
        """
        directory = Path(directory)
        if precision not in PRECISIONS:
            raise BundleError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        manifest_path = directory / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise BundleError(
                f"{manifest_path}: missing; is {directory} an export bundle?"
            ) from None
        except json.JSONDecodeError as err:
            raise BundleError(f"{manifest_path}: not valid JSON ({err})") from None
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{manifest_path}: format_version {version!r}, this runtime reads {FORMAT_VERSION}"
            )
        decoders = [f"{k}_decoder" for k in MODELS]
        decoders += [COMPACT] if COMPACT in manifest.get("models", {}) else []
        if precision == "int8" and not all(f"{d}_int8" in manifest["models"] for d in decoders):
            raise BundleError(f"{directory}: the bundle has no int8 decoders")
        verify_files(directory, manifest)
        return cls(directory, manifest, precision, threads)

    # -- helpers -------------------------------------------------------------------------------

    def _check_model(self, model: str) -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")

    def _check_z(self, z: Any) -> np.ndarray:
        z = np.asarray(z, dtype=np.float32)
        if z.ndim == 1:
            z = z[np.newaxis]
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z has shape {z.shape}, expected (n, {self.latent_dim})")
        # a few numbers (one digit's latent) are checked in Python: a third of the time of the
        # ufunc and its reduction, ~1 us of a ~15 us call
        finite = (
            all(map(math.isfinite, z.ravel().tolist())) if z.size <= 64 else np.isfinite(z).all()
        )
        if not finite:
            raise ValueError("z holds NaN or inf")
        return z

    @property
    def default_model(self) -> str:
        """The model whose score ``score`` and the CLI give unless told: "detector" in bundles
        with one, else "vae"."""
        return self.manifest["anomaly"].get("default", "vae")

    @property
    def scoring_models(self) -> tuple[str, ...]:
        """The models this bundle scores with, the default first."""
        models = [DETECTOR] if DETECTOR in self.manifest["anomaly"] else []
        return (*models, *MODELS)

    def _scoring_model(self, model: str | None) -> str:
        """``model``, or the default for None; raises ValueError for one the bundle lacks."""
        model = self.default_model if model is None else model
        if model not in self.scoring_models:
            raise ValueError(f"model must be one of {self.scoring_models}, got {model!r}")
        return model

    def threshold(self, model: str | None = None) -> float:
        """The anomaly threshold of ``model``'s score (default: ``default_model``), calibrated
        on the validation digits by the evaluate stage."""
        return float(self.manifest["anomaly"][self._scoring_model(model)]["threshold"])

    # -- the models ----------------------------------------------------------------------------

    def decoder_role(self, model: str = "vae", decoder: str = "full") -> str:
        """The manifest role of the decoder that ``generate(z, model, decoder)`` runs."""
        self._check_model(model)
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if decoder == "full":
            role = f"{model}_decoder"
        elif model != "vae":
            raise ValueError("the compact decoder decodes the VAE's latents: use model='vae'")
        elif COMPACT not in self._files:
            raise BundleError(
                f"{self.directory}: the bundle has no compact decoder ({MANIFEST} lists no "
                f"{COMPACT!r} model); export it again from a run with the train_compact stage"
            )
        else:
            role = COMPACT
        return role + ("_int8" if self.precision == "int8" else "")

    def generate(self, z: Any, model: str = "vae", decoder: str = "full") -> np.ndarray:
        """Decode latents z (n, latent_dim) -> pixels (n, 28, 28) float32 in [0, 1].

        decoder: "full", the model's own decoder, or "compact", the small decoder distilled
        from the VAE's (model "vae" only).
        """
        session = self.decoder_role(model, decoder).removesuffix("_int8")
        return self._session(session).run(self._check_z(z))["pixels"]

    def prior_latents(self, n: int, seed: int | None = None) -> np.ndarray:
        """(n, latent_dim) float32 draws from N(0, I), the VAE prior, with numpy's PCG64."""
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        z = np.random.default_rng(seed).standard_normal((n, self.latent_dim))
        return z.astype(np.float32)

    def sample(self, n: int, seed: int | None = None, decoder: str = "full") -> np.ndarray:
        """``n`` digits decoded from z ~ N(0, I), the VAE prior: (n, 28, 28) float32."""
        return self.generate(self.prior_latents(n, seed), "vae", decoder)

    def grid_latents(self, side: int, model: str = "vae") -> np.ndarray:
        """(side * side, latent_dim): a side x side lattice over the first two latent axes.

        The lattice (``export.lattice``) spans the box in the manifest (VAE: prior quantiles,
        AE: percentiles of the test latents); other axes sit at the box centre. Row-major, top
        row = highest z[1].
        """
        self._check_model(model)
        box = self.manifest["latent_boxes"][model]
        return lattice(box["low"], box["high"], side)

    def grid(self, side: int = 10, model: str = "vae", decoder: str = "full") -> np.ndarray:
        """Digits decoded over the latent lattice of ``grid_latents``: (side * side, 28, 28)."""
        return self.generate(self.grid_latents(side, model), model, decoder)

    def posterior(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """VAE encoder: images -> z_mean, z_log_var, each (n, latent_dim) float32."""
        out = self._session("vae_encoder").run(as_images(images))
        return out["z_mean"], out["z_log_var"]

    def encode(self, images: Any, model: str = "vae") -> np.ndarray:
        """images (n, 28, 28) (or any accepted layout) -> z (n, latent_dim); VAE: z_mean."""
        self._check_model(model)
        if model == "vae":
            return self.posterior(images)[0]
        return self._session("ae_encoder").run(as_images(images))["z"]

    def reconstruct(self, images: Any, model: str = "vae") -> np.ndarray:
        """Encode then decode (the VAE decodes z_mean): (n, 28, 28) float32."""
        return self.generate(self.encode(images, model), model)

    def score(self, images: Any, model: str | None = None) -> np.ndarray:
        """Anomaly score (n,) float32, higher is more anomalous (see ``export.scoring``).

        detector (the default): the largest of its terms on its negative ELBO's scale, nats
        (``export.scoring.detector_score``). AE: mean squared reconstruction error. VAE:
        negative ELBO at z_mean, in nats.
        """
        return self.score_and_maps(images, model, maps=False)[0]

    def pixel_scores(self, images: Any, model: str | None = None) -> np.ndarray:
        """Where each image is anomalous: the score per pixel, (n, 28, 28) float32.

        AE: the squared error (x - x_hat)^2, whose mean over the image is the AE score. VAE:
        -log p(x_ij | z_mean), in nats, whose sum over the image plus the image's KL term is the
        VAE score. Detector: the same for its class-conditional VAE (its negative ELBO term).
        ``export.scoring.top_fraction_mean(maps, 0.05)`` aggregates them into a second score
        that a small defect moves more.
        """
        return self.score_and_maps(images, model, maps=True)[1]

    def score_and_maps(
        self, images: Any, model: str | None = None, maps: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``score`` and (``maps``) ``pixel_scores`` of ``images`` from one pass of the model."""
        model = self._scoring_model(model)
        images = as_images(images)
        if model == DETECTOR:
            scores, fg = self._detector_score(images)
            return scores, scoring.bernoulli_nll_map(images, fg.pixels) if maps else None
        encoder, decoder = self._session(f"{model}_encoder"), self._session(f"{model}_decoder")
        out = scoring.reconstruct_and_score(
            model,
            images,
            lambda x: [encoder.run(x)[name] for name in scoring.ENCODER_OUTPUTS[model]],
            lambda z: decoder.run(self._check_z(z))["pixels"],
        )
        if not maps:
            return out.scores, None
        if model == "ae":
            return out.scores, scoring.squared_error_map(images, out.pixels)
        return out.scores, scoring.bernoulli_nll_map(images, out.pixels)

    def _detector_score(self, images: np.ndarray) -> tuple[np.ndarray, scoring.Reconstruction]:
        entry = self.manifest["anomaly"][DETECTOR]
        s = self._session

        def outputs(role: str, names: tuple[str, ...]) -> Any:
            return lambda x: [s(role).run(x)[name] for name in names]

        return scoring.detector_score(
            images,
            (
                outputs("detector_encoder", ("z_mean", "z_log_var", "class_logits")),
                lambda zc: s("detector_decoder").run(zc)["pixels"],
            ),
            (
                outputs("background_encoder", ("z_mean", "z_log_var")),
                lambda z: s("background_decoder").run(z)["pixels"],
            ),
            scoring.Calibration.from_json(entry["calibration"]),
            int(entry["coarse_block"]),
        )

    def is_anomaly(self, images: Any, model: str | None = None) -> np.ndarray:
        """(n,) bool: score above the manifest threshold (calibrated at ``anomaly.fpr``)."""
        return self.score(images, model) > self.threshold(model)

    def validation_scores(self, model: str | None = None) -> np.ndarray:
        """The scores of the validation digits (the normal reference), sorted, (m,) float64.

        Computed at export by these ONNX models; raises ``BundleError`` for a bundle exported
        before they were stored.
        """
        model = self._scoring_model(model)
        if model not in self._validation:
            entry = self.manifest["anomaly"].get("validation_scores")
            if entry is None:
                raise BundleError(
                    f"{self.directory}: the bundle stores no validation scores ({MANIFEST} has "
                    "no anomaly.validation_scores); export it again for p-values and --fpr"
                )
            with np.load(self.directory / entry["file"], allow_pickle=False) as npz:
                self._validation[model] = np.sort(npz[model].astype(np.float64))
        return self._validation[model]

    def p_values(self, scores: np.ndarray, model: str | None = None) -> np.ndarray:
        """Empirical p-values (n,) of ``scores`` against the validation scores: small means
        anomalous; uniform on (0, 1] for images like the validation digits."""
        return scoring.p_values(scores, self.validation_scores(model))

    def threshold_at(self, fpr: float, model: str | None = None) -> float:
        """The threshold that flags ``fpr`` of the validation digits (a run-time override of
        the calibrated ``threshold``)."""
        return scoring.calibrate_threshold(self.validation_scores(model), fpr)

    def denoiser_sigma(self) -> float:
        """The sigma of the clipped Gaussian noise the denoiser was trained on.

        Raises ``BundleError`` for a bundle without a denoiser (exported before it existed).
        """
        if DENOISER not in self._files:
            raise BundleError(
                f"{self.directory}: the bundle has no denoiser ({MANIFEST} lists no "
                f"{DENOISER!r} model); export it again from a run with the train_denoiser stage"
            )
        return float(self.manifest["models"][DENOISER]["trained_on"]["sigma"])

    def denoise(self, images: Any) -> np.ndarray:
        """Noisy images (n, 28, 28) (or any accepted layout) -> denoised (n, 28, 28) float32 in
        [0, 1], by the denoising autoencoder (trained at noise ``denoiser_sigma()``)."""
        self.denoiser_sigma()  # a clear error for a bundle without one
        return self._session(DENOISER).run(as_images(images))["pixels"]

    def __repr__(self) -> str:
        return f"Bundle({str(self.directory)!r}, precision={self.precision!r})"
