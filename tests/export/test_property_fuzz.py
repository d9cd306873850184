"""Property tests (hypothesis) over the runtime's inputs: arrays of any shape and dtype, NaN/inf,
out-of-range pixels, empty inputs, truncated IDX/PNG/NPY/NPZ files, CSV rows of the wrong
width, and latents of any shape. Every case gives the right images (or scores) or an
``InputError`` / ``ValueError`` that names the source; never another exception, never a
silently wrong answer."""

from __future__ import annotations

import gzip
import io
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import case_counter  # tests/ is on sys.path (rootdir conftest)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from export.inputs import InputError, as_images, read_images

pytestmark = pytest.mark.slow

TRIED: Counter[str] = Counter()  # cases per property


EXHAUSTIVE: dict[str, int] = {}  # test name -> its case count when not FUZZ.max_examples


count_cases = case_counter("runtime fuzz", TRIED, lambda: FUZZ.max_examples, EXHAUSTIVE)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
VALID_LAYOUTS = ((784,), (28, 28), (28, 28, 1))

dtypes = st.sampled_from(
    [np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64]
    + [np.bool_, np.complex64, np.uint16]
)
per_image_shapes = st.sampled_from(VALID_LAYOUTS) | hnp.array_shapes(
    min_dims=0, max_dims=3, min_side=0, max_side=30
)


@st.composite
def image_arrays(draw: st.DrawFn) -> np.ndarray:
    """Arrays of images, mostly well-formed, with some shapes, dtypes and values that are not."""
    dtype = np.dtype(draw(dtypes))
    layout = draw(per_image_shapes)
    batch = draw(st.sampled_from([None, 0, 1, 2, 5]))
    shape = layout if batch is None else (batch, *layout)
    assume(int(np.prod(shape)) <= 20_000)
    if dtype.kind == "f":
        elements = st.floats(0.0, 1.0, width=dtype.itemsize * 8) | st.floats(
            allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8
        )
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))


def _expected(array: np.ndarray) -> np.ndarray | None:
    """What as_images must return for ``array``, or None when it must refuse it."""
    single = array.shape in VALID_LAYOUTS
    batch = array[np.newaxis] if single else array
    if batch.ndim == 0 or batch.shape[0] == 0 or batch.shape[1:] not in VALID_LAYOUTS:
        return None
    if array.dtype == np.uint8:
        return batch.reshape(-1, 28, 28).astype(np.float32) / np.float32(255.0)
    if array.dtype.kind != "f":
        return None
    values = batch.astype(np.float64)
    if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
        return None
    return batch.reshape(-1, 28, 28).astype(np.float32)


@FUZZ
@given(image_arrays())
def test_as_images_is_right_or_refuses(array):
    TRIED["arrays (shape, dtype, NaN/inf, range)"] += 1
    expected = _expected(array)
    if expected is None:
        with pytest.raises(InputError):
            as_images(array, "fuzz")
        return
    got = as_images(array, "fuzz")
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


uint8_images = hnp.arrays(np.uint8, st.tuples(st.integers(1, 4), st.just(28), st.just(28)))


FILE_KINDS = ("idx", "idx.gz", "png", "npy", "npz", "csv")


@st.composite
def image_files(draw: st.DrawFn, kind: str) -> tuple[str, bytes, np.ndarray, bool]:
    """(file name, content, the images written, whether the file is damaged)."""
    images = draw(uint8_images)
    if kind.startswith("idx"):
        data = _idx_bytes(images)
    elif kind == "png":
        images = images[:1]
        data = _png_bytes(images[0])
    elif kind in ("npy", "npz"):
        buf = io.BytesIO()
        (np.save if kind == "npy" else np.savez)(buf, images)
        data = buf.getvalue()
    else:
        rows = images.reshape(len(images), -1).tolist()
        widths = draw(
            st.lists(
                st.sampled_from([784, 784, 784, 783, 785, 1, 2]),
                min_size=len(rows),
                max_size=len(rows),
            )
        )
        lines = [",".join(map(str, (row + row)[:w])) for row, w in zip(rows, widths, strict=True)]
        data = ("\n".join(lines) + "\n").encode()
        # CSV damage is rows of the wrong width; a cut inside a number cannot be told apart
        return f"digits.{kind}", data, images, any(w != 784 for w in widths)
    if kind == "idx.gz":
        data = gzip.compress(data)
    cut = draw(st.none() | st.integers(0, len(data) - 1))
    if cut is not None:  # truncated, as by a full disk or an interrupted copy
        return f"digits.{kind}", data[:cut], images, True
    return f"digits.{kind}", data, images, False


FILE_FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
EXHAUSTIVE["test_files_read_right_or_refuse"] = FILE_FUZZ.max_examples


@pytest.mark.parametrize("kind", FILE_KINDS)
@FILE_FUZZ
@given(data=st.data())
def test_files_read_right_or_refuse(kind, data):
    name, data, images, damaged = data.draw(image_files(kind))
    TRIED[f"files ({name.split('.', 1)[1]}{', damaged' if damaged else ''})"] += 1
    expected = images.astype(np.float32) / np.float32(255.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        if damaged:
            try:
                got = read_images(path)
            except InputError as err:
                assert str(path) in str(err)
                return
            # a cut that spares every pixel (a PNG's trailing checksum) may still read: then it
            # must read right, never as other images
            TRIED[f"files ({kind}, damaged, read intact)"] += 1
            np.testing.assert_array_equal(got, expected)
            return
        np.testing.assert_array_equal(read_images(path), expected)


@FUZZ
@given(image_arrays())
def test_scores_are_finite_or_the_input_is_refused(bundle, array):
    TRIED["Bundle.score inputs"] += 1
    expected = _expected(array)
    if expected is None:
        with pytest.raises(InputError):
            bundle.score(array, "vae")
        return
    scores = bundle.score(array, "vae")
    assert scores.shape == (len(expected),) and np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, bundle.score(expected, "vae"))


latent_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
latents = hnp.arrays(
    st.sampled_from([np.float32, np.float64]),
    latent_shapes,
    elements=st.floats(-5, 5, width=32) | st.floats(allow_nan=True, allow_infinity=True, width=32),
) | hnp.arrays(np.int64, latent_shapes, elements=st.integers(-5, 5))


@FUZZ
@given(latents)
def test_generate_takes_latents_or_refuses(bundle, z):
    TRIED["Bundle.generate latents"] += 1
    d = bundle.latent_dim
    as_rows = z[np.newaxis] if z.ndim == 1 else z
    ok = as_rows.ndim == 2 and as_rows.shape[1] == d and np.isfinite(as_rows).all()
    if not ok:
        with pytest.raises(ValueError):
            bundle.generate(z)
        return
    pixels = bundle.generate(z)
    assert pixels.shape == (len(as_rows), 28, 28)  # no latents: no digits
    assert np.isfinite(pixels).all() and ((pixels >= 0.0) & (pixels <= 1.0)).all()
