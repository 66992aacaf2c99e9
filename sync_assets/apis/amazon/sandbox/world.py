"""The sellers' data the dynamic sandbox serves, as plain Python data a test can read to compute the
tables a sync should produce.

Every record is stored in the form the API answers it (JSON-ready dicts with Amazon's field names;
report rows as ``{column: text}``), so "expected table" code reads the same fields a client does.
Two things depend on the moment of reading and have helpers: a transaction's ``transactionStatus``
(:meth:`World.transactions`: DEFERRED until the ``maturityDate`` of its DeferredContext, then
DEFERRED_RELEASED) and the reimbursement/ledger rows of a report window.

Claims: a LOST (ledger reason ``M``, "Inventory misplaced") or DAMAGED (reason ``E``, "Damaged at
Amazon fulfillment center") adjustment is a claim: the ``Adjustments`` row with a negative
``Quantity`` in ``SELLABLE`` disposition, its ``Reference ID`` the :attr:`Claim.claim_id`.  A claim is
reimbursed by the GET_FBA_REIMBURSEMENTS_DATA row with the same ``fnsku``, reason ``Lost_Warehouse``
/ ``Damaged_Warehouse``, ``quantity-reimbursed-total`` equal to the claim's quantity and an
``approval-date`` after the event.  The generator keeps that match unambiguous: at most one claim
per FNSKU, and no other warehouse-loss reimbursement on a claimed FNSKU.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import threading
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Iterator

import orjson

from .common import UTC, fmt_s, money

__all__ = [
    "Claim",
    "LEDGER_COLUMNS",
    "REIMBURSEMENT_COLUMNS",
    "SellerData",
    "Sku",
    "World",
    "parse_ledger_time",
    "parse_reimbursement_time",
]

#: GET_FBA_REIMBURSEMENTS_DATA header, in order (FBA Payments reports attributes).
REIMBURSEMENT_COLUMNS: tuple[str, ...] = (
    "approval-date", "reimbursement-id", "case-id", "amazon-order-id", "reason", "sku", "fnsku", "asin",
    "product-name", "condition", "currency-unit", "amount-per-unit", "amount-total",
    "quantity-reimbursed-cash", "quantity-reimbursed-inventory", "quantity-reimbursed-total",
    "original-reimbursement-id", "original-reimbursement-type",
)
#: GET_LEDGER_DETAIL_VIEW_DATA header: the documented attributes as the file spells them, plus
#: "Date and Time" that downloaded files carry after them.
LEDGER_COLUMNS: tuple[str, ...] = (
    "Date", "FNSKU", "ASIN", "MSKU", "Title", "Event Type", "Reference ID", "Quantity",
    "Fulfillment Center", "Disposition", "Reason", "Country", "Reconciled Quantity",
    "Unreconciled Quantity", "Date and Time",
)
CLAIM_KINDS: dict[str, tuple[str, str]] = {  # kind -> (ledger reason code, reimbursement reason)
    "LOST": ("M", "Lost_Warehouse"),
    "DAMAGED": ("E", "Damaged_Warehouse"),
}


def parse_reimbursement_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def parse_ledger_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")


def reimbursement_time(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Sku:
    seller_sku: str
    fnsku: str
    asin: str
    product_name: str
    price: Decimal  # list price in USD
    marketplaces: tuple[str, ...]


@dataclass(frozen=True)
class Claim:
    """A LOST/DAMAGED warehouse adjustment Amazon owes a reimbursement for (see the module doc)."""

    claim_id: str  # the ledger row's Reference ID
    seller_id: str
    kind: str  # "LOST" | "DAMAGED"
    seller_sku: str
    fnsku: str
    asin: str
    product_name: str
    quantity: int
    event_time: datetime
    fulfillment_center: str
    unit_value: Decimal  # what Amazon pays per unit, in USD

    @property
    def reason_code(self) -> str:
        return CLAIM_KINDS[self.kind][0]

    @property
    def reimbursement_reason(self) -> str:
        return CLAIM_KINDS[self.kind][1]


@dataclass
class SellerData:
    seller_id: str
    name: str
    marketplaces: tuple[str, ...]
    skus: list[Sku] = field(default_factory=list)
    #: marketplace id -> InventorySummary dicts (with inventoryDetails), sorted by sellerSku
    inventory: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    orders: list[dict[str, Any]] = field(default_factory=list)  # Orders 2026-01-01 Order, all datasets
    event_groups: list[dict[str, Any]] = field(default_factory=list)  # Finances v0 FinancialEventGroup
    #: Finances 2024-06-19 Transaction without transactionStatus (see World.transactions), by postedDate
    transactions: list[dict[str, Any]] = field(default_factory=list)
    reimbursements: list[dict[str, str]] = field(default_factory=list)  # REIMBURSEMENT_COLUMNS rows
    ledger: list[dict[str, str]] = field(default_factory=list)  # LEDGER_COLUMNS rows
    claims: list[Claim] = field(default_factory=list)
    #: claim id -> reimbursement-id of the row that pays it
    claim_reimbursements: dict[str, str] = field(default_factory=dict)


def transaction_status(txn: dict[str, Any], as_of: datetime) -> str:
    for ctx in txn.get("contexts", ()):
        if ctx.get("contextType") == "DeferredContext":
            return "DEFERRED" if ctx["maturityDate"] > fmt_s(as_of) else "DEFERRED_RELEASED"
    return "RELEASED"


class World:
    """Seeded data of the sandbox's sellers (build with :func:`.seed.build_world`).

    Mutations (:meth:`reimburse`) take :attr:`lock`; the sandbox reads under the same lock.
    """

    def __init__(self, seed: int, anchor: datetime, sellers: dict[str, SellerData], id_source: Callable[[str], str]):
        self.seed = seed
        #: the end of the generated history: nothing is posted, created or approved after it
        self.anchor = anchor
        self.sellers = sellers
        self.lock = threading.RLock()
        self._new_id = id_source

    @property
    def seller_ids(self) -> list[str]:
        return list(self.sellers)

    def seller(self, seller_id: str) -> SellerData:
        try:
            return self.sellers[seller_id]
        except KeyError:
            raise KeyError(f"unknown seller {seller_id!r}; known: {self.seller_ids}") from None

    # ------------------------------------------------------------------ reads

    def transactions(self, seller_id: str, as_of: datetime) -> list[dict[str, Any]]:
        """The seller's transactions as listTransactions answers them at ``as_of`` (status resolved)."""
        with self.lock:
            return [{**t, "transactionStatus": transaction_status(t, as_of)} for t in self.seller(seller_id).transactions]

    def claims(self, seller_id: str) -> list[Claim]:
        return list(self.seller(seller_id).claims)

    def unreimbursed_claims(self, seller_id: str) -> list[Claim]:
        with self.lock:
            data = self.seller(seller_id)
            return [c for c in data.claims if c.claim_id not in data.claim_reimbursements]

    def reimbursed_claims(self, seller_id: str) -> list[Claim]:
        with self.lock:
            data = self.seller(seller_id)
            return [c for c in data.claims if c.claim_id in data.claim_reimbursements]

    def reimbursement_rows(self, seller_id: str, start: datetime, end: datetime) -> list[dict[str, str]]:
        """GET_FBA_REIMBURSEMENTS_DATA rows approved in ``[start, end]`` (all marketplaces of the region)."""
        with self.lock:
            rows = self.seller(seller_id).reimbursements
            return [r for r in rows if start <= parse_reimbursement_time(r["approval-date"]) <= end]

    def ledger_rows(self, seller_id: str, start: datetime, end: datetime) -> list[dict[str, str]]:
        """GET_LEDGER_DETAIL_VIEW_DATA rows whose event time is in ``[start, end]``."""
        with self.lock:
            rows = self.seller(seller_id).ledger
            return [r for r in rows if start <= parse_ledger_time(r["Date and Time"]) <= end]

    def event_groups(self, seller_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(self.seller(seller_id).event_groups)

    # ------------------------------------------------------------------ changes

    def reimburse(self, seller_id: str, claim_id: str, when: datetime) -> dict[str, str]:
        """Amazon approves a cash reimbursement for an open claim at ``when``: adds the report row and
        its FBA Inventory Reimbursement transaction (in the open event group of its currency)."""
        from .seed import reimbursement_row, reimbursement_transaction  # the generator owns the shapes

        with self.lock:
            data = self.seller(seller_id)
            claim = next((c for c in data.claims if c.claim_id == claim_id), None)
            if claim is None:
                raise KeyError(f"seller {seller_id} has no claim {claim_id!r}")
            if claim_id in data.claim_reimbursements:
                raise ValueError(f"claim {claim_id} is already reimbursed")
            row = reimbursement_row(self._new_id("reimbursement"), claim, when, cash=True)
            data.reimbursements.append(row)
            data.claim_reimbursements[claim_id] = row["reimbursement-id"]
            group = self._open_group(data, "USD")
            txn = reimbursement_transaction(self._new_id("transaction"), seller_id, row, when, group)
            data.transactions.append(txn)
            if group is not None:
                total = group["OriginalTotal"]
                total["CurrencyAmount"] = money(Decimal(str(total["CurrencyAmount"])) + Decimal(row["amount-total"]))
            return dict(row)

    @staticmethod
    def _open_group(data: SellerData, currency: str) -> dict[str, Any] | None:
        return next(
            (g for g in data.event_groups if g["ProcessingStatus"] == "Open" and g["OriginalTotal"]["CurrencyCode"] == currency),
            None,
        )

    # ------------------------------------------------------------------ identity

    def fingerprint(self) -> str:
        """SHA-256 of every seller's data: equal for equal (seed, scale, anchor, sellers)."""
        digest = hashlib.sha256()
        with self.lock:
            for chunk in self._chunks():
                digest.update(chunk)
        return digest.hexdigest()

    def _chunks(self) -> Iterator[bytes]:
        opts = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
        for sid, data in self.sellers.items():
            for f in dataclasses.fields(data):
                value = getattr(data, f.name)
                if f.name in ("skus", "claims"):
                    value = [dataclasses.asdict(v) for v in value]
                yield orjson.dumps({sid: {f.name: value}}, option=opts, default=str)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Sizes per seller (the CLI banner and the admin API)."""
        with self.lock:
            return {
                sid: {
                    "name": d.name,
                    "marketplaces": list(d.marketplaces),
                    "skus": len(d.skus),
                    "inventory": {mp: len(v) for mp, v in d.inventory.items()},
                    "orders": len(d.orders),
                    "event_groups": len(d.event_groups),
                    "transactions": len(d.transactions),
                    "reimbursements": len(d.reimbursements),
                    "ledger_rows": len(d.ledger),
                    "claims": len(d.claims),
                    "unreimbursed_claims": len(d.claims) - len(d.claim_reimbursements),
                }
                for sid, d in self.sellers.items()
            }
