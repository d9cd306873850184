"""`python -m export evaluate` on real test digits scored by the smoke bundle: normal digits and
salt-noised ones, labelled by folder, by a labels file and by a column; and its errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_export_cli as cli  # tests/ is on sys.path (rootdir conftest)
from PIL import Image

from export import metrics
from export.bundle import Bundle

N_NORMAL, N_ANOMALY = 190, 60  # of the smoke run's 256 test digits


def salted(images: np.ndarray, seed: int) -> np.ndarray:
    """uint8 digits with a fifth of their pixels set to white."""
    rng = np.random.default_rng(seed)
    out = images.copy()
    out[rng.random(out.shape) < 0.2] = 255
    return out


@pytest.fixture(scope="module")
def normal_and_salted(test_digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normal, anomalous) uint8 digits: real test digits, and other test digits salted."""
    test = test_digits
    assert len(test) >= N_NORMAL + N_ANOMALY
    return test[:N_NORMAL], salted(test[N_NORMAL : N_NORMAL + N_ANOMALY], seed=0)


@pytest.fixture(scope="module")
def scored_folders(
    bundle_dir: Path,
    normal_and_salted: tuple[np.ndarray, np.ndarray],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """``digits/normal/*.png`` and ``digits/anomaly/*.png`` scored by the AE into scores.csv."""
    root = tmp_path_factory.mktemp("evaluate")
    for name, images in zip(("normal", "anomaly"), normal_and_salted, strict=True):
        (root / "digits" / name).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(root / "digits" / name / f"{i:04d}.png")
    cli(
        ["score", "digits/normal", "digits/anomaly", "--bundle", bundle_dir, "--model", "ae"]
        + ["--out", "scores.csv"],
        root,
    )
    return root


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def expected(bundle_dir: Path, digits: tuple[np.ndarray, np.ndarray], model: str) -> dict:
    """The metrics of the bundle's own scores of ``digits``, straight from export.metrics."""
    bundle = Bundle.load(bundle_dir)
    scores = np.concatenate([bundle.score(d, model) for d in digits]).astype(np.float64)
    labels = np.repeat([False, True], [len(d) for d in digits])
    return {
        "scores": scores,
        "labels": labels,
        "auroc": metrics.roc_auc(scores, labels),
        "average_precision": metrics.average_precision(scores, labels),
        "f1": metrics.f1_max(scores, labels).f1,
        "tpr": metrics.tpr_at_threshold(scores, labels, bundle.threshold(model)),
        "threshold": bundle.threshold(model),
    }


def test_labels_from_folders_match_the_metrics_of_the_bundle_scores(
    scored_folders: Path, bundle_dir: Path, normal_and_salted: tuple[np.ndarray, np.ndarray]
):
    proc = cli(
        ["evaluate", "scores.csv", "--label-from-folder", "--bundle", bundle_dir, "--model", "ae"]
        + ["--json", "eval.json"],
        scored_folders,
    )
    result = json.loads((scored_folders / "eval.json").read_text())
    want = expected(bundle_dir, normal_and_salted, "ae")
    assert (result["rows"], result["positives"], result["negatives"]) == (
        N_NORMAL + N_ANOMALY,
        N_ANOMALY,
        N_NORMAL,
    )
    assert (result["positive_label"], result["negative_label"]) == ("anomaly", "normal")
    # the CSV keeps 7 significant digits of each score: ranks (and so the metrics) hardly move
    assert result["auroc"] == pytest.approx(want["auroc"], abs=1e-3)
    assert result["average_precision"] == pytest.approx(want["average_precision"], abs=1e-3)
    assert result["f1_max"]["f1"] == pytest.approx(want["f1"], abs=1e-2)
    assert result["at_threshold"]["threshold"] == pytest.approx(want["threshold"])
    assert result["at_threshold"]["tpr"] == pytest.approx(want["tpr"], abs=2 / N_ANOMALY)
    assert "bundle" in result["threshold_origin"] and result["notes"] == []
    assert result["auroc"] > 0.9  # salt on a fifth of the pixels is easy to tell
    assert 0.0 <= result["tpr_at_fpr"] <= 1.0 and result["target_fpr"] == 0.01
    for line in ("AUROC", "AUPR (average precision)", "F1-max", "TPR at the threshold"):
        assert f"| {line}" in proc.stdout


def test_a_labels_file_and_a_label_column_give_the_same_numbers(scored_folders: Path):
    rows = read_rows(scored_folders / "scores.csv")
    order = np.random.default_rng(1).permutation(len(rows))  # any order: matched by key
    with (scored_folders / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["label", "source", "index"])
        for k in order:
            row = rows[k]
            writer.writerow([int("/anomaly/" in row["source"]), row["source"], row["index"]])
    # a score file with more columns than today's (read by name), and the labels in it
    with (scored_folders / "wide.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["p_value", "source", "index", "score", "anomaly", "truth"])
        for row in rows:
            truth = "true" if "/anomaly/" in row["source"] else "false"
            writer.writerow(
                ["0.5", row["source"], row["index"], row["score"], row["anomaly"], truth]
            )
    runs = {
        "folder": ["scores.csv", "--label-from-folder"],
        "file": ["scores.csv", "--labels", "labels.csv"],
        "column": ["wide.csv", "--label-column", "truth"],
    }
    results = {}
    for name, args in runs.items():
        cli(["evaluate", *args, "--json", f"{name}.json"], scored_folders)
        results[name] = json.loads((scored_folders / f"{name}.json").read_text())
    for name in ("file", "column"):
        for key in ("rows", "positives", "auroc", "average_precision", "f1_max", "tpr_at_fpr"):
            assert results[name][key] == results["folder"][key], (name, key)
        # without --bundle or --threshold: the threshold the scorer's anomaly column implies
        assert results[name]["at_threshold"] == results["folder"]["at_threshold"]
    flagged = sum(row["anomaly"] == "1" for row in rows)
    assert results["folder"]["at_threshold"]["flagged"] == flagged
    assert "anomaly column" in results["folder"]["threshold_origin"]


def test_parquet_scores_and_a_given_threshold(
    scored_folders: Path, bundle_dir: Path, normal_and_salted: tuple[np.ndarray, np.ndarray]
):
    try:
        import pyarrow  # noqa: F401
    except ImportError:  # the core runtime: Parquet is the optional [parquet] extra
        (scored_folders / "fake.parquet").write_bytes(b"PAR1" + bytes(64) + b"PAR1")
        proc = cli(["evaluate", "fake.parquet", "--label-from-folder"], scored_folders, check=False)
        assert proc.returncode == 2 and "reading it needs pyarrow" in proc.stderr
        return
    cli(
        ["score", "digits/normal", "digits/anomaly", "--bundle", bundle_dir, "--out", "s.parquet"],
        scored_folders,
    )
    want = expected(bundle_dir, normal_and_salted, "vae")
    threshold = float(np.median(want["scores"]))
    cli(
        ["evaluate", "s.parquet", "--label-from-folder", "--threshold", str(threshold)]
        + ["--fpr", "0.05", "--json", "pq.json"],
        scored_folders,
    )
    result = json.loads((scored_folders / "pq.json").read_text())
    point = metrics.operating_point(want["scores"], want["labels"], threshold)
    assert result["at_threshold"]["flagged"] == point.flagged
    assert result["at_threshold"]["tpr"] == pytest.approx(point.tpr)
    assert result["auroc"] == pytest.approx(want["auroc"], abs=1e-6)  # float32 kept exactly
    assert result["tpr_at_fpr"] == pytest.approx(
        metrics.tpr_at_fpr(want["scores"], want["labels"], 0.05), abs=1e-6
    )
    assert result["target_fpr"] == 0.05 and result["threshold_origin"] == "--threshold"
    # the file was scored at the bundle's threshold, not this one: said on stderr
    assert any("anomaly column" in note for note in result["notes"])


def write(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def test_bad_input_is_one_line_naming_the_file_and_row(scored_folders: Path, tmp_path: Path):
    rows = read_rows(scored_folders / "scores.csv")
    keyed = [[r["source"], r["index"]] for r in rows]
    scores = str(scored_folders / "scores.csv")
    header = ["source", "index", "score", "anomaly"]
    write(tmp_path / "missing.csv", ["source", "index", "label"], [k + [0] for k in keyed[1:]])
    write(
        tmp_path / "three.csv",
        ["source", "index", "label"],
        [k + [["normal", "anomaly", "cat"][min(i // 100, 2)]] for i, k in enumerate(keyed)],
    )
    write(tmp_path / "one.csv", ["source", "index", "label"], [k + ["normal"] for k in keyed])
    write(
        tmp_path / "nan.csv",
        header,
        [["a/normal/x.png", 0, 0.1, 0], ["a/anomaly/y.png", 0, "nan", 0]],
    )
    write(
        tmp_path / "twice.csv",
        header,
        [["a/normal/x.png", 0, 0.1, 0], ["a/normal/x.png", 0, 0.2, 0]],
    )
    write(tmp_path / "cols.csv", ["source", "index", "value"], [["a/normal/x.png", 0, 0.1]])
    first = f"{rows[0]['source']}[{rows[0]['index']}]"
    cases = [
        (
            [scores, "--labels", "missing.csv"],
            f"missing.csv: no label for {scores} row 1 ({first}); expected a row with source",
        ),
        ([scores, "--labels", "three.csv"], "three.csv row 201: label 'cat', a third value"),
        (
            [scores, "--labels", "one.csv"],
            f"one.csv column 'label': all {N_NORMAL + N_ANOMALY} labels are 'normal'",
        ),
        (
            [scores, "--label-from-folder", "--positive", "bad"],
            f"row {N_NORMAL + 1} (digits/anomaly/0000.png[0]): label 'anomaly', after 'normal', "
            "and neither "
            "is the positive label 'bad'",
        ),
        (
            ["nan.csv", "--label-from-folder"],
            "nan.csv row 2: score 'nan', expected a finite number",
        ),
        (["twice.csv", "--label-from-folder"], "twice.csv row 2 (a/normal/x.png[0]): scored twice"),
        (["cols.csv", "--label-from-folder"], "cols.csv: no column 'score', expected the columns"),
        ([scores], "no labels: give --labels FILE, --label-column NAME or --label-from-folder"),
        ([scores, "--label-from-folder", "--threshold", "1", "--bundle", "x"], "not both"),
        (["absent.csv", "--label-from-folder"], "absent.csv: no such file"),
    ]
    for args, message in cases:
        proc = cli(["evaluate", *args], tmp_path, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)
        assert message in lines[0], (args, lines[0])
        assert proc.stdout == ""
