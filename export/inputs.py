"""Reading digit images from files: the one reader of every input format, in bounded chunks.

    for item in iter_records(["big.npy", "pngs/", "more.csv"], batch_size=4096):
        if isinstance(item, RecordError):
            print(item)                     # "more.csv[17]: row has 783 columns, expected 784"
        else:
            item.source, item.start, item.images   # a Chunk: (k, 28, 28) float32 in [0, 1]
    for chunk in iter_chunks(["t10k-images-idx3-ubyte.gz"], chunk_size=1024): ...  # raises
    images = read_images("digits.npy")               # everything at once: (n, 28, 28) float32

Sources: ``.npy``, ``.npz`` (its only array, its ``images`` array, or ``FILE.npz:KEY``), IDX
(``.gz`` or raw, uint8 or float), a PNG file, a folder of PNGs (sorted by name, each file its own
source), or CSV with 784 pixel columns (an optional header row; a leading ``label`` column is
dropped). Each image may be shaped (784,), (28, 28) or (28, 28, 1). uint8 pixels (and CSV files
holding only integers) are scaled by 1/255; float pixels must already lie in [0, 1].

``iter_records`` never raises for bad data: a bad record, or a source that cannot be read
further, comes back as a ``RecordError`` naming the source, the index and what was expected,
and the read goes on. ``iter_chunks`` and ``read_images`` raise that error as an ``InputError``.
Memory stays bounded by ``batch_size`` whatever the input (or its header) claims: ``.npy`` files
are memory mapped (pages already read are unmapped as the read moves on), ``.npz`` members and
IDX files (gzipped or raw) are read ``batch_size`` rows at a time from their streams, CSV files
row by row, and a header promising more data than its file holds is refused before any read.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import mmap
import tokenize
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SHAPE = (28, 28)
PIXELS = 28 * 28
LAYOUTS = ((PIXELS,), IMAGE_SHAPE, (*IMAGE_SHAPE, 1))
ACCEPTED_LAYOUTS = "(784,), (28, 28) or (28, 28, 1)"
DEFAULT_CHUNK = 1024
# IDX type codes (third byte of the magic number) -> big-endian numpy dtypes
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# what numpy (its .npy header parser tokenizes), zipfile, zlib, csv and Pillow raise for a
# damaged or misnamed file
READ_ERRORS = (
    tokenize.TokenError,
    ValueError,
    OSError,
    EOFError,
    SyntaxError,
    MemoryError,
    OverflowError,
    zipfile.BadZipFile,
    NotImplementedError,  # zipfile: a member's compression method is unknown
    RuntimeError,  # zipfile: a member is encrypted
    zlib.error,
    csv.Error,
)


class InputError(ValueError):
    """Input images that cannot be used: names the source, the index and what was expected."""


@dataclass(frozen=True)
class Chunk:
    """Up to ``batch_size`` validated images of one source, starting at image ``start`` of it."""

    source: str
    start: int
    images: np.ndarray  # (k, 28, 28) float32 in [0, 1]


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


def _one_line(err: BaseException) -> str:
    """A library's error message on one line (numpy's span several)."""
    return " ".join(str(err).split())


def _where(source: str, index: int | None) -> str:
    return source if index is None else f"{source}[{index}]"


def as_images(array: np.ndarray, source: str = "images", start: int = 0) -> np.ndarray:
    """Validate ``array`` and return it as (n, 28, 28) float32 in [0, 1].

    array: one image shaped (784,), (28, 28) or (28, 28, 1), or a batch (n, ...) of them;
    uint8 is scaled by 1/255, floats must be finite and within [0, 1]. ``start`` offsets the
    indices named in errors (the position of ``array[0]`` in its source).
    """
    array = np.asarray(array)
    if array.shape in LAYOUTS:
        array = array[np.newaxis]
    if array.ndim == 0 or array.shape[0] == 0:
        raise InputError(f"{source}: no images (shape {array.shape})")
    per_image = array.shape[1:]
    if per_image not in LAYOUTS:
        raise InputError(
            f"{_where(source, start)}: image shape {per_image}, expected {ACCEPTED_LAYOUTS}"
        )
    if array.dtype == np.uint8:
        return (array.reshape(-1, *IMAGE_SHAPE).astype(np.float32)) / np.float32(255.0)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(
            f"{_where(source, start)}: dtype {array.dtype}, expected uint8 (0-255) or float (0-1)"
        )
    flat = array.reshape(array.shape[0], -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        value = flat[bad][~np.isfinite(flat[bad])][0]
        raise InputError(
            f"{_where(source, start + bad)}: pixel value {value}, expected finite floats in [0, 1]"
        )
    in_range = ((flat >= 0.0) & (flat <= 1.0)).all(axis=1)
    if not in_range.all():
        bad = int(np.flatnonzero(~in_range)[0])
        row = flat[bad]
        value = row[(row < 0.0) | (row > 1.0)][0]
        raise InputError(
            f"{_where(source, start + bad)}: pixel value {value}, expected floats in [0, 1] "
            "(uint8 images are scaled by 1/255; scale float images yourself)"
        )
    return flat.reshape(-1, *IMAGE_SHAPE).astype(np.float32, copy=False)


def validated(part: np.ndarray, source: str, start: int) -> Iterator[Item]:
    """Images ``part`` (k, ...) starting at ``start`` -> Chunks of the valid runs, errors between."""
    try:
        yield Chunk(source, start, as_images(part, source, start))
        return
    except InputError:
        pass  # some rows are bad: find them and keep the rest
    part = np.asarray(part)
    if part.dtype != np.uint8 and not np.issubdtype(part.dtype, np.floating):
        yield RecordError(source, None, f"{source}: dtype {part.dtype}, expected uint8 or float")
        return
    flat = part.reshape(len(part), -1)
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


def _layout_error(shape: tuple[int, ...], dtype: np.dtype, source: str) -> str | None:
    """Why an array of ``shape`` and ``dtype`` cannot hold images, or None if it can."""
    if len(shape) < 2 and shape not in LAYOUTS:
        return (
            f"{source}: array of shape {shape}, expected (n, ...) images shaped {ACCEPTED_LAYOUTS}"
        )
    if shape not in LAYOUTS and shape[0] == 0:
        return f"{source}: no images (shape {shape})"
    first = source if shape in LAYOUTS else f"{source}[0]"  # the first image shows the problem
    if shape not in LAYOUTS and shape[1:] not in LAYOUTS:
        return f"{first}: image shape {shape[1:]}, expected {ACCEPTED_LAYOUTS}"
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        return f"{first}: dtype {dtype}, expected uint8 (0-255) or float (0-1)"
    return None


def _rows(shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(number of images, shape of one image) of an array that passed ``_layout_error``."""
    return (1, shape) if shape in LAYOUTS else (shape[0], shape[1:])


# -- arrays and streams -------------------------------------------------------------------------


def _array_items(array: np.ndarray, source: str, batch_size: int) -> Iterator[Item]:
    """An in-memory or memory-mapped array, ``batch_size`` images at a time."""
    problem = _layout_error(array.shape, array.dtype, source)
    if problem:
        yield RecordError(source, None, problem)
        return
    if array.shape in LAYOUTS:
        yield from validated(np.asarray(array)[np.newaxis], source, 0)
        return
    released = 0
    for start in range(0, array.shape[0], batch_size):
        yield from validated(np.asarray(array[start : start + batch_size]), source, start)
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
    end = begin + min(rows, array.shape[0]) * array.itemsize * math.prod(array.shape[1:])
    end -= end % mmap.PAGESIZE
    if end > released:
        handle.madvise(mmap.MADV_DONTNEED, released, end - released)
    return max(end, released)


def _stream_items(
    fh: io.BufferedIOBase, shape: tuple[int, ...], dtype: np.dtype, source: str, batch_size: int
) -> Iterator[Item]:
    """Rows of a (n, ...) array (shape checked by ``_layout_error``) read from ``fh``
    ``batch_size`` at a time; a stream that ends early is one RecordError at the first lost row."""
    count, image_shape = _rows(shape)
    row_bytes = math.prod(image_shape) * dtype.itemsize
    native = dtype.newbyteorder("=")
    for start in range(0, count, batch_size):
        rows = min(batch_size, count - start)
        try:
            data = fh.read(rows * row_bytes)
        except READ_ERRORS as err:
            yield RecordError(
                source, start, f"{source}[{start}]: cannot read further ({_one_line(err)})"
            )
            return
        whole = len(data) // row_bytes
        if whole:
            part = np.frombuffer(data, dtype=dtype, count=whole * row_bytes // dtype.itemsize)
            yield from validated(part.astype(native).reshape(whole, *image_shape), source, start)
        if whole < rows:
            yield RecordError(
                source,
                start + whole,
                f"{source}[{start + whole}]: file ends after {start + whole} images, "
                f"its header promises {count} (truncated)",
            )
            return


# -- formats ------------------------------------------------------------------------------------


def open_maybe_gzip(path: Path) -> io.BufferedIOBase:
    """``path`` opened for binary reading, through gzip when it starts with gzip's magic."""
    with path.open("rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else path.open("rb")


def read_idx_header(fh: io.BufferedIOBase, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and dimensions of the IDX stream ``fh``, left at its first data byte."""
    magic = fh.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES:
        raise InputError(f"{path}: not an IDX file (bad magic number {magic[:4].hex()})")
    dtype, ndim = IDX_DTYPES[magic[2]], magic[3]
    dims_bytes = fh.read(4 * ndim)
    if ndim == 0 or len(dims_bytes) < 4 * ndim:
        raise InputError(f"{path}: IDX header truncated")
    dims = tuple(int.from_bytes(dims_bytes[4 * i : 4 * i + 4], "big") for i in range(ndim))
    if ndim == 1:
        raise InputError(f"{path}: IDX file of shape {dims} holds labels, expected images")
    return dtype, dims


def _idx_items(path: Path, source: str, batch_size: int) -> Iterator[Item]:
    """An IDX file (gzipped or raw), read ``batch_size`` images at a time."""
    with open_maybe_gzip(path) as fh:
        dtype, dims = read_idx_header(fh, path)
        problem = _layout_error(dims, dtype, source)
        if problem:
            yield RecordError(source, None, problem)
            return
        if not isinstance(fh, gzip.GzipFile):  # a raw file's size is known: check the promise
            promised = 4 + 4 * len(dims) + math.prod(dims) * dtype.itemsize
            if path.stat().st_size != promised:
                yield RecordError(
                    source,
                    None,
                    f"{path}: IDX header promises {dims} ({promised} bytes), "
                    f"the file holds {path.stat().st_size} bytes",
                )
                return
        yield from _stream_items(fh, dims, dtype, source, batch_size)
        if fh.read(1):
            message = f"{path}: bytes beyond the {dims[0]} images its IDX header promises"
            yield RecordError(source, None, message)


def choose_npz_key(path: Path, names: list[str], key: str | None) -> str:
    """The array of an .npz to read: ``key`` if given, else its only array, else ``images``."""
    if key is None:
        if len(names) == 1:
            return names[0]
        if "images" in names:
            return "images"
        example = f" (e.g. {path}:{names[0]})" if names else ""
        raise InputError(f"{path}: holds {names}; name the array as {path}:KEY{example}")
    if key not in names:
        raise InputError(f"{path}: has no array {key!r}; it holds {names}")
    return key


def _npy_header(fh: io.BufferedIOBase, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy stream ``fh``, left at its first data byte."""
    version = np.lib.format.read_magic(fh)
    read_header = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read_header is None:
        raise InputError(f"{where}: unsupported .npy format version {version}")
    shape, fortran, dtype = read_header(fh)
    if dtype.hasobject:
        raise InputError(f"{where}: object array, expected numbers (pickles are never loaded)")
    return tuple(shape), fortran, dtype


def _npz_items(path: Path, key: str | None, source: str, batch_size: int) -> Iterator[Item]:
    """One array of an .npz, streamed from its zip member (stored or deflated)."""
    with zipfile.ZipFile(path) as archive:
        names = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
        key = choose_npz_key(path, names, key)
        member = archive.getinfo(f"{key}.npy")
        with archive.open(member) as fh:
            shape, fortran, dtype = _npy_header(fh, f"{path}:{key}")
            problem = _layout_error(shape, dtype, source)
            if problem:
                yield RecordError(source, None, problem)
                return
            promised = math.prod(shape) * dtype.itemsize
            if promised > member.file_size:  # refused before anything is allocated
                yield RecordError(
                    source,
                    None,
                    f"{path}:{key}: header promises {shape} ({promised} bytes), "
                    f"the member holds {member.file_size} bytes (truncated)",
                )
                return
            if fortran and len(shape) > 1:
                # column-major rows are not contiguous in the stream: load this one whole
                with np.load(path, allow_pickle=False) as npz:
                    yield from _array_items(npz[key], source, batch_size)
                return
            yield from _stream_items(fh, shape, dtype, source, batch_size)


def _npy_items(path: Path, source: str, batch_size: int) -> Iterator[Item]:
    """A .npy file, memory mapped (a 0-d or empty array is refused by its layout)."""
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes), expected a .npy array")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as err:
        raise InputError(f"{path}: not a plain .npy array ({_one_line(err)})") from None
    yield from _array_items(array, source, batch_size)


def npy_shape(path: Path) -> tuple[int, ...] | None:
    """The shape in a .npy file's header, or None if it is not a readable .npy (a header that
    promises more data than the file holds is not)."""
    try:
        with path.open("rb") as fh:
            shape, _, dtype = _npy_header(fh, str(path))
            data_bytes = path.stat().st_size - fh.tell()
    except (*READ_ERRORS, InputError):
        return None
    return shape if math.prod(shape) * dtype.itemsize <= data_bytes else None


def read_png(path: Path) -> np.ndarray:
    """A 28x28 grayscale (or RGB, converted) PNG -> (28, 28) uint8; InputError otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.size != IMAGE_SHAPE[::-1]:
                raise InputError(f"{path}: image is {img.size[0]}x{img.size[1]}, expected 28x28")
            if img.mode in ("I", "I;16", "F"):
                raise InputError(f"{path}: {img.mode}-mode PNG, expected 8-bit grayscale or RGB")
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                # transparent pixels count as black, the MNIST background
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (0, 0, 0, 255))
                img = Image.alpha_composite(background, img)
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a readable image") from None
    except (*READ_ERRORS, Image.DecompressionBombError) as err:
        raise InputError(
            f"{path}: cannot read it, damaged or truncated? ({_one_line(err)})"
        ) from None


def _png_item(path: Path) -> Item:
    try:
        return Chunk(str(path), 0, as_images(read_png(path), str(path)))
    except InputError as err:
        return RecordError(str(path), 0, str(err))


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


def _csv_row(row: list[str], integers: bool) -> np.ndarray | str:
    """One CSV row -> its (784,) pixels (uint8 for an integer file, else float64), or the
    problem with it."""
    if len(row) != PIXELS:
        return f"row has {len(row)} columns, expected {PIXELS} pixels"
    try:
        values = np.array(row, dtype=np.float64)
    except ValueError:
        return "non-numeric pixel, expected numbers"
    if not integers:
        return values
    if ((values < 0) | (values > 255)).any():
        return "integer pixel outside 0-255, expected uint8 values (or floats in [0, 1])"
    return values.astype(np.uint8)


def _csv_items(path: Path, source: str, batch_size: int) -> Iterator[Item]:
    """CSV rows of 784 pixels; a file of integers only is uint8 (scaled by 1/255), else floats.

    Two passes, both row by row: the first decides integers vs floats for the whole file (it
    stops at the first fractional number), the second parses and validates.
    """
    integers = not any(_is_fraction(c) for row in _csv_rows(path) for c in row)
    batch: list[np.ndarray] = []
    batch_start = 0
    index = -1
    for index, row in enumerate(_csv_rows(path)):
        values = _csv_row(row, integers)
        if isinstance(values, str):
            if batch:
                yield from validated(np.stack(batch), source, batch_start)
                batch.clear()
            yield RecordError(source, index, f"{source}[{index}]: {values}")
            batch_start = index + 1
            continue
        batch.append(values)
        if len(batch) == batch_size:
            yield from validated(np.stack(batch), source, batch_start)
            batch.clear()
            batch_start = index + 1
    if batch:
        yield from validated(np.stack(batch), source, batch_start)
    if index < 0:
        yield RecordError(source, None, f"{path}: no images (empty CSV)")


# -- sources ------------------------------------------------------------------------------------


def split_source(name: str) -> tuple[Path, str | None]:
    """``"run/data/mnist.npz:test_images"`` -> (Path("run/data/mnist.npz"), "test_images")."""
    path = Path(name)
    if not path.exists() and ".npz:" in name:
        file, key = name.rsplit(":", 1)
        return Path(file), key
    return path, None


def png_files(folder: Path) -> list[Path]:
    """The ``.png`` files of ``folder``, sorted by name; InputError if there are none."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise InputError(f"{folder}: folder holds no .png files")
    return files


def _file_items(path: Path, key: str | None, source: str, batch_size: int) -> Iterator[Item]:
    """Every item of one file, by its suffix (IDX has none of its own)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        yield from _npy_items(path, source, batch_size)
    elif suffix == ".npz":
        yield from _npz_items(path, key, source, batch_size)
    elif suffix == ".png":
        yield _png_item(path)
    elif suffix == ".csv":
        yield from _csv_items(path, source, batch_size)
    else:  # t10k-images-idx3-ubyte(.gz), *.idx, *.idx3-ubyte ...
        yield from _idx_items(path, source, batch_size)


def _guarded(items: Iterator[Item], source: str, path: Path) -> Iterator[Item]:
    """``items``, with any failure to read further turned into a last RecordError."""
    try:
        yield from items
    except InputError as err:
        yield RecordError(source, None, str(err))
    except READ_ERRORS as err:
        reason = f"{type(err).__name__}: {_one_line(err)}"
        message = f"{path}: cannot read it, damaged or truncated? ({reason})"
        yield RecordError(source, None, message)


def iter_records(sources: str | Path | Iterable[str | Path], batch_size: int) -> Iterator[Item]:
    """Chunks of valid images (at most ``batch_size`` each) and RecordErrors, in input order.

    sources: files (``FILE.npz:KEY`` names an array of an .npz) or folders of PNGs, each PNG its
    own source of one image. Nothing is raised for bad data: it comes back as a RecordError.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if isinstance(sources, str | Path):
        sources = [sources]
    for name in sources:
        source = str(name)
        path, key = split_source(source)
        if path.is_dir():
            try:
                files = png_files(path)
            except InputError as err:
                yield RecordError(source, None, str(err))
                continue
            for png in files:
                yield _png_item(png)
        elif not path.is_file():
            yield RecordError(source, None, f"{path}: no such file or folder")
        else:
            yield from _guarded(_file_items(path, key, source, batch_size), source, path)


def iter_chunks(
    sources: str | Path | Iterable[str | Path], chunk_size: int = DEFAULT_CHUNK
) -> Iterator[Chunk]:
    """The Chunks of ``iter_records``; the first bad record raises it as an ``InputError``."""
    if isinstance(sources, str | Path):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise InputError("no input given")
    for item in iter_records(sources, chunk_size):
        if isinstance(item, RecordError):
            raise InputError(item.message)
        yield item


def read_images(sources: str | Path | Iterable[str | Path]) -> np.ndarray:
    """All images of ``sources`` as one (n, 28, 28) float32 array in [0, 1]."""
    return np.concatenate([chunk.images for chunk in iter_chunks(sources)], axis=0)


def count_records(sources: Iterable[str | Path]) -> int | None:
    """The number of images in ``sources`` from their headers alone; None where unknown (CSV,
    .npz, an unreadable header)."""
    total = 0
    for name in sources:
        path, _ = split_source(str(name))
        suffix = path.suffix.lower()
        try:
            if path.is_dir():
                total += len([p for p in path.iterdir() if p.suffix.lower() == ".png"])
            elif suffix == ".png":
                total += 1
            elif suffix in (".npz", ".csv"):
                return None
            elif suffix == ".npy":
                shape = npy_shape(path)
                if shape is None or _layout_error(shape, np.dtype(np.uint8), "") is not None:
                    return None
                total += _rows(shape)[0]
            else:
                with open_maybe_gzip(path) as fh:
                    total += read_idx_header(fh, path)[1][0]
        except (*READ_ERRORS, InputError):
            return None
    return total


# -- units of work for parallel readers ---------------------------------------------------------

Unit = tuple[str, int | None]  # (source, first row of a .npy slice, or None: the whole source)


def reading_units(sources: Iterable[str], batch_size: int) -> list[Unit]:
    """Independent pieces of reading work: (source, start) slices of each .npy of images,
    (png, None) for each PNG of a folder, (source, None) for every other source (read whole)."""
    units: list[Unit] = []
    for source in sources:
        path, _ = split_source(source)
        if path.is_dir():
            try:
                units += [(str(png), None) for png in png_files(path)]
            except (InputError, OSError):
                units.append((source, None))  # reported as a record error when read
            continue
        shape = npy_shape(path) if path.suffix.lower() == ".npy" and path.is_file() else None
        if shape is not None and len(shape) > 1 and shape[1:] in LAYOUTS and shape[0] > 0:
            units += [(source, start) for start in range(0, shape[0], batch_size)]
            continue
        units.append((source, None))
    return units


def read_unit(unit: Unit, batch_size: int) -> Iterator[Item]:
    """The items of one reading unit of ``reading_units``."""
    source, start = unit
    if start is None:
        yield from iter_records([source], batch_size)
        return
    path, _ = split_source(source)

    def rows() -> Iterator[Item]:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
        problem = _layout_error(array.shape, array.dtype, source)
        if problem:
            yield RecordError(source, None, problem)
            return
        yield from validated(np.asarray(array[start : start + batch_size]), source, start)

    yield from _guarded(rows(), source, path)
