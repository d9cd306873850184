"""tf.distribute: TF_CONFIG checks, MirroredStrategy in process, and two real workers on
127.0.0.1 training the smoke config together with MultiWorkerMirroredStrategy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SMOKE_CONFIG

from pipeline.config import load_config
from pipeline.data import load_split
from pipeline.distribute import StrategyError, get_strategy, tf_config

WORKER_TIMEOUT_S = 420  # both workers are killed after this; training takes ~1 minute

# Seed-to-seed spread of the smoke config's best validation loss (8 seeds, single worker):
# AE 406.6 +- 30.0 nats, VAE 448.5 +- 20.3 nats. Two workers take the same global batches in
# the same steps but split each batch across replicas and sum in another order, so they follow a
# different trajectory, as another seed would: allow two standard deviations.
VAL_LOSS_TOLERANCE = {"ae": 60.0, "vae": 40.0}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "must be a JSON object"),
        ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', "needs cluster.worker"),
        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief"}}', "needs task"),
        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}', "not in 0..0"),
    ],
)
def test_bad_tf_config_is_a_clear_error(monkeypatch, value, message):
    monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(StrategyError, match=message):
        tf_config()


def test_multi_worker_without_tf_config_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(StrategyError, match="needs TF_CONFIG"):
        get_strategy("multi_worker")
    with pytest.raises(StrategyError, match="must be one of"):
        get_strategy("parameter_server")


@pytest.mark.slow
def test_mirrored_strategy_trains_in_process(smoke_run: Path):
    from pipeline.fitting import fit_model

    dataset = smoke_run / "data" / "mnist.npz"
    cfg = load_config(SMOKE_CONFIG, ["train.strategy=mirrored", "train.verbose=quiet"])
    train, val = load_split(dataset, "train")[0], load_split(dataset, "validation")[0]
    model, history, _ = fit_model("ae", cfg, train, val)
    assert type(model.distribute_strategy).__name__ == "MirroredStrategy"
    assert len(history["val_loss"]) == 2
    single = json.loads((smoke_run / "ae" / "summary.json").read_text())["best_val_loss"]
    assert abs(min(history["val_loss"]) - single) <= VAL_LOSS_TOLERANCE["ae"]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_a_model_that_scores_like_one(
    smoke_run: Path, mirror: Path, tmp_path: Path
):
    import models

    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs, outs, logs = [], [], []
    for index in range(2):
        out = tmp_path / f"worker{index}"  # each worker its own --out; worker 0 is the chief
        (out / "stages").mkdir(parents=True)
        shutil.copytree(smoke_run / "data", out / "data")
        shutil.copy(smoke_run / "stages" / "ingest.json", out / "stages")
        tf_cfg = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        log = (tmp_path / f"worker{index}.log").open("w")
        procs.append(
            subprocess.Popen(
                [sys.executable, str(REPO / "run_pipeline.py"), "--config", str(SMOKE_CONFIG)]
                + ["--out", str(out), "--mirror", str(mirror), "--stages", "train_ae,train_vae"]
                + ["--set", "train.strategy=multi_worker"],
                cwd=REPO,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps(tf_cfg)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        outs.append(out)
        logs.append(tmp_path / f"worker{index}.log")
    try:
        codes = [p.wait(timeout=WORKER_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:  # never leave a worker waiting for its peer
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    text = [log.read_text() for log in logs]
    assert codes == [0, 0], f"worker exit codes {codes}\n" + "\n".join(t[-3000:] for t in text)
    assert "2 replica(s)" in text[0]

    test_images = load_split(smoke_run / "data" / "mnist.npz", "test")[0]
    for kind in ("ae", "vae"):
        # synchronous training: both workers end with the very same weights
        chief = models.load_model(outs[0] / kind / "model.keras")
        other = models.load_model(outs[1] / kind / "model.keras")
        for a, b in zip(chief.get_weights(), other.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
        two = json.loads((outs[0] / kind / "summary.json").read_text())["best_val_loss"]
        one = json.loads((smoke_run / kind / "summary.json").read_text())["best_val_loss"]
        assert abs(two - one) <= VAL_LOSS_TOLERANCE[kind], (kind, two, one)
    # and the chief's AE reconstructs the test split about as well as the single worker's
    encoder = models.load_model(outs[0] / "ae" / "encoder.keras")
    decoder = models.load_model(outs[0] / "ae" / "decoder.keras")
    pixels = decoder.predict(encoder.predict(test_images, verbose=0), verbose=0)
    mse = float(np.mean((pixels - test_images) ** 2))
    single_mse = json.loads((smoke_run / "eval" / "metrics.json").read_text())["ae.recon_mse"]
    assert abs(mse - single_mse) <= 0.15 * single_mse, (mse, single_mse)
