"""CSV / TSV / TXT tables with a header row.

Unquoted text is read by a fast path (numpy's C reader); quoted text, and any text the fast path
rejects, by the csv module, which also finds and names the problem. Only a regular file is read, and
only when the table it holds fits the memory budget (``source.max_data_bytes``).
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .source import (
    _check_budget,
    _check_finite,
    _clip,
    _encode_labels,
    _open_regular,
    _preview,
    _reason,
    _Source,
)

__all__ = ["TABLE_DELIMITERS", "BadTableValue", "sniff_delimiter", "read_table_header", "read_table_column"]

TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t", ".txt": None}  # None: sniffed
_SNIFF_CHARS = 4096     # csv.Sniffer takes quadratic time on quotes: 64 KiB of '," ' take half a minute
_LABEL_BYTES = 64       # a str object per label (the fast path reads labels as Python strings)
_SLOW_FIELD_BYTES = 80  # a str object and a list slot per field, when the csv module reads the table
HEADER_BYTES = 16 * 2**20  # the most bytes read_table_header reads to find the header line (100k named columns fit)


class BadTableValue(DataError):
    """A feature column holds something that is not a number. ``where`` says what and where, without the
    loader's advice (its command-line options), for commands that give other advice."""

    def __init__(self, message: str, where: str, column: str):
        super().__init__(message)
        self.where, self.column = where, column


def sniff_delimiter(p: Path, text: str) -> str:
    """The column delimiter of a .txt table (one of , tab ; |), from the start of its text (whole lines of the
    first _SNIFF_CHARS characters): the one rule of the loader and of ``read_table_header``."""
    sample = text[:_SNIFF_CHARS]
    if len(text) > _SNIFF_CHARS and "\n" in sample:
        sample = sample[:sample.rfind("\n")]  # whole lines
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;|").delimiter
    except csv.Error as e:
        raise DataError(f"{p}: cannot detect the column delimiter (tried , tab ; |); rename the file "
                        "to .csv (comma-separated) or .tsv (tab-separated)") from e


def _first_row(p: Path, text: str, delimiter: str) -> list[str]:
    """The header: the first non-empty row of the text, its names stripped."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(r for r in reader if r)
    except csv.Error as e:
        raise _csv_error(p, e, reader.line_num) from e
    return [h.strip() for h in header]


def _row_complete(text: str, delimiter: str) -> bool:
    """Whether the whole lines of ``text`` hold a complete first non-empty row (no quote left open)."""
    cut = text.rfind("\n")
    if cut < 0:
        return False
    try:
        return any(csv.reader(io.StringIO(text[:cut + 1]), delimiter=delimiter, strict=True))
    except csv.Error as e:
        return "unexpected end of data" not in str(e)  # another problem: the loader's parse names it


def read_table_header(p: str | Path, delimiter: str | None) -> tuple[list[str], str]:
    """(column names, delimiter) of a table file as the loader reads them (``delimiter`` None: sniffed, for
    .txt), from at most HEADER_BYTES of its start: a file whose first line is longer (a 3 GB file without
    a newline) is one DataError line, not a read of the whole file."""
    p = Path(p)
    f, size = _open_regular(p)
    raw, step = bytearray(), 64 * 2**10
    with f:
        while True:
            try:
                chunk = f.read(min(step, HEADER_BYTES + 1 - len(raw)))
            except OSError as e:
                raise DataError(f"{p}: cannot read the file ({e.strerror or e}); check its permissions") from e
            raw += chunk
            end = not chunk or len(raw) >= size
            try:
                text = codecs.getincrementaldecoder("utf-8-sig")().decode(bytes(raw), final=end)
            except UnicodeDecodeError as e:
                raise DataError(f"{p}: not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8") from e
            if not end and text.endswith("\r"):
                text = text[:-1]  # perhaps half of a \r\n
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            if end and not text.strip():
                raise DataError(f"{p}: the file is empty; a table needs a header line with column names, then "
                                "one line per sample: check that you passed the right file")
            if end or len(text) > _SNIFF_CHARS:
                sep = delimiter if delimiter is not None else sniff_delimiter(p, text)
                if end or _row_complete(text, sep):
                    return _first_row(p, text, sep), sep
            if len(raw) > HEADER_BYTES:
                raise DataError(f"{p}: no complete header line in its first {HEADER_BYTES // 2**20} MiB; a table "
                                "starts with one line of column names: check that this is the right file")
            step *= 2


def read_table_column(p: str | Path, name: str, delimiter: str) -> Iterator[str]:
    """The values of column ``name`` of a table file, one per data row in the file's order (the rows the loader
    reads: every non-empty row after the header), read a line at a time."""
    p = Path(p)
    f, _ = _open_regular(p)
    with f, io.TextIOWrapper(f, encoding="utf-8-sig", newline="") as text:
        reader = csv.reader(text, delimiter=delimiter)
        try:
            rows = (r for r in reader if r)
            header = [h.strip() for h in next(rows)]
            if name not in header:
                raise DataError(f"{p}: no column {name!r}; the columns are: {_preview(header, 20)}")
            i = header.index(name)
            for r in rows:
                yield r[i] if i < len(r) else ""
        except csv.Error as e:
            raise _csv_error(p, e, reader.line_num) from e
        except UnicodeDecodeError as e:
            raise DataError(f"{p}: not UTF-8 text ({e.reason}); save it as UTF-8") from e


def _load_table_file(p: Path, delimiter: str | None, label_column: str | None,
                     features: list[str] | None) -> _Source:
    text = _read_text(p)
    if not text.strip():
        raise DataError(f"{p}: the file is empty; a table needs a header line with column names, then one "
                        "line per sample: check that you passed the right file")
    if delimiter is None:
        delimiter = sniff_delimiter(p, text)
    header = _first_row(p, text, delimiter)
    ncol = len(header)
    if all(_is_number(h) for h in header):
        raise DataError(
            f"{p}: the first line ({_preview(header)}) looks like data, but a header line with column names "
            f"is required; add one such as {delimiter.join(f'x{i}' for i in range(min(ncol, 3)))}"
            f"{'...' if ncol > 3 else ''}"
        )
    seen, dups = set(), set()
    for h in header:
        if h and h in seen:
            dups.add(h)
        seen.add(h)
    if dups:
        raise DataError(f"{p}: column name(s) appear more than once in the header: "
                        f"{_preview(sorted(dups), 20, quote=False)}; rename them so each column has a unique name")
    if label_column is not None and label_column not in header:
        raise DataError(
            f"{p}: label column {label_column!r} not found (--label-column); the columns are: "
            f"{_preview(header, 20)}"
        )
    if features is None:
        chosen = [h for h in header if h != label_column]
        unnamed = [i for i, h in enumerate(header) if not h and h != label_column]
        if unnamed:
            raise DataError(
                f"{p}: column {unnamed[0] + 1} has no name in the header (a saved row index?); name it, or "
                "pick the feature columns with --features"
            )
    else:
        known = set(header)
        unknown = [f for f in features if f not in known]
        if unknown:
            raise DataError(f"{p}: feature column(s) {_preview(unknown, 20)} not found (--features); "
                            f"the columns are: {_preview(header, 20)}")
        if label_column is not None and label_column in features:
            raise ConfigError(f"features: the label column {label_column!r} is also listed as a feature; "
                              "remove it from --features")
        chosen = list(features)
    if not chosen:
        raise DataError(f"{p}: no feature columns left besides the label column {label_column!r}; the table "
                        "needs at least one feature column")
    index = {h: i for i, h in enumerate(header)}
    cols = [index[c] for c in chosen]
    lab = None if label_column is None else index[label_column]

    rows = text.count("\n") + (not text.endswith("\n")) - 1  # at least the number of data rows
    what = f"a table of up to {rows} rows x {len(chosen)} columns"
    _check_budget(str(p), 2 * len(text) + rows * (12 * len(chosen) + (_LABEL_BYTES if lab is not None else 0)), what)
    parsed = _parse_table_fast(text, delimiter, ncol, cols, lab) if '"' not in text else None
    if parsed is None:  # quoted fields, or something is wrong: the csv module finds and names it
        _check_budget(str(p), 2 * len(text) + rows * ncol * _SLOW_FIELD_BYTES, what + " read field by field")
        parsed = _parse_table_slow(p, text, delimiter, header, chosen, cols, lab)
    x, labels = parsed

    def where(r, c):
        return f"line {_line_of(text, delimiter, r)} (data row {r + 1}), column {_clip(chosen[c])!r}"

    _check_finite(x, str(p), table=True, where=where)
    src = _Source(name=p.name, what=str(p), kind="table", x=x, feature_names=chosen)
    if labels is not None:
        src.y, src.class_names = _encode_labels(
            labels, f"{p} (label column {label_column!r})",
            where=lambda r: f"line {_line_of(text, delimiter, r)} (data row {r + 1})",
        )
    return src


def _parse_table_fast(text, delimiter, ncol, cols, lab):
    """Numbers (N, len(cols)) float64 and labels (N,) str with numpy's C reader, or None.

    Only for text without quotes, so that every delimiter separates fields. Returns None whenever
    anything is off (ragged lines, a bad number): ``_parse_table_slow`` then names the problem.
    """
    b = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    newlines = np.flatnonzero(b == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(b)]))
    delims = np.flatnonzero(b == ord(delimiter))  # delimiters per line from their positions (no int64 per byte)
    fields = np.searchsorted(delims, ends) - np.searchsorted(delims, starts) + 1
    nonblank = np.flatnonzero(ends > starts)
    if len(nonblank) < 2 or (fields[nonblank] != ncol).any():
        return None
    skip = int(nonblank[0]) + 1  # physical lines up to and including the header
    n = len(nonblank) - 1
    common = dict(delimiter=delimiter, skiprows=skip, comments=None, quotechar=None)
    try:
        x = np.loadtxt(io.StringIO(text), usecols=cols, dtype=np.float64, ndmin=2, **common)
        labels = None
        if lab is not None:
            labels = np.loadtxt(io.StringIO(text), usecols=[lab], dtype=object, ndmin=1, **common)
    except ValueError:
        return None
    if x.shape != (n, len(cols)) or (labels is not None and labels.shape != (n,)):
        return None  # e.g. whitespace-only lines, which the csv module keeps as data
    return x, labels


def _parse_table_slow(p, text, delimiter, header, chosen, cols, lab):
    """Same result as ``_parse_table_fast`` with the csv module, raising DataError at the first problem."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        data = [r for r in reader if r][1:]
    except csv.Error as e:
        raise _csv_error(p, e, reader.line_num) from e
    ncol = len(header)
    if not data:
        raise DataError(f"{p}: the file has a header but no data rows; the dataset is empty")
    lengths = np.fromiter(map(len, data), dtype=np.int64, count=len(data))
    ragged = np.flatnonzero(lengths != ncol)
    if ragged.size:
        r = int(ragged[0])
        raise DataError(
            f"{p}: line {_line_of(text, delimiter, r)} has {int(lengths[r])} fields but the header has {ncol} "
            f"({ragged.size} such line(s)); every line needs one value per column (check for a stray or "
            "missing delimiter, or quote fields that contain it)"
        )
    columns = list(zip(*data, strict=True))  # one tuple of strings per column
    x = np.empty((len(data), len(cols)), dtype=np.float64)
    for j, (name, c) in enumerate(zip(chosen, cols, strict=True)):
        col = columns[c]
        try:
            x[:, j] = np.array(col, dtype=np.float64)
        except ValueError:
            r, value = next((i, v) for i, v in enumerate(col) if not _is_number(v))
            problem = ("an empty value (missing data)" if not value.strip()
                       else f"the non-numeric value {_clip(value)!r}")
            where = (f"{p}: column {_clip(name)!r} has {problem} at line {_line_of(text, delimiter, r)} "
                     f"(data row {r + 1})")
            raise BadTableValue(
                f"{where}; feature columns must be numbers: exclude the column with --features, use it as the "
                f"label with --label-column {name}, or fix the value", where, name
            ) from None
    labels = None if lab is None else np.array(columns[lab], dtype=object)
    return x, labels


def _line_of(text: str, delimiter: str, data_row: int) -> int:
    """1-based line of the file where data row ``data_row`` (0-based, after the header) ends.

    Only used for error messages. Without quotes a row is a non-empty line (no csv module, whose
    field size limit a 10 MB line would hit); with quotes, re-reads the text with the csv module.
    """
    if '"' not in text:
        line, seen, start = 0, -1, 0
        while start <= len(text):
            end = text.find("\n", start)
            end = len(text) if end < 0 else end
            line += 1
            if end > start:
                if seen == data_row:
                    return line
                seen += 1
            start = end + 1
        return line
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    seen = -1
    try:
        for r in reader:
            if r:
                if seen == data_row:
                    return reader.line_num
                seen += 1
    except csv.Error:
        pass
    return reader.line_num


def _read_text(p: Path) -> str:
    """The text of a regular file that fits the budget: UTF-8 (BOM dropped), newlines as \\n (universal)."""
    f, size = _open_regular(p)
    with f:
        _check_budget(str(p), 2 * size, f"its text ({size} bytes)")
        try:
            raw = f.read(size)  # what fstat saw: bytes appended meanwhile are not read
        except OSError as e:
            raise DataError(f"{p}: cannot read the file ({e.strerror or e}); check its permissions") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        raise DataError(f"{p}: not UTF-8 text (bad byte at offset {offset}); save it as UTF-8") from e
    del raw
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as open() reads text


def _csv_error(p: Path, e: csv.Error, line: int) -> DataError:
    if "field larger than field limit" in str(e):
        return DataError(
            f"{p}: line {line} holds a field longer than {csv.field_size_limit()} characters; a table holds numbers "
            "and short labels: check that this is the right file and that its quotes are balanced"
        )
    return DataError(f"{p}: not valid delimited text ({_reason(e)}); check quoting and line endings")


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
