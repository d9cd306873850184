"""A format fuzzer: real MNIST test digits written in every input format the runtime reads (raw
and gzipped IDX, .npy, stored and deflated .npz, CSV, PNG, folders of them), then damaged by
truncation, byte flips, wrong magic numbers, huge, zero or negative header counts, zero length,
NaN/inf pixels, wrong dtypes and shapes, pickled objects and junk, and fed through the reading
and scoring path of every command that reads images: the reader (``iter_records``, the strict
``iter_chunks`` of ``encode`` and ``denoise``), Beam's reading units, the streaming score loop,
and the ``score``, ``encode`` and ``denoise`` commands themselves (in-process ``main``).

Every case must end in scores, record errors that name the file, or a one-line error: never a
traceback, never a hang (each case runs under an alarm), never memory that grows with what a
header claims (peak RSS is checked over the whole run). ``FORMAT_FUZZ_CASES`` scales the
number of reader cases (default 10,000) and ``FORMAT_FUZZ_SEED`` their seed, for longer runs.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import pickle
import resource
import signal
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.__main__ import main as cli_main
from export.inputs import (
    Chunk,
    InputError,
    RecordError,
    iter_chunks,
    iter_records,
    read_unit,
    reading_units,
)
from export.streaming import Scored, score_items

pytestmark = pytest.mark.slow

READER_CASES = int(os.environ.get("FORMAT_FUZZ_CASES", "10000"))
CLI_CASES = 150  # per command (score, encode, denoise); each loads the bundle
CASE_SECONDS = 20  # a case that takes longer is a hang
RSS_GROWTH_LIMIT = 150 * 2**20  # the whole run; a header's claims would be gigabytes
N_DIGITS = 12
BATCH = 5  # small, so that files span several batches


# -- the real files ---------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0D: ">f4", 0x0E: ">f8", 0x0B: ">i2"}[code]
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray], compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def png_bytes(image: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def csv_bytes(rows: list[list[str]], header: bool) -> bytes:
    lines = ([",".join(["label", *(f"p{i}" for i in range(784))])] if header else []) + [
        ",".join(r) for r in rows
    ]
    return ("\n".join(lines) + "\n").encode()


# -- mutations --------------------------------------------------------------------------------


def truncate(rng: np.random.Generator, data: bytes) -> bytes:
    return data[: int(rng.integers(0, max(len(data), 1)))]


def flip_bytes(rng: np.random.Generator, data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        # mostly in the header, where a flip changes what the file claims
        end = len(out) if rng.random() < 0.5 else min(len(out), 160)
        out[int(rng.integers(0, end))] = int(rng.integers(0, 256))
    return bytes(out)


def splice_junk(rng: np.random.Generator, data: bytes) -> bytes:
    at = int(rng.integers(0, len(data) + 1))
    junk = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    return data[:at] + junk + data[at + int(rng.integers(0, 16)) :]


BYTE_MUTATIONS: dict[str, Callable[[np.random.Generator, bytes], bytes]] = {
    "truncated": truncate,
    "bytes flipped": flip_bytes,
    "junk spliced": splice_junk,
    "zero length": lambda rng, data: b"",
    "junk appended": lambda rng, data: data + rng.integers(0, 256, 40, dtype=np.uint8).tobytes(),
}

HUGE_COUNTS = [0, 1, 2**31 - 1, 2**32 - 1, 10**9, 0x80000000]


def bad_arrays(rng: np.random.Generator, digits: np.ndarray) -> dict[str, np.ndarray]:
    """Arrays that are not valid images, or hold some pixels that are not."""
    floats = digits.astype(np.float64) / 255.0
    nan, inf, out = floats.copy(), floats.astype(np.float32), floats.copy()
    nan[int(rng.integers(0, len(nan))), 3, 3] = np.nan
    inf[int(rng.integers(0, len(inf))), 5, 5] = -np.inf
    out[int(rng.integers(0, len(out))), 7, 7] = float(rng.choice([-0.5, 1.5, 255.0]))
    return {
        "nan pixel": nan,
        "inf pixel": inf,
        "out-of-range float64": out,
        "int64": digits.astype(np.int64),
        "complex": digits.astype(np.complex64),
        "bool": digits > 128,
        "strings": np.array([["x"] * 28] * 28),
        "wrong shape": digits[:, :27, :],
        "flat wrong width": digits.reshape(len(digits), -1)[:, :700],
        "0-d": np.array(3.0),
        "empty": np.zeros((0, 28, 28), np.uint8),
        "4-d": digits[:, np.newaxis],
        "float16": (digits / 255.0).astype(np.float16),
        "big-endian float": (digits / 255.0).astype(">f4"),
        "fortran": np.asfortranarray(digits),
        "one image": digits[0],
    }


def npy_with_shape(array: np.ndarray, shape: tuple[int, ...]) -> bytes:
    """A .npy whose header claims ``shape`` while its data is ``array``'s."""
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False}
    header["shape"] = shape
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + array.tobytes()


def cases(rng: np.random.Generator, digits: np.ndarray) -> Iterator[tuple[str, str, bytes]]:
    """Endless (kind, file name, content): a real file of a random format, mostly damaged."""
    n = len(digits)
    while True:
        images = digits[rng.permutation(n)[: int(rng.integers(1, n + 1))]]
        fmt = str(
            rng.choice(["idx", "idx.gz", "npy", "npz", "npz-deflated", "csv", "png", "folder"])
        )
        roll = rng.random()
        if fmt in ("idx", "idx.gz"):
            if roll < 0.25:  # a header that lies about the count or the type
                dims = [len(images), 28, 28]
                dims[int(rng.integers(0, 3))] = int(rng.choice(HUGE_COUNTS))
                data = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in dims)
                data += images.tobytes()
                kind = "idx header counts"
            elif roll < 0.35:
                data = bytes(rng.integers(0, 256, 4, dtype=np.uint8)) + idx_bytes(images)[4:]
                kind = "idx magic"
            elif roll < 0.45:
                floats = images.astype(np.float32) / 255.0
                floats[0, 0, 0] = float(rng.choice([np.nan, np.inf, 2.0, -1.0]))
                data, kind = idx_bytes(floats, 0x0D), "idx float pixels"
            elif roll < 0.5:
                data, kind = idx_bytes(images[0, 0].astype(np.uint8)), "idx labels"
            else:
                data, kind = idx_bytes(images), "idx"
            if fmt == "idx.gz" and rng.random() < 0.8:
                data = gzip.compress(data)
            name = f"digits-idx3-ubyte{'.gz' if fmt == 'idx.gz' else ''}"
        elif fmt == "npy":
            if roll < 0.3:
                arrays = bad_arrays(rng, images)
                label = list(arrays)[int(rng.integers(0, len(arrays)))]
                data, kind = npy_bytes(arrays[label]), f"npy {label}"
            elif roll < 0.4:
                objects = np.array([images[0], "text", None], dtype=object)
                data, kind = npy_bytes(objects, allow_pickle=True), "npy pickled objects"
            elif roll < 0.5:
                claim = (int(rng.choice(HUGE_COUNTS[1:])), 28, 28)
                data, kind = npy_with_shape(images, claim), "npy header counts"
            elif roll < 0.55:
                data, kind = pickle.dumps(images), "npy is a pickle"
            else:
                data, kind = npy_bytes(images), "npy"
            name = "digits.npy"
        elif fmt.startswith("npz"):
            compressed = fmt == "npz-deflated"
            if roll < 0.3:
                arrays = bad_arrays(rng, images)
                label = list(arrays)[int(rng.integers(0, len(arrays)))]
                data, kind = npz_bytes({"images": arrays[label]}, compressed), f"npz {label}"
            elif roll < 0.4:
                data = npz_bytes({"a": images, "b": images}, compressed)
                kind = "npz no images key"
            elif roll < 0.5:
                buf = io.BytesIO()
                with zipfile.ZipFile(buf, "w") as archive:
                    claim = (int(rng.choice(HUGE_COUNTS[1:])), 28, 28)
                    archive.writestr("images.npy", npy_with_shape(images, claim))
                data, kind = buf.getvalue(), "npz header counts"
            else:
                data, kind = npz_bytes({"images": images}, compressed), "npz"
            name = "digits.npz"
        elif fmt == "csv":
            rows = [[str(v) for v in im.ravel()] for im in images]
            kind = "csv"
            if roll < 0.4:
                r, c = int(rng.integers(0, len(rows))), int(rng.integers(0, 784))
                cell = str(rng.choice(["nan", "inf", "-1", "256", "0.5", "1.5", "x", "", "1e400"]))
                rows[r][c], kind = cell, f"csv cell {cell!r}"
            elif roll < 0.5:
                r = int(rng.integers(0, len(rows)))
                rows[r] = rows[r][: int(rng.integers(0, 790))]
                kind = "csv row width"
            data = csv_bytes(rows, header=bool(rng.random() < 0.5))
            if roll > 0.9:
                data, kind = b"\x00\xff\xfe" + data[:200], "csv binary"
            name = "digits.csv"
        elif fmt == "png":
            image = images[0]
            if roll < 0.2:
                big = np.zeros((int(rng.choice([1, 27, 29, 56])), 28), np.uint8)
                data, kind = png_bytes(big), "png size"
            elif roll < 0.3:
                data = png_bytes(image, str(rng.choice(["RGB", "RGBA", "LA", "P", "I;16", "1"])))
                kind = "png mode"
            else:
                data, kind = png_bytes(image), "png"
            name = "digit.png"
        else:
            yield "folder", "", b""
            continue
        mutation = None
        if rng.random() < 0.6:
            mutation = str(rng.choice(list(BYTE_MUTATIONS)))
            data = BYTE_MUTATIONS[mutation](rng, data)
        yield (kind if mutation is None else f"{kind}, {mutation}"), name, data


def write_case(
    folder: Path, name: str, data: bytes, rng: np.random.Generator, digits: np.ndarray
) -> Path:
    if name:
        path = folder / name
        path.write_bytes(data)
        return path
    # a folder of PNGs, some good, some damaged, some not PNGs at all (those are ignored)
    pngs = folder / "pngs"
    pngs.mkdir()
    for i in range(int(rng.integers(0, 5))):
        content = png_bytes(digits[i])
        if rng.random() < 0.4:
            content = BYTE_MUTATIONS[str(rng.choice(list(BYTE_MUTATIONS)))](rng, content)
        (pngs / f"{i}.png").write_bytes(content)
    if rng.random() < 0.3:
        (pngs / "notes.txt").write_text("not an image")
    return pngs


# -- the checks -------------------------------------------------------------------------------


class HangError(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: int) -> Iterator[None]:
    def ring(signum: int, frame: object) -> None:
        raise HangError(f"a case ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_items(items: list, path: Path) -> int:
    """Every item a valid Chunk or a RecordError naming ``path``; returns the images read."""
    images = 0
    for item in items:
        if isinstance(item, RecordError):
            assert str(path) in item.message, item.message
            assert "\n" not in item.message.strip()
            continue
        assert isinstance(item, Chunk)
        assert item.images.dtype == np.float32 and item.images.shape[1:] == (28, 28)
        assert np.isfinite(item.images).all()
        assert item.images.min() >= 0.0 and item.images.max() <= 1.0
        images += len(item.images)
    return images


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def test_reader_cases_end_in_images_or_named_errors(mirror_digits, bundle, tmp_path):
    digits = mirror_digits[:N_DIGITS]
    rng = np.random.default_rng(int(os.environ.get("FORMAT_FUZZ_SEED", "20261202")))
    tried: Counter[str] = Counter()
    outcome: Counter[str] = Counter()
    rss_before = peak_rss()
    generator = cases(rng, digits)
    for number in range(READER_CASES):
        kind, name, data = next(generator)
        folder = tmp_path / f"case{number}"
        folder.mkdir()
        path = write_case(folder, name, data, rng, digits)
        with alarm(CASE_SECONDS):
            items = list(iter_records([path], BATCH))
            read = check_items(items, path)
            errors = [i for i in items if isinstance(i, RecordError)]
            # the strict reader of encode and denoise: all of it, or an InputError naming it
            try:
                strict = sum(len(c.images) for c in iter_chunks([path], BATCH))
                assert not errors and strict == read
            except InputError as err:
                assert errors and str(path) in str(err)
            # Beam's reading units give the same images
            units = reading_units([str(path)], BATCH)
            assert check_items([i for u in units for i in read_unit(u, BATCH)], path) == read
            # the score loop scores every image read, finitely
            if number % 4 == 0:
                scored = list(score_items(bundle, iter(items), "vae", BATCH))
                batches = [s for s in scored if isinstance(s, Scored)]
                assert sum(len(s.score) for s in batches) == read
                assert all(np.isfinite(s.score).all() for s in batches)
        tried[kind.split(",")[0]] += 1
        outcome["scored" if read and not errors else "errors" if not read else "both"] += 1
        for child in sorted(folder.rglob("*"), reverse=True):
            child.rmdir() if child.is_dir() else child.unlink()
        folder.rmdir()
    growth = peak_rss() - rss_before
    print(f"format fuzz: {READER_CASES} reader cases, outcomes {dict(outcome)}")
    print("format fuzz kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(tried.items())))
    assert sum(tried.values()) == READER_CASES >= 10_000 or "FORMAT_FUZZ_CASES" in os.environ
    assert outcome["scored"] and outcome["errors"] and outcome["both"]  # every outcome is tried
    assert growth < RSS_GROWTH_LIMIT, f"peak RSS grew {growth / 2**20:.0f} MiB"


@pytest.mark.parametrize("command", ["score", "encode", "denoise"])
def test_commands_end_in_output_errors_file_or_one_line(
    mirror_digits, export_run, tmp_path, capsys, command
):
    digits = mirror_digits[:N_DIGITS]
    rng = np.random.default_rng({"score": 1, "encode": 2, "denoise": 3}[command])
    bundle_dir = str(export_run / "export")
    generator = cases(rng, digits)
    statuses: Counter[int] = Counter()
    for number in range(CLI_CASES):
        _, name, data = next(generator)
        folder = tmp_path / f"case{number}"
        folder.mkdir()
        path = write_case(folder, name, data, rng, digits)
        strict = command == "score" and number % 2 == 1
        out = folder / ("scores.csv" if command == "score" else "out.npy")
        args = [command, str(path), "--bundle", bundle_dir, "--out", str(out)]
        args += ["--batch-size", str(BATCH)] + (["--strict"] if strict else [])
        with alarm(CASE_SECONDS):
            status = cli_main(args)  # an exception here is the traceback a user would see
        err = capsys.readouterr().err
        statuses[status] += 1
        if status == 2:
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), err
            assert not out.exists()  # nothing half-written under the name
        elif status == 1:  # score only: some records skipped, the rest written
            assert command == "score" and not strict
            assert out.exists() and (folder / "scores.errors.csv").exists()
        else:
            assert status == 0 and out.exists(), err
    print(f"format fuzz {command}: {CLI_CASES} cases, exit statuses {dict(statuses)}")
    assert statuses[0] and statuses[2]
    if command == "score":
        assert statuses[1]


@pytest.mark.parametrize(
    ("content", "message"),
    [  # found by trying every malformed input by hand; each once crashed or was unclear
        (b"", "empty file (0 bytes)"),  # a zero-length .npy ended `score` in an EOFError
        (npy_with_shape(np.zeros((2, 28, 28), np.uint8), (10**9, 28, 28)), "not a plain .npy"),
        (npy_bytes(np.array([None, 1], dtype=object), allow_pickle=True), "not a plain .npy"),
    ],
)
def test_npy_regressions_are_one_line_errors(export_run, tmp_path, capsys, content, message):
    path = tmp_path / "bad.npy"
    path.write_bytes(content)
    out = tmp_path / "scores.csv"
    args = ["--bundle", str(export_run / "export"), "--out", str(out)]
    assert cli_main(["score", str(path), *args]) == 1
    assert message in (tmp_path / "scores.errors.csv").read_text()
    assert cli_main(["score", str(path), "--strict", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {path}") and message in err
    assert (
        cli_main(
            ["encode", str(path), "--bundle", str(export_run / "export")]
            + ["--out", str(tmp_path / "z.npy")]
        )
        == 2
    )
