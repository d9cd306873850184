"""Rounding weights to int8: symmetric scales (per output channel or per block of inputs), rounding
to nearest, GPTQ, and the SmoothQuant equalization that evens a layer's inputs before they are
rounded at run time. numpy only; ``pipeline.quantization`` builds the int8 files with them.

    scales = block_scales(w, block=128)                 # (K / 128, N)
    codes = gptq_codes(w, x_cal, block_steps(scales, 128, len(w)))   # int8 (K, N)
    s = smooth_factors(x_cal, w, alpha=0.5)             # divide the inputs by s, scale w's rows
"""

from __future__ import annotations

import numpy as np

INT8_MAX = 127  # symmetric codes in [-127, 127]
GPTQ_DAMPING = 0.01  # of the Gram matrix's mean diagonal, added to its diagonal
GPTQ_BLOCK = 128  # rows rounded between two updates of the rows after them


def channel_scales(weights: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric int8 scales, one per index of ``axis``: max |w| over the rest / 127."""
    others = tuple(a for a in range(weights.ndim) if a != axis)
    amax = np.abs(weights).max(axis=others)
    return np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)


def broadcast(scales: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Per-channel ``scales`` (c,) shaped to broadcast along ``axis`` of an ``ndim`` array."""
    shape = [1] * ndim
    shape[axis] = -1
    return scales.reshape(shape)


def round_to_nearest(weights: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    """int8 codes of ``weights``: each weight / its channel's scale, rounded."""
    codes = np.round(weights / broadcast(scales, weights.ndim, axis))
    return np.clip(codes, -INT8_MAX, INT8_MAX).astype(np.int8)


def block_scales(weights: np.ndarray, block: int) -> np.ndarray:
    """Symmetric int8 scales (n_blocks, N) of weights (K, N): max |w| over each block of
    ``block`` consecutive input rows of each output column / 127 (the last block padded)."""
    k, n = weights.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), np.float32)
    padded[:k] = weights
    amax = np.abs(padded.reshape(blocks, block, n)).max(axis=1)
    return np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)


def block_steps(scales: np.ndarray, block: int, rows: int) -> np.ndarray:
    """The step of every weight (rows, N) from block scales (n_blocks, N)."""
    return np.repeat(scales, block, axis=0)[:rows]


def gptq_codes(
    weights: np.ndarray, inputs: np.ndarray, steps: np.ndarray, damping: float = GPTQ_DAMPING
) -> np.ndarray:
    """int8 codes for a linear map ``y = inputs @ weights`` that keep ``y`` close on ``inputs``.

    weights (k, n), inputs (m, k) calibration rows, steps: each weight's step, (n,) per output
    column or (k, n) (``block_steps``). Rows of ``weights`` are rounded in order of decreasing
    input energy; after each row its rounding error is spread over the rows not yet rounded,
    weighted by the inverse Gram matrix of the inputs (GPTQ, Frantar et al. 2023), which
    minimises the increase of ||inputs @ (weights - codes * steps)||^2 row by row. Inputs that
    are zero on every calibration row are simply rounded. The steps are fixed beforehand from
    the unrounded weights, so the file's layout does not depend on the order.
    """
    w = weights.astype(np.float64)
    x = inputs.astype(np.float64)
    step = np.broadcast_to(np.asarray(steps, np.float64), w.shape)
    gram = x.T @ x
    dead = np.diag(gram) == 0
    gram[dead, dead] = 1.0
    order = np.argsort(-np.diag(gram), kind="stable")
    w, gram, step = w[order].copy(), gram[np.ix_(order, order)], step[order]
    gram[np.diag_indices_from(gram)] += damping * float(np.mean(np.diag(gram)))
    # upper Cholesky factor of the inverse Gram matrix: inv(gram) = u.T @ u
    u = np.linalg.cholesky(np.linalg.inv(gram)).T
    codes = np.empty(w.shape, dtype=np.int8)
    # rows in blocks (GPTQ's lazy batch updates): within a block every row's error moves onto
    # the block's later rows at once; the rows after the block take the block's errors in one
    # matrix product. The same arithmetic as row by row, in a fraction of the memory traffic.
    for start in range(0, len(w), GPTQ_BLOCK):
        stop = min(start + GPTQ_BLOCK, len(w))
        errors = np.empty((stop - start, w.shape[1]))
        for k in range(start, stop):
            q = np.clip(np.round(w[k] / step[k]), -INT8_MAX, INT8_MAX)
            codes[k] = q
            errors[k - start] = (w[k] - q * step[k]) / u[k, k]
            w[k + 1 : stop] -= np.outer(u[k, k + 1 : stop], errors[k - start])
        w[stop:] -= u[start:stop, stop:].T @ errors
    out = np.empty_like(codes)
    out[order] = codes
    return out


def smooth_factors(inputs: np.ndarray, weights: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel factors s (k,) (Xiao et al. 2023): dividing channel j of
    the inputs (m, k) by s_j and multiplying row j of the weights (k, n) by it leaves the layer's
    output unchanged and moves ``alpha`` of the inputs' spread into the weights, so inputs that
    are rounded at run time (per block of channels) lose less. Normalised to a geometric mean
    of 1; channels that are always zero, or whose weights are, keep s = 1."""
    x_max = np.abs(inputs.reshape(-1, inputs.shape[-1])).max(axis=0).astype(np.float64)
    w_max = np.abs(weights).max(axis=1).astype(np.float64)
    live = (x_max > 0) & (w_max > 0)
    s = np.ones_like(x_max)
    s[live] = x_max[live] ** alpha / w_max[live] ** (1.0 - alpha)
    if live.any():
        s /= np.exp(np.mean(np.log(s[live])))
    return s.astype(np.float32)
