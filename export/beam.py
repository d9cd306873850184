"""Anomaly scoring as an Apache Beam pipeline, on the local DirectRunner or on a cluster runner
(Dataflow, Flink, Spark).

    python -m export.beam digits.npy pngs/ --bundle artifacts/export \\
        --out scores/part                      # -> scores/part-00000-of-0000N.csv + errors
    python -m export.beam /mnt/shared/big.npy --bundle /mnt/shared/export --out gs://b/scores \\
        --runner DataflowRunner --project P --region R --temp_location gs://b/tmp

Needs the ``beam`` extra (``pip install "mnist-vae[beam]"``). The inputs are split into
independent reading units (``export.inputs.reading_units``: each ``.npy`` in slices of
``--batch-size`` rows, each PNG of a folder, every other file whole), spread over the workers,
and each unit goes through ``export.streaming.score_items``, the loop ``python -m export score``
runs, with the bundle loaded (and its checksums verified) once per worker: the numbers are those
of the CLI. Input and bundle paths must be readable on the workers (a shared mount on a
cluster); the output may be any Beam filesystem path. Rows come out unordered, one CSV line
(source, index, score, p_value, anomaly) each; bad records go to ``OUT-errors*.csv`` (source, index,
error) instead of stopping the job.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from export.bundle import DETECTOR, MODELS, PRECISIONS, Bundle
from export.inputs import RecordError, Unit, read_unit, reading_units
from export.scorefile import COLUMNS, ERROR_COLUMNS, csv_lines, error_csv_line
from export.streaming import DEFAULT_BATCH, score_items


class ScoreUnits(beam.DoFn):
    """Reading unit -> CSV lines of its scores (main output) and of its bad records ("errors")."""

    def __init__(
        self, bundle_dir: str, model: str | None, precision: str, threads: int, batch_size: int
    ) -> None:
        self.bundle_dir, self.model, self.precision = bundle_dir, model, precision
        self.threads, self.batch_size = threads, batch_size
        self.bundle: Bundle | None = None

    def setup(self) -> None:
        # once per worker: ORT sessions do not pickle, and the checksums are checked where used
        self.bundle = Bundle.load(self.bundle_dir, precision=self.precision, threads=self.threads)

    def process(self, unit: Unit) -> Iterator[Any]:
        items = read_unit(unit, self.batch_size)
        for result in score_items(self.bundle, items, self.model, self.batch_size):
            if isinstance(result, RecordError):
                yield beam.pvalue.TaggedOutput(
                    "errors", error_csv_line(result.source, result.index, result.message)
                )
                continue
            yield from csv_lines(
                result.sources, result.index, result.score, result.p_value, result.anomaly
            )


def build(
    pipeline: beam.Pipeline,
    sources: Sequence[str],
    bundle_dir: str,
    out: str,
    model: str | None = None,
    precision: str = "fp32",
    batch_size: int = DEFAULT_BATCH,
    threads: int = 0,
    num_shards: int = 0,
) -> None:
    """Add the scoring steps to ``pipeline``: plan -> read and score -> CSV shards at ``out``."""
    scored = (
        pipeline
        | "Plan" >> beam.Create(reading_units(list(sources), batch_size))
        | "Reshuffle" >> beam.Reshuffle()  # spread the reading units over the workers
        | "Score"
        >> beam.ParDo(ScoreUnits(bundle_dir, model, precision, threads, batch_size)).with_outputs(
            "errors", main="rows"
        )
    )
    _ = scored.rows | "Write" >> beam.io.WriteToText(
        out, file_name_suffix=".csv", header=",".join(COLUMNS), num_shards=num_shards
    )
    _ = scored.errors | "WriteErrors" >> beam.io.WriteToText(
        f"{out}-errors", file_name_suffix=".csv", header=",".join(ERROR_COLUMNS), num_shards=1
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.beam",
        description=__doc__.split("\n")[0],
        epilog="Other options (--runner, --project, ...) go to Beam's PipelineOptions.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy .npz IDX .png folder .csv")
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/export"))
    parser.add_argument(
        "--model",
        choices=(DETECTOR, *MODELS),
        default=None,
        help="whose score (default: the bundle's, the detector where it has one)",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--out", required=True, help="output prefix of the CSV shards")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH, help="rows per read and per run"
    )
    parser.add_argument("--threads", type=int, default=0, help="ORT threads (0: all cores)")
    parser.add_argument("--num-shards", type=int, default=0, help="0: the runner decides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    bundle_dir = str(args.bundle.resolve())
    Bundle.load(bundle_dir, precision=args.precision)  # fail here, not on every worker
    if "://" not in args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        build(
            pipeline,
            args.inputs,
            bundle_dir,
            args.out,
            args.model,
            args.precision,
            args.batch_size,
            args.threads,
            args.num_shards,
        )
    print(f"wrote {args.out}-*.csv and {args.out}-errors-*.csv", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
