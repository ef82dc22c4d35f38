"""CSV / TSV / TXT tables with a header row.

Unquoted text is read by a fast path (numpy's C reader); quoted text, and any text the fast path
rejects, by the csv module, which also finds and names the problem.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .source import _check_finite, _encode_labels, _preview, _Source

TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t", ".txt": None}  # None: sniffed


def _load_table_file(p: Path, delimiter: str | None, label_column: str | None,
                     features: list[str] | None) -> _Source:
    try:
        with open(p, encoding="utf-8-sig") as f:  # universal newlines: \r\n and \r become \n
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8") from e
    except OSError as e:
        raise DataError(f"{p}: cannot read the file ({e.strerror or e}); check its permissions") from e
    if not text.strip():
        raise DataError(f"{p}: the file is empty; a table needs a header line with column names, then one "
                        "line per sample: check that you passed the right file")
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:65536], delimiters=",\t;|").delimiter
        except csv.Error as e:
            raise DataError(f"{p}: cannot detect the column delimiter (tried , tab ; |); rename the file "
                            "to .csv (comma-separated) or .tsv (tab-separated)") from e
    try:
        header = next(r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r)
    except csv.Error as e:
        raise DataError(f"{p}: not valid delimited text ({e}); check quoting and line endings") from e
    header = [h.strip() for h in header]
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
        raise DataError(f"{p}: column name(s) appear more than once in the header: {', '.join(sorted(dups))}; "
                        "rename them so each column has a unique name")
    if label_column is not None and label_column not in header:
        raise DataError(
            f"{p}: label column {label_column!r} not found (--label-column); the columns are: "
            f"{_preview(header, 50)}"
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
        unknown = [f for f in features if f not in header]
        if unknown:
            raise DataError(f"{p}: feature column(s) {', '.join(map(repr, unknown))} not found (--features); "
                            f"the columns are: {_preview(header, 50)}")
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

    parsed = _parse_table_fast(text, delimiter, ncol, cols, lab) if '"' not in text else None
    if parsed is None:  # quoted fields, or something is wrong: the csv module finds and names it
        parsed = _parse_table_slow(p, text, delimiter, header, chosen, cols, lab)
    x, labels = parsed

    def where(r, c):
        return f"line {_line_of(text, delimiter, r)} (data row {r + 1}), column {chosen[c]!r}"

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
    cum = np.concatenate(([0], np.cumsum(b == ord(delimiter))))
    fields = cum[ends] - cum[starts] + 1
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
            labels = np.loadtxt(io.StringIO(text), usecols=[lab], dtype=str, ndmin=1, **common)
    except ValueError:
        return None
    if x.shape != (n, len(cols)) or (labels is not None and labels.shape != (n,)):
        return None  # e.g. whitespace-only lines, which the csv module keeps as data
    return x, labels


def _parse_table_slow(p, text, delimiter, header, chosen, cols, lab):
    """Same result as ``_parse_table_fast`` with the csv module, raising DataError at the first problem."""
    try:
        data = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r][1:]
    except csv.Error as e:
        raise DataError(f"{p}: not valid delimited text ({e}); check quoting and line endings") from e
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
                       else f"the non-numeric value {value!r}")
            raise DataError(
                f"{p}: column {name!r} has {problem} at line {_line_of(text, delimiter, r)} (data row {r + 1}); "
                f"feature columns must be numbers: exclude the column with --features, use it as the label "
                f"with --label-column {name}, or fix the value"
            ) from None
    labels = None if lab is None else np.array(columns[lab], dtype=str)
    return x, labels


def _line_of(text: str, delimiter: str, data_row: int) -> int:
    """1-based line of the file where data row ``data_row`` (0-based, after the header) ends.

    Only used for error messages: re-reads the text with the csv module.
    """
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    seen = -1
    for r in reader:
        if r:
            if seen == data_row:
                return reader.line_num
            seen += 1
    return reader.line_num


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
