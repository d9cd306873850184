"""Scoring on Apache Beam (DirectRunner): the pipeline's workers run the CLI's own scoring loop
and give the same scores, flags and record errors as `python -m export score`, on real test
digits.

Needs the beam extra: `make test` runs this file in .venv-beam (SCALEOUT_TESTS=1, where a
missing Beam is an error); in the TensorFlow environment, which has no Beam, it is skipped.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

if os.environ.get("SCALEOUT_TESTS") == "1":
    import apache_beam  # noqa: F401  (must be installed here)
else:
    pytest.importorskip("apache_beam", reason="the beam extra runs in .venv-beam (make test-beam)")

from export import beam as beam_scoring  # noqa: E402
from export.inputs import Chunk, read_unit, reading_units  # noqa: E402


@pytest.fixture(scope="module")
def inputs(test_digits: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's test digits (256 in the smoke config) as .npy, three as PNGs and one PNG of the
    wrong size, 20 as floats with a NaN in one."""
    folder = tmp_path_factory.mktemp("beam-inputs")
    digits = test_digits[:1000]
    np.save(folder / "test.npy", digits)
    (folder / "pngs").mkdir()
    for i in range(3):
        Image.fromarray(digits[i]).save(folder / "pngs" / f"{i}.png")
    Image.new("L", (20, 20)).save(folder / "pngs" / "small.png")
    bad = digits[:20].astype(np.float32) / np.float32(255.0)
    bad[4, 3, 3] = np.nan
    np.save(folder / "bad.npy", bad)
    return folder


def _read(paths: list[Path]) -> list[dict[str, str]]:
    rows = []
    for path in paths:
        with path.open(newline="") as fh:
            rows += list(csv.DictReader(fh))
    return rows


@pytest.mark.parametrize("model", ["vae", "ae"])
def test_beam_scores_equal_the_cli(export_run: Path, inputs: Path, tmp_path: Path, model: str):
    bundle = str(export_run / "export")
    sources = ["test.npy", "pngs", "bad.npy"]
    cwd = os.getcwd()
    os.chdir(inputs)  # relative source names, as a user would type them
    try:
        status = beam_scoring.main(
            [*sources, "--bundle", bundle, "--model", model, "--batch-size", "64"]
            + ["--out", str(tmp_path / "beam" / "scores"), "--runner", "DirectRunner"]
        )
    finally:
        os.chdir(cwd)
    assert status == 0
    shards = sorted((tmp_path / "beam").glob("scores-0*-of-*.csv"))
    assert shards, list((tmp_path / "beam").iterdir())
    beam_rows = _read(shards)
    beam_errors = _read(sorted((tmp_path / "beam").glob("scores-errors-*.csv")))

    proc = subprocess.run(
        [sys.executable, "-m", "export", "score", *sources, "--bundle", bundle, "--model", model]
        + ["--out", str(tmp_path / "cli.csv")],
        cwd=inputs,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr  # the two bad records
    cli_rows = _read([tmp_path / "cli.csv"])
    cli_errors = _read([tmp_path / "cli.errors.csv"])

    n = len(np.load(inputs / "test.npy"))
    assert n > 64  # several .npy slices, read by separate reading units
    assert len(beam_rows) == len(cli_rows) == n + 3 + 19
    key = lambda r: (r["source"], int(r["index"]))  # noqa: E731
    beam_rows.sort(key=key)
    cli_rows.sort(key=key)
    assert [key(r) for r in beam_rows] == [key(r) for r in cli_rows]
    np.testing.assert_allclose(
        [float(r["score"]) for r in beam_rows], [float(r["score"]) for r in cli_rows], rtol=1e-5
    )
    assert [r["anomaly"] for r in beam_rows] == [r["anomaly"] for r in cli_rows]
    assert 0 < sum(r["anomaly"] == "1" for r in cli_rows) < len(cli_rows)
    assert (
        sorted(map(key, beam_errors))
        == sorted(map(key, cli_errors))
        == [
            ("bad.npy", 4),
            (str(Path("pngs") / "small.png"), 0),
        ]
    )


def test_reading_units_cover_every_image_once(inputs: Path):
    """The plan the workers share: .npy slices, one unit per PNG, other files whole; reading
    every unit gives each image exactly once, in the reader's order within a unit."""
    sources = [str(inputs / "test.npy"), str(inputs / "pngs"), str(inputs / "bad.npy")]
    units = reading_units(sources, batch_size=64)
    n = len(np.load(inputs / "test.npy"))
    npy_units = [u for u in units if u[0] == sources[0]]
    assert [start for _, start in npy_units] == list(range(0, n, 64))
    assert [Path(s).name for s, start in units if start is None] == [
        "0.png",
        "1.png",
        "2.png",
        "small.png",
    ]
    seen = []
    for unit in units:
        for item in read_unit(unit, batch_size=64):
            if isinstance(item, Chunk):
                seen += [(Path(item.source).name, item.start + i) for i in range(len(item.images))]
    assert len(seen) == len(set(seen)) == n + 3 + 19
    assert ("test.npy", n - 1) in seen and ("bad.npy", 4) not in seen
