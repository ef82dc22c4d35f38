"""Tests of aekit.datasets: every source, the split rules, the spec round trip and every bad input.

All data are written small in tmp_path (IDX, npy/npz, CSV/TSV, PNG folders); the real Fashion-MNIST
files are used only when the system copy is installed. Messages are checked for the file name and
a hint, since errors must teach.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from aekit import datasets
from aekit.datasets import DataConfig, Dataset, available, load
from aekit.errors import ConfigError, DataError

FASHION = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------------------------------
# helpers: tiny files written in tmp_path


def write_idx(path: Path, arr: np.ndarray, *, magic: int | None = None, gz: bool = False, cut: int = 0) -> Path:
    """Write a uint8 IDX file (magic 0x0803 for 3-D images, 0x0801 for 1-D labels); ``cut`` drops bytes."""
    arr = np.asarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x00000800 | arr.ndim
    raw = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    if cut:
        raw = raw[:-cut]
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_idx_folder(folder: Path, *, n_train=30, n_test=10, hw=(5, 6), gz=True, style="dash", seed=0):
    """Four IDX files of random pixels and labels 0..9; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train": (rng.integers(0, 256, (n_train, *hw)), rng.integers(0, 10, n_train)),
        "t10k": (rng.integers(0, 256, (n_test, *hw)), rng.integers(0, 10, n_test)),
    }
    suffix = ".gz" if gz else ""
    for split, (x, y) in arrays.items():
        if style == "dash":
            write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", x, gz=gz)
            write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", y, gz=gz)
        else:
            write_idx(folder / f"{split}-images.idx3-ubyte{suffix}", x, gz=gz)
            write_idx(folder / f"{split}-labels.idx1-ubyte{suffix}", y, gz=gz)
    return arrays


def write_png(path: Path, size=(4, 3), mode="L", value=0) -> Path:
    """A uniform image of ``size`` = (width, height); value is an int (L) or a tuple (RGB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def csv_table(n=40, seed=0, labels=("cat", "dog", "bird"), sep=","):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -2.0]
    lab = [labels[i % len(labels)] for i in range(n)]
    lines = [sep.join(["a", "b", "c", "label"])]
    lines += [sep.join([*(repr(float(v)) for v in row), lab[i]]) for i, row in enumerate(x)]
    return "\n".join(lines) + "\n", x, lab


def assert_same(a: Dataset, b: Dataset):
    for name in ("train", "val", "test"):
        xa, ya = a.split(name)
        xb, yb = b.split(name)
        assert torch.equal(xa, xb)
        assert (ya is None and yb is None) or torch.equal(ya, yb)
    assert a.shape == b.shape and a.kind == b.kind and a.class_names == b.class_names
    assert a.feature_names == b.feature_names
    if a.mean is not None:
        assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)


def roundtrip(ds: Dataset) -> Dataset:
    """load(spec) after a JSON round trip of spec.to_dict(), as a run directory would store it.

    The spec survives the trip unchanged and the rebuilt dataset has the same spec.
    """
    cfg = DataConfig.from_dict(json.loads(json.dumps(ds.spec.to_dict())))
    assert isinstance(ds.spec, DataConfig) and cfg == ds.spec
    rebuilt = load(cfg)
    assert rebuilt.spec == ds.spec
    return rebuilt


def snapshot(path: Path):
    files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file())
    return {str(q): (q.read_bytes(), q.stat().st_mtime_ns) for q in files}


def rows_counter(x: torch.Tensor):
    return collections.Counter(r.tobytes() for r in x.reshape(len(x), -1).numpy())


# --------------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def test_digits_shapes_range_labels(digits):
    ds = digits
    assert (ds.name, ds.kind, ds.shape, ds.dim, ds.num_classes) == ("digits", "image", (1, 8, 8), 64, 10)
    assert ds.class_names == [str(k) for k in range(10)]
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (1258, 180, 359)
    for name in ("train", "val", "test"):
        x, y = ds.split(name)
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8) and x.is_contiguous()
        assert y.dtype == torch.int64 and y.shape == (len(x),)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert set(y.tolist()) <= set(range(10))
    assert float(ds.x_train.max()) == 1.0 and ds.mean is None and ds.std is None
    assert ds.feature_names is None


def test_digits_splits_partition_the_data_and_are_reproducible(digits):
    from sklearn.datasets import load_digits

    ref = torch.from_numpy((load_digits().images / 16.0).astype(np.float32))
    ds = digits
    all_x = torch.cat([ds.x_train, ds.x_val, ds.x_test])
    assert rows_counter(all_x) == rows_counter(ref)  # every sample exactly once: the splits are disjoint
    assert_same(ds, load("digits", seed=0))
    other = load("digits", seed=1)
    assert not torch.equal(other.x_train, ds.x_train)
    assert rows_counter(torch.cat([other.x_train, other.x_val, other.x_test])) == rows_counter(ref)


def test_digits_fractions_and_limit():
    ds = load("digits", val_fraction=0.25, test_fraction=0.25, limit=100, seed=3)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (50, 25, 25)
    none = load("digits", val_fraction=0.0, test_fraction=0.0, limit=10)
    assert none.x_val.shape == (0, 1, 8, 8) and none.y_test.shape == (0,) and len(none.x_train) == 10


def test_spec_round_trip_digits(digits):
    spec = digits.spec
    assert spec.name_or_path == "digits" and spec.seed == 0 and spec.stats is None
    assert_same(digits, roundtrip(digits))
    limited = load("digits", limit=50, seed=7, val_fraction=0.2)
    assert_same(limited, roundtrip(limited))


def test_dataset_methods(digits):
    ds = digits
    with pytest.raises(ConfigError, match="unknown split 'validation'.*train, val, test"):
        ds.split("validation")
    x = ds.x_val[:3]
    assert ds.to_user_units(x) is x
    moved = ds.to("cpu")
    assert moved.x_train.device.type == "cpu" and moved is not ds
    sub = ds.subset_class(3)
    assert set(sub.y_train.tolist()) == {3} and set(sub.y_val.tolist()) == {3}
    assert int((ds.y_train == 3).sum()) == len(sub.x_train)
    assert torch.equal(sub.x_test, ds.x_test) and torch.equal(sub.y_test, ds.y_test)
    assert torch.equal(ds.subset_class("3").x_train, sub.x_train)
    with pytest.raises(DataError, match="normal class 12 is not a class.*0..9"):
        ds.subset_class(12)
    assert "Dataset(name='digits'" in repr(ds) and "train=1258" in repr(ds)


# --------------------------------------------------------------------------------------------------
# IDX: synthetic files, then the real Fashion-MNIST when it is installed


@pytest.mark.parametrize("gz,style", [(True, "dash"), (False, "dash"), (False, "dot"), (True, "dot")])
def test_idx_reader_on_synthetic_files(tmp_path, gz, style):
    arrays = write_idx_folder(tmp_path / "idx", gz=gz, style=style)
    ds = load("fashion-mnist", data_dir=str(tmp_path / "idx"), val_fraction=0.2)
    (x_tr, y_tr), (x_te, y_te) = arrays["train"], arrays["t10k"]
    assert ds.shape == (1, 5, 6) and ds.class_names[0] == "T-shirt/top" and ds.num_classes == 10
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (24, 6, 10)
    # the official test split is kept in order; train + val are the official training set
    expect_test = torch.from_numpy(x_te.astype(np.uint8)).float().div(255).unsqueeze(1)
    assert torch.equal(ds.x_test, expect_test) and ds.y_test.tolist() == y_te.tolist()
    ref = torch.from_numpy(x_tr.astype(np.uint8)).float().div(255).unsqueeze(1)
    assert rows_counter(torch.cat([ds.x_train, ds.x_val])) == rows_counter(ref)
    # labels travel with their images
    lookup = {r.tobytes(): int(lab) for r, lab in zip(ref.reshape(30, -1).numpy(), y_tr, strict=True)}
    assert [lookup[r.tobytes()] for r in ds.x_train.reshape(24, -1).numpy()] == ds.y_train.tolist()
    assert_same(ds, roundtrip(ds))
    assert ds.spec.data_dir == str((tmp_path / "idx").resolve())
    mn = load("mnist", data_dir=tmp_path / "idx")
    assert mn.name == "mnist" and mn.class_names == [str(k) for k in range(10)]


def test_idx_val_is_last_part_of_a_seeded_permutation_and_limit(tmp_path):
    write_idx_folder(tmp_path, n_train=30, n_test=10)
    a = load("fashion-mnist", data_dir=tmp_path, val_fraction=0.1)
    b = load("fashion-mnist", data_dir=tmp_path, val_fraction=0.3)
    # the same permutation: a larger val_fraction moves more of its tail into validation
    assert torch.equal(a.x_train[:21], b.x_train) and torch.equal(a.x_train[21:], b.x_val[:6])
    lim = load("fashion-mnist", data_dir=tmp_path, limit=10)
    assert (len(lim.x_train), len(lim.x_val), len(lim.x_test)) == (9, 1, 10)
    assert torch.equal(lim.x_train, a.x_train[:9])
    lim4 = load("fashion-mnist", data_dir=tmp_path, limit=4, val_fraction=0.0)
    assert (len(lim4.x_train), len(lim4.x_val), len(lim4.x_test)) == (4, 0, 4)
    assert_same(lim4, roundtrip(lim4))


@given(kind=st.sampled_from(["images", "labels"]), dims=st.lists(st.integers(0, 6), min_size=3, max_size=3),
       gz=st.booleans(), seed=st.integers(0, 99))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_idx_round_trip_property(tmp_path, kind, dims, gz, seed):
    shape = dims if kind == "images" else dims[:1]
    arr = np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)
    path = write_idx(tmp_path / "f.idx", arr, gz=gz)
    out = datasets.idx._read_idx(path, kind)
    assert out.dtype == np.uint8 and out.shape == arr.shape and np.array_equal(out, arr)


@pytest.mark.skipif(not FASHION.is_dir(), reason="no Fashion-MNIST (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_system_copy_with_limit():
    ds = load("fashion-mnist", limit=60)
    assert (ds.name, ds.shape, ds.num_classes) == ("fashion-mnist", (1, 28, 28), 10)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (54, 6, 60)
    assert ds.x_train.dtype == torch.float32 and 0 <= float(ds.x_train.min()) <= float(ds.x_train.max()) <= 1
    assert ds.class_names[9] == "Ankle boot" and ds.spec.data_dir is None
    assert_same(ds, roundtrip(ds))
    assert any(d["name"] == "fashion-mnist" and d["status"] == "available" for d in available())


def test_idx_missing_folder_and_files(tmp_path):
    with pytest.raises(DataError, match=r"nowhere does not exist.*train-images-idx3-ubyte.*apt-get install"):
        load("fashion-mnist", data_dir=str(tmp_path / "nowhere"))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 3, 3)), gz=True)
    with pytest.raises(DataError, match=r"missing IDX file\(s\) in .*train-labels-idx1-ubyte\[\.gz\].*"
                                        r"t10k-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"):
        load("fashion-mnist", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="mnist: there is no system copy.*--data-dir"):
        load("mnist")


def test_idx_bad_files(tmp_path):
    write_idx_folder(tmp_path, gz=False)
    bad = tmp_path / "train-labels-idx1-ubyte"
    original = bad.read_bytes()

    write_idx(bad, np.zeros((30, 5, 6)), magic=0x00000803)  # an images file where labels belong
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: bad magic number 0x00000803.*swapped"):
        load("fashion-mnist", data_dir=tmp_path)
    bad.write_bytes(b"hello world, not idx")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: bad magic number.*download it again"):
        load("fashion-mnist", data_dir=tmp_path)

    write_idx(bad, np.zeros(30), cut=7)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: the header announces 30 = 30 bytes of data "
                                        r"but 23 follow: the file is truncated"):
        load("fashion-mnist", data_dir=tmp_path)
    bad.write_bytes(original[:6])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: the IDX header is cut short"):
        load("fashion-mnist", data_dir=tmp_path)

    write_idx(bad, np.zeros(29))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: 29 labels for 30 images.*download both"):
        load("fashion-mnist", data_dir=tmp_path)

    write_idx(bad, np.full(30, 11))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: label 11 at index 0.*0\.\.9"):
        load("fashion-mnist", data_dir=tmp_path)

    bad.unlink()
    gzpath = tmp_path / "train-labels-idx1-ubyte.gz"
    gzpath.write_bytes(gzip.compress(original)[:-12])  # cut short
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: the gzip data is damaged"):
        load("fashion-mnist", data_dir=tmp_path)


def test_available_reports_sources(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets.idx, "FASHION_MNIST_DIR", str(tmp_path))
    got = {d["name"]: d for d in available()}
    assert list(got) == ["digits", "fashion-mnist", "mnist"]
    assert all(set(d) == {"name", "kind", "status", "detail"} for d in got.values())
    assert got["digits"]["status"] == "available"
    assert got["fashion-mnist"]["status"] == "missing" and "apt-get install" in got["fashion-mnist"]["detail"]
    write_idx_folder(tmp_path)
    assert {d["name"]: d for d in available()}["fashion-mnist"]["status"] == "available"
    assert got["mnist"]["status"] == "missing" and "--data-dir" in got["mnist"]["detail"]


# --------------------------------------------------------------------------------------------------
# npy / npz


def test_npy_table_and_npz_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(50, 4))
    np.save(tmp_path / "t.npy", x)
    ds = load(str(tmp_path / "t.npy"))
    assert (ds.name, ds.kind, ds.shape, ds.num_classes, ds.y_train) == ("t.npy", "table", (4,), 0, None)
    assert torch.allclose(ds.x_train.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(ds.x_train.std(0, unbiased=False), torch.ones(4), atol=1e-5)
    assert_same(ds, roundtrip(ds))
    assert ds.spec.name_or_path == str(tmp_path / "t.npy") and len(ds.spec.stats["mean"]) == 4

    y = np.array(["b", "a", "c", "a", "b"] * 10)
    np.savez(tmp_path / "l.npz", x=x, y=y)
    ds = load(tmp_path / "l.npz")
    assert ds.class_names == ["a", "b", "c"] and ds.num_classes == 3
    all_y = torch.cat([ds.y_train, ds.y_val, ds.y_test])
    assert collections.Counter(all_y.tolist()) == {0: 20, 1: 20, 2: 10}
    assert_same(ds, roundtrip(ds))

    np.savez(tmp_path / "ints.npz", x=x, y=np.arange(50) % 3 * 10)
    assert load(tmp_path / "ints.npz").class_names == ["0", "10", "20"]
    np.savez(tmp_path / "single.npz", data=x)
    assert load(tmp_path / "single.npz").shape == (4,)
    np.savez(tmp_path / "two.npz", a=x, b=x)
    with pytest.raises(DataError, match=r"two\.npz: expected an array named 'x'.*'a', 'b'.*np\.savez"):
        load(tmp_path / "two.npz")
    np.savez(tmp_path / "ylen.npz", x=x, y=np.arange(49))
    with pytest.raises(DataError, match=r"ylen\.npz: labels 'y' have shape \(49,\) but 'x' has 50 samples"):
        load(tmp_path / "ylen.npz")


def test_npy_image_layouts(tmp_path):
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (20, 6, 5, 3), dtype=np.uint8)  # (N, H, W, C)
    np.save(tmp_path / "hwc.npy", u8)
    ds = load(tmp_path / "hwc.npy", val_fraction=0, test_fraction=0)
    assert ds.kind == "image" and ds.shape == (3, 6, 5) and ds.mean is None
    want = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
    assert rows_counter(ds.x_train) == rows_counter(want)
    np.save(tmp_path / "chw.npy", u8.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    assert load(tmp_path / "chw.npy").shape == (3, 6, 5)
    np.save(tmp_path / "hw.npy", rng.random((20, 7, 7)))
    assert load(tmp_path / "hw.npy").shape == (1, 7, 7)
    np.save(tmp_path / "both.npy", rng.integers(0, 256, (20, 1, 4, 4), dtype=np.uint8))
    assert load(tmp_path / "both.npy").shape == (1, 4, 4)  # both layouts fit: channels-first wins
    np.save(tmp_path / "rgba2.npy", rng.integers(0, 256, (20, 6, 6, 4), dtype=np.uint8))
    assert load(tmp_path / "rgba2.npy").shape == (4, 6, 6)
    # images ignore stats, tables need matching ones
    img = load(tmp_path / "hw.npy", stats={"mean": [0.0], "std": [1.0]})
    assert img.mean is None and img.spec.stats is None

    np.save(tmp_path / "big.npy", rng.random((20, 7, 7)) * 255)
    with pytest.raises(DataError, match=r"big\.npy: image values must lie in \[0, 1\].*divide.*255.*2-D"):
        load(tmp_path / "big.npy")
    np.save(tmp_path / "five.npy", np.zeros((20, 2, 5, 5, 5)))
    with pytest.raises(DataError, match=r"five\.npy: cannot tell what an array of shape \(20, 2, 5, 5, 5\)"):
        load(tmp_path / "five.npy")
    np.save(tmp_path / "one.npy", np.zeros(20))
    with pytest.raises(DataError, match=r"one\.npy: .*reshape it to \(N, 1\)"):
        load(tmp_path / "one.npy")
    np.save(tmp_path / "chan.npy", np.zeros((20, 5, 5, 5)))
    with pytest.raises(DataError, match=r"chan\.npy: an image array of shape \(20, 5, 5, 5\) has no channel"):
        load(tmp_path / "chan.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None]), allow_pickle=True)
    with pytest.raises(DataError, match=r"obj\.npy: holds Python objects.*safety"):
        load(tmp_path / "obj.npy")
    write_text(tmp_path / "fake.npy", "not numpy")
    with pytest.raises(DataError, match=r"fake\.npy: not a \.npy file.*np\.save"):
        load(tmp_path / "fake.npy")


@pytest.mark.parametrize("value,label", [(np.nan, "1 NaN, 0 Inf"), (np.inf, "0 NaN, 1 Inf")])
def test_non_finite_npy(tmp_path, value, label):
    x = np.zeros((10, 3))
    x[4, 2] = value
    np.save(tmp_path / "t.npy", x)
    with pytest.raises(DataError, match=rf"t\.npy: 1 non-finite value\(s\) \({label}\), first at row 4, "
                                        r"column 2 \(0-based\); remove those rows or fill"):
        load(tmp_path / "t.npy")
    img = np.zeros((10, 4, 4), dtype=np.float32)
    img[7, 1, 3] = value
    img[8, 0, 0] = np.nan
    np.save(tmp_path / "i.npy", img)
    with pytest.raises(DataError, match=r"i\.npy: 2 non-finite value\(s\).*first at sample 7, "
                                        r"index \(7, 1, 3\).*remove those images"):
        load(tmp_path / "i.npy")


def test_empty_npy(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 3)))
    with pytest.raises(DataError, match=r"e\.npy: the array has no samples.*empty"):
        load(tmp_path / "e.npy")
    np.save(tmp_path / "w.npy", np.zeros((5, 0)))
    with pytest.raises(DataError, match=r"w\.npy: the table has 0 columns"):
        load(tmp_path / "w.npy")


# --------------------------------------------------------------------------------------------------
# CSV / TSV


def test_csv_with_string_labels_standardized_by_train_split(tmp_path):
    text, x, lab = csv_table(n=40)
    path = write_text(tmp_path / "t.csv", text)
    ds = load(str(path), label_column="label")
    assert (ds.name, ds.kind, ds.shape) == ("t.csv", "table", (3,))
    assert ds.feature_names == ["a", "b", "c"] and ds.class_names == ["bird", "cat", "dog"]
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (28, 4, 8)
    assert torch.allclose(ds.x_train.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(ds.x_train.std(0, unbiased=False), torch.ones(3), atol=1e-5)
    assert not torch.allclose(ds.x_test.mean(0), torch.zeros(3), atol=1e-5)  # test uses train statistics
    # back to user units: the original rows, with their labels
    back = ds.to_user_units(torch.cat([ds.x_train, ds.x_val, ds.x_test])).double().numpy()
    labels = torch.cat([ds.y_train, ds.y_val, ds.y_test]).tolist()
    got = sorted((tuple(np.round(r, 4)), ds.class_names[k]) for r, k in zip(back, labels, strict=True))
    want = sorted((tuple(np.round(r, 4)), s) for r, s in zip(x, lab, strict=True))
    assert got == want
    assert_same(ds, roundtrip(ds))
    assert ds.spec.label_column == "label" and ds.spec.stats["std"] == ds.std.tolist()


def test_tsv_txt_features_and_numeric_label_order(tmp_path):
    text, _, _ = csv_table(n=30, labels=("10", "2", "1"), sep="\t")
    tsv = load(write_text(tmp_path / "t.tsv", text), label_column="label", features=["c", "a"])
    assert tsv.feature_names == ["c", "a"] and tsv.shape == (2,)
    assert tsv.class_names == ["1", "2", "10"]  # numeric labels sort by value
    txt = load(write_text(tmp_path / "t.txt", text.replace("\t", ";")), label_column="label", features=["c", "a"])
    assert_same(tsv, txt)
    unlabeled = load(write_text(tmp_path / "u.csv", text.replace("\t", ",")), features=["a", "b"])
    assert unlabeled.y_train is None and unlabeled.num_classes == 0 and unlabeled.class_names is None
    strings = write_text(tmp_path / "s.csv", csv_table(n=10)[0])
    with pytest.raises(DataError, match=r"s\.csv: column 'label' has the non-numeric value 'cat' at line 2"):
        load(strings)


def test_csv_quoted_fields_blank_lines_and_crlf_match_the_plain_file(tmp_path):
    plain = write_text(tmp_path / "p.csv", "x,y,name\n1,2,a\n3,4,b\n5,6,a\n7,8,b\n9,10,a\n")
    fancy = tmp_path / "f.csv"
    fancy.write_bytes(b'\xef\xbb\xbf"x","y","name"\r\n\r\n1,2,"a"\r\n 3 ,4,b\r\n5,"6",a\r\n\r\n7,8,b\r\n9,10,a')
    a = load(plain, label_column="name", val_fraction=0.2, test_fraction=0.2)
    b = load(fancy, label_column="name", val_fraction=0.2, test_fraction=0.2)
    assert_same(a, b)


@given(data=st.lists(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=3, max_size=3), min_size=5,
                     max_size=20), quote=st.booleans())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_csv_fast_and_csv_module_paths_agree(tmp_path, data, quote):
    q = '"' if quote else ""
    text = "a,b,c\n" + "".join(",".join(f"{q}{v!r}{q}" for v in row) + "\n" for row in data)
    path = write_text(tmp_path / "h.csv", text)
    x = load(path, val_fraction=0, test_fraction=0)
    fast = datasets.tables._parse_table_fast(text, ",", 3, [0, 1, 2], None)
    slow = datasets.tables._parse_table_slow(path, text, ",", ["a", "b", "c"], ["a", "b", "c"], [0, 1, 2], None)
    assert np.array_equal(slow[0], np.array(data, dtype=np.float64))
    if not quote:
        assert np.array_equal(fast[0], slow[0])
    assert len(x.x_train) == len(data)


def test_csv_stats_forcing(tmp_path):
    text, x, _ = csv_table(n=20)
    path = write_text(tmp_path / "t.csv", text)
    ds = load(path, label_column="label", stats={"mean": [1.0, 2.0, 3.0], "std": [2.0, 4.0, 0.5]})
    assert ds.mean.tolist() == [1.0, 2.0, 3.0] and ds.std.tolist() == [2.0, 4.0, 0.5]
    got = ds.to_user_units(torch.cat([ds.x_train, ds.x_val, ds.x_test])).double().numpy()
    assert sorted(np.round(got[:, 0], 4)) == sorted(np.round(x[:, 0], 4))
    assert_same(ds, roundtrip(ds))
    with pytest.raises(ConfigError, match=r"stats: 'mean' has 2 values but .*t\.csv has 3 features"):
        load(path, label_column="label", stats={"mean": [1.0, 2.0], "std": [1.0, 1.0]})
    with pytest.raises(ConfigError, match=r"stats: 'std' must hold finite numbers > 0"):
        load(path, label_column="label", stats={"mean": [0.0] * 3, "std": [1.0, 0.0, 1.0]})
    with pytest.raises(ConfigError, match=r"stats: expected \{'mean'"):
        load(path, label_column="label", stats={"mu": [0.0] * 3})


def test_constant_column_gets_unit_std(tmp_path):
    path = write_text(tmp_path / "c.csv", "a,b\n" + "".join(f"{i},0.1\n" for i in range(20)))
    ds = load(path)
    assert ds.std[1].item() == 1.0 and float(ds.x_train[:, 1].abs().max()) < 1e-6


@pytest.mark.parametrize("value", ["nan", "inf", "-Inf"])
def test_non_finite_csv(tmp_path, value):
    path = write_text(tmp_path / "n.csv", f"a,b,y\n1,2,u\n3,4,v\n5,{value},u\n7,8,v\n")
    with pytest.raises(DataError, match=r"n\.csv: 1 non-finite value\(s\).*first at line 4 \(data row 3\), "
                                        r"column 'b'; remove those rows or fill"):
        load(path, label_column="y")


def test_csv_ragged_row(tmp_path):
    path = write_text(tmp_path / "r.csv", "a,b,c\n1,2,3\n4,5,6\n\n7,8\n9,10,11\n")
    with pytest.raises(DataError, match=r"r\.csv: line 5 has 2 fields but the header has 3 \(1 such line"):
        load(path)
    quoted = write_text(tmp_path / "q.csv", 'a,b,c\n"1",2,3\n4,5,6,7\n')
    with pytest.raises(DataError, match=r"q\.csv: line 3 has 4 fields but the header has 3"):
        load(quoted)


def test_csv_non_numeric_and_empty_values(tmp_path):
    path = write_text(tmp_path / "s.csv", "a,color,b\n1,red,2\n3,blue,4\n")
    with pytest.raises(DataError, match=r"s\.csv: column 'color' has the non-numeric value 'red' at line 2 "
                                        r"\(data row 1\).*--features.*--label-column color"):
        load(path)
    ds = load(path, label_column="color", val_fraction=0, test_fraction=0)
    assert ds.class_names == ["blue", "red"]
    nolabel = write_text(tmp_path / "l.csv", "a,y\n1,x\n2, \n3,z\n")
    with pytest.raises(DataError, match=r"l\.csv \(label column 'y'\): 1 empty label\(s\), first at line 3 "
                                        r"\(data row 2\).*fill them in or drop"):
        load(nolabel, label_column="y")
    holes = write_text(tmp_path / "h.csv", "a,b\n1,2\n3,\n")
    with pytest.raises(DataError, match=r"h\.csv: column 'b' has an empty value \(missing data\) at line 3"):
        load(holes)


def test_csv_missing_columns_and_bad_headers(tmp_path):
    path = write_text(tmp_path / "t.csv", "a,b,kind\n1,2,x\n3,4,y\n")
    with pytest.raises(DataError, match=r"t\.csv: label column 'label' not found \(--label-column\); "
                                        r"the columns are: 'a', 'b', 'kind'"):
        load(path, label_column="label")
    with pytest.raises(DataError, match=r"t\.csv: feature column\(s\) 'z' not found \(--features\)"):
        load(path, features=["a", "z"])
    with pytest.raises(ConfigError, match="features: the label column 'kind' is also listed"):
        load(path, label_column="kind", features=["a", "kind"])
    nohead = write_text(tmp_path / "nh.csv", "1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match=r"nh\.csv: the first line .* looks like data.*header line"):
        load(nohead)
    dup = write_text(tmp_path / "d.csv", "a,a,b\n1,2,3\n")
    with pytest.raises(DataError, match=r"d\.csv: column name\(s\) appear more than once.*: a;"):
        load(dup)
    index = write_text(tmp_path / "i.csv", ",a,b\n0,1,2\n1,3,4\n2,5,6\n3,7,8\n4,9,10\n5,1,1\n6,2,2\n7,3,3\n8,4,4\n")
    with pytest.raises(DataError, match=r"i\.csv: column 1 has no name.*--features"):
        load(index)
    assert load(index, features=["a", "b"]).shape == (2,)
    only_label = write_text(tmp_path / "o.csv", "y\na\nb\n")
    with pytest.raises(DataError, match=r"o\.csv: no feature columns left besides the label column 'y'"):
        load(only_label, label_column="y")


def test_empty_csv_files(tmp_path):
    with pytest.raises(DataError, match=r"e\.csv: the file is empty; a table needs a header line.*check"):
        load(write_text(tmp_path / "e.csv", ""))
    with pytest.raises(DataError, match=r"h\.csv: the file has a header but no data rows"):
        load(write_text(tmp_path / "h.csv", "a,b\n\n"))


@pytest.mark.slow
def test_csv_of_100k_rows_loads_in_seconds(tmp_path):
    import time

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100_000, 20)).round(5)
    path = tmp_path / "big.csv"
    np.savetxt(path, x, delimiter=",", header=",".join(f"f{i}" for i in range(20)), comments="", fmt="%.5f")
    t = time.perf_counter()
    ds = load(path)
    assert time.perf_counter() - t < 10 and ds.shape == (20,) and len(ds.x_train) == 70_000


# --------------------------------------------------------------------------------------------------
# image folders


def test_image_folder_grayscale_unlabeled(tmp_path):
    for i in range(10):
        write_png(tmp_path / "imgs" / f"{i:02d}.png", mode="L", value=i * 20)
    write_png(tmp_path / "imgs" / "bw.png", mode="1", value=1)
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    ds = load(str(tmp_path / "imgs"), val_fraction=0.1, test_fraction=0.1)
    assert (ds.name, ds.kind, ds.shape, ds.y_train, ds.num_classes) == ("imgs", "image", (1, 3, 4), None, 0)
    values = sorted(round(float(v) * 255) for v in torch.cat([ds.x_train, ds.x_val, ds.x_test])[:, 0, 0, 0])
    assert values == sorted([i * 20 for i in range(10)] + [255])
    assert_same(ds, roundtrip(ds))


def test_image_folder_rgb_when_any_image_is_color(tmp_path):
    write_png(tmp_path / "a.png", mode="L", value=100)
    write_png(tmp_path / "b.png", mode="RGB", value=(255, 0, 10))
    write_png(tmp_path / "c.png", mode="RGBA", value=(0, 255, 0, 128))
    Image.new("P", (4, 3), 0).save(tmp_path / "d.png")
    Image.new("RGB", (4, 3), (10, 20, 30)).save(tmp_path / "e.jpg", quality=100)
    ds = load(tmp_path, val_fraction=0, test_fraction=0)
    assert ds.shape == (3, 3, 4)
    pix = {tuple(round(float(v) * 255) for v in img[:, 0, 0]) for img in ds.x_train}
    assert (100, 100, 100) in pix and (255, 0, 10) in pix and (0, 255, 0) in pix


def test_image_folder_class_subfolders(tmp_path):
    for cls, value in (("cat", 10), ("dog", 200)):
        for i in range(5):
            write_png(tmp_path / cls / f"{i}.png", value=value)
    write_png(tmp_path / "dog" / "deep" / "x.png", value=200)  # nested: still class 'dog'
    write_png(tmp_path / ".hidden" / "h.png", value=99)  # hidden folders are skipped
    ds = load(tmp_path, val_fraction=0.2, test_fraction=0.2)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    x = torch.cat([ds.x_train, ds.x_val, ds.x_test])[:, 0, 0, 0]
    y = torch.cat([ds.y_train, ds.y_val, ds.y_test])
    assert len(y) == 11 and torch.all((x * 255).round()[y == 0] == 10) and torch.all((x * 255).round()[y == 1] == 200)
    assert_same(ds, roundtrip(ds))
    assert set(ds.subset_class("dog").y_train.tolist()) == {1}


def test_image_folder_errors(tmp_path):
    write_png(tmp_path / "sizes" / "a.png", size=(4, 3))
    write_png(tmp_path / "sizes" / "b.png", size=(5, 3))
    with pytest.raises(DataError, match=r"sizes: images have different sizes: a\.png is 4x3 but b\.png is 5x3.*resize"):
        load(tmp_path / "sizes")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no \.png/\.jpg/\.jpeg images found.*empty"):
        load(tmp_path / "empty")
    (tmp_path / "idxdir").mkdir()
    (tmp_path / "idxdir" / "train-images-idx3-ubyte").write_bytes(b"x")
    with pytest.raises(DataError, match=r"idxdir: no \.png.*'fashion-mnist' or 'mnist' and --data-dir"):
        load(tmp_path / "idxdir")
    write_png(tmp_path / "broken" / "ok.png")
    (tmp_path / "broken" / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"bad\.png: cannot read the image.*remove or replace it"):
        load(tmp_path / "broken")
    write_png(tmp_path / "mixed" / "top.png")
    write_png(tmp_path / "mixed" / "cls" / "a.png")
    with pytest.raises(DataError, match=r"mixed: has images both at the top level \(top\.png\)"):
        load(tmp_path / "mixed")
    Image.new("I;16", (4, 3), 300).save(tmp_path / "deep16.png")
    (tmp_path / "d16").mkdir()
    os.replace(tmp_path / "deep16.png", tmp_path / "d16" / "deep16.png")
    with pytest.raises(DataError, match=r"deep16\.png: image mode 'I(;16)?'.*8-bit"):
        load(tmp_path / "d16")


# --------------------------------------------------------------------------------------------------
# names, paths, options, sizes


def test_unknown_name_and_missing_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"unknown dataset 'fashion_mnst'.*digits, fashion-mnist, mnist.*"
                                        r"Did you mean 'fashion-mnist'.*\.npy.*\.csv.*folder of"):
        load("fashion_mnst")
    with pytest.raises(DataError, match=r"unknown dataset 'cifar10'"):
        load("cifar10")
    with pytest.raises(DataError, match=r"nope\.csv: no such file or folder"):
        load(str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match=r"data/x: no such file or folder"):
        load("data/x")
    write_text(tmp_path / "t.json", "{}")
    with pytest.raises(DataError, match=r"t\.json: unsupported file type '\.json'.*\.npy, \.npz, \.csv"):
        load("t.json")
    assert load("Digits", limit=20).name == "digits"  # built-in names are case-insensitive


def test_too_few_samples(tmp_path):
    path = write_text(tmp_path / "few.csv", "a,b\n1,2\n3,4\n5,6\n")
    with pytest.raises(DataError, match=r"few\.csv: 3 sample\(s\) are too few.*the val split would be empty; "
                                        r"at least 5 samples are needed"):
        load(path)
    assert len(load(path, val_fraction=0, test_fraction=0.34).x_test) == 1
    with pytest.raises(DataError, match=r"digits: 2 sample\(s\) are too few.*at least 5 samples.*raise --limit"):
        load("digits", limit=2)
    with pytest.raises(DataError, match="too few.*the train split"):
        load("digits", limit=1, val_fraction=0, test_fraction=0.5)


def test_option_errors(tmp_path):
    for bad in (1.0, -0.1, "0.1", float("nan"), True):
        with pytest.raises(ConfigError, match=r"val_fraction: expected a number in \[0, 1\)"):
            load("digits", val_fraction=bad)
    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction must be below 1"):
        load("digits", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match="limit: expected an integer >= 1, got 0"):
        load("digits", limit=0)
    with pytest.raises(ConfigError, match="seed: expected an integer"):
        load("digits", seed=1.5)
    with pytest.raises(ConfigError, match="features: expected a list of column names"):
        load("digits", features="a,b")
    with pytest.raises(ConfigError, match="label_column does not apply to digits.*CSV/TSV"):
        load("digits", label_column="y")
    with pytest.raises(ConfigError, match="data_dir does not apply to digits"):
        load("digits", data_dir=str(tmp_path))
    np.save(tmp_path / "a.npy", np.zeros((10, 2)))
    with pytest.raises(ConfigError, match=r"label_column does not apply to .*a\.npy"):
        load(tmp_path / "a.npy", label_column="y")


def test_subset_class_needs_labels(tmp_path):
    np.save(tmp_path / "a.npy", np.random.default_rng(0).normal(size=(20, 2)))
    with pytest.raises(DataError, match=r"a\.npy: subset_class\(0\) needs labels.*--label-column"):
        load(tmp_path / "a.npy").subset_class(0)
    text = "a,y\n" + "".join(f"{i},{'rare' if i % 5 == 0 else 'common'}\n" for i in range(20))
    ds = load(write_text(tmp_path / "r.csv", text), label_column="y", seed=0)
    assert ds.class_names == ["common", "rare"]
    keep = ds.y_train == 0
    no_rare = dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep])
    with pytest.raises(DataError, match=r"r\.csv: class 1 \('rare'\) has no samples in the train split"):
        no_rare.subset_class("rare")
    with pytest.raises(DataError, match=r"normal class 'zebra' is not a class.*'common', 'rare'"):
        ds.subset_class("zebra")


# --------------------------------------------------------------------------------------------------
# loading never changes the user's files


def test_loading_never_modifies_input_files(tmp_path):
    text, _, _ = csv_table(n=30)
    csv_path = write_text(tmp_path / "t.csv", text)
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((20, 5, 5)).astype(np.float32))
    np.savez(tmp_path / "b.npz", x=np.zeros((20, 3)), y=np.arange(20) % 2)
    for i in range(6):
        write_png(tmp_path / "imgs" / str(i % 2) / f"{i}.png", value=i)
    idx = tmp_path / "idx"
    write_idx_folder(idx)
    targets = [(csv_path, {"label_column": "label"}), (tmp_path / "a.npy", {}), (tmp_path / "b.npz", {}),
               (tmp_path / "imgs", {})]
    for path, kw in targets:
        before = snapshot(path)
        load(str(path), **kw)
        assert snapshot(path) == before
    before = snapshot(idx)
    load("fashion-mnist", data_dir=idx)
    assert snapshot(idx) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npz", "idx", "imgs", "t.csv"]


def test_error_messages_name_the_file_and_a_fix(tmp_path):
    """Every DataError from a file names it and says what to do (a verb of advice)."""
    cases = {
        "r.csv": "a,b\n1,2\n3\n",
        "s.csv": "a,b\n1,x\n",
        "e.csv": "",
    }
    advice = re.compile(r"\b(use|remove|fix|add|check|rename|resize|scale|save|exclude|fill|download|pass|name)\b")
    for name, text in cases.items():
        with pytest.raises(DataError) as info:
            load(write_text(tmp_path / name, text))
        msg = str(info.value)
        assert name in msg and advice.search(msg), msg


# --------------------------------------------------------------------------------------------------
# DataConfig: the options of load as a config, and Dataset.spec

RUNS_V0_1_0 = Path(__file__).parent / "fixtures" / "runs_v0_1_0"


def test_data_config_fields_defaults_and_cli_metadata():
    fields = {f.name: f for f in dataclasses.fields(DataConfig)}
    assert list(fields) == ["name_or_path", "data_dir", "label_column", "features", "val_fraction", "test_fraction",
                            "seed", "limit", "stats", "normal_class", "shuffle"]
    cfg = DataConfig()
    assert cfg.to_dict() == {"name_or_path": "digits", "data_dir": None, "label_column": None, "features": None,
                             "val_fraction": 0.1, "test_fraction": 0.2, "seed": 0, "limit": None, "stats": None,
                             "normal_class": None, "shuffle": True}
    assert fields["name_or_path"].metadata["flag"] == "dataset" and fields["seed"].metadata["flag"] == "split-seed"
    assert fields["stats"].metadata["cli"] is False
    assert all(f.metadata["help"] for f in fields.values())
    assert all("cli" not in f.metadata for k, f in fields.items() if k != "stats")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3


def test_data_config_json_round_trip_rebuilds_identical_tensors(tmp_path, digits):
    text = json.dumps(digits.spec.to_dict())
    cfg = DataConfig.from_dict(json.loads(text))
    assert cfg == digits.spec and json.loads(text)["features"] is None
    assert_same(digits, load(cfg))

    csv_text, _, _ = csv_table(n=40)
    path = write_text(tmp_path / "t.csv", csv_text)
    table = load(path, label_column="label", features=["c", "a"], seed=4, limit=30)
    spec = table.spec
    assert spec.features == ("c", "a") and spec.limit == 30 and spec.name_or_path == str(path)
    assert spec.stats == {"mean": table.mean.tolist(), "std": table.std.tolist()}
    saved = json.loads(json.dumps(spec.to_dict()))
    assert saved["features"] == ["c", "a"] and saved["stats"]["std"] == table.std.tolist()
    again = load(DataConfig.from_dict(saved))
    assert_same(table, again)
    assert again.spec == spec


@pytest.mark.parametrize("run", sorted(p.name for p in RUNS_V0_1_0.iterdir() if (p / "config.json").is_file()))
def test_data_config_reads_the_data_of_aekit_0_1_0_runs(run):
    data = json.loads((RUNS_V0_1_0 / run / "config.json").read_text())["data"]
    cfg = DataConfig.from_dict(data)
    assert cfg.to_dict() == {"normal_class": None, "shuffle": True, **data}  # every saved key, unchanged
    if "normal_class" in data:
        assert type(cfg.normal_class) is int and cfg.normal_class == data["normal_class"]
    ds, old = load(cfg), load(**data)
    assert_same(ds, old)
    assert [len(ds.split(s)[0]) for s in ("train", "val", "test")] == [len(old.split(s)[0]) for s in
                                                                       ("train", "val", "test")]
    assert ds.spec == old.spec == cfg
    if cfg.normal_class is not None:
        assert set(ds.y_train.tolist()) == set(ds.y_val.tolist()) == {cfg.normal_class}
        assert len(ds.x_test) == round(cfg.limit * cfg.test_fraction)


def test_load_a_config_with_options_replacing_its_fields(digits):
    small = load(digits.spec, limit=50)
    assert_same(small, load("digits", limit=50))
    assert small.spec == digits.spec.replace(limit=50) and digits.spec.limit is None
    cfg = DataConfig(seed=2, val_fraction=0.2)
    assert_same(load(cfg, limit=40, test_fraction=0.0), load("digits", seed=2, val_fraction=0.2, limit=40,
                                                             test_fraction=0.0))
    # options are checked as for a name: no string conversion, the same messages
    with pytest.raises(ConfigError, match="seed: expected an integer"):
        load(cfg, seed="3")
    with pytest.raises(ConfigError, match="limit: expected an integer >= 1, got 0"):
        load(cfg, limit=0)
    with pytest.raises(TypeError, match="unknown option.*lmit.*valid options are: data_dir"):
        load(cfg, lmit=5)
    with pytest.raises(TypeError, match="unknown option.*lmit"):
        load("digits", lmit=5)


def test_data_config_replace_composes_and_checks():
    cfg = DataConfig().replace(limit=50).replace(seed=3, name_or_path="fashion-mnist")
    assert cfg == DataConfig(name_or_path="fashion-mnist", limit=50, seed=3)
    assert DataConfig().replace(limit=50) != DataConfig()
    # replace and from_dict read JSON and command-line text
    text = DataConfig().replace(val_fraction="0.25", features="b,a", limit="7", normal_class="cat")
    assert (text.val_fraction, text.features, text.limit, text.normal_class) == (0.25, ("b", "a"), 7, "cat")
    assert DataConfig.from_dict({"normal_class": 2}).normal_class == 2
    assert DataConfig(name_or_path=Path("x") / "t.csv", features=["a"]).to_dict()["name_or_path"] == "x/t.csv"
    assert DataConfig(features=["a", "b"]).features == ("a", "b")
    with pytest.raises(ConfigError, match="DataConfig: unknown option.*lmit.*valid options are: name_or_path"):
        DataConfig().replace(lmit=5)
    with pytest.raises(ConfigError, match="DataConfig: option seed expects int, got 1.5"):
        DataConfig.from_dict({"seed": 1.5})
    # validate holds load's option checks, with their messages
    with pytest.raises(ConfigError, match=r"val_fraction: expected a number in \[0, 1\)"):
        DataConfig(val_fraction=1.0)
    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction must be below 1"):
        DataConfig().replace(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match="limit: expected an integer >= 1, got 0"):
        DataConfig(limit=0)
    with pytest.raises(ConfigError, match="features: column\\(s\\) listed twice: a"):
        DataConfig(features=("a", "a"))
    with pytest.raises(ConfigError, match="features: the list of feature columns is empty"):
        DataConfig.from_dict({"features": []})
    with pytest.raises(ConfigError, match="label_column: expected a column name"):
        DataConfig(label_column=3)
    with pytest.raises(ConfigError, match="dataset: expected a built-in name or a path, got ''"):
        DataConfig(name_or_path="")
    with pytest.raises(ConfigError, match="dataset: expected a built-in name or a path, got None"):
        load(None)


def test_spec_records_the_normal_class_index(tmp_path, digits):
    one = load("digits", normal_class="3", limit=400)
    assert one.spec.normal_class == 3 and set(one.y_train.tolist()) == {3}
    assert_same(one, roundtrip(one))
    sub = digits.subset_class(5)
    assert sub.spec == digits.spec.replace(normal_class=5) and digits.spec.normal_class is None
    assert_same(sub, roundtrip(sub))
    for cls, value in (("cat", 10), ("dog", 200)):
        for i in range(5):
            write_png(tmp_path / cls / f"{i}.png", value=value)
    dogs = load(tmp_path, normal_class="dog", val_fraction=0.2, test_fraction=0.2)
    assert dogs.spec.normal_class == 1 and set(dogs.y_train.tolist()) == {1}
    assert_same(dogs, roundtrip(dogs))


def test_one_class_tables_are_standardized_with_the_normal_rows(tmp_path):
    """The statistics used to come from every training row, anomalies included (breast cancer: a mean radius
    of 14.02 over all rows, 12.09 over the benign ones the model trains on)."""
    rng = np.random.default_rng(0)
    normal = rng.normal(10.0, 1.0, size=(300, 2))
    odd = rng.normal(30.0, 5.0, size=(60, 2))
    x = np.concatenate([normal, odd])
    y = np.array(["ok"] * 300 + ["odd"] * 60)
    np.savez(tmp_path / "t.npz", x=x, y=y)
    ds = load(tmp_path / "t.npz", normal_class="ok")
    k = ds.class_names.index("ok")
    assert set(ds.y_train.tolist()) == {k}
    rows = ds.to_user_units(ds.x_train).double()
    assert torch.allclose(ds.mean.double(), rows.mean(0), atol=1e-4)
    assert torch.allclose(ds.std.double(), rows.std(0, unbiased=False), atol=1e-4)
    assert abs(float(ds.mean[0]) - 10.0) < 0.3  # not pulled towards the anomalies' 30
    again = load(ds.spec)
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.x_test, ds.x_test)
    from aekit.datasets import from_arrays

    mem = from_arrays(x, y, normal_class="ok")
    assert abs(float(mem.mean[0]) - 10.0) < 0.3


def test_shuffle_off_keeps_the_sources_order_and_tables_record_their_columns(tmp_path):
    rows = "a,b,label\n" + "".join(f"{i},{2 * i},{'xy'[i % 2]}\n" for i in range(30))
    (tmp_path / "t.csv").write_text(rows)
    ds = load(tmp_path / "t.csv", label_column="label", val_fraction=0.0, test_fraction=0.0, shuffle=False)
    assert ds.to_user_units(ds.x_train)[:, 0].round().tolist() == [float(i) for i in range(30)]
    assert ds.spec.features == ("a", "b")  # taken by default, recorded by name
    assert load(ds.spec).spec == ds.spec
    shuffled = load(tmp_path / "t.csv", label_column="label", val_fraction=0.0, test_fraction=0.0)
    assert shuffled.to_user_units(shuffled.x_train)[:, 0].round().tolist() != [float(i) for i in range(30)]
