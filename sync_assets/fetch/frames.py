"""JSON rows -> typed DataFrame, strictly: a wrong-typed or incomplete payload is an error,
never a silently coerced row.

Hot path (300k rows per Forge sync, ~1000 rows per page): each declared field is pulled out of
the row dicts by `map(operator.itemgetter(name), rows)` (C, no per-row Python frame), its set of
Python types is taken once (`set(map(type, ...))`, in C) and decides everything: a column holding only its exact
JSON types is handed to numpy / Arrow with an explicit dtype; anything else (nulls in a required
field, a boolean among integers, a list, a string among numbers...) is walked value by value to
name the offending value. Timestamps and dates are parsed by Arrow (ISO 8601 as ESI sends it).

A page whose body is the array of records can skip the Python objects altogether: `page_decoder`
reads the body with Arrow's JSON reader (C++, the interpreter lock released) straight into the
declared columns. It is a shortcut, never a second set of rules: whatever it cannot take exactly
(a null in a required field, a value of another type, NaN, a NUL, a timestamp Arrow does not read,
invalid JSON) sends the body down the strict path above, which accepts or names it as before.
"""

from __future__ import annotations

import re
from operator import itemgetter
from typing import Any, Callable, Sequence

import orjson
from ..core.lazy import importing, numpy as np, pandas as pd, pyarrow as pa  # imported when a run first uses them
from ..core.lazy import pyarrow_json as pajson

from ..core.datasets import Column, ColumnType
from ..core.errors import MalformedPayload
from ..core.rows import arrow_type, numbers, times_array, to_frame, valid

_NONE = type(None)
_PYTHON_TYPES: dict[ColumnType, tuple[type, ...]] = {
    ColumnType.INT64: (int,),
    ColumnType.FLOAT64: (int, float),
    ColumnType.BOOL: (bool,),
    ColumnType.STRING: (str,),
    ColumnType.TIMESTAMP: (str,),
    ColumnType.DATE: (str,),
    ColumnType.JSON: (dict, list, str, int, float, bool),
    ColumnType.DECIMAL: (str, int, float),
}
# The exact types of a column that needs no value-by-value walk (JSON parsers make exactly these).
# A JSON boolean is refused outside boolean columns (numpy would make True a 1), JSON columns included.
_EXACT: dict[ColumnType, frozenset[type]] = {
    ColumnType.INT64: frozenset({int}),
    ColumnType.FLOAT64: frozenset({int, float}),
    ColumnType.BOOL: frozenset({bool}),
    ColumnType.STRING: frozenset({str}),
    ColumnType.TIMESTAMP: frozenset({str}),
    ColumnType.DATE: frozenset({str}),
    ColumnType.JSON: frozenset({dict, list, str, int, float}),
    ColumnType.DECIMAL: frozenset({str, int, float}),
}
_DECIMAL = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_JSON_NUL = re.compile(r"(?:^|[^\\])(?:\\\\)*\\u0000")  # an escaped NUL, not an escaped backslash + "u0000"



class _Foreign(Exception):
    """A value the fast conversion cannot take exactly: walk the column to name it."""


def rows_to_frame(rows: Any, columns: Sequence[Column], where: str) -> pd.DataFrame:
    """Build a frame with the declared columns and dtypes from one page of JSON rows.

    `where` names the request (route and page) in error messages. Unknown extra fields are
    ignored (ESI adds optional fields within a compatibility date). A `DecodedPage` (see
    `page_decoder`) already holds those rows, as an Arrow table.
    """
    if type(rows) is DecodedPage:
        return to_frame(rows.table, columns)
    if not isinstance(rows, list):
        raise MalformedPayload(f"{where}: expected a JSON array of objects, got {type(rows).__name__}")
    if not set(map(type, rows)) <= {dict}:
        bad = next(i for i, row in enumerate(rows) if type(row) is not dict)
        raise MalformedPayload(f"{where}: item {bad} is {type(rows[bad]).__name__}, expected an object")
    if not rows:
        return empty_frame(columns)
    return pd.DataFrame({c.name: _column(_values(rows, c.name), c, where) for c in columns}, copy=False)


def empty_frame(columns: Sequence[Column]) -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series([], dtype=c.pandas_dtype) for c in columns})


def _values(rows: list[dict], name: str) -> list[Any]:
    """The field's value in every row, None where absent (an optional field ESI left out)."""
    try:
        return list(map(itemgetter(name), rows))  # one pass in C when every row has the field
    except KeyError:
        return [row.get(name) for row in rows]


def _column(values: Sequence[Any], column: Column, where: str) -> Any:
    types = set(map(type, values))
    nulls = _NONE in types
    if not (nulls and column.required) and types - {_NONE} <= _EXACT[column.type]:
        try:
            return _convert(values, column, nulls, where)
        except (_Foreign, TypeError, ValueError, OverflowError):
            pass  # named below, value by value
    return _slow_column(values, column, where)


def _convert(values: Sequence[Any], column: Column, nulls: bool, where: str) -> Any:
    """Values of exactly the column's JSON types (None only in optional columns) -> array."""
    kind = column.type
    if kind is ColumnType.INT64:  # OverflowError beyond int64: named by the slow path
        return pd.array(values, dtype=column.pandas_dtype) if nulls else np.array(values, dtype=np.int64)
    if kind is ColumnType.FLOAT64:
        return np.array([np.nan if v is None else v for v in values] if nulls else values, dtype=np.float64)
    if kind is ColumnType.BOOL:
        return pd.array(values, dtype=column.pandas_dtype) if nulls else np.array(values, dtype=np.bool_)
    if kind is ColumnType.STRING:
        present = [v for v in values if v is not None] if nulls else values
        if "\x00" in "".join(present):
            raise _Foreign  # PostgreSQL text cannot hold NUL: named by the slow path
        return pd.array(values, dtype=column.pandas_dtype)
    if kind is ColumnType.TIMESTAMP or kind is ColumnType.DATE:
        return _parse_times(values, column, where)
    if kind is ColumnType.JSON:
        return _json_texts(values, column, where)
    if kind is ColumnType.DECIMAL:
        return _decimal_texts(values, column, where)
    raise _Foreign


def _slow_column(values: Sequence[Any], column: Column, where: str) -> Any:
    """Name the first null in a required field or the first foreign value; what survives the walk
    (e.g. int subclasses) is converted by pandas, any failure named."""
    _check_values(values, column, where)
    name = column.name
    try:
        if column.type in (ColumnType.TIMESTAMP, ColumnType.DATE):
            return _parse_times(values, column, where)
        if column.type is ColumnType.JSON:
            return _json_texts(values, column, where)
        if column.type is ColumnType.DECIMAL:
            return _decimal_texts(values, column, where)
        values = list(values)
        if column.type is ColumnType.INT64 and None not in values:
            return np.array([int(v) for v in values], dtype=np.int64)
        return pd.array(values, dtype=column.pandas_dtype)
    except MalformedPayload:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MalformedPayload(f"{where}: field {name!r} is not {column.type.value}: {reason}") from None


def _parse_times(values: Sequence[Any], column: Column, where: str) -> Any:
    """ISO 8601 strings (None in optional columns) -> datetime64[us, UTC] (timestamps) or
    datetime64[us] (dates). Arrow parses what ESI sends (`2026-07-23T12:12:48Z`, `2026-07-23`) in
    C++; anything else goes to pandas' ISO 8601 parser, and what it would turn into NaT or a clock
    reading ('', 'NaT', 'now', 'today') is refused."""
    first = next((v for v in values if v is not None), None)
    if column.formats and first is not None and not _year_first(first):
        return _parse_times_by_pandas(values, column, where)  # the API's own spelling (IRIS's MM/DD/YYYY)
    parsed = _times_by_arrow(pa.array(values, type=pa.string()), column)
    return _parse_times_by_pandas(values, column, where) if parsed is None else parsed


def _times_by_arrow(strings: Any, column: Column) -> Any:
    """A string array -> the column's datetime array, parsed by Arrow; None when Arrow cannot read
    every value (pandas then decides)."""
    parsed = _cast_times(strings, column)
    return None if parsed is None else times_array(parsed, column)


def _cast_times(strings: Any, column: Column) -> Any:
    """A string array -> Arrow timestamps in the column's `arrow_type`; None when Arrow cannot read
    every value."""
    target = pa.timestamp("us", tz="UTC") if column.type is ColumnType.TIMESTAMP else pa.date32()
    try:
        parsed = strings.cast(target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return parsed.cast(pa.timestamp("us")) if column.type is ColumnType.DATE else parsed


def _parse_times_by_pandas(values: Sequence[Any], column: Column, where: str) -> Any:
    what = "an ISO 8601 timestamp" if column.type is ColumnType.TIMESTAMP else "a YYYY-MM-DD date"
    for value in values:
        if value is not None and not value[:1].isdigit():  # '', 'NaT', 'now', 'today' ...: never a date
            raise MalformedPayload(f"{where}: field {column.name!r} is not {column.type.value}: {value!r:.60} is not {what}")
    series = pd.Series(values, dtype=object)
    if column.formats:
        what += " or " + " or ".join(column.formats)
    try:
        utc = column.type is ColumnType.TIMESTAMP  # a value without an offset is UTC
        iso = "ISO8601" if utc else "%Y-%m-%d"
        if not column.formats:
            parsed = pd.to_datetime(series, utc=utc, format=iso)
        else:
            # each value in the first spelling that reads it, ISO first, then the API's own (IRIS:
            # MM/DD/YYYY) in order; each is tried on the values still unread only, and ISO only on
            # those opening with a 4-digit year (no other can be ISO): in pandas a value that fails
            # to parse costs as much as one that parses, and a page of US dates failed ISO whole
            year_first = np.fromiter((v is not None and _year_first(v) for v in values), dtype=bool, count=len(values))
            parsed = pd.to_datetime(series.where(year_first), utc=utc, format=iso, errors="coerce")
            present = series.notna().to_numpy()
            for fmt in column.formats:
                unread = present & parsed.isna().to_numpy()
                if not unread.any():
                    break
                parsed = parsed.fillna(pd.to_datetime(series.where(unread), utc=utc, format=fmt, errors="coerce"))
        parsed = parsed.astype(column.numpy_dtype)
    except (TypeError, ValueError, OverflowError) as exc:  # OutOfBoundsDatetime is a ValueError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MalformedPayload(f"{where}: field {column.name!r} is not {column.type.value}: {reason}") from None
    lost = parsed.isna().to_numpy() & series.notna().to_numpy()
    if lost.any():
        value = values[int(lost.argmax())]
        raise MalformedPayload(f"{where}: field {column.name!r} is not {column.type.value}: {value!r:.60} is not {what}")
    return parsed.array


def _year_first(value: str) -> bool:
    """Whether `value` opens with a 4-digit year, as every ISO 8601 date and timestamp does."""
    return value[:4].isdigit() and len(value) >= 4


def _json_texts(values: Sequence[Any], column: Column, where: str) -> Any:
    """Nested values kept whole, as JSON text (jsonb in Postgres, which cannot hold \\u0000)."""
    texts = [None if v is None else orjson.dumps(v).decode() for v in values]
    if any(t is not None and "\\u0000" in t and _JSON_NUL.search(t) for t in texts):
        raise MalformedPayload(f"{where}: field {column.name!r} holds a NUL character")
    return pd.array(texts, dtype=column.pandas_dtype)


def _decimal_texts(values: Sequence[Any], column: Column, where: str) -> Any:
    """Amounts as exact decimal text (numeric in Postgres): a JSON number as written (its shortest
    repr), or a string holding a number ("12.50"); anything else is refused, never guessed."""
    texts = []
    for value in values:
        if value is None:
            texts.append(None)
        elif type(value) is str and _DECIMAL.fullmatch(value.strip()):
            texts.append(value.strip())
        elif type(value) in (int, float) and value == value and value not in (float("inf"), float("-inf")):
            texts.append(repr(value))
        else:
            raise MalformedPayload(f"{where}: field {column.name!r} is not decimal: {type(value).__name__} value {value!r:.40}")
    return pd.array(texts, dtype=column.pandas_dtype)


def _check_values(values: Sequence[Any], column: Column, where: str) -> None:
    """Raise naming the first null in a required field or the first value of a foreign type."""
    allowed = _PYTHON_TYPES[column.type]
    nulls = 0
    for value in values:
        if value is None:
            nulls += 1
            continue
        if isinstance(value, int) and not isinstance(value, bool) and column.type is ColumnType.INT64 and not -(2**63) <= value < 2**63:
            raise MalformedPayload(f"{where}: field {column.name!r} is not int64: {value} is out of range")
        if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise MalformedPayload(f"{where}: field {column.name!r} holds a NUL character")
        if type(value) is bool and column.type is not ColumnType.BOOL or not isinstance(value, allowed):
            raise MalformedPayload(
                f"{where}: field {column.name!r} is not {column.type.value}: {type(value).__name__} value {value!r:.40}"
            )
    if nulls and column.required:
        raise MalformedPayload(f"{where}: required field {column.name!r} missing or null in {nulls} rows")


# -- the Arrow shortcut: a body that is the array of records, read in C++ -------------------------

# column types Arrow's JSON reader takes exactly as the strict path does (a JSON boolean is no
# number, a number no string); times are read as strings and parsed as the strict path parses them
# (cheaper than the reader's own timestamp conversion, and no second set of spellings)
_ARROW_JSON_TYPES: dict[ColumnType, Callable[[], Any]] = {
    ColumnType.INT64: lambda: pa.int64(),
    ColumnType.FLOAT64: lambda: pa.float64(),
    ColumnType.BOOL: lambda: pa.bool_(),
    ColumnType.STRING: lambda: pa.string(),
    ColumnType.TIMESTAMP: lambda: pa.string(),
    ColumnType.DATE: lambda: pa.string(),
}


class DecodedPage:
    """A page body already read into its rows by `page_decoder`: an Arrow table of the declared
    columns in `core.rows.arrow_schema` (`rows_to_frame` makes the strict path's frame of it)."""

    __slots__ = ("table",)

    def __init__(self, table: Any):
        self.table = table


def page_decoder(columns: Sequence[Column]) -> Callable[[bytes], Any] | None:
    """A body decoder for pages whose body is the JSON array of records: `DecodedPage` when Arrow
    reads the body exactly, else the body's JSON (orjson) for the strict path. None when a column
    has no exact Arrow reading (JSON, DECIMAL, dates in an API's own spelling)."""
    if not columns or any(c.type not in _ARROW_JSON_TYPES or c.formats for c in columns):
        return None
    return _ArrowPages(columns).decode


class _ArrowPages:
    def __init__(self, columns: Sequence[Column]):
        self.columns = tuple(columns)
        self._parse_options: Any = None

    def decode(self, body: bytes) -> Any:
        # while the libraries are still importing (a run's first pages) the Python objects are the
        # way: the worker reads on instead of waiting for the import
        if importing():
            return orjson.loads(body)
        try:
            return DecodedPage(self._table(body))
        except (_Foreign, pa.ArrowException):
            return orjson.loads(body)  # invalid JSON raises here, as without the shortcut

    def _table(self, body: bytes) -> Any:
        # one JSON line, {"r": <body>}: Arrow reads newline-delimited objects, and a list of structs
        # is exactly an array of records
        wrapped = b'{"r":' + body + b"}"
        table = pajson.read_json(
            pa.py_buffer(wrapped),
            read_options=pajson.ReadOptions(use_threads=False, block_size=len(wrapped) + 1),
            parse_options=self._options(),
        )
        if table.num_rows != 1 or table.column(0).null_count:  # not one array (e.g. `[..]}\n{"r":[..]`)
            raise _Foreign
        records = table.column(0).chunk(0).flatten() if table.column(0).num_chunks == 1 else None
        if records is None or records.null_count or not len(records):  # a null item; an empty page: strict path
            raise _Foreign
        return pa.Table.from_arrays([_typed(values, c) for values, c in zip(records.flatten(), self.columns)],
                                    names=[c.name for c in self.columns])

    def _options(self) -> Any:
        if self._parse_options is None:
            fields = [pa.field(c.name, _ARROW_JSON_TYPES[c.type]()) for c in self.columns]
            schema = pa.schema([pa.field("r", pa.list_(pa.struct(fields)))])
            self._parse_options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore",
                                                      newlines_in_values=True)
        return self._parse_options


def _holds_nul(strings: Any) -> bool:
    """Whether a string array holds a NUL character (its UTF-8 bytes, read in place)."""
    _, offsets, data = strings.buffers()
    if data is None or not len(strings):
        return False
    bounds = np.frombuffer(offsets, dtype=np.int32, count=len(strings) + 1, offset=4 * strings.offset)
    return not np.frombuffer(data, dtype=np.uint8)[bounds[0]:bounds[-1]].all()


def _typed(values: Any, column: Column) -> Any:
    """One column as Arrow read it -> the column's `arrow_type`, holding what `_convert` would make
    of the same values; `_Foreign` for anything the strict path must judge."""
    nulls = values.null_count > 0
    if nulls and column.required:
        raise _Foreign
    if column.type is ColumnType.FLOAT64:
        floats = numbers(values, "float64")
        if nulls:
            floats = floats[valid(values)]
        # NaN and Infinity are not JSON (Arrow's reader reads them; orjson refuses the body), and
        # Arrow reads the integer -0 as -0.0 where the strict path makes 0.0 (-0.0 stays -0.0)
        if not np.isfinite(floats).all() or np.any(np.signbit(floats) & (floats == 0)):
            raise _Foreign
    elif column.type is ColumnType.STRING and _holds_nul(values):  # PostgreSQL text cannot hold it: named strictly
        raise _Foreign
    elif column.type is ColumnType.TIMESTAMP or column.type is ColumnType.DATE:
        values = _cast_times(values, column)
        if values is None:
            raise _Foreign
    return values if values.type == arrow_type(column) else values.cast(arrow_type(column))
