"""A mirror replaces exactly its partition's scope, even when the payload carries the partition
column itself (ESI's /corporations/{id}/structures items carry corporation_id)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from sync_assets.core.datasets import Column, ColumnType, Dataset, Partitioning, WriteMode
from sync_assets.core.errors import MalformedPayload
from sync_assets.core.requests import plan_requests
from sync_assets.core.snapshot import Outcome, Snapshot, Validators
from sync_assets.warehouse import PostgresWarehouse

I, S = ColumnType.INT64, ColumnType.STRING
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)

STRUCTURES = Dataset(
    api="scope_test",
    name="structures",
    route="/corporations/{corporation_id}/structures",
    description="Items carry the partition column themselves.",
    columns=(Column("corporation_id", I), Column("structure_id", I), Column("name", S)),
    primary_key=("corporation_id", "structure_id"),
    partitioning=Partitioning(path_param="corporation_id", column=Column("corporation_id", I), keys=("1", "2")),
    write_mode=WriteMode.MIRROR,
    cache_seconds=3600,
)


def snapshot(corporation: str, structure_ids: list[int], minutes: int = 0) -> Snapshot:
    request = plan_requests(STRUCTURES, corporation)[0]
    frame = pd.DataFrame(
        {"corporation_id": [int(corporation)] * len(structure_ids), "structure_id": structure_ids,
         "name": [f"s{i}" for i in structure_ids]}
    ).astype({c.name: c.pandas_dtype for c in STRUCTURES.columns})
    lm = T0 + timedelta(minutes=minutes)
    return Snapshot(STRUCTURES.key, request.state_key, Outcome.CHANGED, Validators(('"e"',), lm, lm + timedelta(hours=1)),
                    frame, context=request.context)


def test_the_scope_comes_from_the_partitioning_not_from_the_payload_shape() -> None:
    request = plan_requests(STRUCTURES, "2")[0]
    assert request.context == {"corporation_id": 2}


def test_syncing_one_corporation_never_deletes_another_corporations_rows(database_url: str) -> None:
    wh = PostgresWarehouse(database_url=database_url)
    wh.write_snapshot(STRUCTURES, snapshot("1", [10, 11]))
    wh.write_snapshot(STRUCTURES, snapshot("2", [20, 21]))
    result = wh.write_snapshot(STRUCTURES, snapshot("2", [21], minutes=5))
    assert (result.inserted, result.deleted, result.total) == (0, 1, 1)
    assert wh.read_table(STRUCTURES, ["1"])["structure_id"].tolist() == [10, 11]
    assert wh.read_table(STRUCTURES, ["2"])["structure_id"].tolist() == [21]
