"""Row sinks for streamed scores and record errors: CSV or Parquet, written to a temporary file
beside the target (``export.files.AtomicFile``) and renamed over it only when the job completes.

    with ScoreSink.open("scores.parquet", fmt="parquet") as sink:
        sink.write(["a.npy"] * 3, np.arange(3), scores, p_values, scores > threshold)
        sink.commit()                  # rename; leaving the block without commit() removes it

Parquet needs pyarrow (``pip install "mnist-vae[parquet]"``); it is imported only when asked for.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from export.files import AtomicFile

FORMATS = ("csv", "parquet")
COLUMNS = ("source", "index", "score", "p_value", "anomaly")
ROW_GROUP = 65536  # Parquet rows per row group


def format_for(path: str | None, fmt: str | None) -> str:
    """The output format: ``fmt`` when given, else from the file's suffix (csv by default)."""
    if fmt is None:
        fmt = "parquet" if path and Path(path).suffix.lower() == ".parquet" else "csv"
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "parquet" and path in (None, "-"):
        raise ValueError("--format parquet needs --out FILE (Parquet is not streamed to stdout)")
    return fmt


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("Parquet output needs pyarrow: pip install 'mnist-vae[parquet]'") from None
    return pa, pq


class ScoreSink:
    """Rows (source, index, score, p_value, anomaly) to CSV (a file or stdout) or Parquet,
    atomically; a p-value the bundle cannot give (no stored validation scores) is empty."""

    def __init__(self, path: Path | None, fmt: str) -> None:
        self.path, self.fmt, self.rows = path, fmt, 0
        self._pending_file = None if path is None else AtomicFile(path)
        self.tmp = None if self._pending_file is None else self._pending_file.path
        self._fh: IO[str] | None = None
        self._parquet: Any = None
        self._pending: list[tuple[Sequence[str], np.ndarray, np.ndarray, Any, np.ndarray]] = []
        self._pending_rows = 0
        if fmt == "parquet":
            self._pa, pq = _pyarrow()
            self._schema = self._pa.schema(
                [
                    ("source", self._pa.dictionary(self._pa.int32(), self._pa.string())),
                    ("index", self._pa.int64()),
                    ("score", self._pa.float32()),
                    ("p_value", self._pa.float64()),
                    ("anomaly", self._pa.bool_()),
                ]
            )
            self._parquet = pq.ParquetWriter(str(self.tmp), self._schema)
        else:
            if path is None:
                self._fh = sys.stdout
            else:
                self._fh = self.tmp.open("w", newline="")
            csv.writer(self._fh).writerow(COLUMNS)

    @classmethod
    def open(cls, path: str | None, fmt: str | None = None) -> ScoreSink:
        """A sink for ``path`` (None or "-": CSV on stdout) in ``fmt`` (default: by suffix)."""
        fmt = format_for(path, fmt)
        return cls(None if path in (None, "-") else Path(path), fmt)

    def write(
        self,
        sources: Sequence[str],
        index: np.ndarray,
        score: np.ndarray,
        p_value: np.ndarray | None,
        anomaly: np.ndarray,
    ) -> None:
        """Append rows: ``sources`` (k,) names, ``index`` (k,) ints, ``score`` (k,), ``p_value``
        (k,) or None, ``anomaly`` (k,) bool."""
        self.rows += len(score)
        if self._parquet is not None:
            self._pending.append((sources, index, score, p_value, anomaly))
            self._pending_rows += len(score)
            if self._pending_rows >= ROW_GROUP:
                self._flush_parquet()
            return
        self._fh.write(
            "".join(line + "\n" for line in csv_lines(sources, index, score, p_value, anomaly))
        )

    def _flush_parquet(self) -> None:
        if not self._pending:
            return
        pa = self._pa
        sources = [s for part in self._pending for s in part[0]]
        table = pa.table(
            {
                "source": pa.array(sources, pa.string()).dictionary_encode(),
                "index": np.concatenate([p[1] for p in self._pending]).astype(np.int64),
                "score": np.concatenate([p[2] for p in self._pending]).astype(np.float32),
                "p_value": pa.array(
                    [v for p in self._pending for v in _or_nulls(p[3], len(p[2]))], pa.float64()
                ),
                "anomaly": np.concatenate([p[4] for p in self._pending]).astype(bool),
            },
            schema=self._schema,
        )
        self._parquet.write_table(table)
        self._pending.clear()
        self._pending_rows = 0

    def commit(self) -> None:
        """Finish the file and rename it over the target."""
        if self._parquet is not None:
            self._flush_parquet()
            self._parquet.close()
            self._parquet = None
        elif self._fh is not None:
            self._fh.flush()
            if self.path is not None:
                self._fh.close()
            self._fh = None
        if self._pending_file is not None:
            self._pending_file.commit()

    def __enter__(self) -> ScoreSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._fh is not None and self.path is not None:
            self._fh.close()
        if self._pending_file is not None:
            self._pending_file.discard()


def csv_lines(
    sources: Sequence[str],
    index: np.ndarray,
    score: np.ndarray,
    p_value: np.ndarray | None,
    anomaly: np.ndarray,
) -> list[str]:
    """Score rows as CSV lines (no line ends) in ``COLUMNS`` order: the one row format of the
    score file, whoever writes it."""
    cells = [""] * len(score) if p_value is None else [f"{p:.6g}" for p in p_value.tolist()]
    return [
        f"{csv_cell(s)},{i},{v:.7g},{p},{int(a)}"
        for s, i, v, p, a in zip(
            sources, index.tolist(), score.tolist(), cells, anomaly.tolist(), strict=True
        )
    ]


def _or_nulls(values: np.ndarray | None, n: int) -> list[float | None]:
    return [None] * n if values is None else values.tolist()


def csv_cell(text: str) -> str:
    """Quote a CSV cell only where needed (a source name holding a comma, quote or newline)."""
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


class ErrorSink:
    """The errors file (source, index, error): created at the first error, renamed at commit."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = path, 0
        self._pending_file: AtomicFile | None = None
        self._fh: IO[str] | None = None
        self._writer: Any = None

    def write(self, source: str, index: int | None, message: str) -> None:
        if self._fh is None:
            self._pending_file = AtomicFile(self.path)
            self._fh = self._pending_file.path.open("w", newline="")
            self._writer = csv.writer(self._fh)
            self._writer.writerow(["source", "index", "error"])
        self._writer.writerow([source, "" if index is None else index, message])
        self.count += 1

    def commit(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._pending_file.commit()

    def __enter__(self) -> ErrorSink:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._pending_file is not None:
            self._pending_file.discard()
