"""Corporation datasets end to end: Dagster materializations -> EsiAuthResource (EVE SSO tokens
from the sandbox SSO over HTTP) -> EsiResource -> the ESI sandbox over real HTTP -> PostgreSQL.
Two corporations, two dynamic partitions."""

from __future__ import annotations

import datetime as dt
import math
import time
from functools import partial
from typing import Any, Iterator

import dagster as dg
import orjson
import pandas as pd
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from sync_assets.api import EsiResource
from sync_assets.api.esi_auth import EsiAuthResource, lookup_identity
from sync_assets.auth import tokens
from sync_assets.auth.crypto import TokenCipher
from sync_assets.datasets import ESI_CORPORATION_DATASETS, Dataset
from sync_assets.datasets import esi as declared
from sync_assets.defs.assets import AUTH_RESOURCE_KEY, IO_MANAGER_KEY, build_sync_asset
from sync_assets.sandbox.esi import EsiSandbox
from sync_assets.sandbox.server import serve_in_thread
from sync_assets.warehouse import PostgresWarehouse, SnapshotIOManager

from .conftest import create_database, drop_database

CORP_A, CORP_B = 98000001, 98000002
ASSETS = {d.key: build_sync_asset(d, "esi") for d in ESI_CORPORATION_DATASETS}
PARTITIONS = ESI_CORPORATION_DATASETS[0].partitioning.dynamic


class World:
    def __init__(self, sandbox: EsiSandbox, url: str, database_url: str):
        self.sandbox, self.url, self.database_url = sandbox, url, database_url
        self.key = Fernet.generate_key().decode()
        self.cipher = TokenCipher(self.key)
        self.warehouse = PostgresWarehouse(database_url=database_url)
        self.esi = EsiResource(base_url=url, backoff_initial_s=0.01, backoff_max_s=0.05, expiry_guard_s=0)
        self.auth = EsiAuthResource(
            esi=self.esi, database_url=database_url, client_id=sandbox.sso.client_id,
            client_secret=sandbox.sso.client_secret, token_key=self.key, sso_url=url, sso_issuer="login.eveonline.com",
        )
        self.instance = dg.DagsterInstance.ephemeral()
        self.instance.add_dynamic_partitions(PARTITIONS, [str(CORP_A), str(CORP_B)])
        self.directors: dict[int, int] = {}

    def connect(self, corporation_id: int, **character: Any) -> int:
        """A character of the corporation logs in: its token lands in the token store."""
        character_id, refresh_token = (
            self.sandbox.add_character(corporation_id, **character) if character else self.sandbox.add_director(corporation_id)
        )
        tokens.add_refresh_token(self.engine, self.auth.sso(), refresh_token, lookup=partial(lookup_identity, self.esi), cipher=self.cipher)
        return character_id

    @property
    def engine(self):
        return self.warehouse.engine()

    def resources(self) -> dict[str, Any]:
        return {"esi": self.esi, "warehouse": self.warehouse, AUTH_RESOURCE_KEY: self.auth,
                IO_MANAGER_KEY: SnapshotIOManager(warehouse=self.warehouse)}

    def sync(self, datasets: list[Dataset], corporation_id: int, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        assets = [ASSETS[d.key] for d in datasets]
        return dg.materialize(assets, partition_key=str(corporation_id), resources=self.resources(),
                              instance=self.instance, raise_on_error=raise_on_error)

    def table(self, dataset: Dataset, corporation_id: int) -> pd.DataFrame:
        return self.warehouse.read_table(dataset, [str(corporation_id)])


@pytest.fixture(scope="module")
def world(pg_server_url: str) -> Iterator[World]:
    sandbox = EsiSandbox(regions={10000002: 1}, n_price_types=10, corporations={CORP_A: "small", CORP_B: "small"})
    database_url = create_database(pg_server_url, "corp")
    with serve_in_thread(sandbox) as url:
        w = World(sandbox, url, database_url)
        for corp in (CORP_A, CORP_B):
            w.directors[corp] = w.connect(corp)
        yield w
    drop_database(pg_server_url, database_url)


# --- comparing tables with what the sandbox serves -------------------------------------------

def _norm(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat() if value.tzinfo else value.date().isoformat()
    if isinstance(value, dt.datetime):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value


def rows(frame: pd.DataFrame, columns: list[str], key: list[str]) -> list[tuple]:
    frame = frame[columns].sort_values(key).reset_index(drop=True)
    return [tuple(_norm(v) for v in row) for row in frame.itertuples(index=False, name=None)]


EXPECTED = {
    "esi.corporation_members": "members",
    "esi.member_tracking": "membertracking",
    "esi.corporation_assets": "assets",
    "esi.industry_jobs": "industry_jobs",
    "esi.corporation_orders": "orders",
    "esi.corporation_order_history": "orders_history",
    "esi.wallet_journal": "journal",
    "esi.wallet_transactions": "transactions",
    "esi.mining_observers": "mining_observers",
    "esi.mining_ledger": "mining_ledger",
    "esi.corporation_killmail_ids": "killmails_recent",
    "esi.container_logs": "container_logs",
}


def assert_table_equals_sandbox(world: World, dataset: Dataset, corporation_id: int) -> int:
    table = world.table(dataset, corporation_id)
    expected = getattr(world.sandbox.corp_data(corporation_id), EXPECTED[dataset.key]).copy()
    expected["corporation_id"] = corporation_id
    columns = [c.name for c in dataset.table_columns]
    key = list(dataset.primary_key)
    assert len(table) == len(expected) > 0, dataset.key
    assert rows(table, columns, key) == rows(expected, columns, key), dataset.key
    return len(table)


def test_every_corporation_dataset_syncs_for_two_corporations(world: World) -> None:
    for corp in (CORP_A, CORP_B):
        result = world.sync(list(ESI_CORPORATION_DATASETS), corp)
        assert result.success
        for dataset in ESI_CORPORATION_DATASETS:
            if dataset.key in EXPECTED:
                assert_table_equals_sandbox(world, dataset, corp)
        killmails = world.table(declared.CORPORATION_KILLMAILS, corp)
        details = {k["killmail_id"]: k for k in world.sandbox.corp_data(corp).killmails}
        assert set(killmails["killmail_id"]) == set(details) and len(details) > 0
        for row in killmails.itertuples():
            source = details[row.killmail_id]
            assert orjson.loads(row.attackers) == source["attackers"]
            items = None if pd.isna(row.victim_items) else orjson.loads(row.victim_items)
            assert items == source["victim"].get("items")
            assert row.victim_ship_type_id == source["victim"]["ship_type_id"]
    # the two partitions hold different data
    a, b = (world.table(declared.CORPORATION_ASSETS, c) for c in (CORP_A, CORP_B))
    assert set(a["item_id"]).isdisjoint(set(b["item_id"]))
