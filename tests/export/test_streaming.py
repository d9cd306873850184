"""Streaming scoring on real MNIST test digits: export.inputs reads every format in bounded
chunks and reports bad records instead of stopping; `python -m export score` streams them with
an errors file, --strict, CSV or Parquet output. Runs in the runtime-only environment too."""

from __future__ import annotations

import csv
import gzip
import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_export_cli  # tests/ is on sys.path (rootdir conftest)
from PIL import Image

from export.bundle import Bundle
from export.inputs import Chunk, RecordError, count_records, iter_records, read_images
from export.scorefile import csv_cell

N = 60
N_SCORED = 200  # the smoke run's test digits scored by the CLI tests


def _idx(path: Path, array: np.ndarray, gz: bool, code: int = 0x08) -> Path:
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _csv(path: Path, rows: list[list[str]], label: bool = True) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        if label:
            writer.writerow(["label", *(f"pixel{i}" for i in range(784))])
        writer.writerows([["7", *r] for r in rows] if label else rows)
    return path


def _split(items: list) -> tuple[list[Chunk], list[RecordError]]:
    return [i for i in items if isinstance(i, Chunk)], [
        i for i in items if isinstance(i, RecordError)
    ]


@pytest.fixture(scope="module")
def sources(mirror_digits: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same digits in every format the readers accept."""
    digits = mirror_digits[:N]
    d = tmp_path_factory.mktemp("formats")
    floats = digits.astype(np.float32) / np.float32(255.0)
    np.save(d / "u8.npy", digits)
    np.save(d / "f32.npy", floats.reshape(N, 784))
    np.savez(d / "stored.npz", images=digits, labels=np.arange(N))
    np.savez_compressed(d / "deflated.npz", digits[..., np.newaxis])
    np.savez(d / "fortran.npz", images=np.asfortranarray(floats))
    _idx(d / "idx.gz", digits, gz=True)
    _idx(d / "raw-idx3-ubyte", digits, gz=False)
    _csv(d / "ints.csv", [[str(v) for v in im.ravel()] for im in digits])
    _csv(d / "floats.csv", [[f"{v:.9g}" for v in im.ravel()] for im in floats], label=False)
    pngs = d / "pngs"
    pngs.mkdir()
    for i, image in enumerate(digits[:5]):
        Image.fromarray(image).save(pngs / f"{i:02d}.png")
    return {p.name: p for p in d.iterdir()}


@pytest.mark.parametrize(
    "name",
    [
        "u8.npy",
        "f32.npy",
        "stored.npz",
        "deflated.npz",
        "fortran.npz",
        "idx.gz",
        "raw-idx3-ubyte",
        "ints.csv",
        "floats.csv",
        "pngs",
    ],
)
def test_every_format_streams_the_same_pixels_in_bounded_chunks(sources, mirror_digits, name):
    digits = mirror_digits[:N]
    items = list(iter_records([sources[name]], batch_size=7))
    chunks, errors = _split(items)
    assert errors == []
    assert all(len(c.images) <= 7 for c in chunks)
    expected = read_images(sources[name])
    np.testing.assert_allclose(np.concatenate([c.images for c in chunks]), expected, atol=1e-7)
    if name != "pngs":  # a folder: each PNG is its own source
        assert [c.start for c in chunks] == list(range(0, N, 7))
        unknown = name.endswith((".csv", ".npz"))  # no row count without reading them
        assert count_records([sources[name]]) == (None if unknown else N)
    np.testing.assert_allclose(expected[:5], digits[:5] / np.float32(255.0), atol=1e-7)


def test_bad_records_are_reported_with_source_and_index_and_the_rest_kept(mirror_digits, tmp_path):
    digits = mirror_digits[:N]
    floats = digits.astype(np.float32) / np.float32(255.0)
    floats[3, 1, 1] = np.nan
    floats[10, 0, 0] = 2.0
    np.save(tmp_path / "bad.npy", floats)
    chunks, errors = _split(list(iter_records([tmp_path / "bad.npy"], batch_size=8)))
    assert [(e.source, e.index) for e in errors] == [
        (str(tmp_path / "bad.npy"), i) for i in (3, 10)
    ]
    assert "bad.npy[3]: pixel value nan" in str(errors[0])
    assert "bad.npy[10]: pixel value 2.0" in str(errors[1])
    kept = [c.start + i for c in chunks for i in range(len(c.images))]
    assert kept == [i for i in range(N) if i not in (3, 10)]
    np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), floats[kept])

    rows = [[str(v) for v in im.ravel()] for im in digits[:6]]
    rows[2] = rows[2][:-1]
    rows[4][100] = "dark"
    _csv(tmp_path / "rows.csv", rows)
    chunks, errors = _split(list(iter_records([tmp_path / "rows.csv"], batch_size=4)))
    assert [e.index for e in errors] == [2, 4]
    assert "rows.csv[2]: row has 783 columns, expected 784" in str(errors[0])
    assert "rows.csv[4]: non-numeric pixel" in str(errors[1])
    assert [(c.start, len(c.images)) for c in chunks] == [(0, 2), (3, 1), (5, 1)]
    np.testing.assert_allclose(chunks[1].images[0], digits[3] / np.float32(255.0), atol=1e-7)

    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray(digits[0]).save(folder / "a.png")
    Image.new("L", (20, 20)).save(folder / "b.png")
    Image.fromarray(digits[1]).save(folder / "c.png")
    chunks, errors = _split(list(iter_records([folder], batch_size=4)))
    assert [Path(c.source).name for c in chunks] == ["a.png", "c.png"]
    assert len(errors) == 1 and "b.png: image is 20x20, expected 28x28" in str(errors[0])

    whole = _idx(tmp_path / "t-idx3-ubyte.gz", digits, gz=True).read_bytes()
    (tmp_path / "cut-idx3-ubyte.gz").write_bytes(gzip.compress(gzip.decompress(whole)[:-1000]))
    _idx(tmp_path / "labels-idx1-ubyte", np.arange(5, dtype=np.uint8), gz=False)
    chunks, errors = _split(
        list(
            iter_records(
                [
                    tmp_path / "cut-idx3-ubyte.gz",
                    tmp_path / "labels-idx1-ubyte",
                    tmp_path / "no.npy",
                ],
                batch_size=16,
            )
        )
    )
    assert sum(len(c.images) for c in chunks) == N - 2  # 1000 bytes = one whole image and a part
    assert errors[0].index == N - 2 and "file ends after 58 images" in str(errors[0])
    assert errors[1].index is None and "holds labels, expected images" in str(errors[1])
    assert errors[2].index is None and "no.npy: no such file or folder" in str(errors[2])


RSS_PROBE = """
import sys
from export.inputs import iter_records

def rss(field):  # kB -> bytes, from the kernel's own accounting of this process
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

total = 0
items = iter_records([sys.argv[1]], batch_size=256)
total += len(next(items).images)  # the first batch: imports and buffers are warm now
baseline = rss("VmRSS")
for item in items:
    total += len(item.images)
print(total, rss("VmHWM") - baseline)
"""


@pytest.mark.parametrize("name", ["big.npy", "big.npz", "big-idx3-ubyte.gz"])
def test_memory_stays_bounded_by_the_batch_not_the_file(mirror_digits, tmp_path, name):
    """A 63 MB float32 .npy (memory mapped: its pages must be released as the read moves on)
    and 31 MB of uint8 digits in a deflated .npz and a gzipped IDX, read 256 at a time: the
    reader's resident memory (RSS, in a child process) grows by far less than the file."""
    digits = mirror_digits[:N]
    n = 20_000 if name.endswith(".npy") else 40_000
    big = np.tile(digits, (n // N + 1, 1, 1))[:n]
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, big.astype(np.float32) / np.float32(255.0))
    elif name.endswith(".npz"):
        np.savez_compressed(path, images=big)
    else:
        _idx(path, big, gz=True)
    proc = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    total, growth = map(int, proc.stdout.split())
    assert total == n
    data_bytes = n * 784 * (4 if name.endswith(".npy") else 1)
    assert growth < 12 * 2**20 < data_bytes / 2, (
        f"RSS grew {growth / 2**20:.1f} MiB while streaming {data_bytes / 2**20:.0f} MiB of {name}"
    )


# -- the CLI ------------------------------------------------------------------------------------


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m export ARGS``; each test checks the exit status itself."""
    return run_export_cli(args, cwd, check=False)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_score_skips_bad_records_writes_errors_and_exits_1(bundle_dir, test_digits, tmp_path):
    test_digits = test_digits[:N_SCORED]
    floats = test_digits[:50].astype(np.float32) / np.float32(255.0)
    floats[7, 5, 5] = np.nan
    np.save(tmp_path / "bad.npy", floats)
    np.save(tmp_path / "good.npy", test_digits)
    proc = cli(
        ["score", "--bundle", bundle_dir, "good.npy", "bad.npy", "--batch-size", "16"]
        + ["--out", "out/scores.csv"],
        tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert "skipped: bad.npy[7]: pixel value nan" in proc.stderr
    assert "scored 249 images with the detector score" in proc.stderr
    assert "1 records failed and were skipped; see out/scores.errors.csv" in proc.stderr
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal
    rows = _rows(tmp_path / "out" / "scores.csv")
    assert len(rows) == 249 and [r["index"] for r in rows[200:]] == [
        str(i) for i in range(50) if i != 7
    ]
    bundle = Bundle.load(bundle_dir)
    expected = np.concatenate([bundle.score(test_digits), bundle.score(np.delete(floats, 7, 0))])
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-5)
    assert [int(r["anomaly"]) for r in rows] == (expected > bundle.threshold()).astype(int).tolist()
    errors = _rows(tmp_path / "out" / "scores.errors.csv")
    assert errors == [
        {
            "source": "bad.npy",
            "index": "7",
            "error": "bad.npy[7]: pixel value nan, expected finite floats in [0, 1]",
        }
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "scores.csv",
        "scores.errors.csv",
    ]

    strict = cli(
        ["score", "--bundle", bundle_dir, "good.npy", "bad.npy", "--strict", "--out", "s.csv"],
        tmp_path,
    )
    assert strict.returncode == 2 and "bad.npy[7]: pixel value nan" in strict.stderr
    assert "--strict" in strict.stderr
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "s.errors.csv").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary output is gone too

    missing = cli(["score", "--bundle", bundle_dir, "good.npy", "nope.npy"], tmp_path)
    assert missing.returncode == 2 and "nope.npy: no such file or folder" in missing.stderr
    assert missing.stdout == ""


def test_batch_size_and_threads_do_not_change_the_scores(bundle_dir, test_digits, tmp_path):
    test_digits = test_digits[:N_SCORED]
    np.save(tmp_path / "d.npy", test_digits)
    for batch, threads in (("4096", "0"), ("7", "1")):
        proc = cli(
            ["score", "--bundle", bundle_dir, "--model", "ae", "d.npy", "--batch-size", batch]
            + ["--threads", threads, "--out", f"b{batch}.csv"],
            tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
    big, small = _rows(tmp_path / "b4096.csv"), _rows(tmp_path / "b7.csv")
    assert [r["index"] for r in big] == [r["index"] for r in small] == [str(i) for i in range(200)]
    np.testing.assert_allclose(
        [float(r["score"]) for r in big], [float(r["score"]) for r in small], rtol=1e-5
    )


def test_parquet_output_matches_csv(bundle_dir, test_digits, tmp_path):
    test_digits = test_digits[:N_SCORED]
    np.save(tmp_path / "d.npy", test_digits)
    proc = cli(["score", "--bundle", bundle_dir, "d.npy", "--out", "s.parquet"], tmp_path)
    try:
        import pyarrow.parquet as pq
    except ImportError:  # the core runtime: Parquet is the optional [parquet] extra
        assert proc.returncode == 2
        assert "Parquet output needs pyarrow: pip install 'mnist-vae[parquet]'" in proc.stderr
        assert not (tmp_path / "s.parquet").exists()
        return
    assert proc.returncode == 0, proc.stderr
    assert "wrote s.parquet (parquet)" in proc.stderr
    table = pq.read_table(tmp_path / "s.parquet").to_pydict()
    cli(["score", "--bundle", bundle_dir, "d.npy", "--format", "csv", "--out", "s.out"], tmp_path)
    rows = _rows(tmp_path / "s.out")
    assert table["source"] == [r["source"] for r in rows] == ["d.npy"] * 200
    assert table["index"] == list(range(200))
    np.testing.assert_allclose(table["score"], [float(r["score"]) for r in rows], rtol=1e-6)
    assert table["anomaly"] == [r["anomaly"] == "1" for r in rows]
    to_stdout = cli(["score", "--bundle", bundle_dir, "d.npy", "--format", "parquet"], tmp_path)
    assert to_stdout.returncode == 2 and "--format parquet needs --out FILE" in to_stdout.stderr


def test_progress_bar_on_a_terminal(bundle_dir, test_digits, tmp_path):
    test_digits = test_digits[:N_SCORED]
    np.save(tmp_path / "d.npy", test_digits)
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "export", "score", "--bundle", bundle_dir, "d.npy"]
            + ["--batch-size", "50", "--out", "s.csv"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=300,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal is closed once the child is gone
                break
            if not data:
                break
            shown += data
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    text = shown.decode()
    assert "\rscore: 200/200 rows (100%)" in text and "rows/s" in text and "ETA" in text
    assert "scored 200 images" in text


@pytest.mark.parametrize(
    "name", ["plain.npy", "a,b.npy", 'say "hi".png', "two\nlines.csv", "cr\r.npy", ""]
)
def test_csv_cells_read_back_as_the_same_source_name(name: str):
    """A source name with a comma, quote or line break is quoted so that any CSV reader gets it
    back whole; a plain one is written as it is."""
    line = f"{csv_cell(name)},7,0.5,1\r\n"
    assert next(csv.reader(io.StringIO(line, newline=""))) == [name, "7", "0.5", "1"]
    assert (csv_cell(name) == name) == (not any(c in name for c in ',"\n\r'))
