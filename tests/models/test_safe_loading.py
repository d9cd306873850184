"""Loading never runs code from a file: an audit of every loader call in the code base, and the
loaders refusing a Lambda layer, pickled arrays and damaged datasets."""

from __future__ import annotations

import ast
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import REPO

import models
from pipeline.data import load_split

SOURCE_DIRS = ("pipeline", "models", "export", "bench", "scripts")  # what reads untrusted files


def _python_files() -> list[Path]:
    files = [REPO / "run_pipeline.py"]
    for folder in SOURCE_DIRS:
        if (REPO / folder).is_dir():
            files += sorted((REPO / folder).rglob("*.py"))
    return files


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def test_every_loader_call_is_safe():
    """np.load with allow_pickle=False, Keras load_model with safe_mode=True, no pickle at all."""
    problems, calls = [], 0
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(REPO)
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "cloudpickle", "dill") for n in names):
                    problems.append(f"{where} imports pickle")
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            if name in ("np.load", "numpy.load"):
                calls += 1
                flag = _keyword(node, "allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where} np.load without allow_pickle=False")
            if name.endswith("load_model") and name.startswith("keras"):
                calls += 1
                flag = _keyword(node, "safe_mode")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where} {name} without safe_mode=True")
            if name.endswith(("enable_unsafe_deserialization", "layers.Lambda")):
                problems.append(f"{where} calls {name}")
    assert problems == []
    assert calls >= 4  # the audit does see the loaders


def test_a_lambda_layer_is_refused(tmp_path):
    inputs = keras.Input((3,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        models.load_model(path)


def test_a_pickled_dataset_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "mnist.npz"
    images = np.empty(2, dtype=object)  # object arrays can only be stored by pickling
    np.savez(path, train_images=images, train_labels=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=rf"{path}: cannot read the train split.*allow_pickle"):
        load_split(path, "train")


def test_a_truncated_dataset_is_a_clear_error(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        train_images=np.zeros((4, 28, 28), np.uint8),
        train_labels=np.zeros(4, np.int64),
    )
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"{path}: cannot read the train split"):
        load_split(path, "train")
