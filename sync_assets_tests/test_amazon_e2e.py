"""Amazon SP-API end to end for two sellers: Dagster materializations -> AmazonResource (LWA tokens
from the sellers table) -> the SP-API sandbox over real HTTP -> PostgreSQL; every table compared
with the sandbox's own data, and the derived reimbursement claims with the claims it seeded as
unreimbursed (and again after Amazon pays one)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterator

import dagster as dg
import pandas as pd
import pytest
from cryptography.fernet import Fernet

from sync_assets.apis.amazon import AMAZON, AMAZON_DATASETS, SELLERS_PARTITIONS, AmazonResource
from sync_assets.apis.amazon.auth import AmazonAuthResource
from sync_assets.apis.amazon.datasets import (
    FINANCIAL_EVENT_GROUPS, FINANCIAL_TRANSACTIONS, INVENTORY_LEDGER, INVENTORY_SUMMARIES, ORDERS,
    REIMBURSEMENT_CLAIMS, REIMBURSEMENTS,
)
from sync_assets.apis.amazon.sandbox import AmazonSandbox, serve_in_thread
from sync_assets.apis.amazon.sandbox.world import parse_ledger_time, parse_reimbursement_time
from sync_assets.orchestration.apis import ApiDefinition
from sync_assets.orchestration.assets import IO_MANAGER_KEY
from sync_assets.orchestration.build import build_definitions
from sync_assets.warehouse import PostgresWarehouse, SnapshotIOManager

from .conftest import create_database, drop_database

pytestmark = pytest.mark.slow  # over a minute on 2 cores: scheduled first (conftest)

# a sandbox whose slowest operation (searchOrders, 1 per 3 min) answers 2,000x faster: the client
# learns the rate from x-amzn-RateLimit-Limit; reports finish in a fraction of a second
SPEED = dict(rate_scale=2000.0, report_queue_seconds=0.05, report_processing_seconds=0.1)


class Sellers:
    def __init__(self, sandbox: AmazonSandbox, url: str, database_url: str, instance: dg.DagsterInstance):
        self.sb, self.world, self.instance = sandbox, sandbox.world, instance
        self.warehouse = PostgresWarehouse(database_url=database_url)
        self.amazon = AmazonResource(base_url=url, budget_database_url=database_url, backoff_initial_s=0.01,
                                     backoff_max_s=0.05, report_poll_s=0.2)
        self.auth = AmazonAuthResource(database_url=database_url, client_id=sandbox.client_id,
                                       client_secret=sandbox.client_secret, token_key=Fernet.generate_key().decode(),
                                       lwa_url=f"{url}/auth/o2/token", endpoint=url)
        for seller in self.world.seller_ids:
            self.auth.add_seller(seller, sandbox.refresh_tokens[seller], "na", self.world.seller(seller).marketplaces)
        instance.add_dynamic_partitions(SELLERS_PARTITIONS, self.world.seller_ids)
        self.defs = build_definitions([ApiDefinition(AMAZON, AMAZON_DATASETS, self.amazon, credentials=self.auth)],
                                      self.warehouse)

    def asset(self, dataset) -> dg.AssetsDefinition:
        return self.defs.get_assets_def(dg.AssetKey(["amazon", dataset.name]))

    def sync(self, dataset, seller: str, month: str | None = None) -> dg.ExecuteInProcessResult:
        key = dataset.join_partition(seller, month) if month else seller
        resources = {"amazon": self.amazon, "amazon_auth": self.auth, "warehouse": self.warehouse,
                     IO_MANAGER_KEY: SnapshotIOManager(warehouse=self.warehouse)}
        result = dg.materialize([self.asset(d) for d in AMAZON_DATASETS], partition_key=key, resources=resources,
                                instance=self.instance, selection=[self.asset(dataset).key], raise_on_error=False)
        assert result.success, f"{dataset.key}[{key}] failed"
        return result

    def table(self, dataset, seller: str) -> pd.DataFrame:
        frame = self.warehouse.read_table(dataset)
        return frame[frame["seller_id"] == seller]


@pytest.fixture(scope="module")
def sellers(pg_server_url: str) -> Iterator[Sellers]:
    """One sandbox, database and instance for the module: the tests build on each other's tables."""
    database_url = create_database(pg_server_url)
    sandbox = AmazonSandbox(scale="tiny", **SPEED)
    with serve_in_thread(sandbox) as url, dg.instance_for_test() as instance:
        yield Sellers(sandbox, url, database_url, instance)
    drop_database(pg_server_url, database_url)


def _months(first: datetime, last: datetime) -> list[str]:
    months, at = [], first.replace(day=1)
    while at <= last:
        months.append(at.strftime("%Y-%m-01"))
        at = (at + timedelta(days=32)).replace(day=1)
    return months


def _money(value: Any) -> Decimal | None:
    return None if value is None or pd.isna(value) else Decimal(str(value)).quantize(Decimal("0.01"))


def _history(sellers: Sellers) -> list[str]:
    anchor = sellers.world.anchor
    return _months(anchor - timedelta(days=370), datetime.now(timezone.utc))


def test_inventory_is_each_marketplace_of_each_seller(sellers: Sellers) -> None:
    for seller in sellers.world.seller_ids:
        sellers.sync(INVENTORY_SUMMARIES, seller)
        stored = sellers.table(INVENTORY_SUMMARIES, seller)
        data = sellers.world.seller(seller)
        want = {(mp, s["sellerSku"]): s for mp in data.marketplaces for s in data.inventory[mp]}
        assert len(want) >= 12 and set(zip(stored["marketplace_id"], stored["seller_sku"])) == set(want)
        for row in stored.itertuples():
            source = want[(row.marketplace_id, row.seller_sku)]
            assert row.fulfillable_quantity == source["inventoryDetails"]["fulfillableQuantity"]
            assert row.reserved_quantity == source["inventoryDetails"]["reservedQuantity"]["totalReservedQuantity"]
            assert row.total_quantity == source["totalQuantity"] and row.fn_sku == source["fnSku"]
    assert len(sellers.world.seller(sellers.world.seller_ids[1]).marketplaces) == 2  # the US + CA seller


def test_orders_of_two_years_are_read_once_then_incrementally(sellers: Sellers) -> None:
    for seller in sellers.world.seller_ids:
        sellers.sync(ORDERS, seller)
        stored = sellers.table(ORDERS, seller).set_index("order_id")
        want = {o["orderId"]: o for o in sellers.world.seller(seller).orders}
        assert len(want) > 10 and set(stored.index) == set(want)
        for order_id, source in want.items():
            row = stored.loc[order_id]
            assert row["last_updated_time"] == pd.Timestamp(source["lastUpdatedTime"])
            assert row["marketplace_id"] == source["salesChannel"]["marketplaceId"]
            assert _money(row["grand_total"]) == _money(source["proceeds"]["grandTotal"]["amount"])
    before = sellers.sb.requests(sellers.world.seller_ids[0], "searchOrders")
    sellers.sync(ORDERS, sellers.world.seller_ids[0])  # nothing changed since: one page of recent changes
    assert sellers.sb.requests(sellers.world.seller_ids[0], "searchOrders") - before == 1


def test_finances_by_month(sellers: Sellers) -> None:
    months = _history(sellers)
    for seller in sellers.world.seller_ids:
        for month in months:
            sellers.sync(FINANCIAL_EVENT_GROUPS, seller, month)
            sellers.sync(FINANCIAL_TRANSACTIONS, seller, month)
        groups = sellers.table(FINANCIAL_EVENT_GROUPS, seller).set_index("financial_event_group_id")
        want = {g["FinancialEventGroupId"]: g for g in sellers.world.event_groups(seller)}
        assert len(want) > 10 and set(groups.index) == set(want)
        for group_id, source in want.items():
            assert groups.loc[group_id, "processing_status"] == source["ProcessingStatus"]
            assert _money(groups.loc[group_id, "original_total"]) == _money(source["OriginalTotal"]["CurrencyAmount"])
        stored = sellers.table(FINANCIAL_TRANSACTIONS, seller).set_index("transaction_id")
        expected = {t["transactionId"]: t for t in sellers.world.transactions(seller, datetime.now(timezone.utc))}
        assert len(expected) > 20 and set(stored.index) == set(expected)
        for txn_id, source in expected.items():
            assert stored.loc[txn_id, "transaction_status"] == source["transactionStatus"]
            assert _money(stored.loc[txn_id, "total_amount"]) == _money(source["totalAmount"]["currencyAmount"])
    assert sellers.sb.wide_window_requests() == 0  # never a window wider than 180 days (it answers nothing)


def test_reports_and_the_claims_still_owed(sellers: Sellers) -> None:
    months = _history(sellers)
    for seller in sellers.world.seller_ids:
        for month in months:
            sellers.sync(REIMBURSEMENTS, seller, month)
            sellers.sync(INVENTORY_LEDGER, seller, month)
        data = sellers.world.seller(seller)
        paid = sellers.table(REIMBURSEMENTS, seller)
        assert sorted(paid["reimbursement_id"]) == sorted(r["reimbursement-id"] for r in data.reimbursements)
        assert {(r.reimbursement_id, _money(r.amount_total)) for r in paid.itertuples()} == \
            {(r["reimbursement-id"], _money(r["amount-total"])) for r in data.reimbursements}
        ledger = sellers.table(INVENTORY_LEDGER, seller)
        assert len(ledger) == len(data.ledger)  # no id in the report: every event kept, none twice
        assert sorted(ledger["date_and_time"]) == sorted(pd.Timestamp(parse_ledger_time(r["Date and Time"])) for r in data.ledger)

        sellers.sync(REIMBURSEMENT_CLAIMS, seller)
        claims = sellers.table(REIMBURSEMENT_CLAIMS, seller)
        owed = sellers.sb.unreimbursed_claims(seller)
        assert owed and set(zip(claims["fnsku"], claims["reference_id"])) == {(c.fnsku, c.claim_id) for c in owed}
        assert {(r.reference_id, r.units_owed) for r in claims.itertuples()} == {(c.claim_id, c.quantity) for c in owed}

    # Amazon pays one of them: the next reimbursement sync makes the claim disappear
    seller = sellers.world.seller_ids[0]
    claim = sellers.sb.unreimbursed_claims(seller)[0]  # approved ten minutes ago: windows end 2 minutes before now
    row = sellers.world.reimburse(seller, claim.claim_id, sellers.sb.now_datetime() - timedelta(minutes=10))
    month = parse_reimbursement_time(row["approval-date"]).strftime("%Y-%m-01")
    sellers.sync(REIMBURSEMENTS, seller, month)
    sellers.sync(REIMBURSEMENT_CLAIMS, seller)
    claims = sellers.table(REIMBURSEMENT_CLAIMS, seller)
    assert set(claims["reference_id"]) == {c.claim_id for c in sellers.sb.unreimbursed_claims(seller)}
    assert row["fnsku"] not in set(claims["fnsku"])
    # one report per window, never two (the sandbox counts createReport)
    assert all(count == 1 for count in sellers.sb.create_report_calls().values())
