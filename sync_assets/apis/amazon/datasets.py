"""Amazon SP-API datasets, declared once: operations, columns, keys, write modes, partitions, cadence.

Every dataset is partitioned by seller (a Dagster dynamic partition per stored seller, added when
its authorization is stored); time-windowed ones by seller and month as well. History starts at
`HISTORY_START` (months loaded by a backfill from the UI; the automation keeps the recent ones
fresh). Nested payload parts without a column of their own (fee breakdowns, order items) are kept
whole as JSONB: every field of an operation has a column or a documented JSONB home (a test checks
this against the models).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta, timezone
from typing import Any, Mapping

from ...core.lazy import pandas as pd  # imported when a run first uses it

from ...core.datasets import Auth, Column, ColumnType, Dataset, Incremental, Partitioning, Report, Slices, WriteMode
from ...core.paging import NextToken
from ...core.windows import Granularity, TimeWindows

I, S, B, J = ColumnType.INT64, ColumnType.STRING, ColumnType.BOOL, ColumnType.JSON
T, D, M = ColumnType.TIMESTAMP, ColumnType.DATE, ColumnType.DECIMAL

SELLERS_PARTITIONS = "amazon_sellers"  # the dynamic partitions: one per stored seller
HISTORY_START = date(2025, 1, 1)  # the first monthly partition of the windowed datasets
# Finances next tokens die after about 25 minutes (selling-partner-api-models issue #562):
# a walk slower than that, or a token refused as expired, restarts from the first page
FINANCES_TOKEN_S = 25 * 60.0
MIN_AGE = timedelta(minutes=2)  # finance and report windows end at least 2 minutes before now
MAX_SPAN = timedelta(days=180)  # a wider finance window answers NOTHING (not an error): never asked
# the reimbursement policy: units lost or damaged in a warehouse are usually found or reimbursed by
# Amazon within 30 days; after that the seller may file, within 60 days of the event
CLAIM_WAITING_PERIOD = timedelta(days=30)
CLAIM_FILING_WINDOW = timedelta(days=60)

LWA_SELLER = "lwa:seller"  # every call carries the seller's LWA access token
SELLER = Partitioning(path_param="seller_id", column=Column("seller_id", S, description="selling partner id"),
                      dynamic=SELLERS_PARTITIONS)
BY_MARKETPLACE = Slices(columns=(Column("marketplace_id", S),), from_credential=True)  # the seller's marketplaces


def _months(start_param: str, end_param: str, **kwargs: Any) -> TimeWindows:
    return TimeWindows(Granularity.MONTH, HISTORY_START, start_param=start_param, end_param=end_param,
                       max_span=MAX_SPAN, min_age=MIN_AGE, **kwargs)


def _amazon(name: str, route: str, role: str, **kwargs: Any) -> Dataset:
    """A seller's dataset; `role`: the SP-API role the application needs for it."""
    return Dataset(api="amazon", name=name, route=route, partitioning=SELLER, auth=Auth(LWA_SELLER, (role,)), **kwargs)


INVENTORY_SUMMARIES = _amazon(
    "inventory_summaries",
    "/fba/inventory/v1/summaries",
    "Amazon Fulfillment",
    description="FBA inventory per seller and marketplace (getInventorySummaries with details): quantities "
    "fulfillable, inbound, reserved, researching and unfulfillable. Each sync walks the whole marketplace promptly "
    "(next tokens live 30 s; an expired one restarts the walk) and mirrors it: SKUs gone from FBA are removed.",
    query={"details": "true", "granularityType": "Marketplace", "granularityId": "{marketplace_id}",
           "marketplaceIds": "{marketplace_id}"},
    paginator=NextToken(token_path="pagination.nextToken", param="nextToken", records_path="payload.inventorySummaries",
                        lifetime_s=30.0),
    slices=BY_MARKETPLACE,
    rate_limit_group="getInventorySummaries",
    columns=(
        Column("seller_sku", S, source="sellerSku"), Column("fn_sku", S, required=False, source="fnSku"),
        Column("asin", S, required=False), Column("condition", S, required=False),
        Column("product_name", S, required=False, source="productName"),
        Column("last_updated_time", T, required=False, source="lastUpdatedTime"),
        Column("total_quantity", I, required=False, source="totalQuantity"),
        Column("fulfillable_quantity", I, required=False, source="inventoryDetails.fulfillableQuantity"),
        Column("inbound_working_quantity", I, required=False, source="inventoryDetails.inboundWorkingQuantity"),
        Column("inbound_shipped_quantity", I, required=False, source="inventoryDetails.inboundShippedQuantity"),
        Column("inbound_receiving_quantity", I, required=False, source="inventoryDetails.inboundReceivingQuantity"),
        Column("reserved_quantity", I, required=False, source="inventoryDetails.reservedQuantity.totalReservedQuantity"),
        Column("researching_quantity", I, required=False,
               source="inventoryDetails.researchingQuantity.totalResearchingQuantity"),
        Column("unfulfillable_quantity", I, required=False,
               source="inventoryDetails.unfulfillableQuantity.totalUnfulfillableQuantity"),
        Column("inventory_details", J, required=False, source="inventoryDetails",
               description="inventoryDetails whole: the reserved, researching and unfulfillable breakdowns"),
        Column("stores", J, required=False),
    ),
    primary_key=("seller_id", "marketplace_id", "seller_sku"),
    write_mode=WriteMode.MIRROR,
    cache_seconds=3600,
)

FINANCIAL_EVENT_GROUPS = _amazon(
    "financial_event_groups",
    "/finances/v0/financialEventGroups",
    "Finance and Accounting",
    description="Settlement groups (listFinancialEventGroups, Finances v0: not deprecated) by the month they started. "
    "Groups stay Open about two weeks and change until they close: the last seven months (180 days) are re-read on "
    "every sync and upserted (a group still Open after that is not re-read).",
    query={"MaxResultsPerPage": "100"},
    paginator=NextToken(token_path="payload.NextToken", param="NextToken", records_path="payload.FinancialEventGroupList",
                        lifetime_s=FINANCES_TOKEN_S),
    windows=_months("FinancialEventGroupStartedAfter", "FinancialEventGroupStartedBefore", refresh_last=7,
                    column=Column("group_start", T)),
    rate_limit_group="listFinancialEventGroups",
    columns=(
        Column("financial_event_group_id", S, source="FinancialEventGroupId"),
        Column("processing_status", S, required=False, source="ProcessingStatus"),
        Column("fund_transfer_status", S, required=False, source="FundTransferStatus"),
        Column("original_total", M, required=False, source="OriginalTotal.CurrencyAmount"),
        Column("original_currency", S, required=False, source="OriginalTotal.CurrencyCode"),
        Column("converted_total", M, required=False, source="ConvertedTotal.CurrencyAmount"),
        Column("converted_currency", S, required=False, source="ConvertedTotal.CurrencyCode"),
        Column("beginning_balance", M, required=False, source="BeginningBalance.CurrencyAmount"),
        Column("beginning_balance_currency", S, required=False, source="BeginningBalance.CurrencyCode"),
        Column("fund_transfer_date", T, required=False, source="FundTransferDate"),
        Column("trace_id", S, required=False, source="TraceId"),
        Column("account_tail", S, required=False, source="AccountTail"),
        Column("group_start", T, required=False, source="FinancialEventGroupStart"),
        Column("group_end", T, required=False, source="FinancialEventGroupEnd"),
    ),
    primary_key=("seller_id", "financial_event_group_id"),
    write_mode=WriteMode.UPSERT,
    cache_seconds=6 * 3600,
)

FINANCIAL_TRANSACTIONS = _amazon(
    "financial_transactions",
    "/finances/2024-06-19/transactions",
    "Finance and Accounting",
    description="Every financial transaction (listTransactions 2024-06-19) by the month it posted, upserted by id. "
    "Windows end at least 2 minutes before now and are never wider than 180 days (a wider one answers nothing); the "
    "last two months are re-read with a 2-day lookback for late postings and DEFERRED -> RELEASED changes. "
    "Breakdowns, items, contexts and related identifiers are kept whole (JSONB).",
    paginator=NextToken(token_path="payload.nextToken", param="nextToken", records_path="payload.transactions",
                        lifetime_s=FINANCES_TOKEN_S),
    windows=_months("postedAfter", "postedBefore", lookback=timedelta(days=2), refresh_last=2,
                    column=Column("posted_date", T)),
    rate_limit_group="listTransactions",
    columns=(
        Column("transaction_id", S, source="transactionId"),
        Column("transaction_type", S, required=False, source="transactionType"),
        Column("transaction_status", S, required=False, source="transactionStatus"),
        Column("description", S, required=False),
        Column("posted_date", T, required=False, source="postedDate"),
        Column("total_amount", M, required=False, source="totalAmount.currencyAmount"),
        Column("currency_code", S, required=False, source="totalAmount.currencyCode"),
        Column("marketplace_id", S, required=False, source="marketplaceDetails.marketplaceId"),
        Column("marketplace_name", S, required=False, source="marketplaceDetails.marketplaceName"),
        Column("selling_partner_metadata", J, required=False, source="sellingPartnerMetadata"),
        Column("related_identifiers", J, required=False, source="relatedIdentifiers"),
        Column("items", J, required=False),
        Column("contexts", J, required=False),
        Column("breakdowns", J, required=False),
    ),
    primary_key=("seller_id", "transaction_id"),
    write_mode=WriteMode.UPSERT,
    cache_seconds=4 * 3600,
)


def _row_hash(rows: list[dict]) -> list[dict]:
    """Each report row with a hash of its values: a changed row is visible as such."""
    for row in rows:
        row["row_hash"] = _digest(row)
    return rows


def _digest(row: Mapping[str, Any], skip: tuple[str, ...] = ()) -> str:
    text = "\x1f".join(f"{k}={'' if v is None else v}" for k, v in sorted(row.items()) if k not in skip)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


REIMBURSEMENTS = _amazon(
    "reimbursements",
    "",
    "Amazon Fulfillment",
    description="Reimbursements Amazon paid (report GET_FBA_REIMBURSEMENTS_DATA, region-wide) by approval month, "
    "upserted on (reimbursement id, SKU, FNSKU) with a hash of the row. One report per window of a month (never one "
    "per day of history: the report has a cooldown of hours); the current month is asked again daily with a 3-day "
    "lookback. A job is kept per window, so a crashed run polls the same report.",
    report=Report("GET_FBA_REIMBURSEMENTS_DATA", computed=("row_hash",)),
    windows=_months("dataStartTime", "dataEndTime", lookback=timedelta(days=3), refresh_last=1,
                    column=Column("approval_date", T)),
    transform=_row_hash,
    columns=(
        Column("approval_date", T), Column("reimbursement_id", S), Column("case_id", S, required=False),
        Column("amazon_order_id", S, required=False), Column("reason", S, required=False), Column("sku", S),
        Column("fnsku", S), Column("asin", S, required=False), Column("product_name", S, required=False),
        Column("condition", S, required=False), Column("currency_unit", S, required=False),
        Column("amount_per_unit", M, required=False), Column("amount_total", M, required=False),
        Column("quantity_reimbursed_cash", I, required=False), Column("quantity_reimbursed_inventory", I, required=False),
        Column("quantity_reimbursed_total", I, required=False), Column("original_reimbursement_id", S, required=False),
        Column("original_reimbursement_type", S, required=False),
        Column("row_hash", S, description="sha256 of the row's values: changes when Amazon restates the row"),
    ),
    primary_key=("seller_id", "reimbursement_id", "sku", "fnsku"),
    write_mode=WriteMode.UPSERT,
    cache_seconds=24 * 3600,
    cron="40 6 * * *",
)

_RECONCILIATION = ("reconciled_quantity", "unreconciled_quantity")


def _ledger_keys(rows: list[dict]) -> list[dict]:
    """The ledger has no row id: a row's key is the hash of its values (reconciliation counts aside:
    Amazon updates those) with its occurrence among identical rows of the same report, so a window
    read again upserts the same rows and two identical events stay two rows."""
    seen: Counter[str] = Counter()
    for row in rows:
        digest = _digest(row, skip=_RECONCILIATION)
        seen[digest] += 1
        row["event_key"] = f"{digest}-{seen[digest]}"
    return rows


INVENTORY_LEDGER = _amazon(
    "inventory_ledger",
    "",
    "Amazon Fulfillment",
    description="Inventory ledger events (report GET_LEDGER_DETAIL_VIEW_DATA) by month: receipts, shipments, "
    "returns and the Adjustments (lost M, damaged E, found F) that reimbursement claims are made from. The report "
    "has no row id: `event_key` is a hash of the row's values plus its occurrence number among identical rows "
    "(reconciliation counts, which Amazon updates, are left out), so re-reading a window upserts the same rows.",
    report=Report("GET_LEDGER_DETAIL_VIEW_DATA", computed=("event_key",)),
    windows=_months("dataStartTime", "dataEndTime", lookback=timedelta(days=3), refresh_last=1,
                    column=Column("date_and_time", T)),
    transform=_ledger_keys,
    columns=(
        Column("date", D, source="Date", formats=("%m/%d/%Y",)), Column("fnsku", S), Column("asin", S, required=False),
        Column("msku", S, required=False, description="the seller SKU"), Column("title", S, required=False),
        Column("event_type", S), Column("reference_id", S, required=False), Column("quantity", I),
        Column("fulfillment_center", S, required=False), Column("disposition", S, required=False),
        Column("reason", S, required=False, description="adjustment reason code: M lost, E damaged, F found, ..."),
        Column("country", S, required=False), Column("reconciled_quantity", I, required=False),
        Column("unreconciled_quantity", I, required=False),
        Column("date_and_time", T, required=False, formats=("%Y-%m-%dT%H:%M:%S%z",)),
        Column("event_key", S, description="hash of the row's values and its occurrence (the report has no id)"),
    ),
    primary_key=("seller_id", "event_key"),
    write_mode=WriteMode.UPSERT,
    cache_seconds=24 * 3600,
    cron="50 6 * * *",
)

# every includedData of searchOrders but the buyer's and recipient's personal data
ORDER_DATA = ("PROCEEDS", "EXPENSE", "PROMOTION", "CANCELLATION", "FULFILLMENT", "PACKAGES", "TAX", "PAYMENT",
              "FULFILLMENT_ORDERS")

ORDERS = _amazon(
    "orders",
    "/orders/2026-01-01/orders",
    "Inventory and Order Tracking",
    description="Orders per seller and marketplace (searchOrders 2026-01-01, the replacement of getOrders), read "
    "incrementally on lastUpdatedAfter minus 30 minutes and upserted. At about one page per three minutes after the "
    "burst, the shared budget paces the walk (no timeout). The first sync reads the last two years. Every "
    "includedData but BUYER and RECIPIENT (personal data: the buyer and recipient are not requested) is asked; items, "
    "proceeds, fulfillment, packages, payment and tax are kept whole (JSONB).",
    query={"marketplaceIds": "{marketplace_id}", "includedData": ",".join(ORDER_DATA), "maxResultsPerPage": "100"},
    paginator=NextToken(token_path="pagination.nextToken", param="paginationToken", records_path="orders",
                        lifetime_s=24 * 3600.0),  # the model: "The token will expire after 24 hours"
    slices=BY_MARKETPLACE,
    incremental=Incremental(cursor_column="last_updated_time", start_param="lastUpdatedAfter",
                            overlap=timedelta(minutes=30), full_cron=None, first_since=timedelta(days=730)),
    rate_limit_group="searchOrders",
    columns=(
        Column("order_id", S, source="orderId"),
        Column("marketplace_id", S, source="salesChannel.marketplaceId"),
        Column("created_time", T, required=False, source="createdTime"),
        Column("last_updated_time", T, source="lastUpdatedTime"),
        Column("sales_channel", S, required=False, source="salesChannel.channelName"),
        Column("marketplace_name", S, required=False, source="salesChannel.marketplaceName"),
        Column("fulfillment_status", S, required=False, source="fulfillment.fulfillmentStatus"),
        Column("fulfilled_by", S, required=False, source="fulfillment.fulfilledBy"),
        Column("fulfillment_service_level", S, required=False, source="fulfillment.fulfillmentServiceLevel"),
        Column("grand_total", M, required=False, source="proceeds.grandTotal.amount"),
        Column("currency_code", S, required=False, source="proceeds.grandTotal.currencyCode"),
        Column("order_aliases", J, required=False, source="orderAliases"),
        Column("programs", J, required=False),
        Column("proceeds", J, required=False),
        Column("fulfillment", J, required=False, description="status, fulfiller, ship-by, deliver-by and label windows"),
        Column("order_items", J, required=False, source="orderItems",
               description="items with product, proceeds, expense, promotion, cancellation and fulfillment data"),
        Column("associated_orders", J, required=False, source="associatedOrders"),
        Column("packages", J, required=False), Column("payment", J, required=False), Column("tax", J, required=False),
        Column("fulfillment_orders", J, required=False, source="fulfillmentOrders"),
    ),
    primary_key=("seller_id", "order_id"),
    write_mode=WriteMode.UPSERT,
    cache_seconds=1800,
)

LOSS_REASONS = {"M": "LOST", "E": "DAMAGED"}  # ledger adjustment reason -> claim kind
FOUND_REASON = "F"
PAYING_REASONS = {"LOST": "Lost_Warehouse", "DAMAGED": "Damaged_Warehouse"}  # reimbursement reason paying each kind


def reimbursement_claims(inputs: Mapping[str, pd.DataFrame], scope: Mapping[str, Any],
                         now: datetime | None = None) -> list[dict]:
    """The claims a seller can file: per FNSKU, units lost (ledger Adjustments reason M, leaving
    SELLABLE stock) or damaged (reason E) in Amazon's warehouses, less units found again later
    (reason F) and units Amazon reimbursed for that kind of loss after the event (reasons
    Lost_Warehouse / Damaged_Warehouse, quantity-reimbursed-total), matched oldest event first.
    What remains is owed. `status`: waiting (Amazon may still find or pay it: before
    `CLAIM_WAITING_PERIOD`), fileable, or expired (past `CLAIM_FILING_WINDOW`)."""
    now = now or datetime.now(timezone.utc)
    ledger, paid = inputs["amazon.inventory_ledger"], inputs["amazon.reimbursements"]
    adjustments = ledger[ledger["event_type"] == "Adjustments"]
    losses = adjustments[adjustments["reason"].isin(list(LOSS_REASONS)) & (adjustments["quantity"] < 0)]
    found = adjustments[(adjustments["reason"] == FOUND_REASON) & (adjustments["quantity"] > 0)]
    credits: dict[tuple[str, str], list[list[Any]]] = defaultdict(list)  # (fnsku, kind) -> (when, units)
    for row in paid.itertuples(index=False):
        kind = next((k for k, reason in PAYING_REASONS.items() if reason == row.reason), None)
        if kind and pd.notna(row.quantity_reimbursed_total):
            credits[(row.fnsku, kind)].append([row.approval_date.to_pydatetime(), int(row.quantity_reimbursed_total)])
    found_units: dict[str, list[list[Any]]] = defaultdict(list)
    for row in found.itertuples(index=False):
        found_units[row.fnsku].append([_when(row), int(row.quantity)])
    claims = []
    for row in sorted(losses.itertuples(index=False), key=_when):
        kind, when, lost = LOSS_REASONS[row.reason], _when(row), -int(row.quantity)
        recovered = _take(found_units[row.fnsku], when, lost)
        reimbursed = _take(credits[(row.fnsku, kind)], when, lost - recovered)
        owed = lost - recovered - reimbursed
        if owed <= 0:
            continue
        eligible, deadline = when + CLAIM_WAITING_PERIOD, when + CLAIM_FILING_WINDOW
        claims.append({
            "fnsku": row.fnsku, "reference_id": row.reference_id, "msku": row.msku, "asin": row.asin, "title": row.title,
            "kind": kind, "event_time": when.isoformat(), "fulfillment_center": row.fulfillment_center, "units_lost": lost,
            "units_found": recovered, "units_reimbursed": reimbursed, "units_owed": owed,
            "eligible_from": eligible.isoformat(), "file_by": deadline.isoformat(),
            "status": "waiting" if now < eligible else "fileable" if now <= deadline else "expired",
        })
    return claims


def _when(row: Any) -> datetime:
    """A ledger event's instant: its date and time, else the start of its date (UTC)."""
    if pd.notna(row.date_and_time):
        return row.date_and_time.to_pydatetime()
    return datetime.combine(row.date, datetime.min.time(), timezone.utc)


def _take(pool: list[list[Any]], after: datetime, wanted: int) -> int:
    """Units taken from `pool` entries ([when, units], oldest first) dated at or after `after`, up
    to `wanted`; what is taken is used up (each unit counts for one event only)."""
    taken = 0
    for entry in sorted(pool, key=lambda e: e[0]):
        if taken >= wanted:
            break
        if entry[0] >= after and entry[1] > 0:
            use = min(entry[1], wanted - taken)
            entry[1] -= use
            taken += use
    return taken


REIMBURSEMENT_CLAIMS = Dataset(
    api="amazon",
    name="reimbursement_claims",
    route="",
    description="The reimbursement claims a seller can still file, derived from the synced "
    "`inventory_ledger` and `reimbursements` (all months of the seller, read through the IO manager): units lost "
    "(ledger Adjustments reason M) or damaged (reason E) in Amazon's warehouses, less units found again (reason F) "
    "and units Amazon reimbursed for that loss afterwards (Lost_Warehouse / Damaged_Warehouse), oldest event first. "
    f"A claim is `waiting` for {CLAIM_WAITING_PERIOD.days} days after the event (Amazon usually finds or pays it "
    f"itself), then `fileable` until {CLAIM_FILING_WINDOW.days} days after it, then `expired`. Recomputed whenever "
    "either input is synced; complete once the ledger and reimbursement history is backfilled.",
    partitioning=SELLER,
    derived_from=("amazon.inventory_ledger", "amazon.reimbursements"),
    compute=reimbursement_claims,
    columns=(
        Column("fnsku", S), Column("reference_id", S, description="the ledger adjustment's Reference ID"),
        Column("msku", S, required=False), Column("asin", S, required=False), Column("title", S, required=False),
        Column("kind", S, description="LOST or DAMAGED"), Column("event_time", T),
        Column("fulfillment_center", S, required=False), Column("units_lost", I), Column("units_found", I),
        Column("units_reimbursed", I), Column("units_owed", I), Column("eligible_from", T), Column("file_by", T),
        Column("status", S, description="waiting, fileable or expired"),
    ),
    primary_key=("seller_id", "fnsku", "reference_id"),
    write_mode=WriteMode.MIRROR,
    cache_seconds=24 * 3600,
)

AMAZON_DATASETS: tuple[Dataset, ...] = (
    INVENTORY_SUMMARIES, FINANCIAL_EVENT_GROUPS, FINANCIAL_TRANSACTIONS, REIMBURSEMENTS, INVENTORY_LEDGER, ORDERS,
    REIMBURSEMENT_CLAIMS,
)
