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

from sync_assets.apis.esi import EsiResource
from sync_assets.apis.esi.auth import EsiAuthResource, lookup_identity
from sync_assets.apis.esi.sso import tokens
from sync_assets.apis.esi.sso.crypto import TokenCipher
from sync_assets.apis.esi.datasets import ESI_CORPORATION_DATASETS
from sync_assets.core.datasets import Dataset
from sync_assets.apis.esi import datasets as declared
from sync_assets.orchestration.assets import IO_MANAGER_KEY, build_sync_asset
from sync_assets.apis.esi.spec import ESI
from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.warehouse import PostgresWarehouse, SnapshotIOManager

from .conftest import create_database, drop_database
from .helpers import failure_messages

CORP_A, CORP_B, CORP_C = 98000001, 98000002, 98000003  # C: token lifecycle tests
ASSETS = {d.key: build_sync_asset(d, ESI) for d in ESI_CORPORATION_DATASETS}
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
        self.instance.add_dynamic_partitions(PARTITIONS, [str(CORP_A), str(CORP_B), str(CORP_C)])
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
        return {"esi": self.esi, "warehouse": self.warehouse, ESI.credentials_resource: self.auth,
                IO_MANAGER_KEY: SnapshotIOManager(warehouse=self.warehouse)}

    def sync(self, datasets: list[Dataset], corporation_id: int, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        assets = [ASSETS[d.key] for d in datasets]
        # every corporation asset given: a sliced dataset's source table is its input (loaded, not re-run)
        return dg.materialize(list(ASSETS.values()), selection=[a.key for a in assets], partition_key=str(corporation_id),
                              resources=self.resources(),
                              instance=self.instance, raise_on_error=raise_on_error)

    def expire(self, dataset: Dataset, corporation_id: int) -> None:
        """Let the stored ESI cache times pass (as if the clock moved past Expires)."""
        with self.engine.begin() as conn:
            conn.execute(
                text("UPDATE sync_assets.sync_state SET expires_at = now() - interval '1 second' "
                     "WHERE dataset = :d AND partition_key LIKE :p"),
                {"d": dataset.key, "p": f"{corporation_id}%"},
            )

    def table(self, dataset: Dataset, corporation_id: int) -> pd.DataFrame:
        return self.warehouse.read_table(dataset, [str(corporation_id)])


@pytest.fixture(scope="module")
def world(pg_server_url: str) -> Iterator[World]:
    sandbox = EsiSandbox(regions={10000002: 1}, n_price_types=10, corporations={c: "small" for c in (CORP_A, CORP_B, CORP_C)})
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


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(failure_messages(result))


def test_wallet_transactions_resume_from_the_stored_id_without_duplicates(world: World) -> None:
    dataset = declared.WALLET_TRANSACTIONS
    world.sync([dataset], CORP_A)
    before = world.table(dataset, CORP_A)
    world.sandbox.refresh("wallet_transactions", corporation_id=CORP_A)
    world.expire(dataset, CORP_A)
    world.sandbox.reset_counters()
    result = world.sync([dataset], CORP_A)
    # a ledger keeps what ESI has forgotten: the table is what it held plus what ESI serves now
    current = world.sandbox.corp_data(CORP_A).transactions.assign(corporation_id=CORP_A)
    columns, key = [c.name for c in dataset.table_columns], list(dataset.primary_key)
    union = pd.concat([before[columns], current[columns].astype(before[columns].dtypes.to_dict())]).drop_duplicates(key, keep="last")
    table = world.table(dataset, CORP_A)
    assert rows(table, columns, key) == rows(union, columns, key)
    new = len(table) - len(before)
    assert new > 0 and len(current) > 0
    [event] = result.get_asset_materialization_events()
    assert event.materialization.metadata["rows_inserted"].value == new
    assert event.materialization.metadata["rows_updated"].value == 0
    # one call per division: each walk stopped at the newest stored transaction
    assert world.sandbox.counter("wallet_transactions")["requests"] == 7
    cursors = world.engine.connect().execute(text(
        "SELECT partition_key, cursor FROM sync_assets.sync_state WHERE dataset = 'esi.wallet_transactions' "
        "AND partition_key LIKE :p"), {"p": f"{CORP_A}/%"}).all()
    for key, cursor in cursors:
        division = int(key.split("division=")[1])
        ids = table.loc[table.division == division, "transaction_id"]
        assert (cursor is None and ids.empty) or int(cursor) == ids.max()


def test_killmail_details_are_fetched_once(world: World) -> None:
    ids, details = declared.CORPORATION_KILLMAIL_IDS, declared.CORPORATION_KILLMAILS
    world.sandbox.reset_counters()
    world.sync([ids, details], CORP_B)  # everything already stored: nothing to fetch
    assert world.sandbox.killmail_fetch_counts() == {}
    stored = set(world.table(details, CORP_B)["killmail_id"])
    world.sandbox.refresh("killmails_recent", corporation_id=CORP_B)
    world.expire(ids, CORP_B)
    world.sync([ids, details], CORP_B)
    counts = world.sandbox.killmail_fetch_counts()
    now_stored = set(world.table(details, CORP_B)["killmail_id"])
    assert now_stored > stored
    assert set(counts) == now_stored - stored and set(counts.values()) == {1}


def test_a_missing_scope_fails_fast_naming_it_without_calling_esi(world: World) -> None:
    scopes = [s for s in world.sandbox.sso.character(world.directors[CORP_A]).scopes if s != "esi-assets.read_corporation_assets.v1"]
    world.connect(CORP_C, scopes=scopes, roles=("Director", "Accountant", "Factory_Manager", "Trader"))
    world.sandbox.reset_counters()
    result = world.sync([declared.CORPORATION_ASSETS], CORP_C, raise_on_error=False)
    assert not result.success
    message = failure_text(result)
    assert "esi-assets.read_corporation_assets.v1" in message and str(CORP_C) in message
    assert world.sandbox.counter("assets")["requests"] == 0


def test_a_role_lost_mid_sync_is_a_403_that_deletes_nothing(world: World) -> None:
    dataset = declared.MEMBER_TRACKING
    assert world.sync([dataset], CORP_C).success
    before = world.table(dataset, CORP_C)
    [character] = [t.character_id for t in tokens.list_tokens(world.engine) if t.corporation_id == CORP_C]
    world.sandbox.sso.set_roles(character, ["Accountant"])  # in game; our stored roles still say Director
    world.expire(dataset, CORP_C)
    result = world.sync([dataset], CORP_C, raise_on_error=False)
    assert not result.success and "Character does not have required role(s)" in failure_text(result)
    pd.testing.assert_frame_equal(world.table(dataset, CORP_C), before)
    token = tokens.get_token(world.engine, character)
    assert token.status == "lost_role" and "member_tracking" in token.status_detail


def test_invalid_grant_marks_the_token_and_tells_the_user_to_log_in_again(world: World) -> None:
    dataset = declared.CORPORATION_MEMBERS
    assert world.sync([dataset], CORP_C).success
    before = world.table(dataset, CORP_C)
    [character] = [t.character_id for t in tokens.list_tokens(world.engine) if t.corporation_id == CORP_C]
    world.sandbox.sso.revoke(character)
    tokens.forget_access_token(world.engine, character)  # the next use must refresh
    world.expire(dataset, CORP_C)
    result = world.sync([dataset], CORP_C, raise_on_error=False)
    assert not result.success and "log in again" in failure_text(result)
    assert tokens.get_token(world.engine, character).status == "invalid_grant"
    pd.testing.assert_frame_equal(world.table(dataset, CORP_C), before)


def test_no_secret_in_the_event_log_metadata_or_any_table(world: World) -> None:
    secrets = set(world.sandbox.sso.issued_secrets()) | {world.key, world.sandbox.sso.client_secret}
    assert len(secrets) > 5
    haystacks: list[str] = []
    for run in world.instance.get_runs():
        for entry in world.instance.all_logs(run.run_id):
            haystacks.append(entry.user_message or "")
            if entry.dagster_event is not None:
                haystacks.append(repr(entry.dagster_event))
        haystacks.append(repr(run.run_config) + repr(run.tags))
    with world.engine.connect() as conn:
        tables = conn.execute(text(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema IN ('esi', 'sync_assets')")).all()
        assert len(tables) >= 15
        for schema, table in tables:
            haystacks.extend(conn.execute(text(f'SELECT t::text FROM "{schema}"."{table}" t')).scalars().all())
    text_blob = "\n".join(haystacks)
    assert len(text_blob) > 1_000_000
    leaked = [s[:6] + "…" for s in secrets if s in text_blob]
    assert leaked == []


def test_the_sensor_adds_new_corporations_and_reports_dead_ones_without_deleting(world: World) -> None:
    from sync_assets.orchestration.sensors import build_corporation_sensor

    sensor = build_corporation_sensor(PARTITIONS)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(PARTITIONS, [str(CORP_C)])  # C's only token is invalid by now (above)
        with dg.build_sensor_context(instance=instance, resources={"warehouse": world.warehouse}) as context:
            result = sensor.evaluate_tick(context)
        [request] = result.dynamic_partitions_requests
        assert sorted(request.partition_keys) == [str(CORP_A), str(CORP_B)]
        assert isinstance(request, dg.AddDynamicPartitionsRequest)
        assert sorted(instance.get_dynamic_partitions(PARTITIONS)) == [str(CORP_C)]  # nothing removed
        instance.add_dynamic_partitions(PARTITIONS, [str(CORP_A), str(CORP_B)])
        with dg.build_sensor_context(instance=instance, resources={"warehouse": world.warehouse}) as context:
            again = sensor.evaluate_tick(context)
        assert not again.dynamic_partitions_requests
        assert str(CORP_C) in again.skip_message and "data kept" in again.skip_message


def test_cli_lists_tokens_without_secrets(world: World) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "SYNC_ASSETS_DATABASE_URL": world.database_url, "SYNC_ASSETS_TOKEN_KEY": world.key}
    cli = str(Path(sys.executable).with_name("sync-assets"))
    proc = subprocess.run([cli, "esi", "tokens"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for token in tokens.list_tokens(world.engine):
        assert token.character_name in proc.stdout
    assert "invalid_grant" in proc.stdout and "98000001" in proc.stdout
    leaked = [s for s in world.sandbox.sso.issued_secrets() | {world.key} if s in proc.stdout + proc.stderr]
    assert leaked == []
