"""JSON rows -> typed DataFrame, strictly: a wrong-typed or incomplete payload is an error,
never a silently coerced row."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
from pandas.api import types as ptypes

from ..datasets import Column, ColumnType
from .errors import MalformedPayload

_NUMERIC = (ColumnType.INT64, ColumnType.FLOAT64)


def rows_to_frame(rows: Any, columns: Sequence[Column], where: str) -> pd.DataFrame:
    """Build a frame with the declared columns and dtypes from one page of JSON rows.

    `where` names the request (route and page) in error messages. Unknown extra fields are
    ignored (ESI adds optional fields within a compatibility date).
    """
    if not isinstance(rows, list):
        raise MalformedPayload(f"{where}: expected a JSON array of objects, got {type(rows).__name__}")
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:
        raise MalformedPayload(f"{where}: item {bad} is {type(rows[bad]).__name__}, expected an object")
    names = [c.name for c in columns]
    frame = pd.DataFrame.from_records(rows, columns=names) if rows else pd.DataFrame(columns=names)
    for column in columns:
        frame[column.name] = _typed(frame[column.name], column, where)
        if column.required and frame[column.name].isna().any():
            missing = int(frame[column.name].isna().sum())
            raise MalformedPayload(f"{where}: required field {column.name!r} missing or null in {missing} rows")
    return frame


def empty_frame(columns: Sequence[Column]) -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series([], dtype=c.pandas_dtype) for c in columns})


def _typed(series: pd.Series, column: Column, where: str) -> pd.Series:
    try:
        if column.type in _NUMERIC or column.type is ColumnType.BOOL:
            _reject_foreign_values(series, column)
        if column.type is ColumnType.TIMESTAMP:
            return pd.to_datetime(series, utc=True, format="ISO8601").astype(column.pandas_dtype)
        if column.type is ColumnType.DATE:
            return pd.to_datetime(series, format="%Y-%m-%d").astype(column.pandas_dtype)
        return series.astype(column.pandas_dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MalformedPayload(f"{where}: field {column.name!r} is not {column.type.value}: {reason}") from None


def _reject_foreign_values(series: pd.Series, column: Column) -> None:
    """Numbers must be JSON numbers and booleans JSON booleans: no strings, no coercion.
    Raises ValueError naming the first offending value."""
    if column.type is ColumnType.BOOL:
        ok = ptypes.is_bool_dtype(series)
        allowed: tuple[type, ...] = (bool,)
    else:
        ok = ptypes.is_numeric_dtype(series) and not ptypes.is_bool_dtype(series)
        allowed = (int, float) if column.type is ColumnType.FLOAT64 else (int,)
    if ok or series.empty:
        if column.type is ColumnType.INT64 and ptypes.is_float_dtype(series):
            fractional = series.dropna() % 1 != 0
            if fractional.any():
                raise ValueError(f"non-integer value {series.dropna()[fractional].iloc[0]}")
        return
    for value in series:
        if value is None or (isinstance(value, float) and value != value):
            continue
        if isinstance(value, bool) and column.type is not ColumnType.BOOL:
            raise ValueError(f"boolean {value!r}")
        if not isinstance(value, allowed):
            raise ValueError(f"{type(value).__name__} value {value!r:.40}")
