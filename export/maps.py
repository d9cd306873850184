"""Pixel maps of scored images: where each image is anomalous, written while scoring streams.

    with MapWriter(Path("maps/")) as maps:              # python -m export score ... --maps maps/
        maps.add("big.npy", sources, index, scores, images, pixel_maps)
        maps.commit()

For every input (a file, or a folder of PNGs) ``DIR/NAME.maps.npy`` holds the per-pixel scores
of its scored images, (k, 28, 28) float16, row j for the input's j-th row in the score file (bad
records have no row in either); ``DIR/most_anomalous.png`` shows the highest-scoring images,
each beside its map (scaled to its own maximum), and ``DIR/most_anomalous.csv`` names them.
Each ``.npy`` is streamed to a temporary file and renamed into place at ``commit``; memory
stays that of one batch plus the few images of the mosaic.
"""

from __future__ import annotations

import csv
import heapq
import itertools
from pathlib import Path
from typing import IO

import numpy as np

from export.files import AtomicFile, atomic_path
from export.images import save_grid

MOSAIC = 32  # images in most_anomalous.png (each beside its map)
MAP_DTYPE = np.dtype("<f2")
_HEADER_ROOM = 10**18  # the header is written for a count this wide, then rewritten in place


def _npy_header(rows: int) -> bytes:
    """A version 1.0 .npy header for (rows, 28, 28) float16, padded to the width of the widest
    count so that the final count can be written over it in place."""

    def describe(count: int) -> str:
        return (
            f"{{'descr': '{MAP_DTYPE.str}', 'fortran_order': False, 'shape': ({count}, 28, 28), }}"
        )

    text, widest = describe(rows), len(describe(_HEADER_ROOM))
    total = -(-(10 + widest + 1) // 64) * 64  # magic, version, length, text, "\n": 64-aligned
    text = text.ljust(total - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + (total - 10).to_bytes(2, "little") + text.encode("latin1")


class _NpyStream:
    """Rows of (28, 28) float16 appended to an .npy whose count is fixed at the end."""

    def __init__(self, target: Path) -> None:
        self.pending = AtomicFile(target)
        self.fh: IO[bytes] = self.pending.path.open("wb")
        self.fh.write(_npy_header(0))
        self.rows = 0

    def append(self, maps: np.ndarray) -> None:
        self.fh.write(np.ascontiguousarray(maps, dtype=MAP_DTYPE).tobytes())
        self.rows += len(maps)

    def commit(self) -> None:
        self.fh.seek(0)
        self.fh.write(_npy_header(self.rows))
        self.fh.close()
        self.pending.commit()

    def discard(self) -> None:
        self.fh.close()
        self.pending.discard()


class MapWriter:
    """Per-input map files and the mosaic of the most anomalous images, under ``folder``."""

    def __init__(self, folder: Path, mosaic: int = MOSAIC) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"--maps {self.folder}: exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.mosaic = mosaic
        self._streams: dict[str, _NpyStream] = {}
        self._names: set[str] = set()
        self._top: list[tuple[float, int, str, int, np.ndarray, np.ndarray]] = []
        self._order = itertools.count()

    def _stream(self, name: str) -> _NpyStream:
        if name not in self._streams:
            base = Path(name.rstrip("/")).name.replace(":", "-") or "input"  # FILE.npz:KEY
            file = f"{base}.maps.npy"
            for n in itertools.count(2):  # two inputs of the same name: number the second
                if file not in self._names:
                    break
                file = f"{base}-{n}.maps.npy"
            self._names.add(file)
            self._streams[name] = _NpyStream(self.folder / file)
        return self._streams[name]

    def add(
        self,
        name: str,
        sources: list[str],
        index: np.ndarray,
        scores: np.ndarray,
        images: np.ndarray,
        maps: np.ndarray,
    ) -> None:
        """Rows of the input ``name``: their sources and indices (k,), scores (k,), images and
        maps (k, 28, 28)."""
        self._stream(name).append(maps)
        for k in np.argsort(scores)[::-1][: self.mosaic]:
            entry = (float(scores[k]), next(self._order), sources[k], int(index[k]))
            item = (*entry, images[k].astype(np.float16), maps[k].astype(np.float16))
            if len(self._top) < self.mosaic:
                heapq.heappush(self._top, item)
            elif item[0] > self._top[0][0]:
                heapq.heapreplace(self._top, item)
            else:
                break  # the rest of this batch scores lower still

    def commit(self) -> None:
        """Finish every map file and write the mosaic of the most anomalous images."""
        for stream in self._streams.values():
            stream.commit()
        self._streams.clear()
        top = sorted(self._top, reverse=True)
        if not top:
            return
        cells = []
        for *_, image, pixel_map in top:
            peak = float(pixel_map.max())
            cells += [image.astype(np.float32), pixel_map.astype(np.float32) / max(peak, 1e-12)]
        save_grid(np.stack(cells), self.folder / "most_anomalous.png", columns=8, scale=2)
        with atomic_path(self.folder / "most_anomalous.csv") as tmp, tmp.open("w") as fh:
            writer = csv.writer(fh)
            writer.writerow(["rank", "source", "index", "score"])
            for rank, (score, _, source, index, *_) in enumerate(top, start=1):
                writer.writerow([rank, source, index, f"{score:.7g}"])

    def __enter__(self) -> MapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in self._streams.values():
            stream.discard()
