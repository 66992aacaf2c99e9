"""Money as exact decimals: numbers or numeric strings in, decimal text out (NUMERIC in Postgres);
anything else refused with the field named."""

import pytest

from sync_assets.core.datasets import Column, ColumnType
from sync_assets.core.errors import MalformedPayload
from sync_assets.fetch.frames import rows_to_frame

AMOUNT = (Column("amount", ColumnType.DECIMAL), Column("fee", ColumnType.DECIMAL, required=False))


def test_numbers_and_numeric_strings_become_exact_decimal_text() -> None:
    frame = rows_to_frame([{"amount": "12.50", "fee": 0.1}, {"amount": 7, "fee": None}, {"amount": " -3.25 "}], AMOUNT, "t")
    assert frame["amount"].tolist() == ["12.50", "7", "-3.25"]
    assert frame["fee"].tolist()[0] == "0.1" and frame["fee"].isna().tolist() == [False, True, True]


@pytest.mark.parametrize("bad", ["12,50", "", "NaN", "1e", True, [1], {"v": 1}, float("nan")])
def test_anything_but_a_number_is_refused(bad) -> None:
    with pytest.raises(MalformedPayload, match="'amount' is not decimal"):
        rows_to_frame([{"amount": "1.00"}, {"amount": bad}], AMOUNT, "t")
