"""The score file: what ``python -m export score`` (and the Beam job) writes and what
``python -m export evaluate`` reads back, in one place: its columns, its writer and its reader.

    with ScoreSink.open("scores.parquet") as sink:          # or .csv, or None for stdout
        sink.write(["a.npy"] * 3, np.arange(3), scores, p_values, scores > threshold)
        sink.commit()                  # rename; leaving the block without commit() removes it
    scores = read_scores("scores.parquet")                 # Scores: source, index, score, flags

A score file is CSV or Parquet (told apart by Parquet's magic bytes, not by the name) with the
columns ``COLUMNS`` (source, index, score, p_value, anomaly); readers need only ``source``,
``index`` and ``score`` and read by name, so other columns are ignored unless asked for. Bad
records go to an errors file with the columns ``ERROR_COLUMNS``. Files are written to a temporary
file beside the target (``export.files.AtomicFile``) and renamed over it only when complete.
Parquet needs pyarrow (``pip install "mnist-vae[parquet]"``), imported only when asked for. A
file that cannot be read raises ``ScoreFileError`` with one line naming the file, the row (data
rows count from 1, the header excluded) and what was expected.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from export.files import AtomicFile
from export.inputs import InputError

FORMATS = ("csv", "parquet")
COLUMNS = ("source", "index", "score", "p_value", "anomaly")
ERROR_COLUMNS = ("source", "index", "error")  # index blank: the whole source failed
REQUIRED = ("source", "index", "score")  # what a reader needs
FLAGS = "anomaly"  # the scorer's own flags: score > the threshold it used
PARQUET_MAGIC = b"PAR1"
TRUE_WORDS, FALSE_WORDS = ("1", "1.0", "true"), ("0", "0.0", "false")
ROW_GROUP = 65536  # Parquet rows per row group


class ScoreFileError(InputError):
    """A score (or labels) file that cannot be read: names the file, the row, the problem."""


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


def error_csv_line(source: str, index: int | None, message: str) -> str:
    """A bad record as a line of the errors file (no line end), in ``ERROR_COLUMNS`` order."""
    return ",".join([csv_cell(source), "" if index is None else str(index), csv_cell(message)])


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
            self._writer.writerow(ERROR_COLUMNS)
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


# -- reading ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scores:
    """The rows of a score file: row k is image ``index[k]`` of ``source[k]``."""

    path: Path
    source: list[str]
    index: np.ndarray  # (n,) int64
    score: np.ndarray  # (n,) float64
    flags: np.ndarray | None  # (n,) bool, the file's anomaly column, when it has one
    extra: dict[str, list[str]]  # other columns asked for, as text

    def where(self, row: int) -> str:
        """``scores.csv row 7 (pngs/a.png[0])`` for the 0-based ``row``."""
        return f"{self.path} row {row + 1} ({self.source[row]}[{self.index[row]}])"


def _is_parquet(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == PARQUET_MAGIC


def read_columns(path: Path, wanted: Sequence[str]) -> tuple[dict[str, list[Any]], int]:
    """The ``wanted`` columns of a CSV or Parquet file that has them (raises naming the first
    missing one, ``FLAGS`` excepted), as lists of cells, and the number of rows."""
    if not path.is_file():
        raise ScoreFileError(f"{path}: no such file")
    if _is_parquet(path):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ScoreFileError(
                f"{path}: a Parquet file; reading it needs pyarrow (pip install 'mnist-vae[parquet]')"
            ) from None
        try:
            names = pq.read_schema(path).names
            _require(path, names, wanted)
            table = pq.read_table(path, columns=[c for c in wanted if c in names])
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise ScoreFileError(f"{path}: cannot read it as Parquet ({err})") from None
        return {name: table.column(name).to_pylist() for name in table.column_names}, len(table)
    try:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = [cell.strip() for cell in next(reader, [])]
            _require(path, header, wanted)
            positions = {name: header.index(name) for name in wanted if name in header}
            cells: dict[str, list[Any]] = {name: [] for name in positions}
            rows = 0
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                rows += 1
                if len(row) != len(header):
                    raise ScoreFileError(
                        f"{path} row {rows}: {len(row)} cells, expected {len(header)} "
                        f"(the header's {', '.join(header)})"
                    )
                for name, at in positions.items():
                    cells[name].append(row[at])
    except (UnicodeDecodeError, csv.Error) as err:
        raise ScoreFileError(f"{path}: not a readable CSV file ({err})") from None
    return cells, rows


def _require(path: Path, names: Sequence[str], wanted: Sequence[str]) -> None:
    needed = [c for c in wanted if c != FLAGS]
    missing = [c for c in needed if c not in names]
    if missing:
        raise ScoreFileError(
            f"{path}: no column {missing[0]!r}, expected the columns {', '.join(needed)}; "
            f"it has {', '.join(names) or 'no header'}"
        )


def index_cell(cell: Any, where: str, what: str) -> int:
    try:
        value = int(cell) if not isinstance(cell, float) else None
    except (TypeError, ValueError):
        value = None
    if value is None or value < 0:
        raise ScoreFileError(f"{where}: {what} {cell!r}, expected an integer >= 0")
    return value


def score_cell(cell: Any, where: str) -> float:
    try:
        value = float(cell)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ScoreFileError(f"{where}: score {cell!r}, expected a finite number")
    return value


def flag_cell(cell: Any, where: str) -> bool:
    if isinstance(cell, bool):
        return cell
    text = str(cell).strip().lower()
    if text in TRUE_WORDS or text in FALSE_WORDS:
        return text in TRUE_WORDS
    raise ScoreFileError(f"{where}: anomaly {cell!r}, expected 0/1 or true/false")


def read_scores(path: str | Path, extra: Sequence[str] = ()) -> Scores:
    """Read a score file written by ``python -m export score`` (CSV or Parquet) by column name;
    ``extra`` columns are kept as text (e.g. a label column)."""
    path = Path(path)
    wanted = [*REQUIRED, FLAGS, *(c for c in extra if c not in (*REQUIRED, FLAGS))]
    cells, n = read_columns(path, wanted)
    if n == 0:
        raise ScoreFileError(f"{path}: no rows (only a header); nothing to evaluate")
    source: list[str] = []
    index = np.empty(n, np.int64)
    score = np.empty(n, np.float64)
    for row in range(n):
        where = f"{path} row {row + 1}"
        name = cells["source"][row]
        if name is None or not str(name).strip():
            raise ScoreFileError(f"{where}: empty source, expected the input it was read from")
        source.append(str(name))
        index[row] = index_cell(cells["index"][row], where, "index")
        score[row] = score_cell(cells["score"][row], where)
    flags = None
    if FLAGS in cells:
        flags = np.array([flag_cell(c, f"{path} row {r + 1}") for r, c in enumerate(cells[FLAGS])])
    kept = {c: ["" if v is None else str(v) for v in cells[c]] for c in extra}
    scores = Scores(path, source, index, score, flags, kept)
    _unique_keys(scores)
    return scores


def _unique_keys(scores: Scores) -> None:
    seen: dict[tuple[str, int], int] = {}
    for row, key in enumerate(zip(scores.source, scores.index.tolist(), strict=True)):
        if key in seen:
            raise ScoreFileError(
                f"{scores.where(row)}: scored twice (first at row {seen[key] + 1}); "
                "expected one row per image"
            )
        seen[key] = row
