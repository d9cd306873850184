"""Command line of the runtime: inspect a bundle, generate digits, encode, score and denoise images.

    python -m export info --bundle artifacts/export
    python -m export generate --n 100 --out digits.png          # 10 x 10 draws from the prior
    python -m export generate --grid 10 --out grid.png          # the latent plane, 10 x 10
    python -m export generate --z "0.4,0.4" --out one.png       # decode given latents (";" between)
    python -m export encode t10k-images-idx3-ubyte.gz --out latents.csv
    python -m export score pngs/ more.npy --model vae --out scores.csv
    python -m export score big.npy --fpr 0.05 --maps maps/ --out scores.csv   # p-values, maps
    python -m export denoise noisy.npy --out clean.npy          # or clean.png (one grid), clean/
    python -m export verify digits.png                        # was it made by this bundle?
    python -m export explorer --out site/ --serve             # the latent plane in a browser
    python -m export edge --out edge/                         # ORT-format models for devices
    python -m export score big.npy --batch-size 4096 --out scores.parquet --threads 8
    python -m export evaluate scores.csv --label-from-folder --bundle artifacts/export

The bundle is ``--bundle DIR``, else ``$MNIST_VAE_BUNDLE``, else ``artifacts/export``. Inputs
are read chunk by chunk (``export.inputs``), so scoring a large file needs little memory.
``score`` streams (``export.streaming``): ``--batch-size`` rows at a time, a progress bar on a
terminal, the output renamed into place only when complete. A bad record is reported on
stderr and in the errors file and skipped (exit status 1); ``--strict`` stops at the first one
(exit status 2, no output). Every PNG that ``generate`` writes records its provenance (``export.provenance``); ``verify``
exits 0 only for a picture pixel-exactly regenerated from its record by the given bundle.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from export import edge, evaluation, explorer, provenance
from export.bundle import MODELS, PRECISIONS, Bundle, BundleError
from export.files import atomic_folder, atomic_path, write_json_atomic
from export.images import save_grid
from export.inputs import Chunk, InputError, iter_chunks
from export.progress import Progress
from export.sinks import FORMATS
from export.streaming import DEFAULT_BATCH, score_files

DEFAULT_BUNDLE = "artifacts/export"


def _parse_z(text: str) -> np.ndarray:
    """``"0.4,0.4;-1,2"`` -> [[0.4, 0.4], [-1, 2]] float32."""
    try:
        rows = [[float(v) for v in row.split(",")] for row in text.split(";") if row.strip()]
        return np.array(rows, dtype=np.float32)
    except ValueError:
        raise InputError(
            f"--z {text!r}: expected numbers like 0.4,0.4 (';' between latents)"
        ) from None


def _chunks(args: argparse.Namespace, label: str) -> Iterator[Chunk]:
    progress = Progress(label)
    try:
        for chunk in iter_chunks(args.inputs, args.batch_size):
            yield chunk
            progress.add(len(chunk.images))
    finally:
        progress.close()


def _save_npy(array: np.ndarray, out: Path) -> None:
    with atomic_path(out) as tmp, tmp.open("wb") as fh:
        np.save(fh, array)


def cmd_info(bundle: Bundle, args: argparse.Namespace) -> int:
    m = bundle.manifest
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"bundle      {bundle.directory} (format {m['format_version']}, created {m['created']})")
    print(f"latent_dim  {m['latent_dim']}")
    print(f"input       28x28 float32 in [0, 1]; uint8 {m['input']['uint8']}")
    print("models")
    for role, entry in m["models"].items():
        size = m["files"][entry["file"]]["bytes"]
        ins = ", ".join(f"{i['name']}{tuple(i['shape'])}" for i in entry["inputs"])
        outs = ", ".join(f"{o['name']}{tuple(o['shape'])}" for o in entry["outputs"])
        line = f"  {role:<17} {entry['precision']:<5} {size:>10,} B  {ins} -> {outs}"
        if "drift_vs_fp32" in entry:
            d = entry["drift_vs_fp32"]
            line += f"  drift max {d['max_abs']:.4f} mean {d['mean_abs']:.5f}"
        print(line)
    a = m["anomaly"]
    for kind in MODELS:
        print(
            f"anomaly     {kind}: {a[kind]['score']} > {a[kind]['threshold']:.6g} (fpr {a['fpr']})"
        )
    worst = max(v["max_abs_diff"] for v in m["parity"]["models"].values())
    print(f"parity      max |ORT - Keras| {worst:.2e} on {m['parity']['samples']} test digits")
    return 0


def cmd_generate(bundle: Bundle, args: argparse.Namespace) -> int:
    if args.z is not None:
        mode, z = "z", _parse_z(args.z)
    elif args.grid is not None:
        mode, z = "grid", bundle.grid_latents(args.grid, args.model)
    else:
        if args.model != "vae":
            raise InputError("--n samples the VAE prior; use --grid or --z with --model ae")
        mode, z = "sample", bundle.prior_latents(args.n, args.seed)
    images = bundle.generate(z, args.model)
    out = Path(args.out)
    if out.suffix.lower() == ".npy":
        _save_npy(images, out)
    elif out.suffix.lower() == ".png":
        columns = args.grid if args.grid is not None else args.columns
        text = provenance.record(
            bundle, z, args.model, mode=mode, seed=args.seed, side=args.grid,
            columns=columns, scale=args.scale,
        )  # fmt: skip
        save_grid(images, out, columns=columns, scale=args.scale, text=text)
    else:
        raise InputError(f"--out {out}: expected a .png or .npy file")
    print(f"wrote {len(images)} digits to {out}")
    return 0


def cmd_encode(bundle: Bundle, args: argparse.Namespace) -> int:
    out = Path(args.out)
    d = bundle.latent_dim
    if out.suffix.lower() == ".npy":
        z = np.concatenate([bundle.encode(c.images, args.model) for c in _chunks(args, "encode")])
        _save_npy(z, out)
        print(f"wrote {len(z)} latents {z.shape} to {out}")
        return 0
    if out.suffix.lower() != ".csv":
        raise InputError(f"--out {out}: expected a .csv or .npy file")
    header = ["source", "index", *(f"z_{i}" for i in range(d))]
    if args.model == "vae":
        header += [f"z_log_var_{i}" for i in range(d)]
    n = 0
    with atomic_path(out) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for chunk in _chunks(args, "encode"):
            if args.model == "vae":
                z_mean, z_log_var = bundle.posterior(chunk.images)
                values = np.concatenate([z_mean, z_log_var], axis=1)
            else:
                values = bundle.encode(chunk.images, "ae")
            for i, row in enumerate(values):
                writer.writerow([chunk.source, chunk.start + i, *(f"{v:.7g}" for v in row)])
            n += len(values)
    print(f"wrote {n} latents to {out}")
    return 0


def _write_png_folder(chunks: Iterator[Chunk], bundle: Bundle, out: Path) -> int:
    """One 28x28 PNG per denoised image, ``000000.png`` on in input order, into a new folder.

    The folder is filled under a temporary name beside ``out`` and renamed into place, so it
    appears complete or not at all; an existing non-empty ``out`` is refused, never replaced.
    """
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise InputError(f"--out {out}: exists and is not an empty folder; choose a new one")
    n = 0
    with atomic_folder(out) as tmp:
        for chunk in chunks:
            for image in bundle.denoise(chunk.images):
                save_grid(image[np.newaxis], tmp / f"{n:06d}.png")
                n += 1
    return n


def cmd_denoise(bundle: Bundle, args: argparse.Namespace) -> int:
    """Noisy images -> the denoiser's output: one .npy array, one .png grid, or a PNG folder."""
    sigma = bundle.denoiser_sigma()  # fails before any input is read if there is no denoiser
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix in (".npy", ".png"):
        images = np.concatenate([bundle.denoise(c.images) for c in _chunks(args, "denoise")])
        if suffix == ".npy":
            _save_npy(images, out)
        else:
            save_grid(images, out, columns=args.columns, scale=args.scale)
        n = len(images)
    elif suffix and not out.is_dir():
        raise InputError(f"--out {out}: expected a .npy file, a .png file or a folder")
    else:
        n = _write_png_folder(_chunks(args, "denoise"), bundle, out)
    print(f"wrote {n} denoised digits to {out} (denoiser trained at noise sigma {sigma:g})")
    return 0


MAX_ERROR_LINES = 20  # record errors echoed on stderr; all of them go to the errors file


def cmd_score(bundle: Bundle, args: argparse.Namespace) -> int:
    """Stream the inputs through the model ``args.batch_size`` rows at a time
    (``export.streaming.score_files``).

    Exit status: 0 all scored; 1 some records failed (reported, the rest scored); 2 a fatal
    error (``--strict`` makes the first bad record one), with no output file left behind.
    """
    if args.batch_size <= 0:
        raise InputError(f"--batch-size must be positive, got {args.batch_size}")
    done = score_files(
        bundle,
        args.inputs,
        args.out,
        model=args.model,
        batch_size=args.batch_size,
        fmt=args.format,
        errors=args.errors,
        strict=args.strict,
        threshold=args.threshold,
        fpr=args.fpr,
        maps=args.maps,
        echo_errors=MAX_ERROR_LINES,
    )
    entry = bundle.manifest["anomaly"][args.model]
    if args.threshold is not None:
        origin = "given by --threshold"
    elif args.fpr is not None:
        origin = f"flagging {args.fpr} of the validation digits, --fpr"
    else:
        origin = f"calibrated at fpr {bundle.manifest['anomaly']['fpr']}"
    n, share = done.scored, f" ({100 * done.flagged / done.scored:.2f}%)" if done.scored else ""
    print(
        f"scored {n} images with the {args.model} ({entry['score']}) in {done.seconds:.1f} s "
        f"({n / max(done.seconds, 1e-9):,.0f} images/s): {done.flagged} anomalies{share} above "
        f"the threshold {done.threshold:.6g} ({origin})"
        + ("" if args.out in (None, "-") else f"; wrote {args.out} ({done.fmt})")
        + ("" if args.maps is None else f"; pixel maps in {args.maps}"),
        file=sys.stderr,
    )
    if not done.p_values:
        print(
            f"note: {bundle.directory} stores no validation scores, so the p_value column is "
            "empty; export the bundle again to fill it",
            file=sys.stderr,
        )
    if done.failed:
        more = done.failed - MAX_ERROR_LINES
        print(
            f"{done.failed} records failed and were skipped"
            + (f" ({more} not shown above)" if more > 0 else "")
            + f"; see {done.errors_path}",
            file=sys.stderr,
        )
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    bundle_arg = argparse.ArgumentParser(add_help=False)
    bundle_arg.add_argument(
        "--bundle",
        type=Path,
        default=Path(os.environ.get("MNIST_VAE_BUNDLE", DEFAULT_BUNDLE)),
        help="export bundle folder (default: $MNIST_VAE_BUNDLE or artifacts/export)",
    )
    common = argparse.ArgumentParser(add_help=False, parents=[bundle_arg])
    common.add_argument("--precision", choices=PRECISIONS, default="fp32", help="decoder precision")
    common.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads (default 0: every core this process may use)",
    )
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", parents=[common], help="describe the bundle")
    info.add_argument("--json", action="store_true", help="print the whole manifest")

    gen = sub.add_parser("generate", parents=[common], help="decode latents into digits")
    what = gen.add_mutually_exclusive_group()
    what.add_argument("--n", type=int, default=100, help="digits drawn from the VAE prior")
    what.add_argument("--grid", type=int, metavar="SIDE", help="SIDE x SIDE latent-plane grid")
    what.add_argument("--z", help='latents to decode: "0.4,0.4" or "0,0;1,-1"')
    gen.add_argument("--model", choices=MODELS, default="vae")
    gen.add_argument("--seed", type=int, default=0, help="seed of the prior draws")
    gen.add_argument("--columns", type=int, help="digits per row of the PNG (default: square)")
    gen.add_argument("--scale", type=int, default=1, help="enlarge the PNG this many times")
    gen.add_argument("--out", required=True, help=".png grid or .npy array (n, 28, 28)")

    for name, help_ in (("encode", "images -> latents"), ("score", "images -> anomaly scores")):
        p = sub.add_parser(name, parents=[common], help=help_)
        p.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy .npz IDX .png folder .csv")
        p.add_argument("--model", choices=MODELS, default="vae")
        p.add_argument(
            "--batch-size",
            "--chunk-size",
            dest="batch_size",
            type=int,
            default=DEFAULT_BATCH,
            help=f"images read and run per batch; bounds memory (default {DEFAULT_BATCH})",
        )
        if name == "encode":
            p.add_argument("--out", required=True, help=".csv (source, index, z_...) or .npy")
        else:
            p.add_argument("--out", help="scores .csv or .parquet (default: CSV on stdout)")
            p.add_argument("--format", choices=FORMATS, help="csv or parquet (default: by suffix)")
            p.add_argument(
                "--errors", help="errors file (default: OUT's stem + .errors.csv, written if any)"
            )
            p.add_argument(
                "--strict", action="store_true", help="stop at the first bad record (exit 2)"
            )
            cut = p.add_mutually_exclusive_group()
            cut.add_argument(
                "--fpr",
                type=float,
                help="flag above the threshold that flags this share of the bundle's validation "
                "digits (instead of the calibrated threshold)",
            )
            cut.add_argument("--threshold", type=float, help="flag scores above this value")
            p.add_argument(
                "--maps",
                metavar="DIR",
                help="write per-pixel score maps (NAME.maps.npy per input) and a mosaic of the "
                "most anomalous images to DIR",
            )

    den = sub.add_parser(
        "denoise",
        parents=[common],
        help="noisy images -> the denoiser's clean digits",
        description="Run the bundle's denoiser on every image of the inputs, in order. --out "
        "FILE.npy: one float32 array (n, 28, 28) in [0, 1]; FILE.png: one grid of all of them; "
        "a folder (no suffix, new or empty): one 28x28 PNG per image, 000000.png, 000001.png, "
        "... Nothing is left under the name unless every image was denoised; a bad input "
        "stops it with one error line and exit status 2.",
    )
    den.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy .npz IDX .png folder .csv")
    den.add_argument(
        "--batch-size",
        "--chunk-size",
        dest="batch_size",
        type=int,
        default=DEFAULT_BATCH,
        help=f"images read and run per batch (default {DEFAULT_BATCH})",
    )
    den.add_argument(
        "--out", required=True, help=".npy array (n, 28, 28), .png grid, or a folder of PNGs"
    )
    den.add_argument("--columns", type=int, help=".png grid: digits per row (default: square)")
    den.add_argument("--scale", type=int, default=1, help=".png grid: enlarge this many times")

    ver = sub.add_parser(
        "verify",
        parents=[bundle_arg],
        help="was IMAGE generated by this bundle? exit 0 generated, 1 altered, "
        "3 no provenance, 4 made by another bundle",
    )
    ver.add_argument("image", metavar="IMAGE", type=Path, help="a PNG written by generate")

    exp = sub.add_parser(
        "explorer", parents=[bundle_arg], help="write (and serve) the latent explorer web page"
    )
    exp.add_argument("--out", help="folder to write the site to (default with --serve: a temp one)")
    exp.add_argument("--serve", action="store_true", help="serve the site on 127.0.0.1")
    exp.add_argument("--port", type=int, default=8000, help="port of --serve (0: any free one)")
    exp.add_argument(
        "--ort-dist",
        type=Path,
        help="onnxruntime-web's dist/ folder (default: $ORT_WEB_DIST, else "
        "node_modules/onnxruntime-web/dist in the current folder or a parent)",
    )
    exp.add_argument(
        "--points-from",
        metavar="INPUT",
        help="images to place on the plane when the bundle has no test_latents.npz "
        "(e.g. t10k-images-idx3-ubyte.gz)",
    )

    ev = sub.add_parser(
        "evaluate",
        help="labelled scores -> AUROC, AUPR, F1-max, TPR at the calibrated threshold",
        description="Evaluate a score file of `score` (CSV or Parquet; columns source, index, "
        "score, read by name) against binary labels: a labels file (--labels, columns source, "
        "index and --label-column, default label), a column of the score file (--label-column "
        "alone), or the folder each source lies in (--label-from-folder: DIR/normal/*.png, "
        "DIR/anomaly/*.png). Labels are 0/1, true/false, or --positive NAME and one other "
        "value. Reports AUROC, average precision, F1-max and its threshold, the TPR at the "
        "threshold of --bundle (its manifest, --model's score) or --threshold (else the one the "
        "anomaly column implies) and the TPR at --fpr on these normal images. A bad file stops "
        "it with one error line (file, row, what was expected) and exit status 2.",
    )
    ev.add_argument("scores", metavar="SCORES", help="score file written by score (.csv, .parquet)")
    ev.add_argument(
        "--labels",
        dest="labels_path",
        metavar="FILE",
        help="labels file: columns source, index, label",
    )
    ev.add_argument(
        "--label-column",
        metavar="NAME",
        help="the label column: of --labels (default label), else of the score file itself",
    )
    ev.add_argument(
        "--label-from-folder",
        dest="from_folders",
        action="store_true",
        help="each source's label is the name of the folder it lies in",
    )
    ev.add_argument(
        "--positive",
        default=evaluation.DEFAULT_POSITIVE,
        metavar="NAME",
        help=f"the label of an anomaly, for named labels (default {evaluation.DEFAULT_POSITIVE})",
    )
    ev.add_argument(
        "--bundle",
        type=Path,
        metavar="DIR",
        help="read the calibrated threshold from this bundle's manifest",
    )
    ev.add_argument("--model", choices=MODELS, default="vae", help="whose threshold (--bundle)")
    ev.add_argument("--threshold", type=float, help="flag score > THRESHOLD instead")
    ev.add_argument(
        "--fpr",
        type=float,
        help="target FPR of the TPR-at-FPR line (default: the bundle's, else "
        f"{evaluation.DEFAULT_FPR})",
    )
    ev.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    edge.add_parser(sub, bundle_arg)
    return parser


def cmd_verify(args: argparse.Namespace) -> int:
    verdict = provenance.verify(args.image, args.bundle)
    print(f"{verdict.status}: {verdict.detail}")
    return verdict.exit_status


def cmd_explorer(args: argparse.Namespace) -> int:
    bundle = Bundle.load(args.bundle)
    out = Path(args.out) if args.out else None
    if out is None and not args.serve:
        raise InputError("explorer: give --out SITE_DIR, --serve, or both")
    with explorer.site_folder(out) as folder:
        explorer.build_site(bundle, folder, ort_dist=args.ort_dist, points_from=args.points_from)
        print(f"wrote the explorer to {folder} (open index.html through any static web server)")
        if args.serve:
            explorer.serve_forever(folder, args.port)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    options = inspect.signature(evaluation.evaluate_file).parameters
    result = evaluation.evaluate_file(
        args.scores, **{name: getattr(args, name) for name in options if name != "scores_path"}
    )  # the parser's destinations are evaluate_file's parameter names
    print(evaluation.render(result))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        write_json_atomic(args.json, result.to_json())
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


COMMANDS = {
    "info": cmd_info,
    "generate": cmd_generate,
    "encode": cmd_encode,
    "score": cmd_score,
    "denoise": cmd_denoise,
}
OWN_BUNDLE = {  # they load the bundle themselves (evaluate only with --bundle)
    "verify": cmd_verify,
    "explorer": cmd_explorer,
    "evaluate": cmd_evaluate,
    "edge": edge.command,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in OWN_BUNDLE:
            return OWN_BUNDLE[args.command](args)
        bundle = Bundle.load(args.bundle, precision=args.precision, threads=args.threads)
        return COMMANDS[args.command](bundle, args)
    except (InputError, BundleError, ValueError, explorer.ExplorerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
