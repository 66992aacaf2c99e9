"""Arrow's reading of a page body (frames.page_decoder) is a shortcut, never a second set of rules:
for any body, the frame it leads to is the strict path's frame, dtype for dtype, and a body the
strict path refuses is refused with the same words. Bodies it cannot read exactly go the strict way."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sync_assets.apis.esi.datasets import MARKET_ORDERS, MARKET_PRICES
from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.core.datasets import Column, ColumnType, Dataset
from sync_assets.core.errors import MalformedPayload
from sync_assets.core.paging import PageNumbers
from sync_assets.fetch import frames
from sync_assets.fetch.frames import DecodedPage, page_decoder, rows_to_frame
from sync_assets.fetch.resource import _body_decoder

T = ColumnType
COLUMNS = (
    Column("id", T.INT64),
    Column("count", T.INT64, required=False),
    Column("price", T.FLOAT64),
    Column("ratio", T.FLOAT64, required=False),
    Column("buy", T.BOOL),
    Column("flag", T.BOOL, required=False),
    Column("name", T.STRING),
    Column("note", T.STRING, required=False),
    Column("at", T.TIMESTAMP),
    Column("seen", T.TIMESTAMP, required=False),
    Column("day", T.DATE, required=False),
)
RAW = object()  # marks a value written into the body as raw JSON text (NaN, Infinity)

GOOD: dict[ColumnType, list[Any]] = {
    T.INT64: [0, -1, 7, 2**63 - 1, -(2**63), 123456789012],
    T.FLOAT64: [0, 1, -1.5, 0.1, 1e308, 5e-324, 123456789.123456789, 2**53 + 1, 3.141592653589793],
    T.BOOL: [True, False],
    T.STRING: ["a", "", "é ☃ 𝄞", "line\nbreak", 'quote"s', "tab\tand \\ backslash", "2026-07-23"],
    T.TIMESTAMP: ["2026-07-23T12:02:15Z", "2026-07-23T12:02:15+01:00", "2026-07-23T12:02:15.123456Z", "1999-12-31T23:59:59Z"],
    T.DATE: ["2026-07-23", "2024-02-29", "1970-01-01"],
}
# values the strict path refuses, or reads only through pandas (times without an offset)
ODD: dict[ColumnType, list[Any]] = {
    T.INT64: [2**63, -(2**63) - 1, 1.0, 1.5, 1e3, True, "5", [1], {}],
    T.FLOAT64: [True, "1.5", [1.0], (RAW, "NaN"), (RAW, "Infinity"), (RAW, "-Infinity"), (RAW, "Inf"), (RAW, "-0")],
    T.BOOL: [1, 0, "true"],
    T.STRING: [1, 1.5, True, ["a"], {"a": 1}, "a\u0000b", (RAW, '"\\ud800"')],
    T.TIMESTAMP: ["", "now", "NaT", "today", "2026-13-01T00:00:00Z", 1700000000, "2026-07-23", "2026-07-23 12:02:15",
                  "2026-07-23T12:02:15", "2026-07-23T12:02:15.1234567Z", " 2026-07-23T12:02:15Z", "2026-07-23T25:00:00Z"],
    T.DATE: ["", "2026-02-30", "2026-07-23T00:00:00Z", 19000, "07/23/2026", "2026-7-3"],
}


def _body(rows: list[dict[str, Any]], indent: int | None = None) -> bytes:
    """JSON text of the rows; (RAW, text) values are written as that text (not JSON-escaped)."""
    raws: dict[str, str] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, tuple) and value and value[0] is RAW:
            marker = f"@@raw{len(raws)}@@"
            raws[f'"{marker}"'] = value[1]
            return marker
        return value

    text = json.dumps([{k: encode(v) for k, v in row.items()} for row in rows], indent=indent, ensure_ascii=False)
    for marker, raw in raws.items():
        text = text.replace(marker, raw)
    return text.encode()


def _outcome(read: Any) -> Any:
    try:
        return "frame", read()
    except (MalformedPayload, orjson.JSONDecodeError) as exc:
        return type(exc).__name__, str(exc)


def assert_same_as_strict(body: bytes, columns=COLUMNS) -> bool:
    """The decoder's way and the strict way give the same frame or the same error; returns whether
    the decoder read the body itself."""
    decode = page_decoder(columns)
    assert decode is not None
    strict = _outcome(lambda: rows_to_frame(orjson.loads(body), columns, "t page 1"))
    decoded: list[Any] = []
    fast = _outcome(lambda: rows_to_frame(decoded.append(decode(body)) or decoded[0], columns, "t page 1"))
    assert fast[0] == strict[0], (body[:300], fast, strict)
    if strict[0] == "frame":
        pd.testing.assert_frame_equal(fast[1], strict[1], check_exact=True)
        for name in fast[1].columns:  # the same kind of array, not only equal values
            assert type(fast[1][name].array) is type(strict[1][name].array), name
            if fast[1][name].dtype == "float64":  # bit for bit: -0.0 == 0.0 and NaN != NaN hide differences
                assert np.array_equal(fast[1][name].to_numpy().view("i8"), strict[1][name].to_numpy().view("i8")), name
    else:
        assert fast[1] == strict[1]
    return bool(decoded) and type(decoded[0]) is DecodedPage


def _row(rng: random.Random, odd_share: float) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column in COLUMNS:
        roll = rng.random()
        if not column.required and roll < 0.1:
            continue  # an optional field left out
        if not column.required and roll < 0.2:
            row[column.name] = None
        elif roll < odd_share:
            row[column.name] = rng.choice(ODD[column.type] + ([None] if column.required else []))
        else:
            row[column.name] = rng.choice(GOOD[column.type])
    if rng.random() < 0.2:
        row["extra"] = rng.choice([1, "x", None, {"nested": [1, {"deep": None}]}, [True]])
    return row


def test_a_clean_page_is_read_by_arrow_and_equals_the_strict_frame() -> None:
    rng = random.Random(1)
    rows = [_row(rng, 0.0) for _ in range(500)]
    assert assert_same_as_strict(_body(rows))
    assert assert_same_as_strict(_body(rows, indent=2))  # newlines between and inside records


@pytest.mark.parametrize("column", COLUMNS, ids=lambda c: c.name)
def test_each_odd_value_gives_the_strict_outcome(column: Column) -> None:
    rng = random.Random(column.name)
    for odd in ODD[column.type] + ([None] if column.required else []):
        rows = [_row(rng, 0.0) for _ in range(20)]
        rows[rng.randrange(20)][column.name] = odd
        assert_same_as_strict(_body(rows))  # a refused value: the same error; a spelling both read: the same frame


def test_random_pages_mixing_good_and_odd_values() -> None:
    rng = random.Random(7)
    taken = 0
    for i in range(300):
        rows = [_row(rng, 0.004) for _ in range(rng.choice([1, 5, 40]))]
        taken += assert_same_as_strict(_body(rows, indent=2 if i % 3 == 0 else None))
    assert 50 < taken < 300  # both ways were exercised


@pytest.mark.parametrize("body", [
    b"[]", b"null", b"{}", b'{"error": "nope"}', b"[1, 2]", b'[{"id": 1}, 2]', b"[null]", b"[[]]", b'"text"',
    b'[{"id": 1}]garbage', b'[{"id": 1}', b'[{"id": 1}]}\n{"r": [{"id": 2}]', b"", b"\xef\xbb\xbf[]",
    b'[{"id": 1, "id": 2}]', b'  [ ]  ',
], ids=repr)
def test_bodies_that_are_not_an_array_of_records(body: bytes) -> None:
    columns = (Column("id", T.INT64), Column("name", T.STRING, required=False))
    assert not assert_same_as_strict(body, columns)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.text(max_size=3), st.none()),
    "price": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(min_value=-(2**70), max_value=2**70),
                       st.booleans(), st.none()),
    "name": st.one_of(st.text(max_size=8), st.integers(), st.none()),
    "at": st.one_of(st.datetimes().map(lambda d: d.isoformat() + "Z"), st.text(max_size=12), st.none()),
}), max_size=12))
def test_arbitrary_rows(rows: list[dict[str, Any]]) -> None:
    columns = (Column("id", T.INT64, required=False), Column("price", T.FLOAT64), Column("name", T.STRING, required=False),
               Column("at", T.TIMESTAMP, required=False))
    assert_same_as_strict(_body(rows), columns)


def test_market_orders_pages_as_the_sandbox_serves_them() -> None:
    with serve_in_thread(EsiSandbox(regions={10000002: 3}, n_price_types=10)) as url:
        bodies = [httpx.get(f"{url}/markets/10000002/orders", params={"order_type": "all", "page": page}).content
                  for page in (1, 2, 3)]
    for body in bodies:
        assert assert_same_as_strict(body, MARKET_ORDERS.columns)


def test_while_the_libraries_import_the_body_is_read_the_strict_way(monkeypatch) -> None:
    body = _body([_row(random.Random(3), 0.0) for _ in range(5)])
    monkeypatch.setattr(frames, "importing", lambda: True)
    assert type(page_decoder(COLUMNS)(body)) is list
    monkeypatch.setattr(frames, "importing", lambda: False)
    assert type(page_decoder(COLUMNS)(body)) is DecodedPage


def test_which_datasets_take_the_shortcut() -> None:
    assert page_decoder((Column("raw", T.JSON),)) is None
    assert page_decoder((Column("amount", T.DECIMAL),)) is None
    assert page_decoder((Column("opened", T.DATE, formats=("%m/%d/%Y",)),)) is None
    assert _body_decoder(MARKET_ORDERS) is not None and _body_decoder(MARKET_PRICES) is not None
    base = dict(api="t", name="t", route="/t", description="t", columns=(Column("id", T.INT64),), primary_key=("id",),
                cache_seconds=60)
    assert _body_decoder(Dataset(**base, paginator=PageNumbers(count_header=None, count_path="meta.last_page",
                                                                records_path="data"))) is None  # the body is an object
    assert _body_decoder(Dataset(**base, transform=lambda body: body)) is None
    nested = dict(base, columns=(Column("qty", T.INT64, source="details.qty"),), primary_key=("qty",))
    assert _body_decoder(Dataset(**nested)) is None


def test_a_nul_is_found_in_a_string_array_however_it_is_sliced() -> None:
    import pyarrow as pa

    strings = pa.array(["a", "b\x00", None, "c", "", "d\x00e"])
    assert frames._holds_nul(strings)
    assert not frames._holds_nul(strings.slice(2, 3))  # None, "c", "": the NULs around are outside the slice
    assert frames._holds_nul(strings.slice(1, 1)) and frames._holds_nul(strings.slice(4))
    assert not frames._holds_nul(pa.array([], type=pa.string())) and not frames._holds_nul(pa.array([None, ""]))
