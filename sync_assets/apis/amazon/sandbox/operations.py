"""The dynamic sandbox's data operations: getInventorySummaries, listFinancialEventGroups,
listTransactions and searchOrders, with the parameter rules of their models.

Window rules (Finances): an end less than two minutes before the request is refused (400
InvalidInput); a start and end more than 180 days apart answer an EMPTY result, not an error, as the
models state; :attr:`Operations.wide_windows` counts those requests so a test can assert that a
client never sends one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping, Sequence

from .common import MARKETPLACES, fmt_s, invalid, parse_time
from .paging import Cursor, TokenStore, TokenUnusable
from .world import World

__all__ = ["Call", "OPERATIONS", "Operations", "PagingConfig"]

MIN_AGE = timedelta(minutes=2)  # window ends must be at least this far in the past
MAX_SPAN = timedelta(days=180)  # wider windows answer nothing
START_REACH = timedelta(days=548)  # getInventorySummaries' startDateTime: at most 18 months back
NEXT_TOKEN_INVALID = "Next token is invalid or expired"
V0_TOKEN_EXPIRED = "Token is not valid, token duration is 25 minutes."
TOKEN_UNDECODABLE = "We could not decode your NextToken. Possible reasons include: a transmission error, improper quoting or a truncation problem."
FULFILLMENT_STATUSES = ("PENDING_AVAILABILITY", "PENDING", "UNSHIPPED", "PARTIALLY_SHIPPED", "SHIPPED", "CANCELLED", "UNFULFILLABLE")
INCLUDED_DATA = ("BUYER", "RECIPIENT", "PROCEEDS", "EXPENSE", "PROMOTION", "CANCELLATION", "FULFILLMENT", "PACKAGES", "TAX", "PAYMENT", "FULFILLMENT_ORDERS")
#: includedData value -> the Order / OrderItem fields it adds (the sandbox generates these three)
_DATASETS = {"BUYER": ("buyer", None), "PROCEEDS": ("proceeds", "proceeds"), "FULFILLMENT": ("fulfillment", "fulfillment")}


@dataclass(frozen=True)
class Call:
    """One authorized SP-API request, as the operations see it."""

    seller: str
    op: str
    query: Mapping[str, list[str]]  # every value of every query parameter
    path: Mapping[str, str]
    body: bytes
    now: datetime
    base_url: str

    def one(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def array(self, name: str, max_items: int | None = None) -> list[str] | None:
        """A csv array parameter (repeated keys are accepted too)."""
        values = self.query.get(name)
        if not values:
            return None
        items = [v.strip() for raw in values for v in raw.split(",") if v.strip()]
        if max_items is not None and len(items) > max_items:
            raise invalid(f"{name} accepts at most {max_items} values.")
        return items

    def required(self, name: str) -> str:
        value = self.one(name)
        if value is None or value == "":
            raise invalid(f"Missing required parameter: {name}")
        return value

    def time(self, name: str) -> datetime | None:
        raw = self.one(name)
        return None if raw is None else parse_time(name, raw)

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.one(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise invalid(f"{name} must be an integer.") from None
        if not lo <= value <= hi:
            raise invalid(f"{name} must be between {lo} and {hi}.")
        return value

    def arguments(self, *skip: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The call's arguments without ``skip``: what a next token must be sent back with."""
        return tuple(sorted((k, tuple(v)) for k, v in self.query.items() if k not in skip))


@dataclass(frozen=True)
class PagingConfig:
    inventory_page_size: int = 50
    transactions_page_size: int = 500
    inventory_token_ttl: float = 30.0
    finances_token_ttl: float = 25 * 60.0
    orders_token_ttl: float = 24 * 3600.0


class Operations:
    """Serves the world's data; ``paging`` is read at each call (the sandbox replaces it on configure)."""

    def __init__(self, world: World, tokens: TokenStore, paging: Callable[[], PagingConfig]) -> None:
        self.world = world
        self.tokens = tokens
        self._paging = paging
        self._lock = threading.Lock()
        #: (seller, operation) -> requests whose window was wider than 180 days (answered empty)
        self.wide_windows: dict[tuple[str, str], int] = {}

    def handle(self, call: Call) -> tuple[int, Any]:
        return OPERATIONS[call.op](self, call)

    def reset_counters(self) -> None:
        with self._lock:
            self.wide_windows.clear()

    def _wide(self, call: Call) -> None:
        with self._lock:
            key = (call.seller, call.op)
            self.wide_windows[key] = self.wide_windows.get(key, 0) + 1

    def _cursor(self, call: Call, token_param: str, messages: tuple[str, str]) -> Cursor | None:
        """The cursor of the call's next token; ``messages`` = the (unknown, expired) answers."""
        token = call.one(token_param)
        if token is None:
            return None
        try:
            return self.tokens.lookup(call.seller, call.op, token)
        except TokenUnusable as exc:
            raise invalid(messages[exc.expired]) from None

    def _resume(self, call: Call, token_param: str, messages: tuple[str, str], args: tuple) -> int:
        """Where the page of a next token starts; the token must come with its call's arguments."""
        cursor = self._cursor(call, token_param, messages)
        if cursor is None:
            return 0
        if cursor.params != args:
            raise invalid(messages[0], "Send the token with the same arguments as the call that produced it.")
        return cursor.position

    def _page(self, call: Call, rows: Sequence[Any], start: int, size: int, args: tuple, ttl: float) -> tuple[list[Any], str | None]:
        end = start + size
        token = self.tokens.issue(call.seller, call.op, args, end, ttl) if end < len(rows) else None
        return list(rows[start:end]), token

    # ------------------------------------------------------------------ FBA Inventory

    def inventory_summaries(self, call: Call) -> tuple[int, Any]:
        if call.required("granularityType") != "Marketplace":
            raise invalid("Invalid granularityType: the only supported value is Marketplace.")
        granularity_id = call.required("granularityId")
        marketplaces = call.array("marketplaceIds", max_items=1)
        if not marketplaces:
            raise invalid("Missing required parameter: marketplaceIds")
        data = self.world.seller(call.seller)
        if marketplaces[0] not in data.marketplaces or granularity_id != marketplaces[0]:
            raise invalid(f"Invalid marketplace: {marketplaces[0]} is not a marketplace of this seller or does not match granularityId.")
        args = call.arguments("nextToken")
        start = self._resume(call, "nextToken", (NEXT_TOKEN_INVALID, NEXT_TOKEN_INVALID), args)
        rows = _select_inventory(data.inventory[marketplaces[0]], call)
        if (call.one("details") or "").lower() != "true":
            rows = [{k: v for k, v in r.items() if k != "inventoryDetails"} for r in rows]
        paging = self._paging()
        page, token = self._page(call, rows, start, paging.inventory_page_size, args, paging.inventory_token_ttl)
        body: dict[str, Any] = {
            "payload": {"granularity": {"granularityType": "Marketplace", "granularityId": granularity_id}, "inventorySummaries": page}
        }
        if token:
            body["pagination"] = {"nextToken": token}
        return 200, body

    # ------------------------------------------------------------------ Finances

    def event_groups(self, call: Call) -> tuple[int, Any]:
        size = call.integer("MaxResultsPerPage", 10, 1, 100)
        args = call.arguments("NextToken")
        start = self._resume(call, "NextToken", (TOKEN_UNDECODABLE, V0_TOKEN_EXPIRED), args)
        after, before = self._window(call, "FinancialEventGroupStartedAfter", "FinancialEventGroupStartedBefore", "Date range is invalid.")
        if before - after > MAX_SPAN:
            self._wide(call)
            return 200, {"payload": {"FinancialEventGroupList": []}}
        lo, hi = fmt_s(after), fmt_s(before)
        with self.world.lock:
            groups = [g for g in self.world.seller(call.seller).event_groups if lo <= g["FinancialEventGroupStart"] < hi]
        page, token = self._page(call, groups, start, size, args, self._paging().finances_token_ttl)
        payload: dict[str, Any] = {"FinancialEventGroupList": page}
        if token:
            payload["NextToken"] = token
        return 200, {"payload": payload}

    def transactions(self, call: Call) -> tuple[int, Any]:
        related = _related_filter(call)
        status = call.one("transactionStatus")
        if status is not None and status not in ("DEFERRED", "RELEASED", "DEFERRED_RELEASED"):
            raise invalid(f"Invalid transactionStatus: {status}")
        args = call.arguments("nextToken")
        start = self._resume(call, "nextToken", (TOKEN_UNDECODABLE, TOKEN_UNDECODABLE), args)
        if call.one("postedAfter") is None and related is None:
            raise invalid("Start date cannot be null", "Start date cannot be null")
        after, before = self._window(call, "postedAfter", "postedBefore", "Invalid date range.", required=related is None)
        unbounded = call.one("postedAfter") is None  # a related identifier alone selects by itself
        if before - after > MAX_SPAN and not unbounded:
            self._wide(call)
            return 200, {"payload": {"transactions": []}}
        rows = _select_transactions(self.world.transactions(call.seller, call.now), call, after, before, status, related)
        page, token = self._page(call, rows, start, self._paging().transactions_page_size, args, self._paging().finances_token_ttl)
        payload: dict[str, Any] = {"transactions": page}
        if token:
            payload["nextToken"] = token
        return 200, {"payload": payload}

    def _window(self, call: Call, after_name: str, before_name: str, message: str, required: bool = True) -> tuple[datetime, datetime]:
        """(start, end) of a Finances window; the end defaults to two minutes before the request."""
        latest = call.now - MIN_AGE
        after = call.time(after_name)
        if after is None:
            if required:
                raise invalid(message, f"{after_name} is required.")
            after = datetime.min.replace(tzinfo=call.now.tzinfo)
        before = call.time(before_name) or latest
        if after > latest or before > latest:
            raise invalid(message, f"{after_name} and {before_name} must be more than two minutes before the time of the request.")
        if before <= after:
            raise invalid(message, f"{before_name} must be later than {after_name}.")
        return after, before

    # ------------------------------------------------------------------ Orders 2026-01-01

    def search_orders(self, call: Call) -> tuple[int, Any]:
        """A paginationToken may come alone or with its call's filters; only maxResultsPerPage and
        includedData may change between pages."""
        size = call.integer("maxResultsPerPage", 100, 1, 100)
        included = set(call.array("includedData") or ())
        if included - set(INCLUDED_DATA):
            raise invalid(f"Invalid includedData: {sorted(included - set(INCLUDED_DATA))}")
        args = call.arguments("paginationToken", "maxResultsPerPage", "includedData")
        start = 0
        cursor = self._cursor(call, "paginationToken", ("Invalid paginationToken", "The paginationToken has expired"))
        if cursor is not None:
            if args and args != cursor.params:
                raise invalid("Invalid paginationToken", "The filters must be the ones of the request that produced the token.")
            args, start = cursor.params, cursor.position
        filters = _with_query(call, dict(args))
        field, after, before = _order_window(filters)
        orders = _select_orders(self.world.seller(call.seller).orders, filters, field, after, before)
        page, token = self._page(call, orders, start, size, args, self._paging().orders_token_ttl)
        body: dict[str, Any] = {"orders": [_shape_order(o, included) for o in page]}
        if token:
            body["pagination"] = {"nextToken": token}
        body["createdBefore" if field == "createdTime" else "lastUpdatedBefore"] = fmt_s(before)
        return 200, body


# --------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------


def _select_inventory(rows: list[dict[str, Any]], call: Call) -> list[dict[str, Any]]:
    since = call.time("startDateTime")
    if since is not None:
        if since < call.now - START_REACH:
            raise invalid(f"Query startDateTime cannot not be earlier than {fmt_s(call.now - START_REACH)}")
        stamp = fmt_s(since)
        return [r for r in rows if r["lastUpdatedTime"] >= stamp]
    skus = call.array("sellerSkus", max_items=50)
    if skus is None and call.one("sellerSku"):
        skus = [call.one("sellerSku") or ""]
    if skus is not None:
        wanted = set(skus)
        return [r for r in rows if r["sellerSku"] in wanted]
    return rows


def _related_filter(call: Call) -> tuple[str, str] | None:
    name, value = call.one("relatedIdentifierName"), call.one("relatedIdentifierValue")
    if name is None and value is None:
        return None
    if name not in ("FINANCIAL_EVENT_GROUP_ID", "ORDER_ID") or not value:
        raise invalid("relatedIdentifierName must be FINANCIAL_EVENT_GROUP_ID or ORDER_ID, with relatedIdentifierValue.")
    return name, value


def _select_transactions(
    rows: Iterable[dict[str, Any]], call: Call, after: datetime, before: datetime, status: str | None, related: tuple[str, str] | None
) -> list[dict[str, Any]]:
    lo, hi = fmt_s(after), fmt_s(before)
    marketplace = call.one("marketplaceId")
    out = []
    for t in rows:
        if not lo <= t["postedDate"] < hi:
            continue
        if marketplace and t["sellingPartnerMetadata"]["marketplaceId"] != marketplace:
            continue
        if status and t["transactionStatus"] != status:
            continue
        if related and not any(r["relatedIdentifierName"] == related[0] and r["relatedIdentifierValue"] == related[1] for r in t["relatedIdentifiers"]):
            continue
        out.append(t)
    return out


def _order_window(call: Call) -> tuple[str, datetime, datetime]:
    created, updated = call.one("createdAfter"), call.one("lastUpdatedAfter")
    if (created is None) == (updated is None):
        raise invalid("Exactly one of createdAfter and lastUpdatedAfter must be provided.")
    prefix, other = ("created", "lastUpdated") if created is not None else ("lastUpdated", "created")
    if call.one(f"{other}Before") is not None:
        raise invalid(f"{other}Before cannot be combined with {prefix}After.")
    after = call.time(f"{prefix}After")
    assert after is not None
    latest = call.now - MIN_AGE
    before = call.time(f"{prefix}Before") or latest
    if before > latest:
        raise invalid(f"{prefix}Before must be at least two minutes before the time of the request.")
    if before < after:
        raise invalid(f"{prefix}Before must be equal to or after {prefix}After.")
    return f"{prefix}Time", after, before


def _select_orders(orders: list[dict[str, Any]], call: Call, field: str, after: datetime, before: datetime) -> list[dict[str, Any]]:
    statuses = call.array("fulfillmentStatuses")
    if statuses and set(statuses) - set(FULFILLMENT_STATUSES):
        raise invalid(f"Invalid fulfillmentStatuses: {sorted(set(statuses) - set(FULFILLMENT_STATUSES))}")
    fulfilled_by = call.array("fulfilledBy")
    if fulfilled_by and set(fulfilled_by) - {"MERCHANT", "AMAZON"}:
        raise invalid("Invalid fulfilledBy: use MERCHANT or AMAZON.")
    marketplaces = call.array("marketplaceIds", max_items=50)
    if marketplaces and set(marketplaces) - set(MARKETPLACES):
        raise invalid(f"Invalid marketplaceIds: {sorted(set(marketplaces) - set(MARKETPLACES))}")
    lo, hi = fmt_s(after), fmt_s(before)
    out = [
        o for o in orders
        if lo <= o[field] <= hi
        and (not statuses or o["fulfillment"]["fulfillmentStatus"] in statuses)
        and (not fulfilled_by or o["fulfillment"]["fulfilledBy"] in fulfilled_by)
        and (not marketplaces or o["salesChannel"]["marketplaceId"] in marketplaces)
    ]
    return sorted(out, key=lambda o: (o[field], o["orderId"]))


def _shape_order(order: dict[str, Any], included: set[str]) -> dict[str, Any]:
    """The order with only the datasets ``includedData`` asked for."""
    drop_order = {order_key for name, (order_key, _) in _DATASETS.items() if name not in included}
    drop_item = {item_key for name, (_, item_key) in _DATASETS.items() if name not in included and item_key}
    shaped = {k: v for k, v in order.items() if k not in drop_order}
    shaped["orderItems"] = [{k: v for k, v in item.items() if k not in drop_item} for item in order["orderItems"]]
    return shaped


def _with_query(call: Call, args: dict[str, tuple[str, ...]]) -> Call:
    return Call(call.seller, call.op, {k: list(v) for k, v in args.items()}, call.path, call.body, call.now, call.base_url)


OPERATIONS: dict[str, Callable[[Operations, Call], tuple[int, Any]]] = {
    "getInventorySummaries": Operations.inventory_summaries,
    "listFinancialEventGroups": Operations.event_groups,
    "listTransactions": Operations.transactions,
    "searchOrders": Operations.search_orders,
}
