"""Streaming anomaly scoring: inputs of any size through a bundle's model, batch by batch.

    summary = score_files(bundle, ["big.npy", "pngs/"], "scores.parquet")  # the default score
    summary.scored, summary.flagged, summary.failed      # rows, anomalies, skipped records
    for item in score_items(bundle, iter_records(["big.npy"], 4096), model="vae"):
        ...                                                # Scored batches and RecordErrors

``score_items`` is the loop itself (what ``python -m export score`` and the Beam pipeline both
run): it gathers the valid images of the reader's chunks into batches of at most
``batch_size`` rows, scores each batch with ``Bundle.score`` and flags it against the threshold; a bad record
passes through as a ``RecordError``. ``score_files`` adds the files around it: a score sink
(CSV or Parquet, renamed into place only when complete), an errors file, ``strict`` (the first
bad record stops it, nothing is left behind) and a progress counter.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.bundle import Bundle
from export.inputs import (
    Chunk,
    InputError,
    Item,
    RecordError,
    count_records,
    iter_records,
    split_source,
)
from export.maps import MapWriter
from export.progress import Progress
from export.scorefile import ErrorSink, ScoreSink, format_for
from export.scoring import p_values

DEFAULT_BATCH = 4096


@dataclass(frozen=True)
class Scored:
    """One scored batch: row k is image ``index[k]`` of ``sources[k]``."""

    sources: list[str]  # (k,)
    index: np.ndarray  # (k,) int64
    score: np.ndarray  # (k,) float32
    p_value: np.ndarray | None  # (k,) float64 against the validation scores; None: not stored
    anomaly: np.ndarray  # (k,) bool: score > threshold
    images: np.ndarray | None = None  # (k, 28, 28) float32, with ``maps`` only
    maps: np.ndarray | None = None  # (k, 28, 28) float32: Bundle.pixel_scores, if asked for


@dataclass(frozen=True)
class Summary:
    """What ``score_files`` did."""

    scored: int
    flagged: int
    failed: int  # records skipped (each a row of the errors file)
    seconds: float
    threshold: float
    fmt: str  # "csv" or "parquet"
    errors_path: Path | None  # the errors file, when one was written
    p_values: bool  # whether the rows carry p-values (the bundle stores validation scores)


def has_validation_scores(bundle: Bundle) -> bool:
    """Whether ``bundle`` stores the validation scores that p-values and ``fpr`` need."""
    return "validation_scores" in bundle.manifest["anomaly"]


def score_items(
    bundle: Bundle,
    items: Iterable[Item],
    model: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    threshold: float | None = None,
    maps: bool = False,
) -> Iterator[Scored | RecordError]:
    """Score the Chunks of ``items`` in batches of at most ``batch_size`` rows, in input order:
    small chunks (single PNGs, runs between bad CSV rows) are gathered into one batch, a chunk
    that would overflow the batch starts the next, so memory stays that of one batch however
    the chunks fall.

    threshold: anomaly = score > threshold (default: the bundle's calibrated threshold).
    maps: also return each batch's images and pixel maps (``Bundle.pixel_scores``).
    Rows carry p-values when the bundle stores validation scores. RecordErrors are yielded as
    they come, before the rows of the batch being gathered.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    model = bundle.default_model if model is None else model
    threshold = bundle.threshold(model) if threshold is None else float(threshold)
    reference = bundle.validation_scores(model) if has_validation_scores(bundle) else None
    pending: list[Chunk] = []
    rows = 0

    def scored() -> Scored:
        return _score(bundle, pending, model, threshold, reference, maps)

    for item in items:
        if isinstance(item, RecordError):
            yield item
            continue
        for start in range(0, len(item.images), batch_size):  # a chunk larger than a batch
            piece = item if len(item.images) <= batch_size else _part(item, start, batch_size)
            if pending and rows + len(piece.images) > batch_size:
                # score what is gathered rather than concatenate (and keep alive) parts of
                # two large chunks: a batch never holds more than batch_size rows
                yield scored()
                pending, rows = [], 0
            pending.append(piece)
            rows += len(piece.images)
            if rows == batch_size:
                yield scored()
                pending, rows = [], 0
    if pending:
        yield scored()


def _part(chunk: Chunk, start: int, size: int) -> Chunk:
    return Chunk(chunk.source, chunk.start + start, chunk.images[start : start + size])


def _score(
    bundle: Bundle,
    chunks: list[Chunk],
    model: str,
    threshold: float,
    reference: np.ndarray | None,
    maps: bool,
) -> Scored:
    images = chunks[0].images if len(chunks) == 1 else np.concatenate([c.images for c in chunks])
    scores, pixel_maps = bundle.score_and_maps(images, model, maps=maps)
    return Scored(
        sources=[c.source for c in chunks for _ in range(len(c.images))],
        index=np.concatenate([np.arange(c.start, c.start + len(c.images)) for c in chunks]),
        score=scores,
        p_value=None if reference is None else p_values(scores, reference),
        anomaly=scores > threshold,
        images=images if maps else None,
        maps=pixel_maps,
    )


def errors_path_for(out: str | None) -> Path:
    """Where the errors of scoring into ``out`` go: OUT's stem + ``.errors.csv`` beside it
    (``score-errors.csv`` when the scores go to stdout)."""
    if out in (None, "-"):
        return Path("score-errors.csv")
    out_path = Path(out)
    return out_path.with_name(f"{out_path.stem}.errors.csv")


def choose_threshold(
    bundle: Bundle, model: str | None, threshold: float | None = None, fpr: float | None = None
) -> float:
    """The bundle's calibrated threshold, or ``threshold`` as given, or the threshold that
    flags ``fpr`` of the stored validation scores (at most one of the two)."""
    if threshold is not None and fpr is not None:
        raise ValueError("give a threshold or an fpr, not both")
    if fpr is not None:
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"--fpr must be in (0, 1), got {fpr}")
        return bundle.threshold_at(fpr, model)
    if threshold is not None:
        if not np.isfinite(threshold):
            raise ValueError(f"--threshold must be a finite number, got {threshold}")
        return float(threshold)
    return bundle.threshold(model)


def _tagged(sources: list[str], batch_size: int, owner: dict[str, str]) -> Iterator[Item]:
    """``iter_records`` over ``sources``, noting in ``owner`` which input each source is of
    (a folder's PNGs are sources of their own)."""
    for name in sources:
        for item in iter_records([name], batch_size):
            if isinstance(item, Chunk):
                owner[item.source] = name
            yield item


def score_files(
    bundle: Bundle,
    sources: Iterable[str | Path],
    out: str | None,
    model: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    fmt: str | None = None,
    errors: str | Path | None = None,
    strict: bool = False,
    threshold: float | None = None,
    fpr: float | None = None,
    maps: str | Path | None = None,
    echo_errors: int = 0,
) -> Summary:
    """Score every image of ``sources`` into ``out`` (.csv or .parquet; None or "-": CSV on
    stdout), bad records into ``errors`` (default ``errors_path_for(out)``, written only if
    there are any).

    threshold / fpr: override the bundle's calibrated threshold (``choose_threshold``).
    maps: a folder for the pixel maps (``export.maps``).
    strict: the first bad record raises ``InputError`` and no output file is left behind.
    echo_errors: how many of the bad records to print on stderr as ``skipped: ...`` lines.
    """
    sources = [str(s) for s in sources]
    if not sources:
        raise InputError("no input given")
    for name in sources:  # a missing input is a mistake in the command, not a bad record
        path, _ = split_source(name)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
    fmt = format_for(out, fmt)
    threshold = choose_threshold(bundle, model, threshold, fpr)
    errors_path = Path(errors) if errors else errors_path_for(out)
    progress = Progress("score", count_records(sources))
    owner: dict[str, str] = {}
    scored = flagged = 0
    started = time.perf_counter()
    with (
        ScoreSink.open(out, fmt) as sink,
        ErrorSink(errors_path) as error_sink,
        MapWriter(Path(maps)) if maps is not None else contextlib.nullcontext() as map_writer,
    ):
        try:
            # which input each row is of matters only to the maps: no bookkeeping without them
            records = (
                _tagged(sources, batch_size, owner)
                if map_writer is not None
                else iter_records(sources, batch_size)
            )
            batches = score_items(bundle, records, model, batch_size, threshold, maps is not None)
            for item in batches:
                if isinstance(item, RecordError):
                    if strict:
                        raise InputError(f"{item} (--strict: stopped at the first bad record)")
                    error_sink.write(item.source, item.index, item.message)
                    if error_sink.count <= echo_errors:
                        progress.message(f"skipped: {item}")
                    continue
                sink.write(item.sources, item.index, item.score, item.p_value, item.anomaly)
                if map_writer is not None:
                    _add_maps(map_writer, item, owner)
                scored += len(item.score)
                flagged += int(item.anomaly.sum())
                progress.add(len(item.score))
        finally:
            progress.close()
        sink.commit()
        error_sink.commit()
        if map_writer is not None:
            map_writer.commit()
    return Summary(
        scored=scored,
        flagged=flagged,
        failed=error_sink.count,
        seconds=time.perf_counter() - started,
        threshold=threshold,
        fmt=fmt,
        errors_path=errors_path if error_sink.count else None,
        p_values=has_validation_scores(bundle),
    )


def _add_maps(writer: MapWriter, batch: Scored, owner: dict[str, str]) -> None:
    """The batch's maps, split by the input each row comes from."""
    names = [owner[s] for s in batch.sources]
    start = 0
    for name, group in itertools.groupby(names):
        end = start + len(list(group))
        writer.add(
            name,
            batch.sources[start:end],
            batch.index[start:end],
            batch.score[start:end],
            batch.images[start:end],
            batch.maps[start:end],
        )
        start = end
