"""Time the runtime's decoders, fp32 against int8, and scoring, on one export bundle.

    python bench/runtime_decode.py artifacts/export [--repeats 20]

Prints a table of median milliseconds per call and the ratio to fp32 measured in the same run.
Needs only the core dependencies (numpy, onnxruntime, Pillow).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from export.bundle import Bundle


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: the first run allocates
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", help="export bundle folder")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    fp32 = Bundle.load(args.bundle)
    int8 = Bundle.load(args.bundle, precision="int8")
    rng = np.random.default_rng(0)
    print(f"{'call':<34} {'batch':>6} {'fp32 ms':>9} {'int8 ms':>9} {'int8/fp32':>10}")
    for model in ("vae", "ae"):
        for batch in (1, 64, 1024):
            z = fp32.grid_latents(32, model)[:batch]  # 1,024 latents over the manifest box
            a = median_ms(lambda z=z, m=model: fp32.generate(z, m), args.repeats)
            b = median_ms(lambda z=z, m=model: int8.generate(z, m), args.repeats)
            print(f"{'generate (' + model + ')':<34} {batch:>6} {a:>9.3f} {b:>9.3f} {b / a:>10.2f}")
    images = rng.random((1024, 28, 28), dtype=np.float32)  # the cost does not depend on pixels
    for model in ("vae", "ae"):
        a = median_ms(lambda m=model: fp32.score(images, m), args.repeats)
        b = median_ms(lambda m=model: int8.score(images, m), args.repeats)
        print(
            f"{'score (' + model + ', encode + decode)':<34} {1024:>6} {a:>9.3f} {b:>9.3f} {b / a:>10.2f}"
        )


if __name__ == "__main__":
    main()
