"""The pipeline on real MNIST (smoke config): artifacts, run.json, reload, skip/force, bad mirrors."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SMOKE_CONFIG, run_cli

from pipeline.common import Paths
from pipeline.config import load_config
from pipeline.data import load_split
from pipeline.ingest import MirrorError, load_tfds_mnist, verify_mirror

pytestmark = pytest.mark.slow

PUBLISHED_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_smoke_run_writes_every_artifact(smoke_run: Path):
    for kind in ("ae", "vae"):
        for name in (
            "model.keras",
            "encoder.keras",
            "decoder.keras",
            "history.csv",
            "summary.json",
        ):
            assert (smoke_run / kind / name).is_file(), f"{kind}/{name} missing"
        rows = list(csv.DictReader((smoke_run / kind / "history.csv").open()))
        assert 1 <= len(rows) <= 2
        assert all(np.isfinite(float(r["val_loss"])) for r in rows)
        summary = json.loads((smoke_run / kind / "summary.json").read_text())
        assert summary["best_val_loss"] == pytest.approx(min(float(r["val_loss"]) for r in rows))
    for name in ("model.keras", "history.csv", "summary.json"):
        assert (smoke_run / "denoiser" / name).is_file(), f"denoiser/{name} missing"
    rows = list(csv.DictReader((smoke_run / "denoiser" / "history.csv").open()))
    cfg = load_config(SMOKE_CONFIG)
    assert 1 <= len(rows) <= cfg.denoiser.epochs
    summary = json.loads((smoke_run / "denoiser" / "summary.json").read_text())
    assert summary["model"] == "denoiser" and summary["noise_sigma"] == cfg.denoiser.noise_sigma
    assert summary["best_val_loss"] == pytest.approx(min(float(r["val_loss"]) for r in rows))
    assert (
        np.isfinite(summary["val_psnr_gain_db"])
        and not (smoke_run / "denoiser" / "checkpoint").exists()
    )
    vae_rows = list(csv.DictReader((smoke_run / "vae" / "history.csv").open()))
    for row in vae_rows:  # loss = recon + beta * kl, beta = 1
        assert float(row["loss"]) == pytest.approx(float(row["recon"]) + float(row["kl"]), rel=1e-5)
    assert not list(smoke_run.rglob(".*.tmp*")), "temporary files left behind"


def test_evaluate_writes_thresholds_and_latent_boxes(smoke_run: Path):
    metrics = json.loads((smoke_run / "eval" / "metrics.json").read_text())
    for kind in ("ae", "vae"):
        for key in ("recon_mse", "anomaly_threshold", "test_fpr"):
            assert np.isfinite(metrics[f"{kind}.{key}"]), f"{kind}.{key}"
        assert 0.0 <= metrics[f"{kind}.test_fpr"] <= 0.2
    assert 0.0 < metrics["ae.recon_mse"] < 0.2
    boxes = json.loads((smoke_run / "eval" / "latent_boxes.json").read_text())
    assert all(lo < hi for lo, hi in zip(boxes["ae"]["low"], boxes["ae"]["high"], strict=True))
    np.testing.assert_allclose(boxes["vae"]["high"], [1.6448536] * 2, atol=1e-6)


def runner_stages() -> list[str]:
    from pipeline.runner import STAGES

    return list(STAGES)


def test_run_json_records_config_versions_and_stages(smoke_run: Path):
    info = json.loads((smoke_run / "run.json").read_text())
    assert info["config"] == json.loads(json.dumps(load_config(SMOKE_CONFIG).to_dict()))
    assert info["seed"] == load_config(SMOKE_CONFIG).train.seed
    for lib in ("tensorflow", "keras", "tensorflow-datasets", "numpy"):
        assert info["versions"][lib]
    for stage in runner_stages():
        assert info["stages"][stage]["status"] in ("ran", "skipped")
        assert info["stages"][stage]["seconds"] >= 0
    assert load_config(smoke_run / "config.toml") == load_config(SMOKE_CONFIG)


def test_ingest_splits_are_real_mnist(smoke_run: Path, tfds_dir: Path, mirror: Path):
    cfg = load_config(SMOKE_CONFIG)
    for split, size in (("train", 512), ("validation", 256), ("test", 256)):
        images, labels = load_split(smoke_run / "data" / "mnist.npz", split, cfg.data)
        assert images.shape == (size, 28, 28) and images.dtype == np.float32
        assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.99
        assert labels.shape == (size,) and set(np.unique(labels)) <= set(range(10))
    full = load_tfds_mnist(tfds_dir, mirror)  # prepared by the smoke run: no rebuild
    assert full["train"][0].shape == (60_000, 28, 28)
    assert np.bincount(full["test"][1], minlength=10).tolist() == PUBLISHED_TEST_LABEL_COUNTS
    # validation = the last 5,000 of tfds' train split
    summary = json.loads((smoke_run / "data" / "summary.json").read_text())
    assert summary["splits"]["test"]["images"] == 256
    val_images, _ = load_split(smoke_run / "data" / "mnist.npz", "validation")
    np.testing.assert_array_equal(
        (val_images * 255).round().astype(np.uint8), full["train"][0][55_000 : 55_000 + 256]
    )


def test_models_reload_in_a_fresh_process_with_the_same_outputs(smoke_run: Path, tmp_path: Path):
    import keras

    import models  # noqa: F401  (registers the custom layers for deserialization)

    images, _ = load_split(smoke_run / "data" / "mnist.npz", "test")
    images = images[:32]
    z = np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32)
    expected = {}
    for kind in ("ae", "vae"):
        enc = keras.saving.load_model(smoke_run / kind / "encoder.keras", safe_mode=True)
        dec = keras.saving.load_model(smoke_run / kind / "decoder.keras", safe_mode=True)
        out = enc.predict(images, verbose=0)
        expected[f"{kind}_enc"] = np.concatenate(out, axis=1) if isinstance(out, list) else out
        expected[f"{kind}_dec"] = dec.predict(z, verbose=0)
    ae = keras.saving.load_model(smoke_run / "ae" / "model.keras", safe_mode=True)
    expected["ae_model"] = ae.predict(images, verbose=0)  # the AE as a whole is deterministic
    denoiser = keras.saving.load_model(smoke_run / "denoiser" / "model.keras", safe_mode=True)
    assert denoiser.name == "denoiser"
    expected["denoiser"] = denoiser.predict(images, verbose=0)
    np.savez(tmp_path / "inputs.npz", images=images, z=z)
    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        import models  # registers the custom layers
        from pathlib import Path
        run = Path({str(smoke_run)!r})
        inp = np.load({str(tmp_path / "inputs.npz")!r}, allow_pickle=False)
        out = {{}}
        for kind in ("ae", "vae"):
            enc = keras.saving.load_model(run / kind / "encoder.keras", safe_mode=True)
            dec = keras.saving.load_model(run / kind / "decoder.keras", safe_mode=True)
            keras.saving.load_model(run / kind / "model.keras", safe_mode=True)
            e = enc.predict(inp["images"], verbose=0)
            out[kind + "_enc"] = np.concatenate(e, axis=1) if isinstance(e, list) else e
            out[kind + "_dec"] = dec.predict(inp["z"], verbose=0)
        ae = keras.saving.load_model(run / "ae" / "model.keras", safe_mode=True)
        out["ae_model"] = ae.predict(inp["images"], verbose=0)
        den = keras.saving.load_model(run / "denoiser" / "model.keras", safe_mode=True)
        out["denoiser"] = den.predict(inp["images"], verbose=0)
        np.savez({str(tmp_path / "fresh.npz")!r}, **out)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=300)
    fresh = np.load(tmp_path / "fresh.npz", allow_pickle=False)
    assert expected["vae_enc"].shape == (32, 4)
    for key, value in expected.items():
        np.testing.assert_allclose(fresh[key], value, atol=1e-6, err_msg=key)


def test_rerun_skips_and_force_redoes(tmp_path: Path, mirror: Path, tfds_dir: Path):
    out = tmp_path / "run"
    env = {"TFDS_DATA_DIR": str(tfds_dir)}
    base = ["--config", str(SMOKE_CONFIG), "--out", str(out), "--mirror", str(mirror)]
    run_cli([*base, "--stages", "ingest,train_ae"], env)
    first = (out / "ae" / "model.keras").stat().st_mtime_ns
    again = run_cli([*base, "--stages", "ingest,train_ae"], env)
    assert "[ingest] up to date" in again.stdout and "[train_ae] up to date" in again.stdout
    assert (out / "ae" / "model.keras").stat().st_mtime_ns == first
    # a changed config section of train_ae reruns it, but not ingest
    changed = run_cli([*base, "--stages", "ingest,train_ae", "--set", "train.epochs=1"], env)
    assert "[ingest] up to date" in changed.stdout and "[train_ae] running" in changed.stdout
    forced = run_cli([*base, "--stages", "ingest", "--force"], env)
    assert "[ingest] running" in forced.stdout
    stages = json.loads((out / "run.json").read_text())["stages"]
    assert stages["ingest"]["status"] == "ran" and stages["train_ae"]["status"] == "ran"
    # a deleted output is noticed and the stage redone
    (out / "ae" / "history.csv").unlink()
    redo = run_cli([*base, "--stages", "train_ae", "--set", "train.epochs=1"], env)
    assert "[train_ae] running" in redo.stdout and (out / "ae" / "history.csv").is_file()


def _copy_mirror(mirror: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in mirror.glob("*.gz"):
        shutil.copy(f, dest / f.name)
    return dest


def test_tampered_mirror_is_refused_naming_the_file(tmp_path: Path, mirror: Path):
    bad = _copy_mirror(mirror, tmp_path / "mirror")
    target = bad / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.chmod(0o644)
    target.write_bytes(bytes(data))
    with pytest.raises(MirrorError, match="t10k-labels-idx1-ubyte.gz fails its checksum"):
        verify_mirror(bad)
    out = tmp_path / "out"
    proc = run_cli(
        [
            "--config",
            str(SMOKE_CONFIG),
            "--out",
            str(out),
            "--mirror",
            str(bad),
            "--stages",
            "ingest",
        ],
        env_extra={"TFDS_DATA_DIR": str(tmp_path / "tfds")},
        check=False,
    )
    assert proc.returncode == 1
    assert "t10k-labels-idx1-ubyte.gz fails its checksum" in proc.stderr
    assert not (out / "data" / "mnist.npz").exists()
    info = json.loads((out / "run.json").read_text())
    assert info["stages"]["ingest"]["status"] == "failed"


def test_missing_mirror_file_is_named(tmp_path: Path, mirror: Path):
    bad = _copy_mirror(mirror, tmp_path / "mirror")
    (bad / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MirrorError, match="missing train-labels-idx1-ubyte.gz"):
        verify_mirror(bad)
    with pytest.raises(MirrorError, match="is not a directory"):
        verify_mirror(tmp_path / "nowhere")


def test_unknown_stage_and_bad_override_exit_nonzero(tmp_path: Path):
    proc = run_cli(["--out", str(tmp_path), "--stages", "ingest,fly"], check=False)
    assert proc.returncode == 1 and "unknown stage(s) ['fly']" in proc.stderr
    proc = run_cli(["--out", str(tmp_path), "--set", "train.epochs=abc"], check=False)
    assert proc.returncode == 2 and "train.epochs: expected int, got str" in proc.stderr


def test_paths_layout():
    paths = Paths(Path("x"))
    assert paths.tfds_data_dir == Path("x/tfds")
    assert paths.model_dir("vae") == Path("x/vae")
    assert paths.keras_file("vae", "decoder") == Path("x/vae/decoder.keras")
    assert paths.keras_files("ae") == [
        Path(f"x/ae/{n}.keras") for n in ("model", "encoder", "decoder")
    ]
    assert paths.model_files("denoiser") == [
        Path("x/denoiser/model.keras"),
        Path("x/denoiser/history.csv"),
        Path("x/denoiser/summary.json"),
    ]
    with pytest.raises(ValueError, match="denoiser has no encoder.keras"):
        paths.keras_file("denoiser", "encoder")


def test_runner_runs_the_stages_their_modules_declare_in_pipeline_order():
    from pipeline import bundler, compact, denoiser, detector, evaluate, ingest, runner, train

    declared = [ingest.STAGE, train.AE_STAGE, train.VAE_STAGE, compact.STAGE, denoiser.STAGE]
    declared += [detector.STAGE, evaluate.STAGE, bundler.STAGE]
    assert list(runner.STAGES.values()) == declared
    assert list(runner.STAGES) == [
        "ingest",
        "train_ae",
        "train_vae",
        "train_compact",
        "train_denoiser",
        "train_detector",
        "evaluate",
        "export",  # the CLI name of the stage in pipeline.bundler
    ]
    paths = Paths(Path("x"))
    for kind in ("ae", "vae"):
        assert runner.STAGES[f"train_{kind}"].outputs(paths) == paths.model_files(kind)
    assert runner.STAGES["train_denoiser"].outputs(paths) == paths.model_files("denoiser")
    assert runner.STAGES["train_compact"].outputs(paths) == paths.model_files("compact")
    assert runner.STAGES["train_detector"].outputs(paths) == [
        *paths.model_files("detector"),
        *paths.model_files("background"),
        Path("x/detector/calibration.json"),
    ]
    assert paths.model_files("compact")[0] == Path("x/compact/decoder.keras")
