"""Streaming reads for scoring inputs of any size: every source is read in bounded chunks, and a
bad record is reported as a ``RecordError`` instead of ending the read.

    for item in iter_records(["big.npy", "pngs/", "more.csv"], batch_size=4096):
        if isinstance(item, RecordError):
            print(item)                     # "more.csv[17]: row has 783 columns, expected 784"
        else:
            item.source, item.start, item.images   # a Chunk: consecutive valid images

Memory stays bounded by ``batch_size`` whatever the input size: ``.npy`` files are memory
mapped (the pages already read are unmapped as the read moves on), ``.npz`` members and IDX files (gzipped or raw) are read ``batch_size`` rows at a time
from their streams, CSV files row by row. Only a single PNG is one record by nature. The
accepted layouts and pixel rules are those of ``export.inputs``.
"""

from __future__ import annotations

import csv
import gzip
import io
import mmap
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.inputs import (
    ACCEPTED_LAYOUTS,
    IDX_DTYPES,
    IMAGE_SHAPE,
    PIXELS,
    Chunk,
    InputError,
    _png_files,
    _read_png,
    _split_key,
    as_images,
    choose_npz_key,
)

LAYOUTS = ((PIXELS,), IMAGE_SHAPE, (*IMAGE_SHAPE, 1))


@dataclass(frozen=True)
class RecordError:
    """A record (``index`` in ``source``) or a whole source (``index`` None) that was skipped."""

    source: str
    index: int | None
    message: str  # the full line, naming the source and index

    def __str__(self) -> str:
        return self.message


Item = Chunk | RecordError


# -- validation ---------------------------------------------------------------------------------


def _layout_error(shape: tuple[int, ...], dtype: np.dtype, source: str) -> str | None:
    """Why an array of ``shape`` and ``dtype`` cannot hold images, or None if it can."""
    if shape in LAYOUTS:
        return None
    if len(shape) == 0 or shape[1:] not in LAYOUTS:
        return (
            f"{source}: array of shape {shape}, expected (n, ...) images shaped {ACCEPTED_LAYOUTS}"
        )
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        return f"{source}: dtype {dtype}, expected uint8 (0-255) or float (0-1)"
    return None


def _validated(part: np.ndarray, source: str, start: int) -> Iterator[Item]:
    """Images ``part`` (k, ...) starting at ``start`` -> Chunks of the valid runs, errors between."""
    try:
        yield Chunk(source, start, as_images(part, source, start))
        return
    except InputError:
        pass  # some rows are bad: find them and keep the rest
    flat = np.asarray(part).reshape(len(part), -1)
    good = np.isfinite(flat).all(axis=1)
    good[good] = ((flat[good] >= 0.0) & (flat[good] <= 1.0)).all(axis=1)
    run = None
    for i in range(len(part) + 1):
        if i < len(part) and good[i]:
            run = i if run is None else run
            continue
        if run is not None:
            yield Chunk(source, start + run, as_images(part[run:i], source, start + run))
            run = None
        if i < len(part):
            try:
                as_images(part[i : i + 1], source, start + i)
            except InputError as err:
                yield RecordError(source, start + i, str(err))


def _array_items(array: np.ndarray, source: str, batch_size: int) -> Iterator[Item]:
    """An in-memory or memory-mapped array, ``batch_size`` images at a time."""
    problem = _layout_error(array.shape, array.dtype, source)
    if problem:
        yield RecordError(source, None, problem)
        return
    if array.shape in LAYOUTS:
        yield from _validated(np.asarray(array)[np.newaxis], source, 0)
        return
    if array.shape[0] == 0:
        yield RecordError(source, None, f"{source}: no images (shape {array.shape})")
        return
    released = 0
    for start in range(0, array.shape[0], batch_size):
        yield from _validated(np.asarray(array[start : start + batch_size]), source, start)
        released = _release_pages(array, start + batch_size, released)


def _release_pages(array: np.ndarray, rows: int, released: int) -> int:
    """Unmap the pages of a memory-mapped array's first ``rows`` rows from this process.

    Pages of a file mapping that were read count in the process's RSS until unmapped, so
    without this a 1 GB .npy read to its end keeps 1 GB resident. The pages stay in the OS page
    cache, and a later read of them faults them back in from the file: nothing is lost.
    Returns the byte offset released so far (pass it back in).
    """
    handle = getattr(array, "_mmap", None)
    if handle is None or not hasattr(handle, "madvise"):
        return released
    begin = array.offset % mmap.ALLOCATIONGRANULARITY  # where numpy's mapping puts row 0
    end = begin + min(rows, array.shape[0]) * array.itemsize * int(np.prod(array.shape[1:]))
    end -= end % mmap.PAGESIZE
    if end > released:
        handle.madvise(mmap.MADV_DONTNEED, released, end - released)
    return max(end, released)


def _stream_items(
    fh: io.BufferedIOBase,
    shape: tuple[int, ...],
    dtype: np.dtype,
    source: str,
    batch_size: int,
) -> Iterator[Item]:
    """Rows of a (n, ...) array read from the stream ``fh`` ``batch_size`` at a time."""
    problem = _layout_error(shape, dtype, source)
    if problem:
        yield RecordError(source, None, problem)
        return
    if shape in LAYOUTS:
        shape = (1, *shape)
    if shape[0] == 0:
        yield RecordError(source, None, f"{source}: no images (shape {shape})")
        return
    row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
    native = dtype.newbyteorder("=")
    for start in range(0, shape[0], batch_size):
        rows = min(batch_size, shape[0] - start)
        try:
            data = fh.read(rows * row_bytes)
        except (OSError, EOFError, zipfile.BadZipFile) as err:
            yield RecordError(source, start, f"{source}[{start}]: cannot read further ({err})")
            return
        whole = len(data) // row_bytes
        if whole:
            part = np.frombuffer(data, dtype=dtype, count=whole * row_bytes // dtype.itemsize)
            images = part.astype(native, copy=False).reshape(whole, *shape[1:])
            yield from _validated(images, source, start)
        if whole < rows:
            yield RecordError(
                source,
                start + whole,
                f"{source}[{start + whole}]: file ends after {start + whole} images, "
                f"its header promises {shape[0]} (truncated)",
            )
            return


# -- formats ------------------------------------------------------------------------------------


def _npz_items(path: Path, key: str | None, source: str, batch_size: int) -> Iterator[Item]:
    """One array of an .npz, streamed from its zip member (stored or deflated)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        yield RecordError(source, None, f"{path}: not a readable .npz ({err})")
        return
    with archive:
        names = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
        try:
            key = choose_npz_key(path, names, key)
        except InputError as err:
            yield RecordError(source, None, str(err))
            return
        with archive.open(f"{key}.npy") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read_header is None:
                    raise ValueError(f"unsupported .npy format version {version}")
                shape, fortran, dtype = read_header(fh)
            except ValueError as err:
                yield RecordError(source, None, f"{path}:{key}: not a plain array ({err})")
                return
            if dtype.hasobject:
                yield RecordError(source, None, f"{path}:{key}: object array, expected numbers")
                return
            if fortran and len(shape) > 1:
                # column-major rows are not contiguous in the stream: load this one whole
                with np.load(path, allow_pickle=False) as npz:
                    yield from _array_items(npz[key], source, batch_size)
                return
            yield from _stream_items(fh, tuple(shape), dtype, source, batch_size)


def _idx_items(path: Path, source: str, batch_size: int) -> Iterator[Item]:
    """An IDX file (gzipped or raw), read ``batch_size`` images at a time."""
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gzipped else path.open("rb") as fh:
        try:
            magic = fh.read(4)
        except (OSError, EOFError) as err:
            yield RecordError(source, None, f"{path}: cannot read ({err})")
            return
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES:
            message = f"{path}: not an IDX file (bad magic number {magic[:4].hex()})"
            yield RecordError(source, None, message)
            return
        dtype, ndim = IDX_DTYPES[magic[2]], magic[3]
        dims_bytes = fh.read(4 * ndim)
        if len(dims_bytes) < 4 * ndim:
            yield RecordError(source, None, f"{path}: IDX header truncated")
            return
        dims = tuple(int.from_bytes(dims_bytes[4 * i : 4 * i + 4], "big") for i in range(ndim))
        if ndim == 1:
            message = f"{path}: IDX file of shape {dims} holds labels, expected images"
            yield RecordError(source, None, message)
            return
        yield from _stream_items(fh, dims, dtype, source, batch_size)
        if fh.read(1):
            message = f"{path}: bytes beyond the {dims[0]} images its IDX header promises"
            yield RecordError(source, None, message)


def _csv_rows(path: Path) -> Iterator[list[str]]:
    """Non-blank data rows of a CSV, without its header row and without a ``label`` column."""
    with path.open(newline="") as fh:
        first = True
        drop_label = False
        for row in csv.reader(fh):
            if not any(cell.strip() for cell in row):
                continue
            if first:
                first = False
                try:
                    float(row[0])
                except ValueError:  # a header row
                    header = [c.strip().lower() for c in row]
                    drop_label = header[0] == "label" and len(header) == PIXELS + 1
                    continue
            yield row[1:] if drop_label else row


def _is_fraction(cell: str) -> bool:
    """A number that is not an integer ("0.5", "1e-3", "nan"); non-numbers are bad records."""
    if cell.strip().lstrip("-").isdigit():
        return False
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _csv_items(path: Path, source: str, batch_size: int) -> Iterator[Item]:
    """CSV rows of 784 pixels; a file of integers only is uint8 (scaled by 1/255), else floats.

    Two passes, both row by row: the first decides integers vs floats for the whole file (it
    stops at the first fractional number), the second parses and validates.
    """
    integers = not any(_is_fraction(c) for row in _csv_rows(path) for c in row)
    batch: list[np.ndarray] = []
    batch_start = 0
    index = -1

    def flush() -> Iterator[Item]:
        if batch:
            yield from _validated(np.stack(batch), source, batch_start)
            batch.clear()

    for index, row in enumerate(_csv_rows(path)):
        problem = None
        if len(row) != PIXELS:
            problem = f"row has {len(row)} columns, expected {PIXELS} pixels"
        else:
            try:
                values = np.array(row, dtype=np.float64)
            except ValueError:
                problem = "non-numeric pixel, expected numbers"
            else:
                if integers:
                    if ((values < 0) | (values > 255)).any():
                        problem = (
                            "integer pixel outside 0-255, expected uint8 values "
                            "(or floats in [0, 1])"
                        )
                    values = values.astype(np.uint8)
        if problem:
            yield from flush()
            batch_start = index + 1
            yield RecordError(source, index, f"{source}[{index}]: {problem}")
            continue
        batch.append(values)
        if len(batch) == batch_size:
            yield from flush()
            batch_start = index + 1
    yield from flush()
    if index < 0:
        yield RecordError(source, None, f"{path}: no images (empty CSV)")


def _png_item(path: Path) -> Item:
    try:
        return Chunk(str(path), 0, as_images(_read_png(path), str(path)))
    except (InputError, OSError) as err:
        return RecordError(str(path), 0, str(err))


def iter_records(sources: str | Path | Iterable[str | Path], batch_size: int) -> Iterator[Item]:
    """Chunks of valid images (at most ``batch_size`` each) and RecordErrors, in input order.

    sources: files or folders as in ``export.inputs.iter_chunks``; a folder's PNGs are each their
    own source of one image. Nothing is raised for bad data: it comes back as a RecordError.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if isinstance(sources, str | Path):
        sources = [sources]
    for name in sources:
        source = str(name)
        path, key = _split_key(source)
        if path.is_dir():
            try:
                files = _png_files(path)
            except InputError as err:
                yield RecordError(source, None, str(err))
                continue
            for png in files:
                yield _png_item(png)
            continue
        if not path.is_file():
            yield RecordError(source, None, f"{path}: no such file or folder")
            continue
        suffix = path.suffix.lower()
        if suffix == ".npy":
            try:
                array = np.load(path, allow_pickle=False, mmap_mode="r")
            except (ValueError, OSError) as err:
                yield RecordError(source, None, f"{path}: not a plain .npy array ({err})")
                continue
            yield from _array_items(array, source, batch_size)
        elif suffix == ".npz":
            yield from _npz_items(path, key, source, batch_size)
        elif suffix == ".png":
            yield _png_item(path)
        elif suffix == ".csv":
            yield from _csv_items(path, source, batch_size)
        else:
            yield from _idx_items(path, source, batch_size)


def count_records(sources: Iterable[str | Path]) -> int | None:
    """The number of images in ``sources`` from their headers alone; None where unknown (CSV)."""
    total = 0
    for name in sources:
        path, key = _split_key(str(name))
        try:
            if path.is_dir():
                total += len([p for p in path.iterdir() if p.suffix.lower() == ".png"])
            elif path.suffix.lower() == ".npy":
                shape = np.load(path, allow_pickle=False, mmap_mode="r").shape
                total += 1 if shape in LAYOUTS else int(shape[0])
            elif path.suffix.lower() == ".png":
                total += 1
            elif path.suffix.lower() in (".npz", ".csv"):
                return None
            else:
                with path.open("rb") as probe:
                    gzipped = probe.read(2) == b"\x1f\x8b"
                with gzip.open(path, "rb") if gzipped else path.open("rb") as fh:
                    header = fh.read(8)
                total += int.from_bytes(header[4:8], "big")
        except (OSError, ValueError, EOFError):
            return None
    return total
