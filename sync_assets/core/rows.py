"""A page's rows, in either of two shapes: a pandas DataFrame (what `fetch.frames.rows_to_frame`
makes of Python rows, and what a snapshot hands on) or an Arrow table (what Arrow's JSON reader
makes of a page body, and what COPY encodes). A page read by Arrow stays a table on its way to
the database; a frame is made of it only where one is needed.

Both shapes hold the same values with the same rules: `to_frame` of a table gives, dtype for dtype
and array for array, the frame the strict path would have built, and `to_arrow` of either gives
one schema per dataset (`arrow_schema`), so pages of both shapes load as one batch.
"""

from __future__ import annotations

from typing import Any, Sequence

from .datasets import Column, ColumnType
from .lazy import numpy as np, pandas as pd, pyarrow as pa  # imported when a run first uses them

_NAT = -(2**63)  # NaT as int64 (numpy's int64 minimum)


def arrow_type(column: Column) -> Any:
    """The column's Arrow type: what `pa.Table.from_pandas` makes of the column's pandas dtype."""
    kind = column.type
    if kind is ColumnType.INT64:
        return pa.int64()
    if kind is ColumnType.FLOAT64:
        return pa.float64()
    if kind is ColumnType.BOOL:
        return pa.bool_()
    if kind is ColumnType.TIMESTAMP:
        return pa.timestamp("us", tz="UTC")
    if kind is ColumnType.DATE:
        return pa.timestamp("us")  # pandas holds dates as datetime64[us] at midnight
    return pa.large_string()  # STRING, JSON (text), DECIMAL (text)


def arrow_schema(columns: Sequence[Column]) -> Any:
    return pa.schema([pa.field(c.name, arrow_type(c)) for c in columns])


def to_arrow(rows: Any, columns: Sequence[Column]) -> Any:
    """The rows as an Arrow table of exactly `columns`, in `arrow_schema(columns)`."""
    schema = arrow_schema(columns)
    if isinstance(rows, pa.Table):
        table = rows.select([c.name for c in columns])
    else:  # selecting the columns as a frame first would copy it
        table = pa.Table.from_pandas(rows, columns=[c.name for c in columns], preserve_index=False)
    return table if table.schema.equals(schema) else table.cast(schema)


def to_frame(rows: Any, columns: Sequence[Column]) -> pd.DataFrame:
    """The rows as the DataFrame the strict path builds (the table's own columns, in order)."""
    if not isinstance(rows, pa.Table):
        return rows
    by_name = {c.name: c for c in columns}
    return pd.DataFrame({name: pandas_array(rows.column(name), by_name[name]) for name in rows.column_names}, copy=False)


def int64_values(rows: Any, column: Column) -> Any:
    """The column as a numpy int64 array when it is one (no nulls), whichever the rows' shape; None
    otherwise. Both shapes of the same values agree (a nullable column with nulls is None in both)."""
    if isinstance(rows, pa.Table):
        values = rows.column(column.name)
        if values.type != pa.int64() or values.null_count:
            return None
        return numbers(values.combine_chunks(), "int64")
    values = rows[column.name]
    return values.to_numpy() if str(values.dtype) == "int64" else None


# Arrow arrays are read and built through their buffers here: pyarrow's conversions from and to
# Python objects (pa.array, pa.scalar, Array.to_numpy, fill_null with a Python value) import pandas,
# which a walk of pages Arrow reads never needs otherwise (0.17 s and 43 MB of every run worker).

def numbers(values: Any, dtype: str) -> Any:
    """A fixed-width Arrow array's values as a read-only numpy view of its buffer (null slots hold
    whatever the buffer holds)."""
    width = np.dtype(dtype).itemsize
    return np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values), offset=values.offset * width)


def valid(values: Any) -> Any:
    """Which slots of an Arrow array hold a value (numpy booleans, from its validity bitmap)."""
    bitmap = values.buffers()[0]
    if bitmap is None:
        return np.ones(len(values), dtype=bool)
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
    return bits[values.offset: values.offset + len(values)].astype(bool)


def repeated_int64(value: int, rows: int) -> Any:
    """`value` on every one of `rows` rows, as an Arrow int64 array (built from its buffer)."""
    data = np.full(rows, value, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), rows, [None, pa.py_buffer(data)])


def series(rows: Any, column: Column) -> pd.Series:
    """One column of the rows as a pandas Series, whichever their shape."""
    if isinstance(rows, pa.Table):
        return pd.Series(pandas_array(rows.column(column.name), column), copy=False)
    return rows[column.name]


def concat(pages: Sequence[Any], columns: Sequence[Column]) -> Any:
    """One batch of pages: one Arrow table when any is a table, else a frame (Arrow is asked
    first: pages Arrow read never import pandas)."""
    if any(isinstance(p, pa.Table) for p in pages):
        return pa.concat_tables([to_arrow(p, columns) for p in pages])
    return pd.concat(pages, ignore_index=True) if len(pages) > 1 else pages[0]


def pandas_array(values: Any, column: Column) -> Any:
    """An Arrow column in `arrow_type(column)` -> the array `rows_to_frame` makes of the same
    values: plain numpy without nulls, pandas' masked arrays for nullable ints and booleans."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = column.type
    nulls = values.null_count > 0
    if kind is ColumnType.INT64 or kind is ColumnType.BOOL:
        if nulls:
            return pd.api.types.pandas_dtype(column.pandas_dtype).__from_arrow__(values)
        return values.to_numpy(zero_copy_only=False, writable=True)
    if kind is ColumnType.FLOAT64:
        return values.to_numpy(zero_copy_only=False, writable=True)  # nulls as NaN
    if kind is ColumnType.TIMESTAMP or kind is ColumnType.DATE:
        return times_array(values, column)
    return pd.api.types.pandas_dtype(column.pandas_dtype).__from_arrow__(values)


def times_array(parsed: Any, column: Column) -> Any:
    """Parsed Arrow timestamps (microseconds) -> datetime64[us, UTC] (timestamps) or
    datetime64[us] (dates), nulls as NaT."""
    micros = parsed.cast(pa.int64())
    if micros.null_count:
        micros = micros.fill_null(_NAT)
    stamps = micros.to_numpy(zero_copy_only=False, writable=True).view("datetime64[us]")
    if column.type is ColumnType.DATE:
        return stamps
    return pd.arrays.DatetimeArray._from_sequence(stamps, dtype=pd.DatetimeTZDtype("us", "UTC"))


__all__ = ["arrow_schema", "arrow_type", "concat", "pandas_array", "series", "times_array", "to_arrow", "to_frame"]
