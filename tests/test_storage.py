"""Data larger than memory: 8-bit images held as uint8, memory-mapped .npy files, `aekit pack`.

The reference for every value is today's whole-dataset conversion (``x.to(float32).div_(255)`` of the uint8
array, a table standardized in float64 then cast) and, independently of torch, numpy's float32 arithmetic.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import aekit
from aekit.datasets import ByteStore, MappedStore, from_arrays, load, pack, storage
from aekit.datasets.storage import as_tensor
from aekit.errors import ConfigError, DataError, RunError
from aekit.files import new_file
from test_datasets import csv_table, write_idx, write_idx_folder, write_png

RNG = np.random.default_rng(0)


def u8_images(n=120, hw=(6, 5), channels=None, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *hw) if channels is None else (n, *hw, channels), dtype=np.uint8)
    x.reshape(n, -1)[:2, :2] = [[0, 255], [255, 0]]  # both ends of the range
    return x


def todays(raw: np.ndarray) -> torch.Tensor:
    """The conversion of whole datasets before stores: uint8 -> float32 / 255, on the whole array."""
    return torch.from_numpy(np.ascontiguousarray(raw)).to(torch.float32).div_(255.0)


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and len(text) < 600, text
    return text


def float_copy(ds):
    """The dataset as aekit held it before stores: every split a float32 tensor."""
    return dataclasses.replace(ds, **{f"x_{k}": as_tensor(getattr(ds, f"x_{k}")) for k in ("train", "val", "test")})


# --------------------------------------------------------------------------------------------------
# 1. uint8: the same float32 values, bit for bit


def test_uint8_batches_are_todays_values_bit_for_bit(tmp_path):
    raw = u8_images()[:, None]  # (N, 1, H, W)
    want = todays(raw)
    independent = torch.from_numpy(raw.astype(np.float32) / np.float32(255.0))  # numpy's float32 division
    assert torch.equal(want, independent)
    byte = ByteStore(torch.from_numpy(raw), "x")
    np.save(tmp_path / "x.npy", raw)
    mapped = load(tmp_path / "x.npy", val_fraction=0, test_fraction=0, shuffle=False).x_train
    assert isinstance(mapped, MappedStore)
    idx = torch.randperm(len(raw), generator=torch.Generator().manual_seed(1))[:50]
    for s in (byte, mapped):
        assert s.dtype == torch.float32 and s.shape == want.shape and len(s) == len(raw)
        assert torch.equal(s[idx], want[idx])
        assert torch.equal(s[3:40], want[3:40]) and torch.equal(s[-1], want[-1])
        assert torch.equal(s.materialize(), want)
        assert s[idx].dtype == torch.float32


def test_8bit_sources_are_held_as_uint8(tmp_path):
    folder = tmp_path / "idx"
    arrays = write_idx_folder(folder, n_train=40, n_test=10, hw=(5, 6))
    ds = load("fashion-mnist", data_dir=str(folder))
    assert isinstance(ds.x_train, ByteStore) and ds.x_train.u8.dtype == torch.uint8
    assert ds.x_test.resident_bytes == 10 * 30  # a quarter of float32's 4 bytes per pixel
    got = torch.sort(as_tensor(ds.x_test).flatten(1), dim=0).values
    assert torch.equal(got, torch.sort(todays(arrays["t10k"][0].astype(np.uint8)).flatten(1), dim=0).values)
    for i in range(4):
        write_png(tmp_path / "png" / f"{i}.png", size=(4, 3), value=i * 60)
    imgs = load(tmp_path / "png", val_fraction=0, test_fraction=0)
    assert isinstance(imgs.x_train, ByteStore)
    values = sorted(round(float(v) * 255) for v in imgs.x_train[:, 0, 0, 0])
    assert values == [0, 60, 120, 180]
    digits = load("digits")  # pixels 0..16 / 16: not 8-bit, stays a float32 tensor
    assert isinstance(digits.x_train, torch.Tensor)


def test_store_indexing_and_whole_split_uses():
    raw = u8_images(n=30)[:, None]
    want = todays(raw)
    s = ByteStore(torch.from_numpy(raw), "x")
    mask = torch.arange(30) % 3 == 0
    assert torch.equal(s[mask], want[mask]) and torch.equal(s[np.arange(5)], want[:5])
    assert torch.equal(s[torch.tensor(4)], want[4]) and torch.equal(s[2:9, 0, 1], want[2:9, 0, 1])
    assert torch.equal(s[[7, 7, 1]], want[[7, 7, 1]])  # repeated rows
    assert torch.equal(torch.cat([s, s]), torch.cat([want, want]))  # torch functions see the float32 tensor
    assert float(s.max()) == 1.0 and np.array_equal(s.numpy(), want.numpy()) and np.asarray(s).dtype == np.float32
    assert torch.equal(s * 2, want * 2) and torch.equal(1 - s, 1 - want)
    sub = s.subset(mask)
    assert isinstance(sub, ByteStore) and torch.equal(sub.materialize(), want[mask])
    for bad in (30, -31):
        with pytest.raises(IndexError):
            s[bad]
    with pytest.raises(IndexError):
        s[torch.tensor([0, 30])]
    assert not hasattr(s, "not_a_tensor_attribute")


def test_dataset_split_and_to_keep_stores(tmp_path):
    raw = u8_images(n=50)
    np.save(tmp_path / "x.npy", raw)
    ds = load(tmp_path / "x.npy")
    moved = ds.to("cpu")
    assert isinstance(moved.x_train, MappedStore) and moved.x_train.mapping is ds.x_train.mapping  # on the host
    x, y = ds.split("test")
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and y is None
    assert torch.equal(x, todays(raw[ds.x_test.rows][:, None]))


# --------------------------------------------------------------------------------------------------
# 2. memory-mapped .npy files


def test_a_memmapped_split_does_not_load_the_file(tmp_path):
    n = 20_000
    raw = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint8, shape=(n, 28, 28))
    raw[:] = 7
    raw.flush()
    del raw
    ds = load(tmp_path / "big.npy")
    assert isinstance(ds.x_train, MappedStore)
    assert isinstance(ds.x_train.mapping.array, np.memmap) and ds.x_train.array.base is not None
    assert ds.x_train.mapping is ds.x_val.mapping is ds.x_test.mapping  # one mapping, three index arrays
    assert ds.resident_bytes <= n * 8 + 1024  # the splits' row indices: no pixel is held
    assert ds.x_train.rows.dtype == np.int64


def rss_file() -> int:
    """Bytes of file pages mapped in this process (RssFile)."""
    return int(re.search(r"RssFile:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssFile from /proc (Linux)")
def test_reading_a_mapped_file_keeps_its_pages_bounded(tmp_path, monkeypatch):
    """Batches in random order map nothing (rows are read with preadv); a whole-file pass (the value checks of
    float images) drops the mapping's pages every RELEASE_BYTES."""
    n, mib = 64 * 1024, 2**20
    x = np.lib.format.open_memmap(tmp_path / "u8.npy", mode="w+", dtype=np.uint8, shape=(n, 32, 32))  # 64 MiB
    x[:] = 1
    x.flush()
    f = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=(n // 4, 16, 16, 4))
    f[:] = 0.5
    f.flush()
    del x, f
    monkeypatch.setattr(storage, "RELEASE_BYTES", 8 * mib)
    ds = load(tmp_path / "u8.npy", val_fraction=0, test_fraction=0)
    before = rss_file()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    peak = 0
    for s in range(0, n, 512):  # one epoch of random batches over the whole file
        ds.x_train[perm[s:s + 512]]
        peak = max(peak, rss_file() - before)
    assert peak < 4 * mib, peak / mib  # through the mapping: up to a 2 MiB folio per row, the whole file
    before = rss_file()
    ds = load(tmp_path / "f.npy", val_fraction=0, test_fraction=0)  # reads all 64 MiB: finite, in [0, 1]
    assert rss_file() - before < 24 * mib, (rss_file() - before) / mib
    assert isinstance(ds.x_train, MappedStore) and ds.shape == (4, 16, 16)


def test_fortran_order_files_are_read_through_the_mapping(tmp_path):
    raw = u8_images(n=40)
    np.save(tmp_path / "f.npy", np.asfortranarray(raw))
    mm = load(tmp_path / "f.npy")
    assert mm.x_train.mapping.fd is None  # rows are not contiguous in the file: no preadv
    assert torch.equal(as_tensor(mm.x_test), todays(raw[mm.x_test.rows][:, None]))


def test_a_file_truncated_after_loading_is_a_one_line_error(tmp_path):
    raw = u8_images(n=200, hw=(16, 16))
    np.save(tmp_path / "x.npy", raw)
    ds = load(tmp_path / "x.npy", val_fraction=0, test_fraction=0, shuffle=False)
    with open(tmp_path / "x.npy", "r+b") as f:
        f.truncate(128 + 100 * 256)  # header + 100 rows
    assert torch.equal(ds.x_train[:100], todays(raw[:100, None]))
    with pytest.raises(DataError) as e:
        ds.x_train[torch.tensor([5, 150])]
    assert re.search(r"x\.npy: rows 150\.\.150 could not be read \(0 of 256 bytes\): the file was truncated",
                     one_line(e.value))


def _write_tables(tmp_path, n=90, d=5):
    x = RNG.normal(3.0, 2.0, size=(n, d)).astype(np.float32)
    y = np.array(["a", "b", "c"])[np.arange(n) % 3]
    np.save(tmp_path / "t.npy", x)
    np.save(tmp_path / "t.labels.npy", y)
    return x, y


@pytest.mark.parametrize("chunked", [False, True])
def test_memmapped_table_equals_the_table_in_memory(tmp_path, monkeypatch, chunked):
    if chunked:  # statistics from several chunks of rows, as for a table larger than CHUNK_BYTES
        monkeypatch.setattr(aekit.datasets.splitting, "CHUNK_BYTES", 8 * 5 * 7)
    x, y = _write_tables(tmp_path)
    mm = load(tmp_path / "t.npy")
    mem = from_arrays(x, y)
    assert isinstance(mm.x_train, MappedStore) and isinstance(mem.x_train, torch.Tensor)
    assert torch.equal(mm.mean, mem.mean) and torch.equal(mm.std, mem.std)
    assert mm.class_names == mem.class_names == ["a", "b", "c"]
    train = x[mm.x_train.rows].astype(np.float64)
    assert np.allclose(mm.mean.numpy(), train.mean(0), rtol=1e-6) and np.allclose(mm.std.numpy(), train.std(0))
    for k in ("train", "val", "test"):
        assert torch.equal(as_tensor(getattr(mm, f"x_{k}")), getattr(mem, f"x_{k}"))
        assert torch.equal(getattr(mm, f"y_{k}"), getattr(mem, f"y_{k}"))


def test_memmapped_channels_last_and_float_images(tmp_path):
    rgb = u8_images(n=20, channels=3)  # (N, H, W, 3)
    np.save(tmp_path / "rgb.npy", rgb)
    flt = RNG.random((20, 2, 3, 3))  # float64 channels-first in [0, 1]
    np.save(tmp_path / "f.npy", flt)
    for name, arr in (("rgb.npy", rgb), ("f.npy", flt)):
        mm, mem = load(tmp_path / name), from_arrays(arr)
        assert isinstance(mm.x_train, MappedStore) and mm.shape == mem.shape
        for k in ("train", "val", "test"):
            assert torch.equal(as_tensor(getattr(mm, f"x_{k}")), as_tensor(getattr(mem, f"x_{k}")))


@pytest.mark.parametrize("binarize", ["none", "static", "dynamic"])
def test_memmap_training_equals_in_memory_training_bit_for_bit(tmp_path, binarize):
    raw = u8_images(n=160, hw=(6, 6))
    y = np.arange(160) % 4
    np.save(tmp_path / "x.npy", raw)
    np.save(tmp_path / "x.labels.npy", y)
    mm = load(tmp_path / "x.npy")
    mem = from_arrays(raw, y)
    runs = {}
    for name, ds in (("mapped", mm), ("uint8", mem), ("float32", float_copy(mem))):
        model = aekit.build("vae", dataset=ds, latent_dim=3, hidden=[16], seed=0)
        r = aekit.fit(model, ds, aekit.TrainConfig(epochs=2, batch_size=32, seed=5, binarize=binarize), quiet=True)
        runs[name] = ([h["train"] for h in r.history], [h["val"] for h in r.history], r.model.state_dict())
    base = runs["float32"]
    for name in ("mapped", "uint8"):
        assert runs[name][:2] == base[:2], name
        assert all(torch.equal(runs[name][2][k], base[2][k]) for k in base[2]), name


def test_memmapped_table_training_equals_in_memory(tmp_path):
    x, y = _write_tables(tmp_path, n=120, d=4)
    mm, mem = load(tmp_path / "t.npy"), from_arrays(x, y)
    out = []
    for ds in (mm, mem):
        model = aekit.build("ae", dataset=ds, latent_dim=2, hidden=[8], seed=0)
        out.append(aekit.fit(model, ds, aekit.TrainConfig(epochs=2, batch_size=16, seed=1), quiet=True))
    assert [h["train"] for h in out[0].history] == [h["train"] for h in out[1].history]
    sd0, sd1 = out[0].model.state_dict(), out[1].model.state_dict()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)


def test_whole_split_beyond_the_budget_is_refused_on_one_line(tmp_path, monkeypatch):
    raw = u8_images(n=400, hw=(10, 10))
    np.save(tmp_path / "x.npy", raw)
    monkeypatch.setenv("AEKIT_MAX_DATA_BYTES", str(400 * 24 + 1000))  # the index fits, float32 splits do not
    ds = load(tmp_path / "x.npy", val_fraction=0.0, test_fraction=0.0)
    assert ds.x_train[torch.arange(10)].shape == (10, 1, 10, 10)  # batches are fine
    with pytest.raises(DataError) as e:
        ds.split("train")
    assert re.search(r"x\.npy \(train split\): 400 samples .* as one float32 tensor .* would take 156\.2 KiB",
                     one_line(e.value))
    model = aekit.build("ae", dataset=ds, latent_dim=2, hidden=[8], seed=0)
    with pytest.raises(DataError, match="float32 tensor"):  # static binarization needs the whole split
        aekit.fit(model, ds, aekit.TrainConfig(epochs=1, binarize="static"), quiet=True)


def test_one_class_subset_of_a_mapped_file_stays_mapped(tmp_path):
    raw = u8_images(n=90)
    np.save(tmp_path / "x.npy", raw)
    np.save(tmp_path / "x.labels.npy", np.arange(90) % 3)
    ds = load(tmp_path / "x.npy", normal_class=1)
    assert isinstance(ds.x_train, MappedStore) and set(ds.y_train.tolist()) == {1}
    assert torch.equal(as_tensor(ds.x_train), todays(raw[ds.x_train.rows][:, None]))
    assert (np.arange(90)[ds.x_train.rows] % 3 == 1).all()


HOSTILE_NPY = {
    "truncated": (lambda p: p.write_bytes(_npy(np.zeros((50, 4), np.uint8))[:-10]), r"truncated"),
    "wrong magic": (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(100)), r"not a \.npy file"),
    "object dtype": (lambda p: p.write_bytes(_header("{'descr': '|O', 'fortran_order': False, 'shape': (3, 3), }")),
                     r"Python objects"),
    "huge shape": (lambda p: p.write_bytes(_header("{'descr': '|u1', 'fortran_order': False, "
                                                   "'shape': (10000000000000, 28, 28), }")),
                   r"\(10000000000000, 28, 28\).*memory-mapped.*would take"),
    "huge product": (lambda p: p.write_bytes(_header("{'descr': '<f8', 'fortran_order': False, "
                                                     "'shape': (10, 10000000000000000000), }")), r"truncated"),
    "bad header": (lambda p: p.write_bytes(_header("{'descr': '<f8', 'fortran_order': False, 'shape': (3,")),
                   r"not a valid \.npy file"),
    "no samples": (lambda p: np.save(p, np.zeros((0, 4), np.uint8)), r"no samples"),
    "no columns": (lambda p: np.save(p, np.zeros((5, 0))), r"0 columns"),
    "strings": (lambda p: np.save(p, np.array([["a", "b"]] * 4)), r"expected numbers"),
    "nan image": (lambda p: np.save(p, np.where(np.arange(200).reshape(2, 10, 10) == 150, np.nan, 0.5)),
                  r"1 non-finite value\(s\) \(1 NaN, 0 Inf\), first at sample 1, index \(1, 5, 0\)"),
    "image out of range": (lambda p: np.save(p, np.full((3, 4, 4), 2.0)), r"range from 2 to 2"),
    "labels count": (lambda p: (np.save(p, np.zeros((6, 3, 3), np.uint8)), np.save(_lab(p), np.arange(5))),
                     r"labels 'y' have shape \(5,\) but 'x' has 6 samples"),
    "labels not npy": (lambda p: (np.save(p, np.zeros((6, 3, 3), np.uint8)), _lab(p).write_text("a\nb\n")),
                       r"x\.labels\.npy: not a \.npy file"),
    "labels pickled": (lambda p: (np.save(p, np.zeros((3, 3, 3), np.uint8)),
                                  np.save(_lab(p), np.array([1, "a", None], dtype=object), allow_pickle=True)),
                       r"x\.labels\.npy: holds Python objects"),
}


def _npy(a) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _header(text: str) -> bytes:
    text = text + " " * ((-(len(text) + 11)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


def _lab(p: Path) -> Path:
    return p.with_name("x.labels.npy")


@pytest.mark.parametrize("case", sorted(HOSTILE_NPY))
def test_hostile_npy_files_give_one_line_errors(tmp_path, case):
    write, pattern = HOSTILE_NPY[case]
    write(tmp_path / "x.npy")
    with pytest.raises(DataError) as e:
        load(tmp_path / "x.npy")
    assert re.search(pattern, one_line(e.value)), str(e.value)


# --------------------------------------------------------------------------------------------------
# 3. aekit pack


def test_pack_image_folder_round_trip(tmp_path):
    for cls, value in (("cat", 10), ("dog", 200), ("10", 30), ("9", 40)):
        for i in range(3):
            write_png(tmp_path / "imgs" / cls / f"{i}.png", size=(5, 4), value=value + i)
    r = pack(tmp_path / "imgs", tmp_path / "out" / "data.npy")
    assert (r.shape, r.dtype, r.classes) == ((12, 1, 4, 5), "uint8", ["10", "9", "cat", "dog"])  # as load sorts them
    a, b = load(tmp_path / "imgs"), load(r.path)
    assert isinstance(b.x_train, MappedStore) and b.class_names == a.class_names
    for k in ("train", "val", "test"):
        assert torch.equal(as_tensor(getattr(a, f"x_{k}")), as_tensor(getattr(b, f"x_{k}")))
        assert torch.equal(getattr(a, f"y_{k}"), getattr(b, f"y_{k}"))


def test_pack_color_folder_round_trip(tmp_path):
    write_png(tmp_path / "c" / "a.png", size=(3, 2), mode="RGB", value=(1, 2, 3))
    write_png(tmp_path / "c" / "b.png", size=(3, 2), mode="L", value=9)  # gray in a color folder: 3 channels
    write_png(tmp_path / "c" / "c.png", size=(3, 2), mode="RGB", value=(250, 0, 7))
    r = pack(tmp_path / "c", tmp_path / "c.npy")
    assert r.shape == (3, 3, 2, 3) and r.labels_path is None
    a = load(tmp_path / "c", val_fraction=0, test_fraction=0, shuffle=False)
    b = load(r.path, val_fraction=0, test_fraction=0, shuffle=False)
    assert torch.equal(as_tensor(a.x_train), as_tensor(b.x_train)) and b.y_train is None


def test_pack_csv_round_trip(tmp_path):
    (tmp_path / "t.csv").write_text(csv_table(n=40)[0])
    r = pack(tmp_path / "t.csv", tmp_path / "t.npy", label_column="label")
    assert (r.shape, r.dtype, r.classes) == ((40, 3), "float32", ["bird", "cat", "dog"])
    a, b = load(tmp_path / "t.csv", label_column="label"), load(r.path)
    assert b.class_names == a.class_names and isinstance(b.x_train, MappedStore)
    for k in ("train", "val", "test"):  # float32 on disk: the same rows, standardized to within float32
        assert torch.equal(getattr(a, f"y_{k}"), getattr(b, f"y_{k}"))
        assert torch.allclose(as_tensor(getattr(b, f"x_{k}")), getattr(a, f"x_{k}"), atol=1e-5)
    np.testing.assert_array_equal(np.load(r.path), np.loadtxt(tmp_path / "t.csv", delimiter=",", skiprows=1,
                                                              usecols=(0, 1, 2), dtype=np.float32))


@pytest.mark.parametrize("gz", [False, True])
def test_pack_idx_pair_round_trip(tmp_path, gz):
    arrays = write_idx_folder(tmp_path / "idx", n_train=30, n_test=5, hw=(4, 3), gz=gz)
    images = tmp_path / "idx" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    r = pack(images, tmp_path / "fm.npy")
    assert (r.shape, r.dtype) == ((30, 1, 4, 3), "uint8")
    np.testing.assert_array_equal(np.load(r.path)[:, 0], arrays["train"][0].astype(np.uint8))
    np.testing.assert_array_equal(np.load(r.labels_path), arrays["train"][1])
    ds = load(r.path)
    assert ds.num_classes == len(set(arrays["train"][1].tolist())) and isinstance(ds.x_train, MappedStore)


def test_pack_npz_round_trip(tmp_path):
    raw = u8_images(n=20)
    np.savez_compressed(tmp_path / "a.npz", x=raw, y=np.arange(20) % 2)
    r = pack(tmp_path / "a.npz", tmp_path / "a.npy")
    a, b = load(tmp_path / "a.npz"), load(r.path)
    assert r.dtype == "uint8" and b.class_names == a.class_names == ["0", "1"]
    assert torch.equal(as_tensor(a.x_test), as_tensor(b.x_test)) and torch.equal(a.y_test, b.y_test)


def test_pack_never_overwrites(tmp_path, cli):
    for i in range(3):
        write_png(tmp_path / "imgs" / "a" / f"{i}.png", value=i)
    (tmp_path / "data.npy").write_bytes(b"precious")
    code, _, err = cli("pack", tmp_path / "imgs", "--out", tmp_path / "data.npy")
    assert code == 2 and "never overwrites" in err and err.count("\n") == 1
    assert (tmp_path / "data.npy").read_bytes() == b"precious"
    (tmp_path / "other.labels.npy").write_bytes(b"mine")
    with pytest.raises(ConfigError, match="other.labels.npy: exists"):
        pack(tmp_path / "imgs", tmp_path / "other.npy")
    assert not (tmp_path / "other.npy").exists() and (tmp_path / "other.labels.npy").read_bytes() == b"mine"
    code, out, err = cli("pack", tmp_path / "imgs", "--out", tmp_path / "new.npy")
    assert code == 0 and "3 samples" in out and "aekit train MODEL --dataset" in out, err
    code, _, err = cli("pack", tmp_path / "imgs", "--out", tmp_path / "new.npy")  # a second pack: refused
    assert code == 2 and "exists" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npy", "imgs", "new.labels.npy", "new.npy",
                                                          "other.labels.npy"]  # no temporary file left


def test_new_file_never_replaces_a_file_that_appears_meanwhile(tmp_path):
    target = tmp_path / "x.npy"
    with pytest.raises(RunError, match="appeared there while it was written"):
        with new_file(target) as f:
            f.write(b"new")
            target.write_bytes(b"theirs")
    assert target.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["x.npy"]
    with pytest.raises(KeyboardInterrupt):  # an interrupted write leaves nothing
        with new_file(tmp_path / "y.npy") as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["x.npy"]


def test_pack_hostile_and_odd_inputs(tmp_path):
    write_png(tmp_path / "mixed" / "top.png")
    write_png(tmp_path / "mixed" / "cls" / "a.png")
    (tmp_path / "empty").mkdir()
    write_idx(tmp_path / "bad-images-idx3-ubyte", np.zeros((4, 2, 2)))
    write_idx(tmp_path / "bad-labels-idx1-ubyte", np.zeros(3))
    (tmp_path / "t.csv").write_text(csv_table(n=10)[0])
    np.save(tmp_path / "ok.npy", np.zeros((3, 2)))
    (tmp_path / "notes.txt2").write_text("x")
    cases = [
        ((tmp_path / "nope", "o1.npy"), {}, DataError, r"no such file or folder"),
        ((tmp_path / "t.csv", "o2.npz"), {"label_column": "label"}, ConfigError, r"expected a path ending in \.npy"),
        ((tmp_path / "ok.npy", "o3.npy"), {}, ConfigError, r"already a \.npy file"),
        ((tmp_path / "notes.txt2", "o4.npy"), {}, DataError, r"aekit pack reads an image folder"),
        ((tmp_path / "empty", "o5.npy"), {}, DataError, r"no \.png/\.jpg/\.jpeg images"),
        ((tmp_path / "mixed", "o6.npy"), {}, DataError, r"both at the top level"),
        ((tmp_path / "mixed", "o7.npy"), {"label_column": "x"}, ConfigError, r"label_column does not apply"),
        ((tmp_path / "bad-images-idx3-ubyte", "o8.npy"), {}, DataError, r"3 labels for 4 images"),
        ((tmp_path / "t.csv", "o9.npy"), {"label_column": "nope"}, DataError, r"label column 'nope' not found"),
    ]
    for (src, out), options, kind, pattern in cases:
        with pytest.raises(kind) as e:
            pack(src, tmp_path / out, **options)
        assert re.search(pattern, one_line(e.value)), (src, str(e.value))
        assert not (tmp_path / out).exists() and not (tmp_path / out.replace(".npy", ".labels.npy")).exists()


def test_train_from_a_packed_file_on_the_command_line(tmp_path, cli):
    for cls in ("a", "b"):
        for i in range(12):
            write_png(tmp_path / "imgs" / cls / f"{i}.png", size=(4, 4), value=i * 10 + (cls == "b") * 100)
    code, _, err = cli("pack", tmp_path / "imgs", "--out", tmp_path / "d.npy")
    assert code == 0, err
    code, _, err = cli("train", "ae", "--dataset", tmp_path / "d.npy", "--epochs", 2, "--latent-dim", 2,
                       "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    run = aekit.Run.open(tmp_path / "run")
    ds = run.dataset()
    assert isinstance(ds.x_train, MappedStore) and ds.num_classes == 2
    assert isinstance(aekit.metrics.evaluate(run.model(), ds), dict)
