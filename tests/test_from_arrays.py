"""Tests of aekit.datasets.from_arrays: arrays in memory read with the rules of .npy files.

Each case is checked against the same array written to a .npy/.npz file and loaded with ``load``:
the same tensors, and the same error messages with the file's path replaced by the dataset's name.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aekit.datasets import DataConfig, from_arrays, load
from aekit.errors import ConfigError, DataError
from test_datasets import assert_same, rows_counter


def from_file(tmp_path, x, y=None, **options):
    """The same data loaded from an .npy (no labels) or .npz (with labels) file."""
    if y is None:
        path = tmp_path / "data.npy"
        np.save(path, x)
    else:
        path = tmp_path / "data.npz"
        np.savez(path, x=x, y=y)
    return load(path, **options), path


def same_error(tmp_path, x, y=None, **options):
    """from_arrays(x, y) raises DataError with the message of the same file, its path read as 'arrays'."""
    with pytest.raises(DataError) as from_mem:
        from_arrays(x, y, **options)
    with pytest.raises(DataError) as from_disk:
        from_file(tmp_path, x, y, **options)
    path = tmp_path / ("data.npy" if y is None else "data.npz")
    assert str(from_mem.value) == str(from_disk.value).replace(str(path), "arrays")
    return str(from_mem.value)


def test_numpy_float64_table_matches_the_npy_file(tmp_path):
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 4))
    ds = from_arrays(x, seed=3, limit=40)
    disk, _ = from_file(tmp_path, x, seed=3, limit=40)
    assert_same(ds, disk)
    assert (ds.name, ds.kind, ds.shape, ds.y_train, ds.num_classes) == ("arrays", "table", (4,), None, 0)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (28, 4, 8)
    spec = ds.spec
    assert isinstance(spec, DataConfig) and spec.name_or_path is None
    assert (spec.seed, spec.limit, spec.val_fraction, spec.test_fraction) == (3, 40, 0.1, 0.2)
    assert spec.stats == {"mean": ds.mean.tolist(), "std": ds.std.tolist()} == disk.spec.stats
    # the spec cannot re-read arrays, even after a JSON round trip; the arrays and the spec can
    for cfg in (spec, DataConfig.from_dict(json.loads(json.dumps(spec.to_dict())))):
        with pytest.raises(DataError, match=r"made from in-memory arrays \(datasets\.from_arrays\) and cannot "
                                            r"be re-read.*pass the arrays.*again"):
            load(cfg)
    again = from_arrays(x, val_fraction=spec.val_fraction, test_fraction=spec.test_fraction, seed=spec.seed,
                        limit=spec.limit, stats=spec.stats, normal_class=spec.normal_class)
    assert_same(ds, again)
    assert again.spec == spec
    x[:] = 0  # the dataset does not share memory with the caller's array
    assert float(ds.x_train.abs().sum()) > 0


def test_torch_tensors_of_any_dtype_give_the_numpy_result(tmp_path):
    x = np.random.default_rng(1).normal(size=(30, 3))
    y = np.arange(30) % 3
    ref = from_arrays(x, y)
    assert_same(ref, from_arrays(torch.from_numpy(x), torch.from_numpy(y)))
    assert_same(ref, from_arrays(torch.from_numpy(x).requires_grad_(), torch.from_numpy(y).view(-1, 1)))
    assert_same(ref, from_file(tmp_path, x, y)[0])
    half = from_arrays(torch.from_numpy(x).to(torch.bfloat16))
    assert half.kind == "table" and half.x_train.dtype == torch.float32
    images = torch.rand(12, 1, 5, 5, dtype=torch.float64)
    ds = from_arrays(images, val_fraction=0, test_fraction=0)
    assert rows_counter(ds.x_train) == rows_counter(images.float())


def test_uint8_nhwc_images_match_the_npy_file(tmp_path):
    u8 = np.random.default_rng(2).integers(0, 256, (20, 6, 5, 3), dtype=np.uint8)
    ds = from_arrays(u8, np.array(["b", "a"] * 10), kind="image", name="pics")
    assert (ds.name, ds.kind, ds.shape, ds.mean, ds.spec.stats) == ("pics", "image", (3, 6, 5), None, None)
    assert ds.class_names == ["a", "b"]
    assert_same(ds, from_file(tmp_path, u8, np.array(["b", "a"] * 10))[0])
    want = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
    assert rows_counter(torch.cat([ds.x_train, ds.x_val, ds.x_test])) == rows_counter(want)
    assert from_arrays(torch.from_numpy(u8)).shape == (3, 6, 5)
    assert from_arrays(u8[..., 0]).shape == (1, 6, 5)  # (N, H, W)


def test_nested_lists_and_string_labels():
    rows = [[float(i), float(i % 4), 1.0] for i in range(20)]
    labels = ["10", "2", "1", "2"] * 5
    ds = from_arrays(rows, labels, kind="table", feature_names=["i", "m", "one"])
    assert ds.kind == "table" and ds.shape == (3,) and ds.feature_names == ["i", "m", "one"]
    assert ds.class_names == ["1", "2", "10"]  # numeric labels sort by value, as in files
    assert ds.std[2].item() == 1.0  # a constant column gets unit std
    words = from_arrays(np.array(rows), np.array(["dog", "cat"] * 10, dtype=object))  # e.g. a pandas column
    assert words.class_names == ["cat", "dog"]
    assert from_arrays(rows, [3, 1] * 10).class_names == ["1", "3"]


def test_a_data_frame_gives_its_column_names():
    class Frame:  # what from_arrays uses of a pandas DataFrame, without pandas
        columns = ["height", "weight"]

        def __array__(self, dtype=None, copy=None):
            return np.arange(40, dtype=np.float64).reshape(20, 2) % 7

    assert from_arrays(Frame()).feature_names == ["height", "weight"]
    assert from_arrays(Frame(), feature_names=["h", "w"]).feature_names == ["h", "w"]


def test_bad_arrays_raise_the_errors_of_files(tmp_path):
    nan = np.zeros((10, 3))
    nan[4, 2] = np.nan
    msg = same_error(tmp_path, nan)
    assert msg.startswith("arrays: 1 non-finite value(s) (1 NaN, 0 Inf), first at row 4, column 2 (0-based)")
    img = np.zeros((10, 4, 4), dtype=np.float32)
    img[7, 1, 3] = np.inf
    assert "first at sample 7, index (7, 1, 3)" in same_error(tmp_path, img)
    huge = np.zeros((10, 3))
    huge[6, 1] = -1e300  # finite in float64, -inf in the float32 tensors
    assert same_error(tmp_path, huge).startswith("arrays: 1 value(s) beyond float32's range (magnitude above "
                                                 "3.4e+38), first at row 6, column 1 (0-based)")
    assert "reshape it to (N, 1)" in same_error(tmp_path, np.zeros(20))
    assert "cannot tell what an array of shape (20, 2, 5, 5, 5)" in same_error(tmp_path, np.zeros((20, 2, 5, 5, 5)))
    assert "has no channel axis" in same_error(tmp_path, np.zeros((20, 5, 5, 5)))
    assert "image values must lie in [0, 1]" in same_error(tmp_path, np.full((20, 4, 4), 2.0))
    assert "the array has no samples" in same_error(tmp_path, np.zeros((0, 3)))
    assert "the table has 0 columns" in same_error(tmp_path, np.zeros((5, 0)))
    assert "expected numbers" in same_error(tmp_path, np.array([["a", "b"]] * 5))
    assert "labels 'y' have shape (9,) but 'x' has 10 samples" in same_error(tmp_path, np.zeros((10, 2)),
                                                                             np.arange(9))
    assert "labels must be class values" in same_error(tmp_path, np.zeros((10, 2)), np.linspace(0, 1, 10))
    assert "too few" in same_error(tmp_path, np.zeros((3, 2)))
    with pytest.raises(DataError, match="arrays: x is not one rectangular array.*same shape"):
        from_arrays([[1.0, 2.0], [3.0]])


def test_bad_options():
    x = np.zeros((20, 3))
    with pytest.raises(ConfigError, match=r"arrays: kind='table' needs a 2-D array \(N, D\), but x has shape "
                                          r"\(20, 5, 5\)"):
        from_arrays(np.zeros((20, 5, 5)), kind="table")
    with pytest.raises(ConfigError, match=r"kind='image' needs a 3-D array .* but x has shape \(20, 3\)"):
        from_arrays(x, kind="image")
    with pytest.raises(ConfigError, match="kind: expected one of 'auto', 'table', 'image', got 'images'"):
        from_arrays(x, kind="images")
    with pytest.raises(ConfigError, match=r"val_fraction: expected a number in \[0, 1\)"):
        from_arrays(x, val_fraction=1.0)
    with pytest.raises(ConfigError, match="limit: expected an integer >= 1, got 0"):
        from_arrays(x, limit=0)
    with pytest.raises(ConfigError, match=r"stats: 'mean' has 2 values but arrays has 3 features"):
        from_arrays(x, stats={"mean": [0.0, 0.0], "std": [1.0, 1.0]})
    with pytest.raises(ConfigError, match="feature_names: expected a list of 3 column names"):
        from_arrays(x, feature_names=["a", "b"])
    with pytest.raises(ConfigError, match="feature_names: .* holds images"):
        from_arrays(np.zeros((20, 4, 4)), feature_names=["a"])
    with pytest.raises(ConfigError, match="name: expected a non-empty string"):
        from_arrays(x, name="")


def test_subset_class_after_from_arrays():
    x = np.random.default_rng(3).random((60, 4, 4))
    y = np.array(["ok", "bad", "ok"] * 20)
    ds = from_arrays(x, y, name="parts")
    ok = ds.subset_class("ok")
    assert ok.class_names == ["bad", "ok"] and set(ok.y_train.tolist()) == set(ok.y_val.tolist()) == {1}
    assert torch.equal(ok.x_test, ds.x_test) and ok.spec.normal_class == 1 and ok.spec.name_or_path is None
    assert_same(ok, from_arrays(x, y, name="parts", normal_class="ok"))
    assert_same(ok, from_arrays(x, y, name="parts", normal_class=ok.spec.normal_class))
    with pytest.raises(DataError, match=r"parts: subset_class\(0\) needs labels"):
        from_arrays(x, name="parts").subset_class(0)
    with pytest.raises(DataError, match="parts: normal class 'meh' is not a class.*'bad', 'ok'"):
        from_arrays(x, y, name="parts", normal_class="meh")
