"""IRIS CRM datasets, declared once: routes, columns, keys, write modes, partitions and cadence.

History starts in April 2024 (monthly partitions, loaded by a backfill from the UI); the automation
keeps the recent months fresh at 11:00 and 19:00 in the team's time zone (Europe/Dublin; override
with SYNC_ASSETS_SCHEDULE_TIMEZONE__IRIS). Dates come as MM/DD/YYYY or ISO 8601 with an offset,
money as strings or numbers: both are parsed (DATE, TIMESTAMPTZ, NUMERIC). Merchant numbers (`mid`)
are text: leading zeros matter.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, Mapping

from ...core.lazy import pandas as pd  # imported when a run first uses it

from ...core.datasets import Column, ColumnType, Dataset, Incremental, Slices, WriteMode
from ...core.paging import PageNumbers
from ...core.windows import Granularity, TimeWindows

I, S, B, J = ColumnType.INT64, ColumnType.STRING, ColumnType.BOOL, ColumnType.JSON
T, D, M = ColumnType.TIMESTAMP, ColumnType.DATE, ColumnType.DECIMAL
US_DATE = ("%m/%d/%Y",)  # IRIS's MM/DD/YYYY (ISO dates are accepted too)

HISTORY_START = date(2024, 4, 1)
TIMEZONE = "Europe/Dublin"  # where the team's months begin
TWICE_DAILY = "0 11,19 * * *"  # in the schedule's zone: DST is Dagster's to handle
CADENCE_S = 12 * 3600  # freshness: late after missing two of the twice-daily syncs


def _pages(size: int) -> PageNumbers:
    """Laravel's paginator; `size` is the route's largest allowed `per_page`."""
    return PageNumbers(count_header=None, count_path="meta.last_page", records_path="data", size_param="per_page", size=size)


def _month(**kwargs: Any) -> TimeWindows:
    return TimeWindows(Granularity.MONTH, HISTORY_START, timezone=TIMEZONE, **kwargs)


def _by_path(refresh_last: int) -> TimeWindows:
    """A month addressed as /{year}/{month}; the two columns are the rows' month (the mirror's scope)."""
    return _month(start_param=None, path_columns=((Column("year", I), "%Y"), (Column("month", I), "%m")),
                  refresh_last=refresh_last)


def _iris(name: str, route: str, **kwargs: Any) -> Dataset:
    return Dataset(api="iris", name=name, route=route, cache_seconds=CADENCE_S, cron=TWICE_DAILY,
                   schedule_timezone=TIMEZONE, **kwargs)


MERCHANTS = _iris(
    "merchants",
    "/merchants",
    description="Every merchant the API key's user may see. Each sync reads the merchants modified since the last "
    "one (minus an hour) and upserts them; a weekly full read mirrors the list (closures, removals).",
    paginator=_pages(1000),
    columns=(
        Column("mid", S, description="merchant number (text: leading zeros)"), Column("name", S, required=False),
        Column("opened", D, required=False, formats=US_DATE), Column("closed", D, required=False, formats=US_DATE),
        Column("created", T, required=False), Column("modified", T),
        Column("first_batch", D, required=False, formats=US_DATE), Column("last_batch", D, required=False, formats=US_DATE),
        Column("group", S, required=False), Column("processor", S, required=False), Column("datasource", S, required=False),
        Column("sic_code", S, required=False), Column("deactivated", D, required=False, formats=US_DATE),
        Column("vim", S, required=False), Column("status", S, required=False), Column("active", S, required=False),
        Column("leads", J, required=False, description="lead ids"),
    ),
    primary_key=("mid",),
    write_mode=WriteMode.MIRROR,
    incremental=Incremental(cursor_column="modified", start_param="start_date", end_param="end_date",
                            fixed={"date_filter": "modified", "sort_by": "modified"}, overlap=timedelta(hours=1)),
)


def _batches(batches: list[dict]) -> list[dict]:
    """One row per card transaction, carrying its batch (IRIS nests transactions in daily batches)."""
    rows = []
    for batch in batches:
        header = {"batch_date": batch["date"], "batch_reference_number": batch.get("reference_number"),
                  "batch_terminal_number": batch.get("terminal_number"), "batch_amount": batch.get("amount"),
                  "batch_count": None if batch.get("count") in (None, "") else int(batch["count"])}  # "3": a count as text
        rows += [{**transaction, **header} for transaction in batch.get("transactions") or ()]
    return rows


TRANSACTIONS = _iris(
    "transactions",
    "/merchants/{mid}/transactions",
    description="Card transactions per merchant and month (by batch date), one row per transaction with its batch's "
    "date, reference, terminal and totals. Merchants whose first/last batch dates show no activity in the month are "
    "not asked. A merchant that fails is recorded (check `failed_items`) and retried with backoff on later runs; "
    "its month stays incomplete (the run fails) until it succeeds. The response's `adjustments` are not kept.",
    paginator=_pages(100),
    windows=_month(start_param="start_date", end_param="end_date", format="%Y-%m-%d", end_inclusive=True,
                   column=Column("batch_date", D, formats=US_DATE), refresh_last=2),
    slices=Slices(columns=(Column("mid", S),), source="iris.merchants", active_between=("first_batch", "last_batch")),
    transform=_batches,
    columns=(
        Column("id", I), Column("date", D, formats=US_DATE), Column("type", S), Column("amount", M),
        Column("cardholder", S, required=False, description="masked card number"), Column("auth_code", S, required=False),
        Column("pos_entry_mode", S, required=False), Column("invoice_number", S, required=False),
        Column("void_reject_chargeback", B, required=False), Column("reject_description", S, required=False),
        Column("batch_date", D, formats=US_DATE), Column("batch_reference_number", S, required=False),
        Column("batch_terminal_number", S, required=False), Column("batch_amount", M, required=False),
        Column("batch_count", I, required=False),
    ),
    primary_key=("id",),
    write_mode=WriteMode.UPSERT,
)

_SUMMARY_MONEY = ("sum_sales_amount", "sum_income", "sum_expense", "sum_net", "sum_bps", "sum_agent_net")

RESIDUAL_SUMMARIES = _iris(
    "residual_summaries",
    "/residuals/reports/summary/{year}/{month}",
    description="The month's residual report, one row per processor. Months are republished (a later `modified`): "
    "the last three months are re-read on every sync and mirrored.",
    paginator=_pages(100),
    windows=_by_path(refresh_last=3),
    columns=(
        Column("processor_id", I), Column("name", S, required=False), Column("created", T, required=False),
        Column("created_by", I, required=False), Column("modified", T, required=False), Column("modified_by", I, required=False),
        Column("merchants_count", I, required=False), Column("sum_transactions", I, required=False),
        *(Column(name, M, required=False) for name in _SUMMARY_MONEY),
    ),
    primary_key=("year", "month", "processor_id"),
    write_mode=WriteMode.MIRROR,
)


def _mid_as_text(rows: list[dict]) -> list[dict]:
    """The spec types residual `mid` as an integer: kept as text like every other merchant number."""
    return [{**row, "mid": None if row.get("mid") is None else str(row["mid"])} for row in rows]


RESIDUAL_ROWS = _iris(
    "residual_rows",
    "/residuals/reports/summary/rows/{processor_id}/{year}/{month}",
    description="Merchant-level residuals of each processor's monthly report. Asked with `template=false` (figures "
    "without the API user's own template, so they do not depend on whose key syncs) and `hide_null_merchants=false` "
    "(every merchant of the report, with or without volume: a mirror must see the whole month). A processor whose "
    "summary `modified` is unchanged since its last sync is not re-read.",
    paginator=_pages(1000),
    query={"template": "false", "hide_null_merchants": "false"},
    windows=_by_path(refresh_last=3),
    slices=Slices(columns=(Column("processor_id", I),), source="iris.residual_summaries", version_column="modified"),
    transform=_mid_as_text,
    columns=(
        Column("mid", S, description="merchant number as the report gives it (an integer: no leading zeros)"),
        Column("merchant", S, required=False, description="DBA"), Column("transactions", I, required=False),
        *(Column(name, M, required=False) for name in ("sales_amount", "income", "expense", "net", "bps", "percentage", "agent_net")),
        Column("users", B, required=False),
    ),
    primary_key=("year", "month", "processor_id", "mid"),
    write_mode=WriteMode.MIRROR,
)


def _line_item(rows: list[dict]) -> list[dict]:
    return [{**row, "related_mid": None if row.get("related_mid") is None else str(row["related_mid"])} for row in rows]


RESIDUAL_LINE_ITEMS = _iris(
    "residual_line_items",
    "/residuals/lineitems/{year}/{month}",
    description="Residual income and expense items outside the processor reports (fees, bonuses), by month.",
    paginator=_pages(100),
    windows=_by_path(refresh_last=3),
    transform=_line_item,
    columns=(
        Column("id", I), Column("type", S, required=False), Column("item_id", I, required=False),
        Column("user", J, required=False), Column("merchant", J, required=False), Column("related_mid", S, required=False),
        Column("related_dba", S, required=False), Column("description", S, required=False),
        *(Column(name, M, required=False) for name in ("income", "expense", "percentage", "agent_net")),
        Column("is_recurring", B, required=False), Column("created", T, required=False), Column("modified", T, required=False),
        Column("agents", J, required=False), Column("recurring_start_date", T, required=False),
        Column("recurring_payment_count", I, required=False), Column("recurring_max_payment_count", I, required=False),
        Column("recurring_period", S, required=False),
    ),
    primary_key=("year", "month", "id"),
    write_mode=WriteMode.MIRROR,
)


def merchant_metrics(inputs: Mapping[str, pd.DataFrame], scope: Mapping[str, Any]) -> list[dict]:
    """Per merchant and month: sales (type SALE) count, volume and average ticket, refunds (RETURN),
    net volume and count of every transaction, and the month's residual (net and agent net summed
    over processors). Residual rows name merchants by number without leading zeros: matched on the
    number's value. Chargebacks are not synced, so not counted."""
    transactions, residuals = inputs["iris.transactions"], inputs["iris.residual_rows"]
    by_mid: dict[int, dict[str, Any]] = {}

    def entry(mid: str) -> dict[str, Any]:
        return by_mid.setdefault(int(mid), {"mid": mid, "sales_count": 0, "sales_volume": 0.0, "refund_volume": 0.0,
                                             "net_volume": 0.0, "transaction_count": 0, "residual_net": None,
                                             "residual_agent_net": None})

    tx = transactions.assign(amount=pd.to_numeric(transactions["amount"]))
    for mid, group in tx.groupby("mid"):
        row = entry(str(mid))
        sales, refunds = group[group["type"] == "SALE"], group[group["type"] == "RETURN"]
        row.update(sales_count=len(sales), sales_volume=float(sales["amount"].sum()), refund_volume=float(refunds["amount"].sum()),
                   net_volume=float(group["amount"].sum()), transaction_count=len(group))
    res = residuals.assign(net=pd.to_numeric(residuals["net"]), agent_net=pd.to_numeric(residuals["agent_net"]))
    for mid, group in res.groupby("mid"):
        row = by_mid.get(int(mid)) or entry(str(mid))
        row.update(residual_net=float(group["net"].fillna(0).sum()), residual_agent_net=float(group["agent_net"].fillna(0).sum()))
    out = []
    for row in by_mid.values():
        average = round(row["sales_volume"] / row["sales_count"], 2) if row["sales_count"] else None
        out.append({**row, "average_ticket": None if average is None else f"{average:.2f}",
                    **{k: None if row[k] is None else f"{row[k]:.2f}" for k in
                       ("sales_volume", "refund_volume", "net_volume", "residual_net", "residual_agent_net")}})
    return out


MERCHANT_MONTHLY_METRICS = _iris(
    "merchant_monthly_metrics",
    "",
    description="Monthly figures per merchant computed from the synced transactions and residual rows of the month "
    "(sales count, volume and average ticket; refunds; net volume; transaction count; residual net and agent net "
    "over every processor). Chargebacks are not synced and not counted. Recomputed whenever either input month "
    "is synced again.",
    windows=_by_path(refresh_last=2),
    derived_from=("iris.transactions", "iris.residual_rows"),
    compute=merchant_metrics,
    columns=(
        Column("mid", S), Column("sales_count", I), Column("sales_volume", M), Column("average_ticket", M, required=False),
        Column("refund_volume", M), Column("net_volume", M), Column("transaction_count", I),
        Column("residual_net", M, required=False), Column("residual_agent_net", M, required=False),
    ),
    primary_key=("year", "month", "mid"),
    write_mode=WriteMode.MIRROR,
)

IRIS_DATASETS: tuple[Dataset, ...] = (
    MERCHANTS, TRANSACTIONS, RESIDUAL_SUMMARIES, RESIDUAL_ROWS, RESIDUAL_LINE_ITEMS, MERCHANT_MONTHLY_METRICS,
)
