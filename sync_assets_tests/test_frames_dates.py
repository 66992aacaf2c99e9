"""Dates and timestamps in an API's own spellings (IRIS: MM/DD/YYYY) besides ISO 8601: each value
is read by the first spelling that reads it, ISO first, then the declared ones in order; a value no
spelling reads is refused with the field named, never turned into a null."""

from datetime import date

import pytest

from sync_assets.core.datasets import Column, ColumnType
from sync_assets.core.errors import MalformedPayload
from sync_assets.fetch.frames import rows_to_frame

US = ("%m/%d/%Y",)
DAYS = (Column("opened", ColumnType.DATE, required=False, formats=US),)


def dates(frame) -> list:
    return [None if value != value else value.date() for value in frame["opened"]]  # NaT != NaT


def test_iso_and_the_apis_own_spelling_mix_in_one_page() -> None:
    rows = [{"opened": "03/12/2026"}, {"opened": "2026-03-13"}, {"opened": None}, {"opened": "3/1/2025"}, {}]
    assert dates(rows_to_frame(rows, DAYS, "t")) == [date(2026, 3, 12), date(2026, 3, 13), None, date(2025, 3, 1), None]


def test_a_page_of_the_apis_spelling_only_and_a_page_of_nulls_only() -> None:
    assert dates(rows_to_frame([{"opened": "12/31/2024"}, {"opened": "01/01/2025"}], DAYS, "t")) == [date(2024, 12, 31),
                                                                                                    date(2025, 1, 1)]
    assert dates(rows_to_frame([{"opened": None}, {"opened": None}], DAYS, "t")) == [None, None]


def test_the_declared_spellings_are_tried_in_order() -> None:
    either = (Column("opened", ColumnType.DATE, formats=("%d/%m/%Y", "%m/%d/%Y")),)
    # 03/04 reads as 3 April in the first spelling; 04/13 only in the second
    assert dates(rows_to_frame([{"opened": "03/04/2026"}, {"opened": "04/13/2026"}], either, "t")) == [date(2026, 4, 3),
                                                                                                    date(2026, 4, 13)]


@pytest.mark.parametrize("bad", ["02/30/2026", "13/01/2026", "03/12/2026x", "2026/03/12", "12.03.2026"])
def test_a_date_no_spelling_reads_is_refused_by_name(bad: str) -> None:
    with pytest.raises(MalformedPayload, match=rf"'opened' is not date: '{bad}' is not a YYYY-MM-DD date or %m/%d/%Y"):
        rows_to_frame([{"opened": "03/12/2026"}, {"opened": bad}], DAYS, "t")


def test_timestamps_with_offsets_beside_the_apis_date_spelling() -> None:
    stamps = (Column("created", ColumnType.TIMESTAMP, required=False, formats=US),)
    frame = rows_to_frame([{"created": "2026-03-12T19:15:26-04:00"}, {"created": "03/13/2026"}], stamps, "t")
    assert [value.isoformat() for value in frame["created"]] == ["2026-03-12T23:15:26+00:00", "2026-03-13T00:00:00+00:00"]
