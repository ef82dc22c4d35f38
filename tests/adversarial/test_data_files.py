"""The standing adversarial suite of the data readers: hostile or broken files never hang, exhaust
memory or escape as a traceback.

Every file that ``aekit.datasets.load`` reads (IDX, gzipped IDX, .npy, .npz, CSV/TSV/TXT, image
folders) is attacked in two ways: hand-written cases (FIFOs, devices, folders and unreadable files in
place of data; sizes that cannot be allocated; malformed headers; values beyond float32; long names)
and a hypothesis fuzzer (random bytes and mutations of valid files). The contract checked each time:
``load`` returns a Dataset or raises an ``AekitError`` with a one-line message, within a time limit
(``signal`` alarms), and declared sizes above ``AEKIT_MAX_DATA_BYTES`` are refused before anything is
allocated (tracemalloc peaks where it matters). The larger fuzz runs are marked slow (``pytest -m slow``).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import os
import re
import signal
import stat
import tracemalloc
import zipfile
import zlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from aekit.datasets import load, source
from aekit.errors import AekitError, ConfigError, DataError
from hostile import Hang, time_limit
from test_datasets import write_idx, write_idx_folder, write_png

MiB = 2**20
DEFAULT_EXAMPLES = 120    # per reader in the default run
SLOW_EXAMPLES = 2500      # per reader in the slow run (pytest -m slow)
needs_alarm = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer (POSIX)")


# --------------------------------------------------------------------------------------------------
# the contract


def load_or_error(path, seconds: float = 10.0, **options):
    """``load(path, **options)`` under a time limit: the Dataset, or the AekitError it raised.

    Fails the test on a hang, on any other exception (a traceback for the user) and on a message
    that is not one line.
    """
    try:
        with time_limit(seconds):
            return load(str(path), **options)
    except Hang as e:
        pytest.fail(f"load({str(path)!r}) hung: {e}")
    except AekitError as e:
        assert "\n" not in str(e) and "\r" not in str(e), f"a message of several lines: {str(e)!r}"
        return e
    except Exception as e:  # MemoryError, RecursionError, a library's own error...: a traceback for the user
        pytest.fail(f"load({str(path)!r}) raised {type(e).__module__}.{type(e).__name__}: {e}"[:2000])


def expect_error(path, pattern: str, kind=DataError, **options) -> str:
    err = load_or_error(path, **options)
    assert isinstance(err, kind), f"expected {kind.__name__} matching {pattern!r}, got {err!r}"[:2000]
    assert re.search(pattern, str(err)), f"{str(err)[:2000]!r} does not match {pattern!r}"
    return str(err)


@contextlib.contextmanager
def peak_memory():
    """{'peak': bytes} of the Python and numpy allocations made inside the block."""
    out = {}
    tracemalloc.start()
    try:
        yield out
    finally:
        out["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


# --------------------------------------------------------------------------------------------------
# valid files of every kind, to attack


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def npy_with_header(header: str, data: bytes = b"", version=(1, 0)) -> bytes:
    """A .npy file whose header text is ``header`` as given (padded like numpy pads it)."""
    length_bytes = 2 if version == (1, 0) else 4
    pad = -(6 + 2 + length_bytes + len(header) + 1) % 64
    text = (header + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY" + bytes(version) + len(text).to_bytes(length_bytes, "little") + text + data


def zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def table_text(n=30, sep=","):
    rows = [sep.join(f"{(i * 7 + j) % 11 - 5}.5" for j in range(3)) + f"{sep}{'ab'[i % 2]}" for i in range(n)]
    return sep.join(["a", "b", "c", "label"]) + "\n" + "\n".join(rows) + "\n"


def png_bytes(size=(6, 5), mode="L", value=7, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, fmt)
    return buf.getvalue()


def png_of_zeros(width: int, height: int, pixels: bool = True) -> bytes:
    """An 8-bit grayscale PNG of width x height black pixels (its IDAT compresses ~1000:1), or without them."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = _deflate_zeros((width + 1) * height if pixels else 0, wbits=15)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@functools.lru_cache(maxsize=8)
def _deflate_zeros(n: int, prefix: bytes = b"", wbits: int = 31) -> bytes:
    """``prefix`` then ``n`` zero bytes, deflated (wbits 31: gzip, 15: zlib), without holding them all."""
    c = zlib.compressobj(1, zlib.DEFLATED, wbits)
    parts, block = [c.compress(prefix)], bytes(MiB)
    for _ in range(n // MiB):
        parts.append(c.compress(block))
    parts += [c.compress(bytes(n % MiB)), c.flush()]
    return b"".join(parts)


def idx_folder(tmp_path: Path, gz: bool = False) -> Path:
    folder = tmp_path / "idx"
    write_idx_folder(folder, n_train=20, n_test=5, hw=(4, 3), gz=gz)
    return folder


def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    for i in range(6):
        write_png(folder / f"{i}.png", size=(6, 5), value=i * 20)
    return folder


def place(tmp_path: Path, kind: str) -> tuple[Path, Path, dict]:
    """(the path to load, the data file inside it to attack, load options) for one kind of reader."""
    if kind == "idx":
        folder = idx_folder(tmp_path)
        return folder, folder / "train-images-idx3-ubyte", {"name_or_path": "fashion-mnist", "data_dir": str(folder)}
    if kind == "image":
        folder = image_folder(tmp_path)
        return folder, folder / "6.png", {}
    path = tmp_path / f"data.{kind}"
    return path, path, {}


def load_kind(path: Path, options: dict, **kwargs):
    options = dict(options)
    return load_or_error(options.pop("name_or_path", path), **options, **kwargs)


# --------------------------------------------------------------------------------------------------
# 1. only regular files are read: FIFOs, devices, folders, unreadable files


FILE_KINDS = ["npy", "npz", "csv", "tsv", "txt", "idx", "image"]
VALID = {"npy": lambda: npy_bytes(np.zeros((10, 2))), "npz": lambda: zip_bytes({"x.npy": npy_bytes(np.zeros((10, 2)))}),
         "csv": lambda: table_text().encode(), "tsv": lambda: table_text(sep="\t").encode(),
         "txt": lambda: table_text().encode(), "image": png_bytes}


def make_fifo(target: Path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("os.mkfifo is not available here")
    try:
        os.mkfifo(target)
    except OSError as e:  # pragma: no cover - e.g. a file system without FIFOs
        pytest.skip(f"cannot make a FIFO here: {e}")


def link_to_dev_zero(target: Path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    target.symlink_to("/dev/zero")


SPECIAL_FILES = {  # what takes the data file's place, and what the error must call it
    "fifo": (make_fifo, r"is not a regular file \(a FIFO\); aekit reads data only from regular files"),
    "link to /dev/zero": (link_to_dev_zero, r"is not a regular file \(a character device, through a link to "
                                            r"/dev/zero\)"),
}


@needs_alarm
@pytest.mark.parametrize("special", sorted(SPECIAL_FILES))
@pytest.mark.parametrize("kind", FILE_KINDS)
def test_special_file_in_place_of_a_data_file_is_refused_at_once(tmp_path, kind, special):
    """Opening a FIFO blocks until a writer comes; /dev/zero never ends: neither may be opened or read."""
    top, target, options = place(tmp_path, kind)
    target.unlink(missing_ok=True)
    make, pattern = SPECIAL_FILES[special]
    make(target)
    err = load_kind(top, options)
    assert isinstance(err, DataError) and re.search(pattern, str(err)), err
    assert str(err).startswith(str(target))


@pytest.mark.parametrize("name", ["data.npy", "data.npz", "data.csv", "data.tsv", "data.txt"])
def test_folder_named_like_a_data_file(tmp_path, name):
    (tmp_path / name).mkdir()
    (tmp_path / name / "notes.md").write_text("x")
    expect_error(tmp_path / name, rf"{re.escape(name)}: no \.png.*it is a folder, not a \.\w+ file")


def test_folder_in_place_of_an_idx_file(tmp_path):
    folder = idx_folder(tmp_path)
    (folder / "train-labels-idx1-ubyte").unlink()
    (folder / "train-labels-idx1-ubyte").mkdir()
    expect_error("fashion-mnist", r"train-labels-idx1-ubyte: is not a regular file \(a folder\)", data_dir=str(folder))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="runs as root, where chmod 000 does not prevent reading")
@pytest.mark.parametrize("kind", FILE_KINDS)
def test_unreadable_file(tmp_path, kind):
    top, target, options = place(tmp_path, kind)
    if not target.exists():
        target.write_bytes(VALID[kind]())
    target.chmod(0)
    try:
        err = load_kind(top, options)
    finally:
        target.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert isinstance(err, DataError) and re.search(r"cannot read the file \(Permission denied\); check its "
                                                    r"permissions", str(err)), err


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_unreadable_file_simulated(tmp_path, monkeypatch, kind):
    """The same, where chmod cannot make a file unreadable (root): opening it fails with EACCES."""
    top, target, options = place(tmp_path, kind)
    if not target.exists():
        target.write_bytes(VALID[kind]())
    real_open = os.open

    def deny(path, *args, **kwargs):
        if os.fspath(path) == str(target):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    err = load_kind(top, options)
    assert isinstance(err, DataError) and str(err).startswith(f"{target}: cannot read the file (Permission denied)")


# --------------------------------------------------------------------------------------------------
# 2. sizes that cannot be allocated are refused up front


LIMIT = r"would take [\d.]+ [KMGTPE]?i?B in memory, more than the limit of [\d.]+ [KMGTPE]?i?B"


def test_npy_header_announcing_terabytes(tmp_path):
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000, 10), }"
    (tmp_path / "big.npy").write_bytes(npy_with_header(header))
    expect_error(tmp_path / "big.npy", r"big\.npy: .*\(1000000000000, 10\).*" + LIMIT)


def test_npz_member_header_announcing_terabytes(tmp_path):
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000, 10), }"
    members = {"x.npy": npy_with_header(header), "y.npy": npy_bytes(np.zeros(10, dtype=np.int64))}
    (tmp_path / "big.npz").write_bytes(zip_bytes(members))
    expect_error(tmp_path / "big.npz", r"big\.npz.*'x'.*\(1000000000000, 10\).*" + LIMIT)


def test_npz_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    monkeypatch.setenv("AEKIT_MAX_DATA_BYTES", str(32 * MiB))
    n = 96 * MiB  # zeros: 96 MiB of float64 that deflate to ~100 KiB
    header = npy_with_header(f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({n // 8}, 1), }}")
    (tmp_path / "bomb.npz").write_bytes(_zip_member_of_zeros("x.npy", header, n))
    with peak_memory() as mem:
        expect_error(tmp_path / "bomb.npz", r"bomb\.npz.*" + LIMIT)
    assert mem["peak"] < 16 * MiB, mem


def test_npz_member_that_inflates_beyond_the_budget(tmp_path, monkeypatch):
    """A small array followed by gigabytes of padding inside the member: ZipInfo.file_size counts."""
    monkeypatch.setenv("AEKIT_MAX_DATA_BYTES", str(32 * MiB))
    head = npy_bytes(np.ones((40, 3)))
    (tmp_path / "padded.npz").write_bytes(_zip_member_of_zeros("x.npy", head, 64 * MiB))
    with peak_memory() as mem:
        expect_error(tmp_path / "padded.npz", r"padded\.npz: array 'x' \(member 'x\.npy', \d+ bytes decompressed\) "
                     + LIMIT)
    assert mem["peak"] < 16 * MiB, mem


def _zip_member_of_zeros(name: str, head: bytes, n: int) -> bytes:
    """A zip with one deflated member: ``head`` then ``n`` zero bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open(name, "w", force_zip64=True) as f:
            f.write(head)
            block = bytes(MiB)
            for _ in range(n // MiB):
                f.write(block)
    return buf.getvalue()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_announcing_more_than_the_budget(tmp_path, monkeypatch, gz):
    """A valid IDX file of 100 images of 1000x1000 pixels: 100 MB of bytes, 400 MB as float32."""
    monkeypatch.setenv("AEKIT_MAX_DATA_BYTES", str(64 * MiB))
    folder = idx_folder(tmp_path, gz=gz)
    header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (100, 1000, 1000))
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    with open(folder / name, "wb") as f:
        if gz:
            f.write(_deflate_zeros(10**8, header))
        else:
            f.write(header)
            f.truncate(len(header) + 10**8)  # sparse: no disk space
    write_idx(folder / ("train-labels-idx1-ubyte" + (".gz" if gz else "")), np.zeros(100), gz=gz)
    write_idx(folder / ("t10k-images-idx3-ubyte" + (".gz" if gz else "")), np.zeros((1, 1000, 1000)), gz=gz)
    write_idx(folder / ("t10k-labels-idx1-ubyte" + (".gz" if gz else "")), np.zeros(1), gz=gz)
    with peak_memory() as mem:
        expect_error("fashion-mnist", rf"{name}: .*100x1000x1000.*" + LIMIT, data_dir=str(folder))
    assert mem["peak"] < 16 * MiB, mem


def test_gzip_idx_bomb_stops_at_what_the_header_allows(tmp_path):
    """30 labels announced, then 64 MiB of zeros: decompression stops after the header's 30 bytes."""
    folder = idx_folder(tmp_path, gz=True)
    header = (0x801).to_bytes(4, "big") + (20).to_bytes(4, "big")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(_deflate_zeros(64 * MiB, header))
    with peak_memory() as mem:
        expect_error("fashion-mnist", r"train-labels-idx1-ubyte\.gz: the header announces 20 = 20 bytes of data "
                     r"but more follow: the file has extra bytes at the end", data_dir=str(folder))
    assert mem["peak"] < 16 * MiB, mem


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_folder_of_huge_images_is_refused_before_decoding(tmp_path, monkeypatch):
    """20 PNGs of 100 megapixels (10 GB as float32 tensors), each a ~100 KB file."""
    monkeypatch.setenv("AEKIT_MAX_DATA_BYTES", str(4 * 2**30))
    data = png_of_zeros(10_000, 10_000)
    (tmp_path / "huge").mkdir()
    for i in range(20):
        (tmp_path / "huge" / f"{i:02d}.png").write_bytes(data)
    with peak_memory() as mem:
        expect_error(tmp_path / "huge", r"huge: 20 images of 10000x10000 pixels.*" + LIMIT)
    assert mem["peak"] < 16 * MiB, mem


def test_image_of_another_format_named_png_is_not_decoded(tmp_path):
    """Only PNG and JPEG decoders run: Pillow's others (EPS runs Ghostscript) stay shut."""
    for i in range(3):
        write_png(tmp_path / "imgs" / f"{i}.png")
    Image.new("L", (4, 3)).save(tmp_path / "imgs" / "bmp.png", format="BMP")
    expect_error(tmp_path / "imgs", r"bmp\.png: cannot read the image \(not a PNG or JPEG image\)")


@pytest.mark.parametrize("layout", ["members", "zero padding"])
def test_gzip_idx_variants_that_gunzip_reads_still_load(tmp_path, layout):
    """The bounded inflater reads what gzip.decompress reads: concatenated members, zero padding."""
    folder = idx_folder(tmp_path, gz=True)
    path = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    data = (gzip.compress(raw[:50]) + gzip.compress(raw[50:]) if layout == "members"
            else gzip.compress(raw) + bytes(512))
    path.write_bytes(data)
    ds = load_or_error("fashion-mnist", data_dir=str(folder), limit=None)
    assert not isinstance(ds, AekitError), ds
    expected = np.frombuffer(raw[16:], dtype=np.uint8).reshape(20, 1, 4, 3)
    got = np.concatenate([ds.x_train.numpy(), ds.x_val.numpy()]) * 255
    assert sorted(map(bytes, np.rint(got).astype(np.uint8))) == sorted(map(bytes, expected))


def test_pillow_decompression_bomb_is_a_clean_error(tmp_path):
    (tmp_path / "bomb").mkdir()
    (tmp_path / "bomb" / "a.png").write_bytes(png_of_zeros(20_000, 20_000, pixels=False))  # over Pillow's limit
    expect_error(tmp_path / "bomb", r"a\.png: cannot read the image .*decompression bomb")


@pytest.mark.parametrize("kind", ["npy", "image", "csv"])
def test_budget_is_what_the_data_takes_in_memory(tmp_path, monkeypatch, kind):
    """What stays resident: a memory-mapped .npy its index (24 bytes per sample), 8-bit images their bytes
    (decoded, stacked, and the splits' uint8 copies), a table its text and float tensors."""
    options = {}
    if kind == "npy":
        path = tmp_path / "t.npy"
        path.write_bytes(npy_bytes(np.ones((100, 10))))
        need = 100 * 24
    elif kind == "image":
        path = image_folder(tmp_path)
        need = 6 * 6 * 5 * 3
    else:  # the text twice (decoded, and encoded for numpy's reader), and a str object per label
        path = tmp_path / "t.csv"
        path.write_text(table_text(n=30))
        need = 2 * len(table_text(n=30)) + 30 * (3 * (4 + 8) + 64)
        options["label_column"] = "label"
    monkeypatch.setenv("AEKIT_MAX_DATA_BYTES", str(need))
    assert not isinstance(load_or_error(path, **options), AekitError)
    monkeypatch.setenv("AEKIT_MAX_DATA_BYTES", str(need - 1))
    expect_error(path, LIMIT + r" \(AEKIT_MAX_DATA_BYTES\)", **options)


@pytest.mark.parametrize("value", ["lots", "-5", "0", "1.5e9", "10 GB"])
def test_bad_budget_variable_is_a_config_error(tmp_path, monkeypatch, value):
    np.save(tmp_path / "t.npy", np.ones((10, 2)))
    monkeypatch.setenv("AEKIT_MAX_DATA_BYTES", value)
    expect_error(tmp_path / "t.npy", r"AEKIT_MAX_DATA_BYTES: expected a positive whole number of bytes.*"
                 + re.escape(repr(value)), kind=ConfigError)


def test_budget_default_and_override(monkeypatch):
    monkeypatch.delenv("AEKIT_MAX_DATA_BYTES", raising=False)
    if hasattr(os, "sysconf"):
        assert source.max_data_bytes() == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    monkeypatch.setenv("AEKIT_MAX_DATA_BYTES", " 123456 ")
    assert source.max_data_bytes() == 123456

    def no_sysconf(name):
        raise ValueError(f"unrecognized configuration name {name}")

    monkeypatch.delenv("AEKIT_MAX_DATA_BYTES")
    monkeypatch.setattr(os, "sysconf", no_sysconf)
    assert source.max_data_bytes() >= 2**30


# --------------------------------------------------------------------------------------------------
# 3. one-line errors, never a traceback


NPY_HEADERS = {
    "cut short": "{'descr': '<f8', 'fortran_order': False, 'shape': (3,",
    "not a dict": "[1, 2, 3]",
    "missing keys": "{'descr': '<f8'}",
    "negative shape": "{'descr': '<f8', 'fortran_order': False, 'shape': (-1, 3), }",
    "float shape": "{'descr': '<f8', 'fortran_order': False, 'shape': (2.5, 3), }",
    "bad descr": "{'descr': '<zz', 'fortran_order': False, 'shape': (3, 3), }",
    "object dtype": "{'descr': '|O', 'fortran_order': False, 'shape': (3, 3), }",
    "nested": "{'descr': '<f8', 'fortran_order': False, 'shape': " + "(" * 400 + ")" * 400 + "}",
    "unbalanced quote": "{'descr': '<f8, 'fortran_order': False, 'shape': (3, 3), }",
    "call": "{'descr': '<f8', 'fortran_order': False, 'shape': __import__('os').getpid()}",
    "ragged data": "{'descr': '<f8', 'fortran_order': False, 'shape': (30, 3), }",
}


@pytest.mark.parametrize("case", sorted(NPY_HEADERS))
@pytest.mark.parametrize("container", ["npy", "npz"])
def test_malformed_npy_header(tmp_path, case, container):
    data = npy_with_header(NPY_HEADERS[case], data=bytes(100))
    path = tmp_path / f"bad.{container}"
    path.write_bytes(data if container == "npy" else zip_bytes({"x.npy": data}))
    expect_error(path, rf"bad\.{container}")


@pytest.mark.parametrize("case", ["length past the end", "version 9", "length 0", "version 2 length 4 GiB"])
def test_malformed_npy_preamble(tmp_path, case):
    data = npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 3), }", data=bytes(72))
    if case == "length past the end":
        data = data[:8] + (60000).to_bytes(2, "little") + data[10:]
    elif case == "version 2 length 4 GiB":  # refused before numpy reads (and holds) that much header text
        data = npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 3), }", version=(2, 0))
        data = data[:8] + (2**32 - 1).to_bytes(4, "little") + data[12:]
    elif case == "version 9":
        data = data[:6] + bytes([9, 0]) + data[8:]
    else:
        data = data[:8] + bytes(2) + data[10:]
    (tmp_path / "bad.npy").write_bytes(data)
    expect_error(tmp_path / "bad.npy", r"bad\.npy")


@pytest.mark.parametrize("where", ["number", "text", "header", "label"])
def test_csv_with_a_10_mb_line(tmp_path, where):
    huge = {"number": "1" * 10**7, "text": "x" * 10**7, "header": "h" * 10**7, "label": "y" * 10**7}[where]
    rows = [f"{i},{i % 3},{'ab'[i % 2]}" for i in range(20)]
    if where == "header":
        text = f"a,{huge},label\n" + "\n".join(rows) + "\n"
    elif where == "label":
        text = "a,b,label\n" + "\n".join(rows) + f"\n1,2,{huge}\n"
    else:
        text = "a,b,label\n" + "\n".join(rows) + f"\n{huge},2,a\n"
    (tmp_path / "long.csv").write_text(text)
    err = load_or_error(tmp_path / "long.csv", label_column="label")
    if isinstance(err, AekitError):
        assert str(err).startswith(str(tmp_path / "long.csv")) and len(str(err)) < 1000, str(err)[:2000]


def test_csv_with_nul_in_column_names(tmp_path):
    text = "a\0b,c\0,label\n" + "".join(f"{i},{i % 5},{'xy'[i % 2]}\n" for i in range(30))
    (tmp_path / "nul.csv").write_text(text)
    ds = load_or_error(tmp_path / "nul.csv", label_column="label")
    assert ds.feature_names == ["a\0b", "c\0"]
    expect_error(tmp_path / "nul.csv", r"label column 'kind' not found.*the columns are: 'a\\x00b', 'c\\x00', "
                 r"'label'", label_column="kind")


# --------------------------------------------------------------------------------------------------
# 4. values beyond float32's range


@pytest.mark.parametrize("value, count", [("1e308", 1), ("-1e308", 1), ("3.5e38", 2), ("-3.41e38", 1)])
def test_csv_values_beyond_float32(tmp_path, value, count):
    rows = [f"{i},{i % 3}" for i in range(20)]
    rows[4] = f"{value},1"
    if count == 2:
        rows[9] = f"2,{value}"
    (tmp_path / "big.csv").write_text("a,b\n" + "\n".join(rows) + "\n")
    expect_error(tmp_path / "big.csv", rf"big\.csv: {count} value\(s\) beyond float32's range \(magnitude above "
                 r"3\.4e\+38\), first at line 6 \(data row 5\), column 'a'; .*rescale")


def test_npy_values_beyond_float32(tmp_path):
    x = np.ones((20, 3))
    x[7, 2] = -1e308
    np.save(tmp_path / "big.npy", x)
    expect_error(tmp_path / "big.npy", r"big\.npy: 1 value\(s\) beyond float32's range .*first at row 7, column 2 "
                 r"\(0-based\)")


def test_standardized_values_beyond_float32(tmp_path):
    rows = [f"{i % 4},{(i % 3) * 1e-39}" for i in range(20)] + ["1,1"]
    (tmp_path / "tiny.csv").write_text("a,b\n" + "\n".join(rows) + "\n")
    expect_error(tmp_path / "tiny.csv", r"tiny\.csv: standardizing gives values beyond float32's range.*column 'b'",
                 stats={"mean": [0.0, 0.0], "std": [1.0, 1e-40]})


# --------------------------------------------------------------------------------------------------
# 5. a config cannot make an error print a file's contents


@pytest.mark.parametrize("option", ["label_column", "features"])
def test_column_listing_is_capped(tmp_path, option):
    names = [f"secret{i:03d}_" + "s" * 100 for i in range(200)]
    text = ",".join(names) + "\n" + "".join(",".join(["1"] * 200) + "\n" for _ in range(10))
    (tmp_path / "wide.csv").write_text(text)
    value = "nope" if option == "label_column" else ["nope"]
    msg = expect_error(tmp_path / "wide.csv", r"not found.*the columns are: 'secret000_s", **{option: value})
    assert len(msg) < 1500 and "secret020" not in msg and "s" * 41 not in msg, msg
    assert "200 in all" in msg


def test_header_that_looks_like_data_is_not_echoed(tmp_path):
    (tmp_path / "d.csv").write_text(",".join(["1" * 5000] * 100) + "\n1,2\n")
    msg = expect_error(tmp_path / "d.csv", r"looks like data")
    assert len(msg) < 1500, msg


# --------------------------------------------------------------------------------------------------
# the fuzzer: random bytes and mutations of valid files, for every reader


INTERESTING = [0, 1, 2, 3, 255, 256, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1]


def mutations(valid: bytes, numbers_at: list[int]):
    """Random bytes, truncations, flipped bytes, inserted bytes and changed big-endian u32 header numbers."""
    n = len(valid)
    flips = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 255)), min_size=1, max_size=6)
    return st.one_of(
        st.just(valid),
        st.binary(max_size=2 * n),
        st.integers(0, n).map(lambda k: valid[:k]),
        flips.map(lambda fs: _apply(valid, fs)),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=64)).map(
            lambda t: valid[:t[0]] + t[1] + valid[t[0]:]),
        st.tuples(st.sampled_from(numbers_at), st.sampled_from(INTERESTING) | st.integers(0, 2**32 - 1)).map(
            lambda t: valid[:t[0]] + t[1].to_bytes(4, "big") + valid[t[0] + 4:]),
    )


def _apply(data: bytes, flips) -> bytes:
    b = bytearray(data)
    for i, v in flips:
        b[i] = v
    return bytes(b)


def idx_case(gz: bool):
    images = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (20, 4, 3)) + bytes(range(240))
    labels = (0x801).to_bytes(4, "big") + (20).to_bytes(4, "big") + bytes(i % 10 for i in range(20))
    which = st.sampled_from(["train-images-idx3-ubyte", "train-labels-idx1-ubyte"])

    def build(args):
        name, data, compress = args
        return {name: gzip.compress(data, mtime=0) if compress else data}

    images_or_labels = which.flatmap(lambda name: st.tuples(
        st.just(name), mutations(images if "images" in name else labels, [0, 4, 8, 12]), st.just(gz)))
    if gz:  # also damage the gzip stream itself
        gz_damaged = which.flatmap(lambda name: st.tuples(
            st.just(name), mutations(gzip.compress(images if "images" in name else labels, mtime=0), [4, 8]),
            st.just(False)))
        images_or_labels = images_or_labels | gz_damaged
    return images_or_labels.map(build)


NPY_DESCRS = ["<f8", "<f4", "|u1", "<i8", ">f8", "<f2", "|b1", "<c16", "|O", "<U3", "|S2", "|V8", "<M8[s]"]
SHAPES = st.lists(st.sampled_from([0, 1, 2, 3, 4, 30, 2**31, 10**12, -1]), max_size=5).map(tuple)


@st.composite
def npy_files(draw):
    valid = npy_bytes(np.linspace(0, 1, 60).reshape(20, 3))
    kind = draw(st.sampled_from(["mutated", "header"]))
    if kind == "mutated":
        return draw(mutations(valid, [6, 8]))
    header = (f"{{'descr': {draw(st.sampled_from(NPY_DESCRS))!r}, 'fortran_order': {draw(st.booleans())}, "
              f"'shape': {draw(SHAPES)!r}, }}")
    if draw(st.booleans()):  # damage the header text
        i = draw(st.integers(0, len(header) - 1))
        header = header[:i] + draw(st.text(alphabet="(),'{}: 0123456789-e", max_size=5)) + header[i + 1:]
    return npy_with_header(header, data=draw(st.binary(max_size=512)), version=draw(st.sampled_from([(1, 0), (2, 0),
                                                                                                      (3, 0)])))


@st.composite
def npz_files(draw):
    labels = npy_bytes(np.arange(20) % 3)
    if draw(st.booleans()):
        valid = zip_bytes({"x.npy": npy_bytes(np.linspace(0, 1, 60).reshape(20, 3)), "y.npy": labels},
                          compression=draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])))
        return draw(mutations(valid, [18, 22, 26]))  # local header: sizes at 18, 22; name length at 26
    names = draw(st.lists(st.sampled_from(["x.npy", "y.npy", "z.npy", "x", "y", "a/b.npy"]), min_size=0,
                          max_size=3, unique=True))
    members = {n: draw(npy_files()) if n != "y.npy" or draw(st.booleans()) else labels for n in names}
    return zip_bytes(members, compression=draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])))


CSV_TOKENS = ["1", "-2.5", "0", "1e308", "-1e308", "3.5e38", "1e-320", "nan", "inf", "", " ", '"', '"1,2"', "\0",
              "x", "a\0b", "1" * 400, "é", "\t", ";", "\r", "9" * 140_000]  # the last: over csv's field limit


@st.composite
def csv_files(draw):
    suffix = draw(st.sampled_from([".csv", ".tsv", ".txt"]))
    sep = {".csv": ",", ".tsv": "\t"}.get(suffix) or draw(st.sampled_from([",", ";", "\t", "|"]))
    label, features = None, None
    if draw(st.booleans()):  # a valid table, damaged
        text = draw(mutations(table_text(n=12, sep=sep).encode(), [0, 4]).map(lambda b: b.decode("utf-8", "replace")))
        label = draw(st.sampled_from([None, "label", "missing"]))
    else:  # mostly well-formed numbers, with a hostile token or name here and there
        ncol = draw(st.integers(1, 4))
        header = ["a", "b", "c", "label"][-ncol:]
        if draw(st.integers(0, 3)) == 0:
            header = draw(st.lists(st.sampled_from(["a", "b", "label", "", "1", "a\0", "h" * 300]), min_size=ncol,
                                   max_size=ncol))
        numbers = st.sampled_from(["1", "-2.5", "0", "3", "7e1", "0.25"])
        extreme = st.one_of(st.sampled_from(["1e39", "-1e300", "3.41e38", "1e-320"]), st.floats().map(repr))
        hostile = st.one_of(st.sampled_from(CSV_TOKENS), extreme)
        token = st.integers(0, 19).flatmap(lambda k: hostile if k == 0 else numbers)
        width = st.integers(0, 19).flatmap(lambda k: st.integers(max(ncol - 1, 1), ncol + 1) if k == 0
                                           else st.just(ncol))
        rows = draw(st.lists(width.flatmap(lambda w: st.lists(token, min_size=w, max_size=w)), min_size=1,
                             max_size=20))
        text = "\n".join(sep.join(r) for r in [header, *rows]) + draw(st.sampled_from(["", "\n", "\r\n"]))
        label = draw(st.sampled_from([None, header[-1], "missing"]))
        features = draw(st.sampled_from([None, None, header[:1], ["zz"]]))
        if features is not None and label in features:
            label = None
    return text.encode("utf-8", "surrogatepass"), suffix, label, features


@st.composite
def image_folders(draw):
    valid = {"png": png_bytes(), "rgb": png_bytes(mode="RGB", value=(1, 2, 3)), "jpg": png_bytes(fmt="JPEG"),
             "big": png_of_zeros(64, 4096)}
    key = draw(st.sampled_from(sorted(valid)))
    offsets = [16, 20] if key != "jpg" else [2, 4, 6]  # PNG IHDR width/height; JPEG segment lengths
    damaged = draw(mutations(valid[key], offsets))
    return {"ok1.png": valid["png"], "ok2.png": valid["png"], f"z.{'jpg' if key == 'jpg' else 'png'}": damaged}


def write_case(tmp_path: Path, reader: str, case):
    """Write one fuzz case; return (what load gets, options)."""
    if reader in ("idx", "idx-gz"):
        folder = tmp_path / reader
        if not folder.exists():
            write_idx_folder(folder, n_train=20, n_test=5, hw=(4, 3), gz=reader == "idx-gz")
        sfx = ".gz" if reader == "idx-gz" else ""
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):  # restore the valid files
            x = np.arange(240).reshape(20, 4, 3) if "images" in name else np.arange(20) % 10
            write_idx(folder / (name + sfx), x, gz=bool(sfx))
        for name, data in case.items():
            (folder / (name + sfx)).write_bytes(data)
        return "fashion-mnist", {"data_dir": str(folder)}
    if reader in ("npy", "npz"):
        path = tmp_path / f"fuzz.{reader}"
        path.write_bytes(case)
        return path, {}
    if reader == "csv":
        data, suffix, label, features = case
        path = tmp_path / f"fuzz{suffix}"
        path.write_bytes(data)
        return path, {"label_column": label, "features": features}
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for name, data in case.items():
        (folder / name).write_bytes(data)
    return folder, {"val_fraction": 0.0, "test_fraction": 0.0}  # three images are enough to train on


STRATEGIES = {"idx": idx_case(False), "idx-gz": idx_case(True), "npy": npy_files(), "npz": npz_files(),
              "csv": csv_files(), "image": image_folders()}


def fuzz(reader: str, examples: int, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("AEKIT_MAX_DATA_BYTES", str(64 * MiB))  # declared sizes above this are refused
    outcomes = {"loaded": 0, "clean error": 0}

    @settings(max_examples=examples, derandomize=True, database=None, deadline=timedelta(milliseconds=500),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(case=STRATEGIES[reader])
    def run(case):
        what, options = write_case(tmp_path, reader, case)
        result = load_or_error(what, seconds=5.0, **options)
        if isinstance(result, AekitError):
            outcomes["clean error"] += 1
            assert len(str(result).replace(str(tmp_path), "")) < 2000, str(result)[:3000]  # never a file's contents
        else:
            outcomes["loaded"] += 1
            assert all(bool(torch.isfinite(x).all()) for x in (result.x_train, result.x_val, result.x_test))

    run()
    print(f"fuzz {reader}: {sum(outcomes.values())} examples: {outcomes}")
    return outcomes


@needs_alarm
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("reader", sorted(STRATEGIES))
def test_fuzz_readers(reader, tmp_path, monkeypatch):
    outcomes = fuzz(reader, DEFAULT_EXAMPLES, tmp_path, monkeypatch)
    assert outcomes["clean error"] > 0


@pytest.mark.slow
@needs_alarm
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("reader", sorted(STRATEGIES))
def test_fuzz_readers_slow(reader, tmp_path, monkeypatch):
    fuzz(reader, SLOW_EXAMPLES, tmp_path, monkeypatch)


def test_finite_values_near_the_float32_limit_train_and_score(tmp_path, cli):
    """A table of finite values of about +-3e38 (the edge of float32) is data, not a divergence: the statistics
    are float64, so training, the report and scoring finish with finite numbers."""
    rng = np.random.default_rng(0)
    a = rng.choice([3e38, -3e38], size=120)
    rows = ["a,b,c"] + [f"{x:.6g},{y:.6g},{z:.6g}" for x, y, z in zip(a, rng.random(120), rng.random(120) * 3e38)]
    (tmp_path / "edge.csv").write_text("\n".join(rows) + "\n")
    code, out, err = cli("train", "ae", "--dataset", tmp_path / "edge.csv", "--epochs", "3", "--contamination",
                         "0.05", "--quiet", "--out", tmp_path / "run")
    assert code == 0, err
    assert "diverg" not in (out + err).lower()
    code, out, err = cli("score", tmp_path / "run", tmp_path / "edge.csv")
    assert code == 0, err
    scores = np.array([float(line.split(",")[1]) for line in out.splitlines()[1:]])
    assert len(scores) == 120 and np.isfinite(scores).all()
