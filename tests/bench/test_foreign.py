"""bench/foreign.py: every family of the foreign-input suite turns real digits into valid images on
MNIST's grey levels, seeded, framed as MNIST frames a digit where it draws glyphs, and never a
glyph the rule leaves out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import foreign

N = 24


@pytest.fixture(scope="module")
def digits(mirror_digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first N test digits as float32 in [0, 1], and labels that alternate so every pair
    of families that needs two labels finds them."""
    return mirror_digits[:N].astype(np.float32) / np.float32(255.0), np.arange(N) % 10


@pytest.mark.parametrize("name", list(foreign.FAMILIES))
def test_each_family_is_valid_seeded_and_foreign(name: str, digits):
    images, labels = digits
    out = foreign.build_family(name, images, labels, seed=3)
    assert out.shape == (N, 28, 28) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(np.round(out * 255) / 255, out)  # the 256 grey levels
    np.testing.assert_array_equal(out, foreign.build_family(name, images, labels, seed=3))
    assert not np.array_equal(out, foreign.build_family(name, images, labels, seed=4)) or name in (
        "half_erased",
        "inverted",
    )  # the two families that draw nothing
    changed = np.abs(out - images).reshape(N, -1).max(axis=1)
    assert (changed > 0.1).all(), f"{name} left {int((changed <= 0.1).sum())} inputs as they were"


def test_unknown_family_is_refused(digits):
    with pytest.raises(ValueError, match="unknown family 'glyphs'"):
        foreign.build_family("glyphs", *digits, seed=0)


def test_glyphs_exclude_digit_shapes_and_are_framed_like_mnist(digits):
    excluded = set("".join(foreign.EXCLUDED.values()).replace(" ", ""))
    assert not excluded & set(foreign.LETTERS + foreign.SIGNS)
    assert not set("0123456789") & set(foreign.LETTERS + foreign.SIGNS)
    assert set(foreign.LETTERS).isdisjoint(foreign.SIGNS)
    images, labels = digits
    for name in ("letters", "signs"):
        out = foreign.build_family(name, images, labels, seed=1)
        for image in out:
            side, r, c = foreign.framing(image)
            assert side in range(18, 23)
            assert abs(r - 14) <= 1.0 and abs(c - 14) <= 1.0


def test_families_draw_independently(digits):
    images, labels = digits
    alone = foreign.build_suite(images, labels, seed=2, families=("overlaid",))
    everything = foreign.build_suite(images, labels, seed=2)
    np.testing.assert_array_equal(alone["overlaid"], everything["overlaid"])
    assert list(everything) == list(foreign.FAMILIES)


def test_examples_picture(digits, tmp_path: Path):
    images, labels = digits
    suite = {"clean": images, **foreign.build_suite(images, labels, seed=0)}
    out = tmp_path / "examples.png"
    foreign.draw_examples(suite, out, per_family=8)
    from PIL import Image

    with Image.open(out) as picture:
        assert picture.height == len(suite) * (28 * 2 + 2)
    assert [p.name for p in tmp_path.iterdir()] == ["examples.png"]


def test_framing_reads_the_ink_box_and_the_centre_of_mass():
    image = np.zeros((28, 28), np.float32)
    image[4:24, 12:16] = 1.0  # a bar 20 rows tall, 4 columns wide
    image[0, 0] = 0.01  # below the ink level: left out of the box, a negligible mass
    side, r, c = foreign.framing(image)
    assert side == 20
    assert r == pytest.approx(13.5, abs=0.01) and c == pytest.approx(13.5, abs=0.01)
