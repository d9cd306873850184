"""Reading digit images from files into validated float32 chunks, one chunk at a time.

    for chunk in iter_chunks(["t10k-images-idx3-ubyte.gz", "pngs/"], chunk_size=1024):
        chunk.source, chunk.start, chunk.images      # str, int, (k, 28, 28) float32 in [0, 1]
    images = read_images("digits.npy")               # everything at once: (n, 28, 28) float32

Sources: ``.npy``, ``.npz`` (its only array, its ``images`` array, or ``FILE.npz:KEY``), IDX
(``.gz`` or raw, uint8 or float), a PNG file, a folder of PNGs (sorted by name, each file its own
source), or CSV with 784 pixel columns (an optional header row; a leading ``label`` column is
dropped). Each image may be shaped (784,), (28, 28) or (28, 28, 1). uint8 pixels (and CSV files
holding only integers) are scaled by 1/255; float pixels must already lie in [0, 1]. Every
problem raises ``InputError`` naming the source, the index of the offending image and what was
expected.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SHAPE = (28, 28)
PIXELS = 28 * 28
DEFAULT_CHUNK = 1024
ACCEPTED_LAYOUTS = "(784,), (28, 28) or (28, 28, 1)"
# IDX type codes (third byte of the magic number) -> big-endian numpy dtypes
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class InputError(ValueError):
    """Input images that cannot be used: names the source, the index and what was expected."""


@dataclass(frozen=True)
class Chunk:
    """Up to ``chunk_size`` validated images of one source, starting at image ``start`` of it."""

    source: str
    start: int
    images: np.ndarray  # (k, 28, 28) float32 in [0, 1]


def _where(source: str, index: int | None) -> str:
    return source if index is None else f"{source}[{index}]"


def as_images(array: np.ndarray, source: str = "images", start: int = 0) -> np.ndarray:
    """Validate ``array`` and return it as (n, 28, 28) float32 in [0, 1].

    array: one image shaped (784,), (28, 28) or (28, 28, 1), or a batch (n, ...) of them;
    uint8 is scaled by 1/255, floats must be finite and within [0, 1]. ``start`` offsets the
    indices named in errors (the position of ``array[0]`` in its source).
    """
    array = np.asarray(array)
    if array.shape in ((PIXELS,), IMAGE_SHAPE, (*IMAGE_SHAPE, 1)):
        array = array[np.newaxis]
    if array.ndim == 0 or array.shape[0] == 0:
        raise InputError(f"{source}: no images (shape {array.shape})")
    per_image = array.shape[1:]
    if per_image not in ((PIXELS,), IMAGE_SHAPE, (*IMAGE_SHAPE, 1)):
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


def _chunks_of(array: np.ndarray, source: str, chunk_size: int) -> Iterator[Chunk]:
    """Validate a (possibly memory-mapped) array chunk by chunk."""
    array_shape = np.shape(array)
    single = array_shape in ((PIXELS,), IMAGE_SHAPE, (*IMAGE_SHAPE, 1))
    if single or len(array_shape) == 0 or array_shape[0] == 0:
        yield Chunk(source, 0, as_images(np.asarray(array), source))
        return
    for start in range(0, array_shape[0], chunk_size):
        part = np.asarray(array[start : start + chunk_size])
        yield Chunk(source, start, as_images(part, source, start))


def _open_maybe_gzip(path: Path) -> io.BufferedIOBase:
    with path.open("rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else path.open("rb")


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or raw) -> its array (n, 28, 28) in the file's own dtype."""
    with _open_maybe_gzip(path) as fh:
        try:
            data = fh.read()
        except (OSError, EOFError) as err:
            raise InputError(f"{path}: cannot read ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise InputError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{path}: IDX header truncated")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise InputError(
            f"{path}: IDX header promises {dims} ({expected} bytes), "
            f"the file holds {len(data) - header} bytes"
        )
    if ndim == 1:
        raise InputError(f"{path}: IDX file of shape {dims} holds labels, expected images")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array if dtype == np.uint8 else array.astype(dtype.newbyteorder("="))


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


def _read_npz(path: Path, key: str | None) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        return npz[choose_npz_key(path, list(npz.files), key)]


def _read_png(path: Path) -> np.ndarray:
    """A 28x28 grayscale (or RGB, converted) PNG -> (28, 28) uint8."""
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


def _parse_csv(path: Path) -> np.ndarray:
    """CSV rows of 784 pixels -> (n, 784) uint8 if every cell is an integer, else float64."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise InputError(f"{path}: no images (empty CSV)")
    header = None
    try:
        float(rows[0][0])
    except ValueError:
        header, rows = [c.strip().lower() for c in rows[0]], rows[1:]
    if not rows:
        raise InputError(f"{path}: no images (only a header row)")
    drop_label = header is not None and header[0] == "label" and len(header) == PIXELS + 1
    cells = [r[1:] if drop_label else r for r in rows]
    for i, row in enumerate(cells):
        if len(row) != PIXELS:
            raise InputError(f"{path}[{i}]: row has {len(row)} columns, expected {PIXELS} pixels")
    integers = all(c.strip().lstrip("-").isdigit() for row in cells for c in row)
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        for i, row in enumerate(cells):
            try:
                np.array(row, dtype=np.float64)
            except ValueError:
                raise InputError(f"{path}[{i}]: non-numeric pixel, expected numbers") from None
        raise
    if integers:
        bad_rows = np.flatnonzero(((values < 0) | (values > 255)).any(axis=1))
        if bad_rows.size:
            i = int(bad_rows[0])
            raise InputError(
                f"{path}[{i}]: integer pixel outside 0-255, expected uint8 values "
                "(or floats in [0, 1])"
            )
        return values.astype(np.uint8)
    return values


def _split_key(name: str) -> tuple[Path, str | None]:
    """``"run/data/mnist.npz:test_images"`` -> (Path("run/data/mnist.npz"), "test_images")."""
    path = Path(name)
    if not path.exists() and ".npz:" in name:
        file, key = name.rsplit(":", 1)
        return Path(file), key
    return path, None


def _png_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise InputError(f"{folder}: folder holds no .png files")
    return files


def _read_source(path: Path, key: str | None) -> np.ndarray:
    """One file -> its raw array (n, ...) before validation."""
    suffixes = [s.lower() for s in path.suffixes]
    suffix = suffixes[-1] if suffixes else ""
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False, mmap_mode="r")
        except ValueError as err:
            raise InputError(f"{path}: not a plain .npy array ({err})") from None
    if suffix == ".npz":
        return _read_npz(path, key)
    if suffix == ".png":
        return _read_png(path)
    if suffix == ".csv":
        return _parse_csv(path)
    # IDX has no fixed extension: t10k-images-idx3-ubyte(.gz), *.idx, *.idx3-ubyte ...
    return _read_idx(path)


def _read_checked(path: Path, key: str | None) -> np.ndarray:
    """``_read_source``, with a damaged file (truncated, not what its name says) an InputError."""
    try:
        return _read_source(path, key)
    except InputError:
        raise
    except (ValueError, OSError, EOFError, SyntaxError, zipfile.BadZipFile) as err:
        # numpy, zipfile and Pillow each report a truncated file in their own way
        raise InputError(f"{path}: cannot read it, damaged or truncated? ({err})") from None


def iter_chunks(
    sources: str | Path | Iterable[str | Path], chunk_size: int = DEFAULT_CHUNK
) -> Iterator[Chunk]:
    """Yield validated ``Chunk``s of every source in order; folders expand to their PNGs."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if isinstance(sources, str | Path):
        sources = [sources]
    any_source = False
    for name in sources:
        any_source = True
        path, key = _split_key(str(name))
        if path.is_dir():
            for png in _png_files(path):
                yield Chunk(str(png), 0, as_images(_read_checked(png, None), str(png)))
            continue
        if not path.is_file():
            raise InputError(f"{path}: no such file or folder")
        label = str(name)
        yield from _chunks_of(_read_checked(path, key), label, chunk_size)
    if not any_source:
        raise InputError("no input given")


def read_images(sources: str | Path | Iterable[str | Path]) -> np.ndarray:
    """All images of ``sources`` as one (n, 28, 28) float32 array in [0, 1]."""
    return np.concatenate([chunk.images for chunk in iter_chunks(sources)], axis=0)
