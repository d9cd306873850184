"""Run the mnist-vae pipeline: ingest, train_ae, train_vae, train_compact, train_denoiser,
train_detector, evaluate, export.

python run_pipeline.py --mirror ../shared/data/mnist
python run_pipeline.py --config configs/smoke.toml --out /tmp/smoke --stages ingest,train_ae
python run_pipeline.py --set train.epochs=5 --set model.architecture=conv --force
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
DEFAULT_CONFIG = REPO / "configs" / "default.toml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from pipeline.runner import STAGES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TOML config file")
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="artifact folder")
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated subset of {','.join(STAGES)} (default: all)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable)",
    )
    parser.add_argument(
        "--mirror",
        type=Path,
        default=None,
        help="offline MNIST mirror holding the four IDX .gz files (default: $MNIST_MIRROR)",
    )
    parser.add_argument("--force", action="store_true", help="rerun stages even if up to date")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    from pipeline.common import Paths
    from pipeline.config import ConfigError, load_config
    from pipeline.ingest import mirror_from_env
    from pipeline.runner import StageError, run_stages

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    tfds_dir = os.environ.get("TFDS_DATA_DIR")
    paths = Paths(
        out=args.out,
        mirror=mirror_from_env(args.mirror),
        tfds_dir=Path(tfds_dir) if tfds_dir else None,
    )
    try:
        results = run_stages(cfg, paths, names, force=args.force)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, result in results.items():
        print(f"  {name:<14} {result['status']:<8} {result['seconds']:8.1f} s")
    print(f"artifacts in {paths.out.resolve()} (run.json, config.toml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
