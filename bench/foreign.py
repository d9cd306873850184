"""A foreign-input suite: inputs a user would submit that are not one clean handwritten digit.

    from bench.foreign import FAMILIES, build_suite
    suite = build_suite(images, labels, seed=0)          # {family: (n, 28, 28) float32 in [0, 1]}

Beside the MNIST-C-style corruptions of ``bench.corruptions`` (a digit damaged), these are
inputs that are no digit at all, or not one digit. Every family is a function
``(images, labels, rng) -> images``: digits (n, 28, 28) float32 in [0, 1] (the validation
digits when a score is chosen, the test digits when it is reported) and their labels in, as
many foreign inputs out, float32 in [0, 1] rounded to the 256 grey levels of MNIST. Families
that need no digit (letters, signs, blank pages, textures, scribbles) still return
``len(images)`` inputs, so that each family is as large as the split it is built from.

Framing follows MNIST (LeCun et al.): the ink's bounding box is scaled, aspect kept and
antialiased, so that its longer side is 20 pixels, and the result is placed in 28 x 28 with its
centre of mass at pixel (14, 14) (MNIST's own digits average (14.00, 14.01) on validation).

Families (``FAMILIES``):

- ``letters`` and ``signs``: printed letters, and printed signs, rendered with Pillow from the
  DejaVu and Liberation TrueType fonts on the machine (sans, serif, mono, condensed/narrow;
  book, bold, light; upright, oblique/italic; Pillow's built-in font where none is installed
  and now and then beside them), rotated by up to +-12 degrees, strokes thickened or thinned by
  a morphological filter, then framed as MNIST frames a digit. ``LETTERS`` and ``SIGNS`` list
  the glyphs; ``EXCLUDED`` lists those left out and why. The rule (visual, written before any
  model saw a glyph): a glyph is left out when, alone and framed like a digit, it has the shape
  of a digit in common printed or handwritten forms (O o Q D -> 0; I l i j J | ! / \\ ( ) [ ]
  -> 1; Z z -> 2; S s $ -> 5; b G -> 6; T -> 7; B & -> 8; g q -> 9), or when it is a mark too
  small or too plain to frame (. , ' ` " : ; _).
- ``overlaid``: the pixel-wise max of two digits of different labels.
- ``half_erased``: the lower half (rows 14-27) of a digit erased (set to 0), not re-centred.
- ``partial``: the upper, left or right half, or one random quarter, of a digit erased (redrawn
  until at least 30% of the ink is gone).
- ``form_lines``: a digit on a scanned form: a horizontal ruled line crossing the frame, a box
  border around the cell, both, or the two vertical edges of a comb field; lines 1-2 pixels
  wide, grey level 0.5-1.
- ``side_by_side``: two digits of a two-digit number, each cropped to its ink, placed side by
  side with a 1-3 pixel gap and framed together as MNIST frames one digit (each ~half width).
- ``cut_by_frame``: a digit shifted in a random direction until 25-40% of its ink (a random
  target per image) falls outside the 28 x 28 frame.
- ``near_blank``: a blank scan: 1-4 specks (1-2 pixels, grey 0.3-1) or a faint smudge (a
  Gaussian blob of peak 0.1-0.35), or both.
- ``inverted``: a digit with its grey levels inverted (1 - x): dark ink on white paper.
- ``texture``: a photo-like texture: fractal (plasma) noise with random roughness, contrast
  and gamma.
- ``crossed_out``: a digit struck out with one or two strokes (a diagonal, or an X) across its
  ink box (widened to at least 14 pixels, so that a 1's slant does not hide the stroke).
- ``scribble``: a random scribble (a polyline of 8-14 random segments drawn with a round pen),
  framed like a digit. Diagnostic only (``DIAGNOSTIC``), held to no target: some scribbles do
  read as digits.

Every family draws from its own generator, seeded by (seed, the family's name), so adding a
family changes no other family's draw.
"""

from __future__ import annotations

import argparse
import functools
import glob
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import REPO
from bench.corruptions import plasma, stroke
from export.files import atomic_path
from pipeline.common import Paths
from pipeline.data import load_split

SIDE = 28
EXAMPLES = REPO / "docs" / "benchmarks" / "foreign_examples.png"
BOX = 20  # MNIST: the ink's bounding box is scaled so its longer side is 20 pixels
CENTRE = 14.0  # MNIST: centre of mass at pixel (14, 14) (0-based row, column)

Family = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]

# -- glyphs -------------------------------------------------------------------------------------

EXCLUDED = {
    "0-like": "O o Q D",
    "1-like": "I l i j J | ! / \\ ( ) [ ]",
    "2-like": "Z z",
    "5-like": "S s $",
    "6-like": "b G",
    "7-like": "T",
    "8-like": "B &",
    "9-like": "g q",
    "too small or plain to frame": ". , ' ` \" : ; _",
}
LETTERS = "ACEFHKLMNPRUVWXYacdefhkmnprtuvwxy"  # capitals, lower case
SIGNS = "+=%#@*?<>~{}^-"

FONT_GLOBS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans*.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif*.ttf",
    "/usr/share/fonts/truetype/liberation/Liberation*.ttf",
)
RENDER_SIZE = 96  # glyphs are drawn at this size on a 160 x 160 canvas, then framed


@functools.lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    """The TrueType files the letters are drawn from (empty: PIL's built-in font only)."""
    files: list[str] = []
    for pattern in FONT_GLOBS:
        files += sorted(glob.glob(pattern))
    return tuple(files)


@functools.lru_cache(maxsize=64)
def _font(path: str | None, size: int):
    from PIL import ImageFont

    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size)


def render_glyph(char: str, font: str | None, angle: float, pen: int) -> np.ndarray:
    """One glyph on a large canvas, float64 in [0, 1]: drawn, rotated by ``angle`` degrees,
    strokes thickened (``pen`` > 0: a max filter of size 2 pen + 1) or thinned (< 0: a min
    filter)."""
    from PIL import Image, ImageDraw, ImageFilter

    canvas = Image.new("L", (160, 160), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text((80, 80), char, fill=255, font=_font(font, RENDER_SIZE), anchor="mm")
    if pen > 0:
        canvas = canvas.filter(ImageFilter.MaxFilter(2 * pen + 1))
    elif pen < 0:
        canvas = canvas.filter(ImageFilter.MinFilter(2 * -pen + 1))
    canvas = canvas.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=0)
    return np.asarray(canvas, np.float64) / 255.0


# -- MNIST framing ------------------------------------------------------------------------------


def _resize(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """Antialiased resize of a float image (box filter when shrinking, as area averaging)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(a, np.float32), mode="F")
    shrinking = width < a.shape[1] or height < a.shape[0]
    out = img.resize((width, height), Image.BOX if shrinking else Image.BILINEAR)
    return np.asarray(out, np.float64)


def place_by_mass(a: np.ndarray) -> np.ndarray:
    """A small image (h, w <= 28) placed in 28 x 28 with its centre of mass at (14, 14), the
    shift rounded to whole pixels and clipped so that nothing falls outside."""
    h, w = a.shape
    total = a.sum()
    if total <= 0:
        r0, c0 = (SIDE - h) // 2, (SIDE - w) // 2
    else:
        r = (a.sum(axis=1) @ np.arange(h)) / total
        c = (a.sum(axis=0) @ np.arange(w)) / total
        r0 = int(np.clip(round(CENTRE - r), 0, SIDE - h))
        c0 = int(np.clip(round(CENTRE - c), 0, SIDE - w))
    out = np.zeros((SIDE, SIDE))
    out[r0 : r0 + h, c0 : c0 + w] = a
    return out


def ink_box(a: np.ndarray, level: float = 0.05) -> np.ndarray:
    """``a`` cropped to the bounding box of its pixels above ``level`` (whole image if none)."""
    rows = np.nonzero((a > level).any(axis=1))[0]
    cols = np.nonzero((a > level).any(axis=0))[0]
    if rows.size == 0:
        return a
    return a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def frame_mnist(a: np.ndarray) -> np.ndarray:
    """Any ink image (float, 0 = paper) -> 28 x 28 framed as MNIST: the ink box scaled, aspect
    kept, to a longer side of 20, peak ink 1, centre of mass at (14, 14)."""
    a = ink_box(np.asarray(a, np.float64))
    h, w = a.shape
    scale = BOX / max(h, w)
    small = _resize(a, max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.clip(small, 0.0, None)
    peak = small.max()
    if peak > 0:
        small = small / peak
    return place_by_mass(small)


def framing(image: np.ndarray, level: float = 0.05) -> tuple[int, float, float]:
    """How an image (28, 28) is framed: the longer side of its ink box (pixels above ``level``)
    and its centre of mass (row, column); MNIST's digits: 20 and about (14, 14)."""
    rows = np.nonzero((image > level).any(axis=1))[0]
    cols = np.nonzero((image > level).any(axis=0))[0]
    side = int(max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1)
    mass = image / image.sum()
    return (
        side,
        float(mass.sum(axis=1) @ np.arange(SIDE)),
        float(mass.sum(axis=0) @ np.arange(SIDE)),
    )


def to_levels(images: np.ndarray) -> np.ndarray:
    """float images -> float32 in [0, 1] on the 256 grey levels of MNIST (uint8 / 255)."""
    return (np.round(np.clip(images, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


# -- families -----------------------------------------------------------------------------------


def glyphs(chars: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` printed glyphs drawn from ``chars``, each in a random font, slant and stroke,
    framed as MNIST frames a digit: (n, 28, 28) on the grey levels."""
    fonts: list[str | None] = list(font_files()) or [None]
    out = np.empty((n, SIDE, SIDE))
    for k in range(n):
        char = chars[rng.integers(len(chars))]
        font = fonts[rng.integers(len(fonts))]
        if rng.random() < 0.05:  # PIL's built-in font now and then
            font = None
        angle = rng.uniform(-12.0, 12.0)
        pen = int(rng.choice([-1, 0, 0, 1, 2, 3]))
        if font is not None and "Light" in font:  # hairline strokes: thicken, never thin
            pen = max(pen, 1)
        out[k] = frame_mnist(render_glyph(char, font, angle, pen))
    return to_levels(out)


def letters(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return glyphs(LETTERS, len(images), rng)


def signs(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return glyphs(SIGNS, len(images), rng)


def _pairs(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two indices per input, the second a digit of another label."""
    n = len(labels)
    first = rng.permutation(n)
    second = rng.integers(n, size=n)
    clash = labels[second] == labels[first]
    while clash.any():
        second[clash] = rng.integers(n, size=int(clash.sum()))
        clash = labels[second] == labels[first]
    return first, second


def overlaid(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a, b = _pairs(labels, rng)
    return to_levels(np.maximum(images[a], images[b]))


def half_erased(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.array(images, np.float64)
    out[:, SIDE // 2 :, :] = 0.0
    return to_levels(out)


def _erased(image: np.ndarray, kind: int, rng: np.random.Generator) -> np.ndarray:
    out = image.copy()
    h = SIDE // 2
    if kind == 0:
        out[:h, :] = 0.0  # upper half
    elif kind == 1:
        out[:, :h] = 0.0  # left half
    elif kind == 2:
        out[:, h:] = 0.0  # right half
    else:  # a random quarter
        r, c = rng.integers(2, size=2)
        out[r * h : (r + 1) * h, c * h : (c + 1) * h] = 0.0
    return out


def partial(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Upper / left / right half or a random quarter erased, redrawn (up to 8 times, else the
    draw that erased most) until at least 30% of the ink is gone: erasing the empty half of a
    slanted 1 leaves a whole digit, which is no foreign input."""
    out = np.array(images, np.float64)
    for k in range(len(out)):
        total, best, best_gone = out[k].sum(), out[k], -1.0
        for _ in range(8):
            cand = _erased(out[k], int(rng.integers(4)), rng)
            gone = 1.0 - cand.sum() / total
            if gone > best_gone:
                best, best_gone = cand, gone
            if gone >= 0.30:
                break
        out[k] = best
    return to_levels(out)


def _hline(canvas: np.ndarray, row: int, width: int, level: float) -> None:
    canvas[max(row, 0) : min(row + width, SIDE), :] = np.maximum(
        canvas[max(row, 0) : min(row + width, SIDE), :], level
    )


def _vline(canvas: np.ndarray, col: int, width: int, level: float) -> None:
    canvas[:, max(col, 0) : min(col + width, SIDE)] = np.maximum(
        canvas[:, max(col, 0) : min(col + width, SIDE)], level
    )


def form_lines(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.array(images, np.float64)
    for k in range(len(out)):
        kind = rng.integers(4)
        lines = np.zeros((SIDE, SIDE))
        width = int(rng.integers(1, 3))
        level = rng.uniform(0.5, 1.0)
        if kind in (0, 2):  # a ruled line crossing the frame (through or under the digit)
            _hline(lines, int(rng.integers(6, 25)), width, level)
        if kind in (1, 2):  # the cell's box
            inset = int(rng.integers(0, 3))
            _hline(lines, inset, width, level)
            _hline(lines, SIDE - inset - width, width, level)
            _vline(lines, inset, width, level)
            _vline(lines, SIDE - inset - width, width, level)
        if kind == 3:  # a comb field: the cell's two vertical edges
            inset = int(rng.integers(0, 4))
            _vline(lines, inset, width, level)
            _vline(lines, SIDE - inset - width, width, level)
        out[k] = np.maximum(out[k], lines)
    return to_levels(out)


def side_by_side(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(images)
    a, b = rng.permutation(n), rng.integers(n, size=n)  # any two digits: 11 or 77 too
    out = np.empty((n, SIDE, SIDE))
    for k in range(n):
        left, right = ink_box(images[a[k]]), ink_box(images[b[k]])
        gap = int(rng.integers(1, 4))
        h = max(left.shape[0], right.shape[0])
        pair = np.zeros((h, left.shape[1] + gap + right.shape[1]))
        for part, c0 in ((left, 0), (right, left.shape[1] + gap)):
            r0 = (h - part.shape[0]) // 2
            pair[r0 : r0 + part.shape[0], c0 : c0 + part.shape[1]] = part
        out[k] = frame_mnist(pair)
    return to_levels(out)


def _shifted(image: np.ndarray, dr: int, dc: int) -> np.ndarray:
    out = np.zeros_like(image)
    src = image[max(0, -dr) : SIDE - max(0, dr), max(0, -dc) : SIDE - max(0, dc)]
    out[max(0, dr) : max(0, dr) + src.shape[0], max(0, dc) : max(0, dc) + src.shape[1]] = src
    return out


def cut_by_frame(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.empty(images.shape)
    for k, image in enumerate(np.asarray(images, np.float64)):
        target = rng.uniform(0.25, 0.40)
        angle = rng.uniform(0, 2 * np.pi)
        total = image.sum()
        best = image
        for t in np.arange(1.0, 28.0, 0.5):
            dr, dc = int(round(t * np.sin(angle))), int(round(t * np.cos(angle)))
            best = _shifted(image, dr, dc)
            if 1.0 - best.sum() / total >= target:
                break
        out[k] = best
    return to_levels(out)


def _blob(rows: np.ndarray, cols: np.ndarray, r: float, c: float, sigma: float) -> np.ndarray:
    return np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2))


def near_blank(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    out = np.zeros((len(images), SIDE, SIDE))
    for k in range(len(out)):
        kind = rng.integers(3)
        if kind in (0, 2):  # specks
            for _ in range(int(rng.integers(1, 5))):
                r, c = rng.integers(0, SIDE - 1, size=2)
                s = int(rng.integers(1, 3))
                out[k, r : r + s, c : c + s] = np.maximum(
                    out[k, r : r + s, c : c + s], rng.uniform(0.3, 1.0)
                )
        if kind in (1, 2):  # a faint smudge
            blob = rng.uniform(0.1, 0.35) * _blob(
                rows, cols, *rng.uniform(4, 24, size=2), rng.uniform(2.0, 6.0)
            )
            out[k] = np.maximum(out[k], blob)
    return to_levels(out)


def inverted(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return to_levels(1.0 - np.asarray(images, np.float64))


def texture(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(images)
    out = np.empty((n, SIDE, SIDE))
    for k in range(n):
        decay = rng.uniform(1.1, 2.0)
        maps = plasma(1, rng, decay=decay)[0, :SIDE, :SIDE]
        lo, hi = np.sort(rng.uniform(0.0, 1.0, size=2))
        hi = max(hi, lo + 0.3)
        gamma = np.exp(rng.uniform(-0.7, 0.7))
        out[k] = lo + (hi - lo) * maps**gamma
    return to_levels(out)


def crossed_out(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.array(images, np.float64)
    n = len(out)
    boxes = np.empty((n, 4))
    for k in range(n):
        rows = np.nonzero((out[k] > 0.05).any(axis=1))[0]
        cols = np.nonzero((out[k] > 0.05).any(axis=0))[0]
        c_mid, half_w = (cols[0] + cols[-1]) / 2, max((cols[-1] - cols[0]) / 2, 7.0)
        boxes[k] = (c_mid - half_w, rows[0], c_mid + half_w, rows[-1])  # >= 14 wide
    c0, r0, c1, r1 = (boxes + rng.uniform(-2, 2, size=(n, 4))).T
    down = stroke(c0, r0, c1, r1)  # "\"
    c0, r0, c1, r1 = (boxes + rng.uniform(-2, 2, size=(n, 4))).T
    up = stroke(c1, r0, c0, r1)  # "/"
    # one stroke: the diagonal that covers less of the digit's own ink (a slanted 1 or the
    # diagonal of a 2 would hide the other); half the digits get both (an X)
    hides_down = (down * out).sum(axis=(1, 2)) > (up * out).sum(axis=(1, 2))
    one = np.where(hides_down[:, None, None], up, down)
    both = rng.random(n) < 0.5
    lines = np.where(both[:, None, None], np.maximum(down, up), one)
    return to_levels(np.maximum(out, lines * rng.uniform(0.7, 1.0, size=(n, 1, 1))))


def scribble(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw

    out = np.empty((len(images), SIDE, SIDE))
    for k in range(len(out)):
        canvas = Image.new("L", (112, 112), 0)
        draw = ImageDraw.Draw(canvas)
        points = [tuple(rng.uniform(10, 102, size=2))]
        for _ in range(int(rng.integers(8, 15))):
            step = rng.uniform(20, 60)
            angle = rng.uniform(0, 2 * np.pi)
            x = float(np.clip(points[-1][0] + step * np.cos(angle), 6, 106))
            y = float(np.clip(points[-1][1] + step * np.sin(angle), 6, 106))
            points.append((x, y))
        draw.line(points, fill=255, width=int(rng.integers(8, 14)), joint="curve")
        out[k] = frame_mnist(np.asarray(canvas, np.float64) / 255.0)
    return to_levels(out)


DIAGNOSTIC = ("scribble",)  # reported, not held to the targets
FAMILIES: dict[str, Family] = {
    "letters": letters,
    "signs": signs,
    "overlaid": overlaid,
    "half_erased": half_erased,
    "partial": partial,
    "form_lines": form_lines,
    "side_by_side": side_by_side,
    "cut_by_frame": cut_by_frame,
    "near_blank": near_blank,
    "inverted": inverted,
    "texture": texture,
    "crossed_out": crossed_out,
    "scribble": scribble,
}


def build_family(name: str, images: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """One family from ``images`` (n, 28, 28) float32 in [0, 1] and their labels, seeded per
    family: (n, 28, 28) float32 on the 256 grey levels."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; expected one of {list(FAMILIES)}")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return FAMILIES[name](np.asarray(images, np.float32), np.asarray(labels), rng)


def build_suite(
    images: np.ndarray, labels: np.ndarray, seed: int, families: tuple[str, ...] | None = None
) -> dict[str, np.ndarray]:
    """Every family (or ``families``) from the same digits: {name: (n, 28, 28) float32}."""
    return {name: build_family(name, images, labels, seed) for name in families or FAMILIES}


def draw_examples(suite: dict[str, np.ndarray], path: Path, per_family: int = 16) -> None:
    """A PNG: one row per family, ``per_family`` examples 2x upscaled, names on the left;
    written atomically."""
    from PIL import Image, ImageDraw

    scale, label_w = 2, 110
    cell = SIDE * scale + 2
    grid = Image.new("L", (label_w + per_family * cell, len(suite) * cell), 60)
    draw = ImageDraw.Draw(grid)
    for i, (name, imgs) in enumerate(suite.items()):
        draw.text((4, i * cell + cell // 2 - 6), name, fill=255)
        for j, img in enumerate(imgs[:per_family]):
            tile = Image.fromarray(np.uint8(np.round(img * 255))).resize(
                (SIDE * scale, SIDE * scale), Image.NEAREST
            )
            grid.paste(tile, (label_w + j * cell + 1, i * cell + 1))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")


def main(argv: list[str] | None = None) -> int:
    """Draw examples of every family from a run's validation digits."""
    parser = argparse.ArgumentParser(description=draw_examples.__doc__.split(";")[0])
    parser.add_argument("--run", type=Path, default=Path("artifacts"), help="a pipeline run")
    parser.add_argument("--out", type=Path, default=EXAMPLES, help="the PNG to write")
    parser.add_argument("--seed", type=int, default=0, help="the suite's seed")
    args = parser.parse_args(argv)
    images, labels = load_split(Paths(args.run).dataset, "validation")
    suite = {"clean": images[:16], **build_suite(images[:16], labels[:16], seed=args.seed)}
    draw_examples(suite, args.out)
    print(f"wrote {args.out}: {', '.join(suite)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
