"""The latent lattice: evenly spaced points over a box in the first two latent axes.

    z = lattice(low=[-1.6, -1.6], high=[1.6, 1.6], side=10)   # (100, 2) float32, row-major

The one definition behind the runtime's ``Bundle.grid_latents`` (``generate --grid``, the
provenance of grid pictures) and the evaluate stage's grid figures and gap measures, so a grid
cell means the same latent point everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def lattice(
    low: Sequence[float] | np.ndarray, high: Sequence[float] | np.ndarray, side: int
) -> np.ndarray:
    """``side x side`` points spanning [low, high] in latent axes 0 and 1: (side * side, d) float32.

    low, high: (d,) box corners; axes beyond the first two sit at the box centre. Row-major in
    figure order: row 0 is the top (largest z[1]), column 0 the left (smallest z[0]), so decoded
    digits tiled in this order read like the latent scatter plot. With d == 1 the points are
    the ``side`` values of axis 0 repeated on every row.
    """
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    if low.shape != high.shape or low.ndim != 1 or low.size == 0:
        raise ValueError(
            f"lattice: low and high must both be (d,), got {low.shape} and {high.shape}"
        )
    if side <= 0:
        raise ValueError(f"lattice: side must be positive, got {side}")
    points = np.tile((low + high) / 2.0, (side * side, 1))
    points[:, 0] = np.tile(np.linspace(low[0], high[0], side), side)
    if low.size > 1:
        points[:, 1] = np.repeat(np.linspace(high[1], low[1], side), side)
    return points.astype(np.float32)
