"""export.inputs on real MNIST test digits: every format reads back the same pixels, every bad
input gets an error naming its source and index. Runs in the runtime-only environment too."""

from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.inputs import InputError, as_images, iter_chunks, read_images

N = 40


def _expected(digits: np.ndarray) -> np.ndarray:
    return digits.astype(np.float32) / np.float32(255.0)


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_idx_from_the_mirror_reads_all_test_digits(mirror: Path, mirror_digits: np.ndarray):
    digits = mirror_digits[:N]
    images = read_images(mirror / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.float32
    np.testing.assert_array_equal(images[:N], _expected(digits))
    assert images.min() == 0.0 and images.max() == 1.0


@pytest.mark.parametrize("gz", [True, False])
def test_idx_gz_and_raw(tmp_path: Path, mirror_digits: np.ndarray, gz: bool):
    digits = mirror_digits[:N]
    path = _write_idx(tmp_path / ("d.idx3-ubyte" + (".gz" if gz else "")), digits, gz)
    np.testing.assert_array_equal(read_images(path), _expected(digits))


@pytest.mark.parametrize(
    "layout", [lambda d: d, lambda d: d.reshape(len(d), 784), lambda d: d[..., None]]
)
def test_npy_layouts_and_dtypes(tmp_path: Path, mirror_digits: np.ndarray, layout):
    digits = mirror_digits[:N]
    expected = _expected(digits)
    np.save(tmp_path / "u8.npy", layout(digits))
    np.save(tmp_path / "f32.npy", layout(expected))
    np.save(tmp_path / "f64.npy", layout(expected.astype(np.float64)))
    for name in ("u8.npy", "f32.npy", "f64.npy"):
        np.testing.assert_allclose(read_images(tmp_path / name), expected, atol=1e-7)


def test_single_images_in_every_layout(mirror_digits: np.ndarray):
    digits = mirror_digits[:N]
    one = digits[3]
    for array in (one, one.reshape(784), one[..., None]):
        np.testing.assert_array_equal(as_images(array), _expected(digits[3:4]))


def test_npz_only_array_images_key_and_named_key(tmp_path: Path, mirror_digits: np.ndarray):
    digits = mirror_digits[:N]
    np.savez(tmp_path / "one.npz", anything=digits)
    np.savez(tmp_path / "named.npz", images=digits, labels=np.arange(N))
    np.savez(tmp_path / "splits.npz", train_images=digits[:5], test_images=digits)
    for source in ("one.npz", "named.npz", "splits.npz:test_images"):
        np.testing.assert_array_equal(read_images(str(tmp_path / source)), _expected(digits))
    with pytest.raises(InputError, match=r"splits\.npz: holds .*name the array as"):
        read_images(tmp_path / "splits.npz")
    with pytest.raises(InputError, match=r"splits\.npz: has no array 'nope'"):
        read_images(f"{tmp_path / 'splits.npz'}:nope")


def test_png_file_folder_and_rgb(tmp_path: Path, mirror_digits: np.ndarray):
    digits = mirror_digits[:N]
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(digits[i]).save(folder / f"d{i:02d}.png")
    Image.fromarray(np.stack([digits[5]] * 3, axis=-1)).save(tmp_path / "rgb.png")
    (folder / "notes.txt").write_text("not an image")  # ignored: folders contribute .png only
    chunks = list(iter_chunks([folder, tmp_path / "rgb.png"]))
    assert [Path(c.source).name for c in chunks] == [f"d{i:02d}.png" for i in range(5)] + [
        "rgb.png"
    ]
    assert all(c.start == 0 for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), _expected(digits[:6]))


def test_csv_with_kaggle_header_integers_and_floats(tmp_path: Path, mirror_digits: np.ndarray):
    digits = mirror_digits[:N]
    flat = digits.reshape(N, 784)
    with (tmp_path / "kaggle.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", *(f"pixel{i}" for i in range(784))])
        w.writerows([[7, *row] for row in flat])
    with (tmp_path / "floats.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([[f"{v:.9g}" for v in row] for row in _expected(flat)])
    np.testing.assert_array_equal(read_images(tmp_path / "kaggle.csv"), _expected(digits))
    np.testing.assert_allclose(read_images(tmp_path / "floats.csv"), _expected(digits), atol=1e-7)


def test_chunks_carry_source_and_start(tmp_path: Path, mirror_digits: np.ndarray):
    digits = mirror_digits[:N]
    np.save(tmp_path / "d.npy", digits)
    chunks = list(iter_chunks(tmp_path / "d.npy", chunk_size=16))
    assert [c.start for c in chunks] == [0, 16, 32]
    assert [len(c.images) for c in chunks] == [16, 16, 8]
    assert {c.source for c in chunks} == {str(tmp_path / "d.npy")}


def _npy(tmp_path: Path, array: np.ndarray, name: str = "bad.npy") -> Path:
    np.save(tmp_path / name, array)
    return tmp_path / name


def test_bad_arrays_name_source_and_index(tmp_path: Path, mirror_digits: np.ndarray):
    digits = mirror_digits[:N]
    good = _expected(digits)
    cases = []
    nan = good.copy()
    nan[17, 3, 4] = np.nan
    cases.append((nan, r"bad\.npy\[17\]: pixel value nan, expected finite"))
    inf = good.copy()
    inf[21, 0, 0] = np.inf
    cases.append((inf, r"bad\.npy\[21\]: pixel value inf"))
    high = good.copy()
    high[9] *= 255.0  # a float image left in 0-255
    cases.append((high, r"bad\.npy\[9\]: pixel value [0-9.]+, expected floats in \[0, 1\]"))
    low = good.copy()
    low[30, 5, 5] = -0.5
    cases.append((low, r"bad\.npy\[30\]: pixel value -0.5"))
    cases.append((digits.astype(np.int64), r"bad\.npy\[0\]: dtype int64, expected uint8"))
    cases.append((digits[:, :27, :], r"bad\.npy\[0\]: image shape \(27, 28\), expected"))
    cases.append((np.zeros((0, 28, 28), np.float32), r"bad\.npy: no images"))
    for array, message in cases:
        with pytest.raises(InputError, match=message):
            read_images(_npy(tmp_path, array))


def test_errors_in_later_chunks_report_the_index_in_the_source(
    tmp_path: Path, mirror_digits: np.ndarray
):
    digits = mirror_digits[:N]
    bad = _expected(digits)
    bad[37, 10, 10] = 2.0
    with pytest.raises(InputError, match=r"bad\.npy\[37\]: pixel value 2.0"):
        list(iter_chunks(_npy(tmp_path, bad), chunk_size=16))


def test_bad_files_are_named(tmp_path: Path, mirror_digits: np.ndarray):
    digits = mirror_digits[:N]
    with pytest.raises(InputError, match=r"nowhere\.npy: no such file"):
        read_images(tmp_path / "nowhere.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: folder holds no \.png"):
        read_images(tmp_path / "empty")
    (tmp_path / "junk.idx").write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(InputError, match=r"junk\.idx: not an IDX file"):
        read_images(tmp_path / "junk.idx")
    data = _write_idx(tmp_path / "cut.idx", digits, gz=False).read_bytes()
    (tmp_path / "cut.idx").write_bytes(data[:-100])
    with pytest.raises(InputError, match=r"cut\.idx: IDX header promises \(40, 28, 28\)"):
        read_images(tmp_path / "cut.idx")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match=r"big\.png: image is 32x32, expected 28x28"):
        read_images(tmp_path / "big.png")
    (tmp_path / "fake.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"fake\.png: not a readable image"):
        read_images(tmp_path / "fake.png")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match=r"empty\.csv: no images"):
        read_images(tmp_path / "empty.csv")
    rows = digits.reshape(N, 784).tolist()
    rows[4] = rows[4][:780]
    with (tmp_path / "short.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(InputError, match=r"short\.csv\[4\]: row has 780 columns, expected 784"):
        read_images(tmp_path / "short.csv")
    rows = digits.reshape(N, 784).tolist()
    rows[2][0] = 300
    with (tmp_path / "wide.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(InputError, match=r"wide\.csv\[2\]: integer pixel outside 0-255"):
        read_images(tmp_path / "wide.csv")
    with pytest.raises(InputError, match="no input given"):
        read_images([])


def test_labels_idx_is_refused(mirror: Path, tmp_path: Path):
    shutil.copy(mirror / "t10k-labels-idx1-ubyte.gz", tmp_path / "labels.gz")
    with pytest.raises(InputError, match=r"labels\.gz: IDX file of shape \(10000,\) holds labels"):
        read_images(tmp_path / "labels.gz")
