"""Deterministic generation of the sandbox sellers' year of data (:func:`build_world`).

The same ``(seed, scale, anchor, sellers)`` gives the same :class:`~.world.World`, byte for byte
(:meth:`~.world.World.fingerprint`): every part of a seller draws from its own
``random.Random("<seed>:<seller>:<part>")`` (string seeds hash the same in every process).
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Callable, Iterable, Sequence

from .common import MARKETPLACES, UTC, fmt_s, money
from .world import Claim, SellerData, Sku, World, reimbursement_time

__all__ = ["DEFAULT_SELLERS", "SCALES", "SellerSpec", "build_world", "default_anchor"]

#: SKUs per seller for each named size.
SCALES: dict[str, int] = {"full": 2000, "small": 100, "tiny": 12}
HISTORY_DAYS = 365
GROUP_DAYS = 14  # settlement period of a financial event group
ORDERS_PER_SKU = 2.0  # per year
CAD_PER_USD = Decimal("1.35")
COMMISSION = Decimal("0.15")  # referral fee share of the item price
REFUNDED_COMMISSION = Decimal("0.8")  # share of the commission a refund gives back
FBA_FEE = Decimal("3.22")  # per unit
REIMBURSED_SHARE = Decimal("0.6")  # Amazon pays this share of the list price per lost unit
CENT = Decimal("0.01")
FULFILLMENT_CENTERS = {"US": ("PHX7", "ONT8", "MDW2", "BFI4", "TPA2", "CLT2"), "CA": ("YYZ4", "YVR3")}
_ADJECTIVES = ("Compact", "Deluxe", "Rugged", "Classic", "Portable", "Organic", "Smart", "Crème", "Ultra", "Vintage")
_NOUNS = ("Water Bottle", "Desk Lamp", "Yoga Mat", "Phone Case", "Coffee Grinder", "Backpack", "Tea Set", "Notebook", "Headphones", "Cutting Board")
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@dataclass(frozen=True)
class SellerSpec:
    name: str
    marketplaces: tuple[str, ...]
    seller_id: str | None = None  # default: derived from the seed
    #: share of order payments held under the DD+7 policy (released 7 days after shipping)
    deferred_share: float = 0.2


DEFAULT_SELLERS: tuple[SellerSpec, ...] = (
    SellerSpec("Sandbox Outdoor Goods", ("ATVPDKIKX0DER",)),
    SellerSpec("Sandbox Home & Kitchen", ("ATVPDKIKX0DER", "A2EUQ1WTGCTBG2"), deferred_share=1.0),
)


def default_anchor(now: datetime) -> datetime:
    """The start of the current UTC day: a world built twice the same day is the same world."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


class Ids:
    """Unique ids of one random stream (collisions are redrawn)."""

    def __init__(self, rng: random.Random, used: set[str]) -> None:
        self.rng = rng
        self.used = used  # shared by all streams of a world: ids never repeat across sellers

    def _unique(self, make: Callable[[], str]) -> str:
        while (value := make()) in self.used:
            pass
        self.used.add(value)
        return value

    def digits(self, n: int) -> str:
        return self._unique(lambda: str(self.rng.randrange(10 ** (n - 1), 10**n)))

    def alnum(self, n: int, prefix: str = "") -> str:
        return self._unique(lambda: prefix + "".join(self.rng.choices(_ALNUM, k=n)))

    def token(self) -> str:
        """43 url-safe characters, like transaction and event group ids."""
        return self._unique(lambda: base64.urlsafe_b64encode(self.rng.randbytes(32)).decode().rstrip("="))

    def order_id(self, marketplace: str) -> str:
        head = "70" + str(self.rng.randint(1, 2)) if MARKETPLACES[marketplace][0] == "CA" else "11" + str(self.rng.randint(1, 4))
        return self._unique(lambda: f"{head}-{self.rng.randrange(10**6, 10**7)}-{self.rng.randrange(10**6, 10**7)}")

    def kind(self, kind: str) -> str:
        """A new id of a record kind the sandbox adds at run time."""
        return self.token() if kind == "transaction" else self.digits(10)


# --------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------


def build_world(
    seed: int = 0,
    scale: str | int = "small",
    anchor: datetime | None = None,
    sellers: Sequence[SellerSpec] = DEFAULT_SELLERS,
) -> World:
    """Generate the sellers' data: ``scale`` is a name of :data:`SCALES` or SKUs per seller."""
    n_skus = SCALES[scale] if isinstance(scale, str) else int(scale)
    if n_skus < 4:
        raise ValueError("scale must give at least 4 SKUs per seller")
    anchor = default_anchor(datetime.now(UTC)) if anchor is None else anchor.astimezone(UTC)
    used: set[str] = set()
    runtime = Ids(random.Random(f"{seed}:runtime"), used)
    data: dict[str, SellerData] = {}
    for index, spec in enumerate(sellers):
        seller = _build_seller(seed, index, spec, n_skus, anchor, used)
        data[seller.seller_id] = seller
    return World(seed, anchor, data, runtime.kind)


def _build_seller(seed: int, index: int, spec: SellerSpec, n_skus: int, anchor: datetime, used: set[str]) -> SellerData:
    def rng(part: str) -> random.Random:
        return random.Random(f"{seed}:{index}:{part}")

    seller_id = spec.seller_id or Ids(rng("seller-id"), used).alnum(13, prefix="A")
    data = SellerData(seller_id, spec.name, tuple(spec.marketplaces))
    ids = Ids(rng("ids"), used)
    start = anchor - timedelta(days=HISTORY_DAYS)
    data.skus = _skus(rng("skus"), ids, n_skus, data.marketplaces)
    data.orders, shipped = _orders(rng("orders"), ids, data.skus, data.marketplaces, start, anchor)
    data.event_groups = _group_periods(rng("groups"), ids, data.marketplaces, start, anchor)
    ledger = _Ledger(rng("ledger"), ids, start, anchor)
    ledger.receipts(data.skus)
    for sale in shipped:
        ledger.sale(sale)
    data.claims = ledger.claims(seller_id, data.skus, rng("claims"))
    ledger.found(data.skus, {c.fnsku for c in data.claims})
    payouts = _Reimbursements(rng("reimbursements"), ids, anchor)
    payouts.for_claims(data.claims, data.claim_reimbursements)
    payouts.for_unreturned(shipped, ledger.unreturned)
    data.reimbursements = sorted(payouts.rows, key=lambda r: r["approval-date"])
    data.ledger = sorted(ledger.rows, key=lambda r: r["Date and Time"])
    data.inventory = _inventory(rng("inventory"), data.skus, data.marketplaces, ledger.last_event, start)
    data.transactions = _transactions(rng("transactions"), ids, seller_id, data, shipped, payouts, anchor, spec.deferred_share)
    _settle_groups(data.event_groups, data.transactions)
    return data


# --------------------------------------------------------------------------------------
# Catalog and inventory
# --------------------------------------------------------------------------------------


def _skus(rng: random.Random, ids: Ids, n: int, marketplaces: tuple[str, ...]) -> list[Sku]:
    skus = []
    for i in range(n):
        adjective, noun = rng.choice(_ADJECTIVES), rng.choice(_NOUNS)
        code = "".join(w[:3].upper() for w in noun.split())
        # a few SKUs with characters a client must URL-encode, as real seller SKUs have
        seller_sku = f"{code} {i:05d}" if i % 25 == 7 else f"{code}+{i:05d}/B" if i % 25 == 13 else f"{code}-{i:05d}"
        # every SKU sells in the first marketplace; about a third also in the others
        listed = marketplaces[:1] + tuple(mp for mp in marketplaces[1:] if rng.random() < 0.35)
        skus.append(
            Sku(
                seller_sku=seller_sku,
                fnsku=ids.alnum(7, prefix="X00"),
                asin=ids.alnum(8, prefix="B0"),
                product_name=f"{adjective} {noun}, {rng.choice(('Black', 'Blue', 'Green', 'Natural', 'Red'))}, Size {rng.randint(1, 5)}",
                price=Decimal(rng.randint(599, 12999)) / 100,
                marketplaces=listed,
            )
        )
    return sorted(skus, key=lambda s: s.seller_sku)


def _inventory(
    rng: random.Random, skus: list[Sku], marketplaces: tuple[str, ...], last_event: dict[str, datetime], start: datetime
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {mp: [] for mp in marketplaces}
    for sku in skus:
        for mp in sku.marketplaces:
            out[mp].append(_inventory_summary(rng, sku, mp, last_event.get(sku.fnsku, start)))
    return out


_QUANTITIES = ("working", "shipped", "receiving", "pending", "transship", "fc", "customer", "warehouse", "defective")


def _inventory_summary(rng: random.Random, sku: Sku, marketplace: str, updated: datetime) -> dict[str, Any]:
    q = {k: rng.choice((0, 0, rng.randint(1, 40))) for k in _QUANTITIES}
    fulfillable = rng.randint(0, 400)
    researching = rng.choice((0, 0, 0, rng.randint(1, 5)))
    reserved = q["pending"] + q["transship"] + q["fc"]
    unfulfillable = q["customer"] + q["warehouse"] + q["defective"]
    details = {
        "fulfillableQuantity": fulfillable,
        "inboundWorkingQuantity": q["working"],
        "inboundShippedQuantity": q["shipped"],
        "inboundReceivingQuantity": q["receiving"],
        "reservedQuantity": {
            "totalReservedQuantity": reserved,
            "pendingCustomerOrderQuantity": q["pending"],
            "pendingTransshipmentQuantity": q["transship"],
            "fcProcessingQuantity": q["fc"],
        },
        "researchingQuantity": {
            "totalResearchingQuantity": researching,
            "researchingQuantityBreakdown": [{"name": "researchingQuantityInShortTerm", "quantity": researching}] if researching else [],
        },
        "unfulfillableQuantity": {
            "totalUnfulfillableQuantity": unfulfillable,
            "customerDamagedQuantity": q["customer"],
            "warehouseDamagedQuantity": q["warehouse"],
            "distributorDamagedQuantity": 0,
            "carrierDamagedQuantity": 0,
            "defectiveQuantity": q["defective"],
            "expiredQuantity": 0,
        },
    }
    total = fulfillable + q["working"] + q["shipped"] + q["receiving"] + reserved + researching + unfulfillable
    return {
        "asin": sku.asin,
        "fnSku": sku.fnsku,
        "sellerSku": sku.seller_sku,
        "condition": "NewItem",
        "inventoryDetails": details,
        "lastUpdatedTime": fmt_s(updated),
        "productName": sku.product_name,
        "totalQuantity": total,
    }


# --------------------------------------------------------------------------------------
# Orders (Orders API 2026-01-01 shape)
# --------------------------------------------------------------------------------------


@dataclass
class Sale:
    """One order as the finance and ledger generators see it."""

    order_id: str
    marketplace: str
    afn: bool
    lines: list[tuple[Sku, int, Decimal]]  # (sku, quantity, unit price in the marketplace currency)
    shipped_at: datetime | None
    refunded_at: datetime | None

    @property
    def currency(self) -> str:
        return MARKETPLACES[self.marketplace][1]


def _price(sku: Sku, marketplace: str) -> Decimal:
    usd = sku.price
    return (usd * CAD_PER_USD).quantize(Decimal("0.01")) if MARKETPLACES[marketplace][1] == "CAD" else usd


def _orders(
    rng: random.Random, ids: Ids, skus: list[Sku], marketplaces: tuple[str, ...], start: datetime, anchor: datetime
) -> tuple[list[dict[str, Any]], list[Sale]]:
    by_mp = {mp: [s for s in skus if mp in s.marketplaces] for mp in marketplaces}
    span = (anchor - start).total_seconds()
    orders, sales = [], []
    for _ in range(int(len(skus) * ORDERS_PER_SKU)):
        mp = marketplaces[0] if rng.random() < 0.8 or len(marketplaces) == 1 else rng.choice(marketplaces[1:])
        created = start + timedelta(seconds=rng.uniform(0, span - 600))
        lines = [(s, rng.choice((1, 1, 1, 2, 3)), _price(s, mp)) for s in rng.sample(by_mp[mp], min(len(by_mp[mp]), rng.choice((1, 1, 1, 2, 3))))]
        sale = Sale(ids.order_id(mp), mp, rng.random() < 0.85, lines, None, None)
        status, updated = _order_timeline(rng, sale, created, anchor)
        orders.append(_order(rng, ids, sale, created, updated, status))
        sales.append(sale)
    orders.sort(key=lambda o: (o["createdTime"], o["orderId"]))
    return orders, [s for s in sales if s.shipped_at is not None]


def _order_timeline(rng: random.Random, sale: Sale, created: datetime, anchor: datetime) -> tuple[str, datetime]:
    """Status and last update: ships within 4-36 h, 5% cancel, 6% of shipped ones are refunded later."""
    if rng.random() < 0.05:
        return "CANCELLED", min(anchor, created + timedelta(hours=rng.uniform(0.1, 6)))
    shipped = created + timedelta(hours=rng.uniform(4, 36))
    if shipped >= anchor:
        return "UNSHIPPED", min(anchor, created + timedelta(minutes=rng.uniform(1, 30)))
    sale.shipped_at = shipped
    refund = shipped + timedelta(days=rng.uniform(5, 30))
    if rng.random() < 0.06 and refund < anchor:
        sale.refunded_at = refund
        return "SHIPPED", refund
    return "SHIPPED", shipped


def _money(amount: Decimal, currency: str) -> dict[str, str]:
    return {"amount": f"{amount:.2f}", "currencyCode": currency}


def _order(rng: random.Random, ids: Ids, sale: Sale, created: datetime, updated: datetime, status: str) -> dict[str, Any]:
    cur = sale.currency
    items, total = [], Decimal(0)
    for sku, qty, unit in sale.lines:
        line = unit * qty
        total += line
        done = qty if status == "SHIPPED" else 0
        items.append(
            {
                "orderItemId": ids.digits(14),
                "quantityOrdered": qty,
                "product": {
                    "asin": sku.asin,
                    "title": sku.product_name,
                    "sellerSku": sku.seller_sku,
                    "condition": {"conditionType": "New", "conditionSubtype": "New"},
                    "price": {"unitPrice": _money(unit, cur)},
                },
                "proceeds": {"proceedsTotal": _money(line, cur), "breakdowns": [{"type": "ITEM", "subtotal": _money(line, cur)}]},
                "fulfillment": {"quantityFulfilled": done, "quantityUnfulfilled": qty - done},
            }
        )
    name = MARKETPLACES[sale.marketplace][2]
    return {
        "orderId": sale.order_id,
        "orderAliases": [{"aliasId": f"SO-{ids.digits(8)}", "aliasType": "SELLER_ORDER_ID"}],
        "createdTime": fmt_s(created),
        "lastUpdatedTime": fmt_s(updated),
        "programs": ["PRIME"] if sale.afn and rng.random() < 0.6 else [],
        "salesChannel": {"channelName": "AMAZON", "marketplaceId": sale.marketplace, "marketplaceName": name},
        "buyer": {"buyerEmail": f"{ids.alnum(12).lower()}@marketplace.amazon.com"},
        "proceeds": {"grandTotal": _money(total, cur), "breakdowns": [{"type": "ITEM", "subtotal": _money(total, cur)}]},
        "fulfillment": {
            "fulfillmentStatus": status,
            "fulfilledBy": "AMAZON" if sale.afn else "MERCHANT",
            "fulfillmentServiceLevel": rng.choice(("STANDARD", "STANDARD", "EXPEDITED")),
        },
        "orderItems": items,
    }


# --------------------------------------------------------------------------------------
# Ledger (GET_LEDGER_DETAIL_VIEW_DATA) and claims
# --------------------------------------------------------------------------------------


def _ledger_row(sku: Sku, when: datetime, event: str, ref: str, qty: int, fc: str, disposition: str, reason: str = "") -> dict[str, str]:
    country = next((c for c, fcs in FULFILLMENT_CENTERS.items() if fc in fcs), "US")
    return {
        "Date": when.strftime("%m/%d/%Y"),
        "FNSKU": sku.fnsku,
        "ASIN": sku.asin,
        "MSKU": sku.seller_sku,
        "Title": sku.product_name,
        "Event Type": event,
        "Reference ID": ref,
        "Quantity": str(qty),
        "Fulfillment Center": fc,
        "Disposition": disposition,
        "Reason": reason,
        "Country": country,
        "Reconciled Quantity": "",
        "Unreconciled Quantity": "",
        "Date and Time": when.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class _Ledger:
    def __init__(self, rng: random.Random, ids: Ids, start: datetime, anchor: datetime) -> None:
        self.rng, self.ids, self.start, self.anchor = rng, ids, start, anchor
        self.rows: list[dict[str, str]] = []
        self.last_event: dict[str, datetime] = {}
        self.unreturned: list[tuple[Sale, Sku, int]] = []  # refunded AFN units never sent back

    def _add(self, sku: Sku, when: datetime, *args: Any) -> None:
        self.rows.append(_ledger_row(sku, when, *args))
        self.last_event[sku.fnsku] = max(when, self.last_event.get(sku.fnsku, when))

    def _fc(self, country: str = "US") -> str:
        return self.rng.choice(FULFILLMENT_CENTERS[country])

    def _when(self, lo: datetime) -> datetime:
        return lo + timedelta(seconds=self.rng.uniform(0, (self.anchor - lo).total_seconds() - 60))

    def receipts(self, skus: list[Sku]) -> None:
        for sku in skus:
            for _ in range(self.rng.randint(2, 4)):
                self._add(sku, self._when(self.start), "Receipts", self.ids.alnum(8, "FBA1"), self.rng.randint(24, 120), self._fc(), "SELLABLE")

    def sale(self, sale: Sale) -> None:
        if not sale.afn or sale.shipped_at is None:
            return
        country = MARKETPLACES[sale.marketplace][0]
        shipment = self.ids.alnum(9, "D")
        for sku, qty, _ in sale.lines:
            self._add(sku, sale.shipped_at, "Shipments", shipment, -qty, self._fc(country), "SELLABLE")
            if sale.refunded_at is None:
                continue
            if self.rng.random() < 0.6:
                disposition = "SELLABLE" if self.rng.random() < 0.8 else "CUSTOMER_DAMAGED"
                self._add(sku, sale.refunded_at, "CustomerReturns", sale.order_id, qty, self._fc(country), disposition)
            else:
                self.unreturned.append((sale, sku, qty))

    def claims(self, seller_id: str, skus: list[Sku], rng: random.Random) -> list[Claim]:
        """LOST/DAMAGED adjustments on distinct SKUs (one claim per FNSKU keeps matching unambiguous)."""
        count = min(max(4, len(skus) // 20), len(skus) // 2)
        claims = []
        for i, sku in enumerate(rng.sample(skus, count)):
            kind = "LOST" if i % 2 == 0 else "DAMAGED"
            when = self.start + timedelta(days=10) + timedelta(seconds=rng.uniform(0, (self.anchor - self.start).total_seconds() - 11 * 86400))
            claim = Claim(
                claim_id=self.ids.digits(11), seller_id=seller_id, kind=kind, seller_sku=sku.seller_sku, fnsku=sku.fnsku,
                asin=sku.asin, product_name=sku.product_name, quantity=rng.randint(1, 4), event_time=when,
                fulfillment_center=self._fc(), unit_value=(sku.price * REIMBURSED_SHARE).quantize(CENT),
            )
            code = claim.reason_code
            self._add(sku, when, "Adjustments", claim.claim_id, -claim.quantity, claim.fulfillment_center, "SELLABLE", code)
            if kind == "DAMAGED":  # the units move to the damaged disposition
                self._add(sku, when, "Adjustments", claim.claim_id, claim.quantity, claim.fulfillment_center, "WAREHOUSE_DAMAGED", code)
            claims.append(claim)
        return sorted(claims, key=lambda c: c.event_time)

    def found(self, skus: list[Sku], claimed: set[str]) -> None:
        for sku in self.rng.sample([s for s in skus if s.fnsku not in claimed], max(1, len(skus) // 40)):
            self._add(sku, self._when(self.start), "Adjustments", self.ids.digits(11), self.rng.randint(1, 3), self._fc(), "SELLABLE", "F")


# --------------------------------------------------------------------------------------
# Reimbursements (GET_FBA_REIMBURSEMENTS_DATA)
# --------------------------------------------------------------------------------------


def reimbursement_row(reimbursement_id: str, claim: Claim, when: datetime, *, cash: bool, case_id: str = "") -> dict[str, str]:
    """The report row paying ``claim`` in full, in cash or in replacement units."""
    q = claim.quantity
    return _row(
        when, reimbursement_id, case_id, "", claim.reimbursement_reason, claim.seller_sku, claim.fnsku, claim.asin,
        claim.product_name, "USD", claim.unit_value, q if cash else 0, 0 if cash else q,
    )


def _row(
    when: datetime, rid: str, case_id: str, order_id: str, reason: str, sku: str, fnsku: str, asin: str, name: str,
    currency: str, per_unit: Decimal, cash: int, inventory: int, original: tuple[str, str] = ("", ""),
) -> dict[str, str]:
    return {
        "approval-date": reimbursement_time(when),
        "reimbursement-id": rid,
        "case-id": case_id,
        "amazon-order-id": order_id,
        "reason": reason,
        "sku": sku,
        "fnsku": fnsku,
        "asin": asin,
        "product-name": name,
        "condition": "New",
        "currency-unit": currency,
        "amount-per-unit": f"{per_unit:.2f}",
        "amount-total": f"{per_unit * cash:.2f}",
        "quantity-reimbursed-cash": str(cash),
        "quantity-reimbursed-inventory": str(inventory),
        "quantity-reimbursed-total": str(cash + inventory),
        "original-reimbursement-id": original[0],
        "original-reimbursement-type": original[1],
    }


class _Reimbursements:
    def __init__(self, rng: random.Random, ids: Ids, anchor: datetime) -> None:
        self.rng, self.ids, self.anchor = rng, ids, anchor
        self.rows: list[dict[str, str]] = []
        #: cash rows, each posting a finance transaction: (row, marketplace)
        self.cash: list[tuple[dict[str, str], str]] = []

    def for_claims(self, claims: list[Claim], paid: dict[str, str]) -> None:
        """Claim i: i % 5 == 0 stays open; the rest are paid 5-45 days later unless that is still ahead
        (pending); i % 5 == 4 is paid in replacement units."""
        for i, claim in enumerate(sorted(claims, key=lambda c: c.claim_id)):
            when = claim.event_time + timedelta(days=self.rng.uniform(5, 45))
            if i % 5 == 0 or when >= self.anchor:
                continue
            cash = i % 5 != 4
            case_id = self.ids.digits(11) if self.rng.random() < 0.3 else ""
            row = reimbursement_row(self.ids.digits(10), claim, when, cash=cash, case_id=case_id)
            self.rows.append(row)
            paid[claim.claim_id] = row["reimbursement-id"]
            if cash:
                self.cash.append((row, "ATVPDKIKX0DER"))

    def for_unreturned(self, sales: Iterable[Sale], unreturned: list[tuple[Sale, Sku, int]]) -> None:
        """Refunded units the customer kept: a CustomerReturn reimbursement 30-60 days on (the first
        one later reversed), and a CustomerServiceIssue for about 1% of shipments."""
        reversed_one = False
        for sale, sku, qty in unreturned:
            when = sale.refunded_at + timedelta(days=self.rng.uniform(30, 60))  # type: ignore[operator]
            if when >= self.anchor:
                continue
            row = self._sale_row(when, sale, sku, "CustomerReturn", qty)
            if not reversed_one and when + timedelta(days=20) < self.anchor:
                reversed_one = True
                self._reversal(when + timedelta(days=20), sale, sku, row)
        for sale in sales:
            when = sale.shipped_at + timedelta(days=self.rng.uniform(10, 40))  # type: ignore[operator]
            if sale.afn and self.rng.random() < 0.01 and when < self.anchor:
                sku, qty, _ = sale.lines[0]
                self._sale_row(when, sale, sku, "CustomerServiceIssue", qty)

    def _sale_row(self, when: datetime, sale: Sale, sku: Sku, reason: str, qty: int) -> dict[str, str]:
        per_unit = (_price(sku, sale.marketplace) * REIMBURSED_SHARE).quantize(CENT)
        row = _row(
            when, self.ids.digits(10), "", sale.order_id, reason, sku.seller_sku, sku.fnsku, sku.asin, sku.product_name,
            sale.currency, per_unit, qty, 0,
        )
        self.rows.append(row)
        self.cash.append((row, sale.marketplace))
        return row

    def _reversal(self, when: datetime, sale: Sale, sku: Sku, original: dict[str, str]) -> None:
        cash = int(original["quantity-reimbursed-cash"])
        row = _row(
            when, self.ids.digits(10), "", sale.order_id, "Reimbursement_Reversal", sku.seller_sku, sku.fnsku, sku.asin,
            sku.product_name, sale.currency, -Decimal(original["amount-per-unit"]), cash, 0,
            (original["reimbursement-id"], original["reason"]),
        )
        row["quantity-reimbursed-cash"] = row["quantity-reimbursed-total"] = str(-cash)
        self.rows.append(row)
        self.cash.append((row, sale.marketplace))


# --------------------------------------------------------------------------------------
# Finances: event groups (v0) and transactions (2024-06-19)
# --------------------------------------------------------------------------------------


def _currency(amount: Decimal, code: str) -> dict[str, Any]:
    return {"currencyCode": code, "currencyAmount": money(amount)}


def _bd(kind: str, amount: Decimal, code: str, children: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"breakdownType": kind, "breakdownAmount": _currency(amount, code), "breakdowns": list(children)}


def _group_periods(rng: random.Random, ids: Ids, marketplaces: tuple[str, ...], start: datetime, anchor: datetime) -> list[dict[str, Any]]:
    """14-day settlement periods per currency; the one holding the anchor is Open."""
    groups = []
    for code in dict.fromkeys(MARKETPLACES[mp][1] for mp in marketplaces):
        tail, begin = str(rng.randint(100, 999)), start
        while begin < anchor:
            end = begin + timedelta(days=GROUP_DAYS)
            group: dict[str, Any] = {
                "FinancialEventGroupId": ids.token(),
                "ProcessingStatus": "Open" if end > anchor else "Closed",
                "OriginalTotal": {"CurrencyCode": code, "CurrencyAmount": 0.0},
                "BeginningBalance": {"CurrencyCode": code, "CurrencyAmount": 0.0},
                "FinancialEventGroupStart": fmt_s(begin),
            }
            if end <= anchor:
                group |= {
                    "FundTransferStatus": "Succeeded",
                    "ConvertedTotal": {"CurrencyCode": code, "CurrencyAmount": 0.0},
                    "FundTransferDate": fmt_s(end + timedelta(hours=rng.uniform(20, 30))),
                    "TraceId": ids.alnum(14),
                    "AccountTail": tail,
                    "FinancialEventGroupEnd": fmt_s(end),
                }
            groups.append(group)
            begin = end
    return sorted(groups, key=lambda g: (g["FinancialEventGroupStart"], g["OriginalTotal"]["CurrencyCode"]))


def _settle_groups(groups: list[dict[str, Any]], transactions: list[dict[str, Any]]) -> None:
    """Totals from the transactions of each group (transfers settle the balance: beginning 0)."""
    totals: dict[str, Decimal] = {}
    for txn in transactions:
        gid = _related(txn, "FINANCIAL_EVENT_GROUP_ID")
        if gid is None:
            continue
        totals[gid] = totals.get(gid, Decimal(0)) + Decimal(str(txn["totalAmount"]["currencyAmount"]))
    for group in groups:
        amount = money(totals.get(group["FinancialEventGroupId"], Decimal(0)))
        group["OriginalTotal"]["CurrencyAmount"] = amount
        if "ConvertedTotal" in group:
            group["ConvertedTotal"]["CurrencyAmount"] = amount


def _related(txn: dict[str, Any], name: str) -> str | None:
    return next((r["relatedIdentifierValue"] for r in txn["relatedIdentifiers"] if r["relatedIdentifierName"] == name), None)


def _group_for(groups: list[dict[str, Any]], code: str, when: datetime) -> dict[str, Any] | None:
    stamp = fmt_s(when)
    found = None
    for g in groups:
        if g["OriginalTotal"]["CurrencyCode"] == code and g["FinancialEventGroupStart"] <= stamp:
            found = g
    return found


def _txn(
    tid: str, seller_id: str, marketplace: str, kind: str, description: str, when: datetime, total: Decimal,
    breakdowns: list[dict[str, Any]], group: dict[str, Any] | None, related: Sequence[tuple[str, str]] = (),
    items: list[dict[str, Any]] | None = None, contexts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    code = MARKETPLACES[marketplace][1]
    ids = [{"relatedIdentifierName": n, "relatedIdentifierValue": v} for n, v in related]
    if group is not None:
        ids.append({"relatedIdentifierName": "FINANCIAL_EVENT_GROUP_ID", "relatedIdentifierValue": group["FinancialEventGroupId"]})
    txn: dict[str, Any] = {
        "sellingPartnerMetadata": {"sellingPartnerId": seller_id, "accountType": "Standard Orders", "marketplaceId": marketplace},
        "relatedIdentifiers": ids,
        "transactionType": kind,
        "transactionId": tid,
        "description": description,
        "postedDate": fmt_s(when),
        "totalAmount": _currency(total, code),
        "marketplaceDetails": {"marketplaceId": marketplace, "marketplaceName": MARKETPLACES[marketplace][2]},
        "items": items or [],
        "breakdowns": breakdowns,
    }
    if contexts:
        txn["contexts"] = contexts
    return txn


def _product_context(asin: str, sku: str, quantity: int, afn: bool) -> dict[str, Any]:
    return {"contextType": "ProductContext", "asin": asin, "sku": sku, "quantityShipped": quantity, "fulfillmentNetwork": "AFN" if afn else "MFN"}


def _sale_items(sale: Sale, sign: int, fees: dict[str, Decimal]) -> list[dict[str, Any]]:
    code = sale.currency
    items = []
    for sku, qty, unit in sale.lines:
        principal = sign * unit * qty
        fee = fees[sku.fnsku]
        items.append(
            {
                "description": sku.product_name,
                "totalAmount": _currency(principal + fee, code),
                "breakdowns": [_bd("Product Charges", principal, code), _bd("Amazon Fees", fee, code)],
                "contexts": [_product_context(sku.asin, sku.seller_sku, qty, sale.afn)],
            }
        )
    return items


def _shipment(ids: Ids, rng: random.Random, seller_id: str, sale: Sale, groups: list[dict[str, Any]], deferred_share: float) -> dict[str, Any]:
    """Order Payment: sales minus commission (15%) and the FBA fee; ``deferred_share`` of them held 7 days (DD7)."""
    code, when = sale.currency, sale.shipped_at
    assert when is not None
    principal = sum((unit * qty for _, qty, unit in sale.lines), Decimal(0))
    commission = -(principal * COMMISSION).quantize(CENT)
    fba = -sum((FBA_FEE * qty for _, qty, _ in sale.lines), Decimal(0)) if sale.afn else Decimal(0)
    fees = {sku.fnsku: -(unit * qty * COMMISSION).quantize(CENT) - (FBA_FEE * qty if sale.afn else 0) for sku, qty, unit in sale.lines}
    fee_parts = [_bd("Commission", commission, code)] + ([_bd("FBA Fulfillment Fee", fba, code)] if sale.afn else [])
    breakdowns = [
        _bd("Sales", principal, code, [_bd("Product Charges", principal, code)]),
        _bd("Expenses", commission + fba, code, [_bd("Amazon Fees", commission + fba, code, fee_parts)]),
    ]
    contexts = None
    if rng.random() < deferred_share:
        contexts = [{"contextType": "DeferredContext", "deferralReason": "DD7", "maturityDate": fmt_s(when + timedelta(days=7))}]
    total = principal + commission + fba
    return _txn(
        ids.token(), seller_id, sale.marketplace, "Shipment", "Order Payment", when, total, breakdowns,
        _group_for(groups, code, when), [("ORDER_ID", sale.order_id)], _sale_items(sale, 1, fees), contexts,
    )


def _refund(ids: Ids, seller_id: str, sale: Sale, groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Refund Order: the principal back to the buyer, 80% of the commission back to the seller."""
    code, when = sale.currency, sale.refunded_at
    assert when is not None
    principal = sum((unit * qty for _, qty, unit in sale.lines), Decimal(0))
    back = (principal * COMMISSION * REFUNDED_COMMISSION).quantize(CENT)
    fees = {sku.fnsku: (unit * qty * COMMISSION * REFUNDED_COMMISSION).quantize(CENT) for sku, qty, unit in sale.lines}
    breakdowns = [
        _bd("Sales", -principal, code, [_bd("Product Charges", -principal, code)]),
        _bd("Expenses", back, code, [_bd("Amazon Fees", back, code, [_bd("Refund Commission", back, code)])]),
    ]
    return _txn(
        ids.token(), seller_id, sale.marketplace, "Refund", "Refund Order", when, back - principal, breakdowns,
        _group_for(groups, code, when), [("ORDER_ID", sale.order_id), ("REFUND_ID", ids.digits(10))], _sale_items(sale, -1, fees),
    )


def _service_fees(ids: Ids, rng: random.Random, seller_id: str, data: SellerData, anchor: datetime) -> list[dict[str, Any]]:
    """Monthly subscription and storage fees, in the seller's first marketplace."""
    mp = data.marketplaces[0]
    code = MARKETPLACES[mp][1]
    out = []
    month = anchor.replace(day=2, hour=8, minute=0, second=0, microsecond=0)
    for _ in range(11):  # the last 11 months: all inside the year of history
        month = (month - timedelta(days=28)).replace(day=2)
        storage = -(Decimal(len(data.skus)) * Decimal(str(rng.uniform(0.05, 0.4)))).quantize(Decimal("0.01"))
        for description, amount in (("Subscription Fee", Decimal("-39.99")), ("FBA Inventory Storage Fee", storage)):
            out.append(
                _txn(ids.token(), seller_id, mp, "ServiceFee", description, month, amount,
                     [_bd("Expenses", amount, code, [_bd(description, amount, code)])], _group_for(data.event_groups, code, month))
            )
    return out


def reimbursement_transaction(
    tid: str, seller_id: str, row: dict[str, str], when: datetime, group: dict[str, Any] | None,
    marketplace: str = "ATVPDKIKX0DER",
) -> dict[str, Any]:
    """The FBA Inventory Reimbursement adjustment a cash reimbursement row posts."""
    amount = Decimal(row["amount-total"])
    code = row["currency-unit"]
    item = {
        "description": row["product-name"],
        "totalAmount": _currency(amount, code),
        "breakdowns": [_bd("FBA Inventory Reimbursement", amount, code)],
        "contexts": [_product_context(row["asin"], row["sku"], int(row["quantity-reimbursed-cash"]), afn=True)],
    }
    related = [("ORDER_ID", row["amazon-order-id"])] if row["amazon-order-id"] else []
    return _txn(
        tid, seller_id, marketplace, "Adjustment", f"FBA Inventory Reimbursement - {row['reason']}", when, amount,
        [_bd("FBA Inventory Reimbursement", amount, code)], group, related, [item],
    )


def _transactions(
    rng: random.Random, ids: Ids, seller_id: str, data: SellerData, sales: list[Sale], payouts: _Reimbursements,
    anchor: datetime, deferred_share: float,
) -> list[dict[str, Any]]:
    groups = data.event_groups
    out = [_shipment(ids, rng, seller_id, s, groups, deferred_share) for s in sales]
    out += [_refund(ids, seller_id, s, groups) for s in sales if s.refunded_at is not None]
    out += _service_fees(ids, rng, seller_id, data, anchor)
    for row, mp in payouts.cash:
        when = datetime.fromisoformat(row["approval-date"])
        out.append(reimbursement_transaction(ids.token(), seller_id, row, when, _group_for(groups, row["currency-unit"], when), mp))
    return sorted(out, key=lambda t: (t["postedDate"], t["transactionId"]))
