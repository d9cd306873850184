"""Anomaly scoring as an Apache Beam pipeline: Beam's RunInference with its ONNX model handler,
on the local DirectRunner or on a cluster runner (Dataflow, Flink, Spark).

    python -m export.beam digits.npy pngs/ --bundle artifacts/export --model vae \\
        --out scores/part                      # -> scores/part-00000-of-0000N.csv + errors
    python -m export.beam /mnt/shared/big.npy --bundle /mnt/shared/export --out gs://b/scores \\
        --runner DataflowRunner --project P --region R --temp_location gs://b/tmp

Needs the ``beam`` extra (``pip install "mnist-vae[beam]"``: apache-beam and onnx). The
bundle's encoder and decoder are joined into one ONNX graph (images -> latents and pixels),
written once beside the output (``--scorer``, any Beam filesystem path) so that every worker
loads the same verified model; the handler's inference function turns the graph's outputs into
the scores of ``export.scoring``, so the numbers match ``python -m export score``. Inputs are
read with ``export.stream`` on the workers (each ``.npy`` in slices of ``--batch-size`` rows,
each PNG file, every other file whole), so their paths must be readable there: a shared mount
on a cluster. Rows come out unordered, one CSV line (source, index, score, anomaly) each; bad
records go to ``OUT-errors*.csv`` (source, index, error) instead of stopping the job.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import onnx
import onnx.compose
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.ml.inference.onnx_inference import OnnxModelHandlerNumpy
from apache_beam.options.pipeline_options import PipelineOptions

from export import scoring
from export.bundle import MODELS, PRECISIONS, Bundle, session_options
from export.inputs import _png_files, _split_key
from export.sinks import COLUMNS, _csv_cell
from export.stream import LAYOUTS, RecordError, _validated, iter_records

ENCODER_PREFIX, DECODER_PREFIX = "encoder_", "decoder_"


def scorer_graph(bundle: Bundle, model: str = "vae") -> onnx.ModelProto:
    """Encoder and decoder of ``model`` as one graph: images (n, 28, 28) -> the encoder's
    outputs and the decoded pixels of z (AE) or z_mean (VAE), names prefixed by part."""
    entries = bundle.manifest["models"]
    decoder_role = f"{model}_decoder" + ("_int8" if bundle.precision == "int8" else "")
    encoder = onnx.load(str(bundle.directory / entries[f"{model}_encoder"]["file"]))
    decoder = onnx.load(str(bundle.directory / entries[decoder_role]["file"]))
    latent = "z" if model == "ae" else "z_mean"
    decoder_input = entries[decoder_role]["inputs"][0]["name"]
    outputs = [ENCODER_PREFIX + o["name"] for o in entries[f"{model}_encoder"]["outputs"]]
    outputs += [DECODER_PREFIX + o["name"] for o in entries[decoder_role]["outputs"]]
    return onnx.compose.merge_models(
        encoder,
        decoder,
        io_map=[(latent, decoder_input)],  # merge_models adds the prefixes itself
        prefix1=ENCODER_PREFIX,
        prefix2=DECODER_PREFIX,
        outputs=outputs,
        name=f"{model}_scorer",
    )


def score_batch(
    session: Any,
    batch: Sequence[np.ndarray],
    inference_args: dict[str, Any] | None = None,
    *,
    model: str,
) -> dict[str, np.ndarray]:
    """The handler's inference function: a batch of (28, 28) float32 images -> {"score": (n,)}."""
    images = np.stack(batch).astype(np.float32, copy=False)
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(names, {session.get_inputs()[0].name: images}), strict=True))
    pixels = out[DECODER_PREFIX + "pixels"]
    if model == "ae":
        return {"score": scoring.reconstruction_mse(images, pixels)}
    z_mean, z_log_var = out[ENCODER_PREFIX + "z_mean"], out[ENCODER_PREFIX + "z_log_var"]
    return {"score": scoring.negative_elbo(images, pixels, z_mean, z_log_var)}


class ScorerHandler(OnnxModelHandlerNumpy):
    """Beam's ONNX handler, with the runtime's throughput session options built on the worker
    (ORT session options do not pickle)."""

    def __init__(self, model_uri: str, model: str, threads: int, batch_size: int) -> None:
        super().__init__(
            model_uri,
            providers=["CPUExecutionProvider"],
            inference_fn=functools.partial(score_batch, model=model),
            min_batch_size=1,
            max_batch_size=batch_size,
        )
        self._threads = threads

    def load_model(self) -> Any:
        self._session_options = session_options(self._threads)
        return super().load_model()


def plan(sources: Sequence[str], batch_size: int) -> list[tuple[str, int | None]]:
    """Units of reading work: (source, first row) slices of each .npy, (png, None) for each PNG
    of a folder, (source, None) for every other source (read whole by one worker)."""
    parts: list[tuple[str, int | None]] = []
    for source in sources:
        path, _ = _split_key(source)
        if path.is_dir():
            try:
                parts += [(str(png), None) for png in _png_files(path)]
            except ValueError:
                parts.append((source, None))  # reported as a record error by the reader
            continue
        if path.suffix.lower() == ".npy" and path.is_file():
            try:
                shape = np.load(path, allow_pickle=False, mmap_mode="r").shape
            except (ValueError, OSError):
                shape = ()
            if len(shape) > 1 and shape[1:] in LAYOUTS:
                parts += [(source, start) for start in range(0, shape[0], batch_size)]
                continue
        parts.append((source, None))
    return parts


def read_part(part: tuple[str, int | None], batch_size: int) -> Iterator[Any]:
    """((source, index), image) for each valid image of ``part``; record errors tagged."""
    source, start = part
    if start is None:
        items = iter_records([source], batch_size)
    else:
        array = np.load(_split_key(source)[0], allow_pickle=False, mmap_mode="r")
        items = _validated(np.asarray(array[start : start + batch_size]), source, start)
    for item in items:
        if isinstance(item, RecordError):
            index = "" if item.index is None else item.index
            yield beam.pvalue.TaggedOutput(
                "errors", ",".join([_csv_cell(item.source), str(index), _csv_cell(item.message)])
            )
            continue
        for i, image in enumerate(item.images):
            yield (item.source, item.start + i), image


def format_row(keyed: tuple[tuple[str, int], PredictionResult], threshold: float) -> str:
    """((source, index), result) -> the CSV line of ``python -m export score``."""
    (source, index), result = keyed
    score = float(result.inference["score"])
    return f"{_csv_cell(source)},{index},{score:.7g},{int(score > threshold)}"


def build(
    pipeline: beam.Pipeline,
    sources: Sequence[str],
    scorer_uri: str,
    out: str,
    model: str,
    threshold: float,
    batch_size: int = 4096,
    threads: int = 0,
    num_shards: int = 0,
) -> None:
    """Add the scoring steps to ``pipeline``: read -> RunInference -> CSV shards at ``out``."""
    read = (
        pipeline
        | "Plan" >> beam.Create(plan(list(sources), batch_size))
        | "Reshuffle" >> beam.Reshuffle()  # spread the reading units over the workers
        | "Read" >> beam.FlatMap(read_part, batch_size).with_outputs("errors", main="images")
    )
    handler = KeyedModelHandler(ScorerHandler(scorer_uri, model, threads, batch_size))
    (
        read.images
        | "Score" >> RunInference(handler)
        | "Format" >> beam.Map(format_row, threshold)
        | "Write"
        >> beam.io.WriteToText(
            out, file_name_suffix=".csv", header=",".join(COLUMNS), num_shards=num_shards
        )
    )
    (
        read.errors
        | "WriteErrors"
        >> beam.io.WriteToText(
            f"{out}-errors", file_name_suffix=".csv", header="source,index,error", num_shards=1
        )
    )


def write_scorer(bundle: Bundle, model: str, uri: str) -> None:
    """Serialize the scorer graph of ``model`` to ``uri`` (local path or gs://, s3://, ...)."""
    if "://" not in uri:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    with FileSystems.create(uri) as fh:
        fh.write(scorer_graph(bundle, model).SerializeToString())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.beam",
        description=__doc__.split("\n")[0],
        epilog="Other options (--runner, --project, ...) go to Beam's PipelineOptions.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy .npz IDX .png folder .csv")
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/export"))
    parser.add_argument("--model", choices=MODELS, default="vae")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--out", required=True, help="output prefix of the CSV shards")
    parser.add_argument("--scorer", help="where to write the joined ONNX graph (default OUT.onnx)")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows per read and per run")
    parser.add_argument("--threads", type=int, default=0, help="ORT threads (0: all cores)")
    parser.add_argument("--num-shards", type=int, default=0, help="0: the runner decides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    bundle = Bundle.load(args.bundle, precision=args.precision)  # verifies every checksum
    scorer = args.scorer or f"{args.out}.onnx"
    write_scorer(bundle, args.model, scorer)
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        build(
            pipeline,
            args.inputs,
            scorer,
            args.out,
            args.model,
            bundle.threshold(args.model),
            args.batch_size,
            args.threads,
            args.num_shards,
        )
    print(f"wrote {args.out}-*.csv and {args.out}-errors-*.csv", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
