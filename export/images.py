"""Digits to pictures with Pillow: tile a batch into one grid and save it as PNG.

save_grid(bundle.grid(10), "grid.png")             # 10 x 10 digits, white on black
save_grid(bundle.sample(36, seed=0), "s.png", scale=3)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from export.files import atomic_path


def tile(
    images: np.ndarray, columns: int | None = None, padding: int = 2, fill: float = 0.0
) -> np.ndarray:
    """images (n, h, w) float in [0, 1] -> one float32 picture (rows * (h + padding) - padding,
    columns * (w + padding) - padding), digits row-major.

    ``columns`` defaults to ceil(sqrt(n)); empty cells and the ``padding`` pixels between
    digits hold ``fill`` (0.0: black, the MNIST background).
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or images.shape[0] == 0:
        raise ValueError(f"images has shape {images.shape}, expected (n, height, width), n > 0")
    n, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    if columns <= 0:
        raise ValueError(f"columns must be positive, got {columns}")
    rows = math.ceil(n / columns)
    canvas = np.full(
        (rows * (h + padding) - padding, columns * (w + padding) - padding), fill, np.float32
    )
    for i in range(n):
        r, c = divmod(i, columns)
        top, left = r * (h + padding), c * (w + padding)
        canvas[top : top + h, left : left + w] = images[i]
    return canvas


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Pixels in [0, 1] -> uint8 0-255, rounded to nearest (what every PNG written here holds)."""
    return np.clip(np.rint(np.asarray(pixels) * 255.0), 0, 255).astype(np.uint8)


def picture(
    images: np.ndarray, columns: int | None = None, scale: int = 1, padding: int = 2
) -> Any:
    """``tile(images, columns, padding)`` as a grayscale ``PIL.Image`` (mode "L"), ``scale`` x
    enlarged with nearest-neighbour: exactly the pixels ``save_grid`` writes."""
    from PIL import Image

    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    result = Image.fromarray(to_uint8(tile(images, columns, padding)))  # uint8 2-D: mode "L"
    if scale != 1:
        result = result.resize((result.width * scale, result.height * scale), Image.NEAREST)
    return result


def save_grid(
    images: np.ndarray,
    path: str | Path,
    columns: int | None = None,
    scale: int = 1,
    padding: int = 2,
    text: dict[str, str] | None = None,
) -> Path:
    """Write ``picture(images, columns, scale, padding)`` as an 8-bit grayscale PNG.

    ``text`` becomes PNG text chunks (iTXt, UTF-8): key -> value, e.g. provenance.
    """
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    path = Path(path)
    # readers never see a half-written picture; no fsync: a picture is cheap to redo
    with atomic_path(path, durable=False) as tmp:
        picture(images, columns, scale, padding).save(tmp, format="PNG", pnginfo=info)
    return path
