"""JSON rows -> typed DataFrame, strictly: a wrong-typed or incomplete payload is an error,
never a silently coerced row.

Hot path (300k rows per Forge sync): columns are pulled out of the row dicts once and handed to
numpy, which infers their type in C; only a column whose inferred type is wrong (or holds nulls)
is walked value by value, to name the offending value.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import orjson
import pandas as pd

from ..datasets import Column, ColumnType
from .errors import MalformedPayload

_NUMPY_KINDS = {ColumnType.INT64: "iu", ColumnType.FLOAT64: "iuf", ColumnType.BOOL: "b"}
_PYTHON_TYPES: dict[ColumnType, tuple[type, ...]] = {
    ColumnType.INT64: (int,),
    ColumnType.FLOAT64: (int, float),
    ColumnType.BOOL: (bool,),
    ColumnType.STRING: (str,),
    ColumnType.TIMESTAMP: (str,),
    ColumnType.DATE: (str,),
    ColumnType.JSON: (dict, list, str, int, float, bool),
}


def rows_to_frame(rows: Any, columns: Sequence[Column], where: str) -> pd.DataFrame:
    """Build a frame with the declared columns and dtypes from one page of JSON rows.

    `where` names the request (route and page) in error messages. Unknown extra fields are
    ignored (ESI adds optional fields within a compatibility date).
    """
    if not isinstance(rows, list):
        raise MalformedPayload(f"{where}: expected a JSON array of objects, got {type(rows).__name__}")
    if not all(type(row) is dict for row in rows):
        bad = next(i for i, row in enumerate(rows) if not isinstance(row, dict))
        raise MalformedPayload(f"{where}: item {bad} is {type(rows[bad]).__name__}, expected an object")
    return pd.DataFrame({c.name: _column(rows, c, where) for c in columns}, copy=False)


def empty_frame(columns: Sequence[Column]) -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series([], dtype=c.pandas_dtype) for c in columns})


def _column(rows: list[dict], column: Column, where: str) -> pd.Series | np.ndarray:
    name = column.name
    values = [row.get(name) for row in rows]
    try:
        if column.type in _NUMPY_KINDS:
            array = np.array(values)
            clean = array.ndim == 1 and array.dtype.kind in _NUMPY_KINDS[column.type] and not (  # [5] per row: 2-D
                array.dtype.kind == "u"  # above int64's range: astype would wrap it to a negative id
                or (column.type is not ColumnType.BOOL and any(type(v) is bool for v in values))  # numpy makes True a 1
            )
            if clean or not values:
                return array.astype(column.numpy_dtype) if values else pd.Series([], dtype=column.pandas_dtype)
            _check_values(values, column, where)  # nulls or foreign values: find and report them
            return pd.array(values, dtype=column.pandas_dtype)
        _check_values(values, column, where)
        if column.type is ColumnType.JSON:  # kept whole, as JSON text (jsonb in Postgres)
            return pd.array([None if v is None else orjson.dumps(v).decode() for v in values], dtype=column.pandas_dtype)
        if column.type in (ColumnType.TIMESTAMP, ColumnType.DATE):
            return _parse_times(values, column, where)
        return pd.array(values, dtype=column.pandas_dtype)
    except MalformedPayload:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MalformedPayload(f"{where}: field {name!r} is not {column.type.value}: {reason}") from None


def _parse_times(values: list[Any], column: Column, where: str) -> pd.Series:
    """ISO 8601 strings -> datetime64[us, UTC] / datetime64[us]. pandas turns '' (and 'NaT') into
    NaT and 'now' / 'today' into a clock reading: those are refused, naming the field."""
    what = "an ISO 8601 timestamp" if column.type is ColumnType.TIMESTAMP else "a YYYY-MM-DD date"
    for value in values:
        if value is not None and not value[:1].isdigit():
            raise MalformedPayload(f"{where}: field {column.name!r} is not {column.type.value}: {value!r:.60} is not {what}")
    series = pd.Series(values, dtype=object)
    if column.type is ColumnType.TIMESTAMP:
        parsed = pd.to_datetime(series, utc=True, format="ISO8601").astype(column.pandas_dtype)
    else:
        parsed = pd.to_datetime(series, format="%Y-%m-%d").astype(column.pandas_dtype)
    lost = parsed.isna().to_numpy() & series.notna().to_numpy()
    if lost.any():
        value = values[int(lost.argmax())]
        raise MalformedPayload(f"{where}: field {column.name!r} is not {column.type.value}: {value!r:.60} is not {what}")
    return parsed


def _check_values(values: list[Any], column: Column, where: str) -> None:
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
