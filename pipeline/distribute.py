"""The ``tf.distribute`` strategy that ``train.strategy`` names.

    strategy = get_strategy("mirrored")   # every local GPU (or the CPU), one replica each
    with strategy.scope():
        model = build_and_compile(...)

- ``default``: no distribution (TensorFlow's default strategy).
- ``mirrored``: ``MirroredStrategy``, synchronous data parallelism over the local devices.
- ``multi_worker``: ``MultiWorkerMirroredStrategy``; the cluster and this process's place in
  it come from the ``TF_CONFIG`` environment variable. Every worker runs the same command.

The batch size in the config is the global batch: each step splits it over all replicas, so a
run with more replicas takes the same optimisation steps, only each on more devices.
"""

from __future__ import annotations

import json
import os
from typing import Any

STRATEGIES = ("default", "mirrored", "multi_worker")

_cache: dict[str, Any] = {}  # a MultiWorkerMirroredStrategy can be created once per process


class StrategyError(RuntimeError):
    """A strategy that cannot be set up, e.g. ``multi_worker`` without a usable ``TF_CONFIG``."""


def tf_config() -> dict[str, Any] | None:
    """The parsed ``TF_CONFIG``, or None when it is not set."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise StrategyError(f"TF_CONFIG is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise StrategyError(f"TF_CONFIG must be a JSON object, got {raw!r}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster.get("worker"):
        raise StrategyError(f"TF_CONFIG needs cluster.worker, a list of host:port; got {raw!r}")
    if not isinstance(task, dict) or "index" not in task or task.get("type") != "worker":
        raise StrategyError(f'TF_CONFIG needs task = {{"type": "worker", "index": i}}; got {raw!r}')
    workers = cluster["worker"]
    if not isinstance(task["index"], int) or not 0 <= task["index"] < len(workers):
        raise StrategyError(
            f"TF_CONFIG task.index {task['index']!r} is not in 0..{len(workers) - 1}"
        )
    return config


def get_strategy(name: str) -> Any:
    """The ``tf.distribute.Strategy`` for ``name`` (one of ``STRATEGIES``), created once."""
    if name not in STRATEGIES:
        raise StrategyError(f"train.strategy must be one of {STRATEGIES}, got {name!r}")
    if name in _cache:
        return _cache[name]
    import tensorflow as tf

    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        config = tf_config()
        if config is None:
            raise StrategyError(
                "train.strategy = 'multi_worker' needs TF_CONFIG, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}'
            )
        strategy = _multi_worker_strategy(tf)
    _cache[name] = strategy
    return strategy


def _multi_worker_strategy(tf: Any) -> Any:
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` takes what Keras 3's ``fit`` gives it.

    Keras reduces a nested (images, targets) batch to build the model, and scalar losses with
    ``axis=0``; the collective strategy accepts a single value only and no axis on a scalar.
    So reduce each value on its own, a scalar across replicas only (the mean of the means).
    """

    class KerasReduceStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op: Any, value: Any, axis: Any = None) -> Any:
            parent = super()

            def one(v: Any) -> Any:
                rank = self.experimental_local_results(v)[0].shape.rank
                return parent.reduce(reduce_op, v, axis=None if rank == 0 else axis)

            return tf.nest.map_structure(one, value)

    return KerasReduceStrategy()


def jit_supported(strategy: Any) -> bool:
    """False where XLA cannot compile the all-reduce: several replicas and no GPU."""
    import tensorflow as tf

    return strategy.num_replicas_in_sync == 1 or bool(tf.config.list_physical_devices("GPU"))


def describe(strategy: Any) -> str:
    """``"MirroredStrategy, 2 replicas"``, for the training log."""
    return f"{type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s)"
