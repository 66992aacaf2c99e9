"""The seeded IRIS CRM world behind the sandbox: plain Python data, deterministic from
``(seed, merchants, today, timezone, processors)``.

* Merchants: mids are strings (some with leading zeros, most beyond int32), opened over many
  years, some closed or deactivated; ``first_batch``/``last_batch`` are the first and last day the
  merchant actually batched.
* Batches (one per terminal and business day the merchant batches) with a few transactions each,
  adjustments and chargebacks, from :data:`DATA_START` to the day before ``today``.  They are
  generated lazily per (merchant, month) from their own random stream, so a world of hundreds of
  merchants builds in milliseconds and a month only changes when the merchant's batch span does.
* Processors (with data sources, no ids in ``/processors``), monthly residual reports per
  processor (summary and merchant rows) and residual line items for every month from
  :data:`DATA_START` to last month.  Reports are published snapshots: their rows are the merchants
  as they were at seed time with figures derived from that month's transactions; only
  :meth:`IrisWorld.republish` changes a published month.

Every ``*_api``/``*_for`` method returns fresh dicts shaped exactly as the API serves them.
A merchant's served JSON (:meth:`Merchant.api_json`) and the matches of a ``/merchants`` query
(:meth:`IrisWorld.merchant_query`) are cached until a merchant changes (any attribute assignment)
or is added, so a page costs its slice and a join, not a scan of every merchant.
Mutations (:meth:`IrisWorld.close_merchant`, :meth:`~IrisWorld.add_merchant`,
:meth:`~IrisWorld.modify_merchant`, :meth:`~IrisWorld.republish`) only touch the current month or
later, so published months never change behind a reader's back.
"""

from __future__ import annotations

import calendar
import collections
import copy
import math
import random
import threading
import time
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any, Callable, Hashable, Iterator
from zoneinfo import ZoneInfo

import orjson

__all__ = [
    "AGENTS",
    "DATA_START",
    "DEFAULT_MERCHANTS",
    "DEFAULT_TIMEZONE",
    "GROUPS",
    "PROCESSORS",
    "USERS",
    "Datasource",
    "Group",
    "IrisWorld",
    "Merchant",
    "Processor",
    "ReportState",
    "User",
    "iso",
    "us_date",
]

#: The first day with batches, residual reports and line items.
DATA_START = date(2024, 4, 1)
#: The instance's timezone: created/modified carry its offset (observed ``-04:00``).
DEFAULT_TIMEZONE = "America/New_York"
DEFAULT_MERCHANTS = 300
ONE_DAY = timedelta(days=1)
_MONTH_CACHE = 4096  # generated (merchant, month)s kept; regenerating one is cheap and identical
_QUERY_CACHE = 32  # merchant list queries (filters and order) kept while no merchant changes
#: Bumped by every assignment to a :class:`Merchant` attribute: cached merchant queries are only
#: valid for the value they were computed at (a list, so the class can bump it in place).
_MERCHANT_EDITS = [0]


def us_date(d: date | None) -> str | None:
    """IRIS's ``MM/DD/YYYY`` (opened, closed, batch and transaction dates...)."""
    return None if d is None else d.strftime("%m/%d/%Y")


def iso(ts: datetime) -> str:
    """IRIS's ``Y-m-d\\TH:i:sP`` (created/modified): seconds, numeric offset, never ``Z``."""
    return ts.isoformat(timespec="seconds")


def money(cents: int) -> str:
    """Exact string money of merchants/transactions ("91.57", "-570.00")."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def month_bounds(year: int, month: int) -> tuple[date, date]:
    return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])


def next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def months_between(first: date, last: date) -> Iterator[tuple[int, int]]:
    y, m = first.year, first.month
    while (y, m) <= (last.year, last.month):
        yield y, m
        y, m = next_month(y, m)


def _first_business_day(d: date) -> date:
    while d.weekday() >= 5:
        d += ONE_DAY
    return d


def _last_business_day(d: date) -> date:
    while d.weekday() >= 5:
        d -= ONE_DAY
    return d


# --------------------------------------------------------------------------------------
# Reference data
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Datasource:
    id: int
    name: str


@dataclass(frozen=True)
class Processor:
    id: int
    name: str
    datasources: tuple[Datasource, ...]

    def api(self) -> dict[str, Any]:
        """An item of ``GET /processors``: the name and data sources, no processor id (as IRIS)."""
        return {"name": self.name, "datasources": [{"id": d.id, "name": d.name} for d in self.datasources]}


@dataclass(frozen=True)
class Group:
    id: int
    name: str


@dataclass(frozen=True)
class User:
    user_id: int
    username: str
    full_name: str
    class_name: str
    is_active: int

    def api(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "username": self.username, "full_name": self.full_name,
                "class": self.class_name, "is_active": self.is_active}


PROCESSORS: tuple[Processor, ...] = (
    Processor(3, "TSYS", (Datasource(11, "TSYS Direct"), Datasource(12, "TSYS Sierra"))),
    Processor(6, "First Data North", (Datasource(21, "FDN Portal"),)),
    Processor(7, "Elavon", (Datasource(31, "Elavon EU"), Datasource(32, "Elavon Fanfare"))),
)
GROUPS: tuple[Group, ...] = (Group(2, "Dublin Retail"), Group(4, "Cork Hospitality"), Group(5, "Online"), Group(8, "ISO Partners"))
#: User 1 owns the API keys (created_by/modified_by of reports); the others are agents.
USERS: tuple[User, ...] = (
    User(1, "admin", "CRM Administrator", "Administrator", 1),
    User(12, "agent12", "Sales Agent 12", "Sales Manager", 1),
    User(15, "agent15", "Sales Agent 15", "Sales Agent", 1),
    User(17, "agent17", "Sales Agent 17", "Sales Agent", 1),
    User(21, "agent21", "Sales Agent 21", "Sales Agent", 0),
    User(23, "iso23", "ISO Partner 23", "ISO", 1),
)
AGENTS: tuple[User, ...] = USERS[1:]
_USERS_BY_ID = {u.user_id: u for u in USERS}
_ADMIN = USERS[0].user_id

_NAME_A = ("Liffey", "Harbour", "Copper", "Granite", "Shannon", "Emerald", "Northside", "Quay", "Oak", "Atlantic",
           "Phoenix", "Claddagh", "Beacon", "Kestrel", "Willow", "Summit", "Riverside", "Heritage", "Corner", "Lighthouse")
_NAME_B = ("Bakery", "Coffee House", "Pharmacy", "Hardware", "Barbers", "Florist", "Books", "Motors", "Kitchen", "Fitness",
           "Deli", "Optics", "Pet Supplies", "Tailors", "Wine Bar", "Dental", "Cycles", "Print Shop", "Gallery", "Foods")
_SIC = ("5812", "5411", "5999", "7230", "5541", "8021", "5732", "5942", "5992", "7997", "")
_POS_MODES = ("CHIP", "CHIP", "CONTACTLESS", "CONTACTLESS", "CONTACTLESS", "SWIPED", "KEYED", "ECOMMERCE")
_REJECTS = ("CHARGEBACK", "CHARGEBACK", "INVALID SEC CODE", "VOIDED BY MERCHANT")
_ADJUSTMENTS = ("Deposit adjustments", "Monthly fees", "Chargeback", "Equipment fee")
_CB_REASONS = (("10.4", "Other Fraud - Card Absent Environment"), ("13.1", "Merchandise/Services Not Received"),
               ("13.3", "Not as Described or Defective"), ("12.6", "Duplicate Processing"), ("4837", "No Cardholder Authorization"))
_ONE_OFF_ITEMS = ("Equipment sale", "Agent bonus", "Chargeback fee", "Setup fee reimbursement", "PCI non-compliance fee",
                  "Statement fee correction")
_RECURRING_ITEMS = (("Gateway fee", "monthly"), ("Terminal rental", "monthly"), ("Agent override", "monthly"),
                    ("PCI compliance program", "quarterly"))


# --------------------------------------------------------------------------------------
# Merchants
# --------------------------------------------------------------------------------------


@dataclass
class Merchant:
    """One merchant: the served fields (typed) and the hidden traits its batches derive from."""

    index: int  # stable generation order: transaction ids and random streams derive from it
    mid: str
    name: str
    opened: date
    closed: date | None
    deactivated: date | None
    created: datetime
    modified: datetime
    group: Group
    processor: Processor
    datasource: Datasource
    sic_code: str
    vim: bool
    leads: tuple[int, ...]
    agents: tuple[int, ...]  # user ids (residual rows: users=true; line items' agents)
    split: float  # agent split, percent
    terminals: tuple[str, ...]
    batch_rate: float  # share of business days with a batch (the span's ends always batch)
    avg_ticket_cents: int
    discount_rate: float
    interchange_rate: float
    batch_span: tuple[date, date] | None  # first and last batch day

    def __setattr__(self, name: str, value: Any) -> None:
        """Any change drops the served JSON cached by :meth:`api_json` and the world's merchant
        queries (see :meth:`IrisWorld.merchant_query`): edits need not go through the world."""
        d = self.__dict__
        d[name] = value
        d.pop("_api_json", None)
        _MERCHANT_EDITS[0] += 1

    @property
    def status(self) -> str:
        return "Closed" if self.closed else "Open"

    @property
    def active(self) -> bool:
        return self.deactivated is None

    @property
    def first_batch(self) -> date | None:
        return self.batch_span[0] if self.batch_span else None

    @property
    def last_batch(self) -> date | None:
        return self.batch_span[1] if self.batch_span else None

    def general_api(self) -> dict[str, Any]:
        """``BriefMerchantInfo`` as served (the detail's ``general``)."""
        return {
            "mid": self.mid, "name": self.name, "opened": us_date(self.opened), "closed": us_date(self.closed),
            "created": iso(self.created), "modified": iso(self.modified), "first_batch": us_date(self.first_batch),
            "last_batch": us_date(self.last_batch), "group": self.group.name, "processor": self.processor.name,
            "datasource": self.datasource.name, "sic_code": self.sic_code, "deactivated": us_date(self.deactivated),
            "vim": "Yes" if self.vim else "No", "status": self.status, "active": "Yes" if self.active else "No",
        }

    def api(self) -> dict[str, Any]:
        """An item of ``GET /merchants``."""
        return {**self.general_api(), "leads": list(self.leads)}

    def api_json(self) -> bytes:
        """:meth:`api` as JSON (orjson), cached on the merchant until one of its attributes changes."""
        cached = self.__dict__.get("_api_json")
        if cached is None:
            cached = self.__dict__["_api_json"] = orjson.dumps(self.api())  # not through __setattr__
        return cached

    def detail_api(self) -> dict[str, Any]:
        """``GET /merchants/{merchantNumber}``: general, processor demographics (free-form strings), leads."""
        opened = datetime.combine(self.opened, dtime(9, 0))
        info = {
            "DBA Name": self.name, "Corporate": f"{self.name.upper()} LIMITED", "Status": self.status,
            "SIC": self.sic_code, "Open Date": f"{opened:%B}, {opened:%d %Y %H:%M:%S}",
            "Terminals": ", ".join(self.terminals), "Processor": self.processor.name,
        }
        return {"general": self.general_api(), "account_information": info, "leads": list(self.leads)}


@dataclass(frozen=True)
class _ReportMerchant:
    """A merchant as residual reports see it: frozen at seed time (reports are published snapshots)."""

    index: int
    mid: str
    name: str
    processor_id: int
    group_id: int
    agents: tuple[int, ...]
    split: float
    opened: date
    discount_rate: float
    interchange_rate: float


@dataclass(frozen=True)
class ReportState:
    """Publication state of one residual report (year, month, processor)."""

    year: int
    month: int
    processor_id: int
    created: datetime
    modified: datetime
    revision: int = 0  # 0 = first publication; each republish adds one
    created_by: int = _ADMIN
    modified_by: int = _ADMIN
    dropped: frozenset[str] = frozenset()  # mids whose rows a republish removed


@dataclass(frozen=True)
class _Month:
    """One merchant's month: served batches and adjustments, plus the aggregates reports use."""

    batches: tuple[dict, ...]
    adjustments: tuple[dict, ...]
    transactions: int = 0
    sales_cents: int = 0
    disputed: tuple[tuple[dict, dict], ...] = ()  # (batch, transaction) that became chargebacks


_EMPTY_MONTH = _Month((), ())


def _unique_mids(rng: random.Random, n: int) -> list[str]:
    """Mids of several real shapes; the first four cover every shape even in tiny worlds."""
    shapes = ("zero", "long", "card", "short")
    mids: list[str] = []
    seen: set[int] = set()
    while len(mids) < n:
        shape = shapes[len(mids)] if len(mids) < 4 else rng.choices(shapes, (20, 45, 25, 10))[0]
        mid = {
            "zero": lambda: f"000{rng.randrange(10**8, 10**9)}",  # leading zeros: keep mids as text
            "long": lambda: f"8788{rng.randrange(10**8, 10**9)}",  # 13 digits: beyond int32
            "card": lambda: f"5264{rng.randrange(10**11, 10**12)}",  # 16 digits
            "short": lambda: str(rng.randrange(10**6, 10**8)),
        }[shape]()
        if int(mid) not in seen:  # unique as text and as the integer residual rows carry
            seen.add(int(mid))
            mids.append(mid)
    return mids


# --------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------


class IrisWorld:
    """The simulator's data, deterministic from its arguments.

    Args:
        seed: data seed.
        merchants: merchants at seed time (hundreds by default; tests use ~20).
        today: the simulator's "today" (batches end the business day before); default the real
            date in ``timezone``.
        timezone: IANA zone of the instance; created/modified carry its offset (EDT ``-04:00``,
            EST ``-05:00``).
        processors: how many of :data:`PROCESSORS` (1-3).
        clock: "now" for mutation stamps (aware datetime); default the real clock, or, with an
            explicit ``today``, noon of ``today`` advancing with the real clock.  Seeded
            timestamps all lie before ``today`` 00:00 and stamps strictly increase.
    """

    def __init__(
        self,
        seed: int = 0,
        merchants: int = DEFAULT_MERCHANTS,
        today: date | None = None,
        timezone: str = DEFAULT_TIMEZONE,
        processors: int = len(PROCESSORS),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not 1 <= processors <= len(PROCESSORS):
            raise ValueError(f"processors must be 1..{len(PROCESSORS)}")
        if merchants < 1:
            raise ValueError("merchants must be >= 1")
        self.seed = seed
        self.tz = ZoneInfo(timezone)
        self.timezone = timezone
        self.today = today or datetime.now(self.tz).date()
        if self.today <= DATA_START + timedelta(days=31):
            raise ValueError(f"today must be after {DATA_START + timedelta(days=31)}")
        self.processors: tuple[Processor, ...] = PROCESSORS[:processors]
        self._processor_ids = {p.id: p for p in self.processors}
        self._today00 = datetime.combine(self.today, dtime(0), self.tz)
        self._clock = clock or self._default_clock(explicit_today=today is not None)
        self._lock = threading.RLock()
        self._months: collections.OrderedDict[tuple, _Month] = collections.OrderedDict()
        self._aggregates: dict[tuple[int, int], dict[str, tuple[int, int]]] = {}
        self._rows_cache: dict[tuple, list[tuple[_ReportMerchant, dict]]] = {}
        self._queries: collections.OrderedDict[Hashable, tuple[tuple[int, int], list[Merchant]]] = collections.OrderedDict()
        rng = random.Random(f"{seed}:merchants")
        self.merchants: dict[str, Merchant] = {}
        for index, mid in enumerate(_unique_mids(rng, merchants)):
            self.merchants[mid] = self._seed_merchant(rng, index, mid)
        self._by_int = {int(mid): m for mid, m in self.merchants.items()}
        self._report_merchants = tuple(self._report_view(m) for m in self.merchants.values())
        self.reports: dict[tuple[int, int, int], ReportState] = self._seed_reports()
        self._line_items = self._seed_line_items()
        self._last_stamp = max([m.modified for m in self.merchants.values()] + [r.modified for r in self.reports.values()])

    # ---------------------------------------------------------------- clock

    def _default_clock(self, explicit_today: bool) -> Callable[[], datetime]:
        if not explicit_today:
            return lambda: datetime.now(self.tz)
        start, t0 = self._today00 + timedelta(hours=12), time.monotonic()
        return lambda: start + timedelta(seconds=time.monotonic() - t0)

    def now(self) -> datetime:
        return self._clock().astimezone(self.tz)

    def stamp(self) -> datetime:
        """A fresh ``modified`` for a mutation: whole seconds, strictly after every earlier one."""
        with self._lock:
            ts = max(self.now().replace(microsecond=0), self._last_stamp + timedelta(seconds=1))
            self._last_stamp = ts
            return ts

    def _moment(self, rng: random.Random, day: date) -> datetime:
        """A business-hours moment of ``day``, clamped before today 00:00 (seeded data is past)."""
        ts = datetime.combine(day, dtime(rng.randint(7, 19), rng.randrange(60), rng.randrange(60)), self.tz)
        return min(ts, self._today00 - timedelta(minutes=rng.randint(5, 600)))

    def _later(self, rng: random.Random, ts: datetime) -> datetime:
        """A moment between ``ts`` and today 00:00."""
        room = (self._today00 - ts).total_seconds()
        return ts + timedelta(seconds=int(rng.uniform(0, max(room - 60, 0))))

    # ---------------------------------------------------------------- seeding

    @property
    def yesterday(self) -> date:
        return self.today - ONE_DAY

    def _span(self, opened: date, closed: date | None, lag: int, tail: int) -> tuple[date, date] | None:
        start = _first_business_day(max(opened + timedelta(days=lag), DATA_START))
        end_limit = self.yesterday if closed is None else min(self.yesterday, closed - timedelta(days=tail))
        end = _last_business_day(end_limit)
        return (start, end) if start <= end else None

    def _seed_merchant(self, rng: random.Random, index: int, mid: str) -> Merchant:
        yesterday = self.yesterday
        if rng.random() < 0.35:  # on the books before the data starts
            opened = date(2012, 1, 1) + timedelta(days=rng.randrange((DATA_START - date(2012, 1, 1)).days))
        else:
            opened = DATA_START + timedelta(days=rng.randrange((yesterday - DATA_START).days + 1))
        closed = None
        if rng.random() < 0.15 and (yesterday - opened).days > 60:
            closed = opened + timedelta(days=rng.randint(60, (yesterday - opened).days))
        deactivated = None
        if closed and rng.random() < 0.5 and closed + timedelta(days=30) < self.today:
            deactivated = closed + timedelta(days=rng.randint(1, 30))
        crm_day = max(opened, date(2024, 3, 1) + timedelta(days=rng.randrange(28)))  # portfolio import
        created = self._moment(rng, crm_day)
        events = [created] + [self._moment(rng, d) for d in (closed, deactivated) if d]
        modified = max(events)
        if rng.random() < 0.6:
            modified = self._later(rng, modified)
        processor = rng.choice(self.processors)
        lag, tail = rng.randint(1, 10), rng.randint(0, 4)
        never_batches = rng.random() < 0.03 or index == 4  # even a tiny world has one that never batched
        discount = rng.uniform(0.015, 0.029)
        n_agents = rng.choices((0, 1, 2), (20, 60, 20))[0]
        return Merchant(
            index=index, mid=mid, name=f"{rng.choice(_NAME_A)} {rng.choice(_NAME_B)}", opened=opened, closed=closed,
            deactivated=deactivated, created=created, modified=modified, group=rng.choice(GROUPS),
            processor=processor, datasource=rng.choice(processor.datasources), sic_code=rng.choice(_SIC),
            vim=rng.random() < 0.2, leads=tuple(10_000 + index * 3 + k for k in range(rng.randint(1, 2))),
            agents=tuple(sorted(u.user_id for u in rng.sample(AGENTS, n_agents))), split=rng.choice((30, 35, 37.5, 40, 50)),
            terminals=tuple(f"{75_000_000 + index * 10 + t}" for t in range(rng.choices((1, 2), (80, 20))[0])),
            batch_rate=rng.uniform(0.55, 1.0), avg_ticket_cents=int(rng.choice((1200, 2500, 4500, 9000, 18000)) * rng.uniform(0.8, 1.2)),
            discount_rate=discount, interchange_rate=rng.uniform(0.011, discount - 0.003),
            batch_span=None if never_batches else self._span(opened, closed, lag, tail),
        )

    @staticmethod
    def _report_view(m: Merchant) -> _ReportMerchant:
        return _ReportMerchant(m.index, m.mid, m.name, m.processor.id, m.group.id, m.agents, m.split, m.opened,
                               m.discount_rate, m.interchange_rate)

    def months(self) -> list[tuple[int, int]]:
        """(year, month) of every published month: :data:`DATA_START` to last month."""
        return list(months_between(DATA_START, self.today.replace(day=1) - ONE_DAY))

    def _seed_reports(self) -> dict[tuple[int, int, int], ReportState]:
        rng = random.Random(f"{self.seed}:reports")
        reports: dict[tuple[int, int, int], ReportState] = {}
        months = self.months()
        always = (*months[0], self.processors[0].id)  # at least one republished report, even in tiny worlds
        for y, m in months:
            ny, nm = next_month(y, m)
            for p in self.processors:
                created = self._moment(rng, date(ny, nm, 1) + timedelta(days=rng.randint(2, 11)))
                state = ReportState(y, m, p.id, created, created)
                republished = rng.random() < 0.2 or (y, m, p.id) == always
                later = self._later(rng, created)
                if republished and later > created + timedelta(hours=1):
                    state = replace(state, modified=later, revision=1, modified_by=rng.choice((_ADMIN, AGENTS[0].user_id)))
                reports[(y, m, p.id)] = state
        return reports

    # ---------------------------------------------------------------- merchants

    def merchant(self, number: str) -> Merchant | None:
        """The merchant of a path's ``merchantNumber``: the exact mid, else the same number
        (the spec types it integer, so ``012`` and ``12`` name one merchant)."""
        with self._lock:
            found = self.merchants.get(number)
            if found is None and number.isdigit():
                found = self._by_int.get(int(number))
            return found

    @property
    def lock(self) -> threading.RLock:
        """Held by every mutation; readers of :attr:`merchants` hold it for a consistent view."""
        return self._lock

    def merchant_query(self, key: Hashable, compute: Callable[[], list[Merchant]]) -> list[Merchant]:
        """``compute()`` (merchants matching some filters, in some order), cached per ``key`` while
        no merchant is added or changed; the caller must not modify the list."""
        with self._lock:
            version = (_MERCHANT_EDITS[0], len(self.merchants))  # read before computing: a racing edit only wastes it
            hit = self._queries.get(key)
            if hit is not None and hit[0] == version:
                self._queries.move_to_end(key)
                return hit[1]
            found = compute()
            self._queries[key] = (version, found)
            self._queries.move_to_end(key)
            while len(self._queries) > _QUERY_CACHE:
                self._queries.popitem(last=False)
            return found

    def warm_merchants(self) -> None:
        """Serialize every merchant once (:meth:`Merchant.api_json`), so that the first walk of
        ``GET /merchants`` costs what later ones do."""
        with self._lock:
            for m in self.merchants.values():
                m.api_json()

    def merchant_list(self) -> list[dict[str, Any]]:
        """Every merchant as ``GET /merchants`` serves it, in mid order."""
        with self._lock:
            return [self.merchants[mid].api() for mid in sorted(self.merchants)]

    def close_merchant(self, mid: str, on: date | None = None) -> Merchant:
        """Close a merchant on ``on`` (default today; not before this month, so published months
        keep their batches): closed date, status Closed, no batches after it, ``modified`` bumped."""
        on = on or self.today
        with self._lock:
            m = self._require(mid)
            if m.closed is not None:
                raise ValueError(f"merchant {mid} is already closed")
            if not (max(m.opened, self.today.replace(day=1)) <= on <= self.today):
                raise ValueError("on must lie between the later of opened and the 1st of this month, and today")
            m.closed = on
            if m.batch_span:
                end = min(m.batch_span[1], _last_business_day(on))
                m.batch_span = (m.batch_span[0], end) if end >= m.batch_span[0] else None
            m.modified = self.stamp()
            return m

    def add_merchant(
        self,
        mid: str | None = None,
        name: str | None = None,
        opened: date | None = None,
        processor_id: int | None = None,
        group_id: int | None = None,
    ) -> Merchant:
        """A merchant boarded now (opened this month, default today; not in published reports)."""
        with self._lock:
            index = len(self.merchants)
            rng = random.Random(f"{self.seed}:added:{index}")
            opened = opened or self.today
            if not self.today.replace(day=1) <= opened <= self.today:
                raise ValueError("opened must lie in the current month, at most today")
            mid = str(mid) if mid is not None else next(x for x in _unique_mids(rng, 50) if x not in self.merchants and int(x) not in self._by_int)
            if not mid.isdigit() or mid in self.merchants or int(mid) in self._by_int:
                raise ValueError(f"mid {mid!r} must be digits and new")
            m = self._seed_merchant(rng, index, mid)
            processor = self._processor(processor_id) if processor_id is not None else m.processor
            ts = self.stamp()
            m = replace(
                m, name=name or m.name, opened=opened, closed=None, deactivated=None, created=ts, modified=ts,
                processor=processor, datasource=processor.datasources[0],
                group=self._group(group_id) if group_id is not None else m.group,
                batch_span=self._span(opened, None, 1, 0),
            )
            self.merchants[mid] = m
            self._by_int[int(mid)] = m
            return m

    def modify_merchant(self, mid: str, **changes: Any) -> Merchant:
        """Edit served fields (name, group_id, sic_code, vim, datasource_id) and bump ``modified``;
        with no changes it only bumps ``modified`` (a touch)."""
        allowed = {"name", "group_id", "sic_code", "vim", "datasource_id"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot modify {sorted(unknown)}; allowed: {sorted(allowed)}")
        with self._lock:
            m = self._require(mid)
            if "name" in changes:
                m.name = str(changes["name"])
            if "group_id" in changes:
                m.group = self._group(int(changes["group_id"]))
            if "sic_code" in changes:
                m.sic_code = str(changes["sic_code"])
            if "vim" in changes:
                m.vim = bool(changes["vim"])
            if "datasource_id" in changes:
                m.datasource = next(d for d in m.processor.datasources if d.id == int(changes["datasource_id"]))
            m.modified = self.stamp()
            return m

    def _require(self, mid: str) -> Merchant:
        m = self.merchant(str(mid))
        if m is None:
            raise KeyError(f"unknown merchant {mid}")
        return m

    def _processor(self, processor_id: int) -> Processor:
        if processor_id not in self._processor_ids:
            raise ValueError(f"unknown processor {processor_id}")
        return self._processor_ids[processor_id]

    @staticmethod
    def _group(group_id: int) -> Group:
        return next(g for g in GROUPS if g.id == group_id)

    # ---------------------------------------------------------------- batches and transactions

    def _month(self, m: Merchant, year: int, month: int) -> _Month:
        span = m.batch_span
        if span is None:
            return _EMPTY_MONTH
        first, last = month_bounds(year, month)
        lo, hi = max(first, span[0]), min(last, span[1])
        if lo > hi:
            return _EMPTY_MONTH
        key = (m.index, year, month, span)
        with self._lock:
            cached = self._months.get(key)
            if cached is not None:
                self._months.move_to_end(key)
                return cached
            generated = self._generate_month(m, year, month, lo, hi, span)
            self._months[key] = generated
            if len(self._months) > _MONTH_CACHE:
                self._months.popitem(last=False)
            return generated

    def _generate_month(self, m: Merchant, year: int, month: int, lo: date, hi: date, span: tuple[date, date]) -> _Month:
        rng = random.Random(f"{self.seed}:tx:{m.index}:{year}:{month}")
        batches: list[dict] = []
        disputed: list[tuple[dict, dict]] = []
        n_tx = sales = 0
        day = lo
        while day <= hi:
            # draw for every business day, forced or not, so a month only changes past a new span end
            if day.weekday() < 5 and (rng.random() < m.batch_rate or day in span):
                for t, terminal in enumerate(m.terminals):
                    if t and rng.random() < 0.5:
                        continue
                    batch = self._batch(rng, m, day, t, terminal)
                    batches.append(batch)
                    for tx in batch["transactions"]:
                        n_tx += 1
                        if tx["type"] == "SALE":
                            sales += int(tx["amount"].replace(".", ""))
                            if tx["reject_description"] == "CHARGEBACK":
                                disputed.append((batch, tx))
            day += ONE_DAY
        adjustments: tuple[dict, ...] = ()
        if batches and rng.random() < 0.3:
            cents = rng.randint(500, 60_000) * rng.choice((-1, -1, 1))
            adjustments = ({"date": rng.choice(batches)["date"], "type": rng.choice(_ADJUSTMENTS), "amount": money(cents)},)
        return _Month(tuple(batches), adjustments, n_tx, sales, tuple(disputed))

    def _batch(self, rng: random.Random, m: Merchant, day: date, t: int, terminal: str) -> dict:
        day_no = (day - DATA_START).days
        txs = [self._transaction(rng, m, day, (m.index + 1) * 10_000_000 + day_no * 40 + t * 20 + seq) for seq in range(rng.randint(1, 6))]
        total = sum(int(tx["amount"].replace(".", "")) for tx in txs)
        return {
            "date": us_date(day), "reference_number": f"{day:%y%m%d}{t}{rng.randrange(10**5):05d}", "amount": money(total),
            "count": str(len(txs)), "terminal_number": terminal, "transactions": txs,
        }

    def _transaction(self, rng: random.Random, m: Merchant, day: date, tx_id: int) -> dict:
        kind = "RETURN" if rng.random() < 0.06 else "SALE"
        cents = max(100, int(rng.lognormvariate(math.log(m.avg_ticket_cents), 0.6)))
        amex = rng.random() < 0.12
        card = f"3712{'*' * 7}{rng.randrange(10**4):04d}" if amex else f"{rng.choice(('4111', '4532', '5424', '5188'))}{'*' * 8}{rng.randrange(10**4):04d}"
        flagged = rng.random() < 0.01
        reject = rng.choice(_REJECTS) if flagged else ""
        if reject == "CHARGEBACK" and kind != "SALE":
            reject = "VOIDED BY MERCHANT"
        mode = rng.choice(_POS_MODES)
        return {
            "id": tx_id, "date": us_date(day - ONE_DAY if rng.random() < 0.2 else day), "type": kind,
            "amount": money(-cents if kind == "RETURN" else cents), "cardholder": card,
            "auth_code": f"{rng.randrange(36**6):06X}"[-6:], "pos_entry_mode": mode,
            "invoice_number": str(rng.randrange(1, 10**5)) if mode == "ECOMMERCE" else "",
            "void_reject_chargeback": flagged, "reject_description": reject,
        }

    def _months_of(self, m: Merchant, start: date | None, end: date | None) -> Iterator[_Month]:
        if m.batch_span is None:
            return
        lo = max(start or m.batch_span[0], m.batch_span[0])
        hi = min(end or m.batch_span[1], m.batch_span[1])
        for y, mo in months_between(lo, hi) if lo <= hi else ():
            yield self._month(m, y, mo)

    def batches_between(self, mid: str, start: date | None = None, end: date | None = None) -> tuple[list[dict], list[dict]]:
        """(batches, adjustments) dated within [start, end] (inclusive, either open), in date order:
        what ``GET /merchants/{mid}/transactions`` pages through (batches) and attaches (adjustments)."""
        m = self._require(mid)
        batches: list[dict] = []
        adjustments: list[dict] = []
        inside = lambda us: (start is None or start <= _parse_us(us)) and (end is None or _parse_us(us) <= end)  # noqa: E731
        for month in self._months_of(m, start, end):
            batches += [b for b in month.batches if inside(b["date"])]
            adjustments += [a for a in month.adjustments if inside(a["date"])]
        return batches, adjustments

    def batches_for(self, mid: str, year: int, month: int) -> list[dict]:
        """The merchant's batches (with their transactions) dated in the month, as served."""
        return copy.deepcopy(list(self._month(self._require(mid), year, month).batches))

    def transactions_for(self, mid: str, year: int, month: int) -> list[dict]:
        """The transactions of the month's batches, flattened, as served."""
        return [tx for b in self.batches_for(mid, year, month) for tx in b["transactions"]]

    def adjustments_for(self, mid: str, year: int, month: int) -> list[dict]:
        return copy.deepcopy(list(self._month(self._require(mid), year, month).adjustments))

    def chargebacks_for(self, mid: str, start: date | None = None, end: date | None = None) -> list[dict]:
        """Chargeback cases (one per disputed SALE, received after it, up to yesterday), by
        ``chargeback_date`` within [start, end], as served."""
        m = self._require(mid)
        cases = [self._chargeback(m, b, tx) for month in self._months_of(m, None, None) for b, tx in month.disputed]
        cases = [c for c in cases if c is not None]
        inside = [c for c in cases if (start is None or start <= _parse_us(c["chargeback_date"])) and (end is None or _parse_us(c["chargeback_date"]) <= end)]
        return sorted(inside, key=lambda c: (_parse_us(c["chargeback_date"]), c["id"]))

    def _chargeback(self, m: Merchant, batch: dict, tx: dict) -> dict | None:
        rng = random.Random(f"{self.seed}:cb:{tx['id']}")
        tx_day = _parse_us(tx["date"])
        received = tx_day + timedelta(days=rng.randint(7, 40))
        if received > self.yesterday:
            return None  # not disputed yet
        status_day = min(received + timedelta(days=rng.randint(0, 30)), self.yesterday)
        status = "Open" if status_day == received else rng.choice(("Won", "Lost", "Pending Reply"))
        code, reason = rng.choice(_CB_REASONS)
        return {
            # one case per disputed transaction, so the transaction's id doubles as the case id
            "id": tx["id"], "merchant_id": m.mid, "dba": m.name, "case_number": str(230_000_000 + tx["id"] % 10**8),
            "chargeback_date": us_date(received), "transaction_date": tx["date"],
            "respond_due": us_date(received + timedelta(days=10)), "amount": tx["amount"], "original_amount": tx["amount"],
            "currency": "USD", "reason": reason, "reason_code": code, "card_number": tx["cardholder"],
            "reply_form": "Standard", "cycle_indicator": "1", "transaction_id": str(tx["id"]),
            "reference_number": batch["reference_number"], "case_status": status,
            "case_status_description": f"Case {status.lower()}", "mcc": m.sic_code or "5999",
            "dispute_jurisdiction": "Mastercard" if code.isdigit() else "Visa", "card_product_type": "Consumer Credit",
            "process_date": us_date(received), "transaction_method": "Card Not Present" if tx["pos_entry_mode"] in ("KEYED", "ECOMMERCE") else "Card Present",
            "invoice_number": tx["invoice_number"], "microfilm_number": f"{rng.randrange(10**11):011d}",
            "airline_ticket_number": "", "order_number": "", "tracking_number": "",
            "last_status_date": us_date(status_day), "updated_at": us_date(status_day),
            "case_action": "Reply" if status in ("Open", "Pending Reply") else "None",
            "action": "Reply" if status in ("Open", "Pending Reply") else "View", "foreign_amount": tx["amount"],
            "transaction_locator": "", "authorization_code": tx["auth_code"], "type": "First Chargeback",
        }

    # ---------------------------------------------------------------- residuals

    def report(self, year: int, month: int, processor_id: int) -> ReportState | None:
        return self.reports.get((year, month, processor_id))

    def _aggregates_of(self, year: int, month: int) -> dict[str, tuple[int, int]]:
        """mid -> (transactions, gross sales cents) of the month, for report merchants."""
        with self._lock:
            agg = self._aggregates.get((year, month))
            if agg is None:
                agg = {}
                for rm in self._report_merchants:
                    mo = self._month(self.merchants[rm.mid], year, month)
                    agg[rm.mid] = (mo.transactions, mo.sales_cents)
                self._aggregates[(year, month)] = agg
            return agg

    def _rows(self, state: ReportState, template: bool) -> list[tuple[_ReportMerchant, dict]]:
        """Every row of a report (null merchants included), cached per revision."""
        key = (state.year, state.month, state.processor_id, state.revision, state.dropped, template)
        with self._lock:
            rows = self._rows_cache.get(key)
            if rows is None:
                agg = self._aggregates_of(state.year, state.month)
                month_end = month_bounds(state.year, state.month)[1]
                rows = [
                    (rm, self._row(rm, state, agg[rm.mid], template))
                    for rm in sorted(self._report_merchants, key=lambda r: int(r.mid))
                    if rm.processor_id == state.processor_id and rm.opened <= month_end and rm.mid not in state.dropped
                ]
                self._rows_cache[key] = rows
            return rows

    def _row(self, rm: _ReportMerchant, state: ReportState, agg: tuple[int, int], template: bool) -> dict:
        n, sales = agg
        income = round(sales * rm.discount_rate) + n * 10 + 995 if n else 0
        expense = round(sales * rm.interchange_rate) + n * 5 if n else 0
        for revision in range(1, state.revision + 1):  # each republication corrects the figures
            k = random.Random(f"{self.seed}:rev:{state.year}:{state.month}:{state.processor_id}:{revision}:{rm.index}")
            income, expense = round(income * (1 + k.uniform(-0.03, 0.03))), round(expense * (1 + k.uniform(-0.02, 0.02)))
        if template and n:  # the key user's template adds its buy rates to the expense
            expense += round(sales * 0.0005) + n * 2
        net = income - expense
        percentage = rm.split if rm.agents else 0
        return {
            "mid": int(rm.mid), "merchant": rm.name, "transactions": n, "sales_amount": sales / 100, "income": income / 100,
            "expense": expense / 100, "net": net / 100, "bps": round(net / sales * 100, 2) if sales else 0,
            "percentage": percentage, "agent_net": round(net * percentage / 100) / 100, "users": bool(rm.agents),
        }

    def residual_rows(
        self,
        processor_id: int,
        year: int,
        month: int,
        *,
        template: bool = True,
        hide_null_merchants: bool = True,
        group: int | None = None,
        agent: int | None = None,
        search: str | None = None,
    ) -> list[dict]:
        """Merchant rows of a report as served (mid order); [] when the month has no report.
        ``mid`` is an integer there, as the spec types it, so a mid's leading zeros are lost.

        ``hide_null_merchants`` drops merchants without transactions in the month;
        ``template=False`` shows the figures without the key user's template (its buy rates)."""
        state = self.report(year, month, processor_id)
        if state is None:
            return []
        needle = (search or "").lower()
        return [
            dict(row) for rm, row in self._rows(state, template)
            if not (hide_null_merchants and row["transactions"] == 0)
            and (group is None or rm.group_id == group)
            and (agent is None or agent in rm.agents)
            and (not needle or needle in rm.name.lower() or needle in rm.mid)
        ]

    def residual_summary(
        self,
        year: int,
        month: int,
        *,
        hide_null_merchants: bool = True,
        processor: int | None = None,
        group: int | None = None,
        agent: int | None = None,
        search: str | None = None,
    ) -> list[dict]:
        """One row per processor with a report that month (processor_id order), summing its rows
        (template applied, as the summary route has no template flag)."""
        out = []
        for p in self.processors:
            state = self.report(year, month, p.id)
            if state is None or (processor is not None and p.id != processor):
                continue
            rows = self.residual_rows(p.id, year, month, hide_null_merchants=hide_null_merchants, group=group, agent=agent, search=search)
            out.append(_summary(p, state, rows))
        return out

    def republish(self, year: int, month: int, processor_id: int | None = None, drop_rows: int = 0) -> list[ReportState]:
        """Republish a published month (one processor or all): a new revision with changed
        figures, ``modified`` bumped, and optionally ``drop_rows`` merchant rows removed."""
        with self._lock:
            ids = [processor_id] if processor_id is not None else [p.id for p in self.processors]
            states = []
            for pid in ids:
                state = self.reports.get((year, month, pid))
                if state is None:
                    raise KeyError(f"no published report for {year}-{month:02d} processor {pid}")
                revision = state.revision + 1
                dropped = state.dropped
                if drop_rows:
                    live = sorted(rm.mid for rm, row in self._rows(state, True) if row["transactions"])
                    pick = random.Random(f"{self.seed}:drop:{year}:{month}:{pid}:{revision}")
                    dropped = dropped | frozenset(pick.sample(live, min(drop_rows, len(live))))
                state = replace(state, revision=revision, modified=self.stamp(), modified_by=_ADMIN, dropped=dropped)
                self.reports[(year, month, pid)] = state
                states.append(state)
            return states

    # ---------------------------------------------------------------- line items

    def _seed_line_items(self) -> dict[tuple[int, int], list[dict]]:
        rng = random.Random(f"{self.seed}:lineitems")
        months = self.months()
        merchants = self._report_merchants
        recurring = []
        for k, (description, period) in enumerate(_RECURRING_ITEMS):
            start = rng.randrange(min(4, len(months)))
            recurring.append((10_100_000 + k, rng.choice(merchants), rng.choice(AGENTS), description, period, start,
                              rng.choice((None, 12, 24)), rng.randint(1_000, 9_000), rng.choice(("agent", "merchant"))))
        items: dict[tuple[int, int], list[dict]] = {}
        next_id = 1001
        for i, (y, m) in enumerate(months):
            month_items = []
            for item_id, rm, user, description, period, start, max_count, cents, kind in recurring:
                step = 3 if period == "quarterly" else 1
                count = (i - start) // step + 1
                if i < start or (i - start) % step or (max_count is not None and count > max_count):
                    continue
                created = datetime.combine(date(y, m, 1), dtime(2, 0), self.tz)
                start_ts = datetime.combine(date(*months[start], 1), dtime(2, 0), self.tz)
                month_items.append(_line_item(next_id, kind, item_id, user, rm, description, cents, 0, created, created,
                                              (start_ts, count, max_count, period)))
                next_id += 1
            first, last = month_bounds(y, m)
            for _ in range(rng.randint(2, 6)):
                candidates = [rm for rm in merchants if rm.opened <= last] or list(merchants)
                rm = rng.choice(candidates)
                created = self._moment(rng, first + timedelta(days=rng.randrange((last - first).days + 1)))
                modified = self._later(rng, created) if rng.random() < 0.3 else created
                income, expense = (rng.randint(500, 50_000), 0) if rng.random() < 0.5 else (0, rng.randint(500, 20_000))
                month_items.append(_line_item(next_id, rng.choice(("agent", "merchant")), 10_200_000 + next_id, rng.choice(AGENTS),
                                              rm, rng.choice(_ONE_OFF_ITEMS), income, expense, created, modified, None))
                next_id += 1
            items[(y, m)] = month_items
        return items

    def line_items(
        self,
        year: int,
        month: int,
        *,
        created: date | None = None,
        dba: str | None = None,
        username: str | None = None,
        user_id: int | None = None,
        description: str | None = None,
    ) -> list[dict]:
        """Residual line items of the month (id order), filtered like the route, as served."""
        def keep(item: dict) -> bool:
            return (
                (created is None or datetime.fromisoformat(item["created"]).date() == created)
                and (dba is None or dba.lower() in item["merchant"]["dba"].lower())
                and (username is None or username.lower() in (item["user"]["username"] + " " + item["user"]["full_name"]).lower())
                and (user_id is None or item["user"]["user_id"] == user_id)
                and (description is None or description.lower() in item["description"].lower())
            )

        return [copy.deepcopy(i) for i in self._line_items.get((year, month), []) if keep(i)]

    # ---------------------------------------------------------------- state

    def summary(self) -> dict[str, Any]:
        """Sizes and dates, for the admin state route and the CLI banner."""
        with self._lock:
            return {
                "seed": self.seed, "today": self.today.isoformat(), "now": iso(self.now()), "timezone": self.timezone,
                "merchants": len(self.merchants), "closed": sum(1 for m in self.merchants.values() if m.closed),
                "processors": [p.id for p in self.processors], "report_months": len(self.months()),
                "republished": [
                    {"year": s.year, "month": s.month, "processor_id": s.processor_id, "revision": s.revision, "modified": iso(s.modified)}
                    for s in self.reports.values() if s.revision
                ],
            }


def _parse_us(value: str) -> date:
    return datetime.strptime(value, "%m/%d/%Y").date()


def _summary(p: Processor, state: ReportState, rows: list[dict]) -> dict:
    cents = lambda field: sum(round(r[field] * 100) for r in rows)  # noqa: E731  (exact sums of 2-decimal figures)
    sales, net = cents("sales_amount"), cents("net")
    return {
        "processor_id": p.id, "name": p.name, "created": iso(state.created), "created_by": state.created_by,
        "modified": iso(state.modified), "modified_by": state.modified_by, "merchants_count": len(rows),
        "sum_transactions": sum(r["transactions"] for r in rows), "sum_sales_amount": sales / 100,
        "sum_income": cents("income") / 100, "sum_expense": cents("expense") / 100, "sum_net": net / 100,
        "sum_bps": round(net / sales * 100, 2) if sales else 0, "sum_agent_net": cents("agent_net") / 100,
    }


def _line_item(
    item_id_: int,
    kind: str,
    item_id: int,
    user: User,
    rm: _ReportMerchant,
    description: str,
    income: int,
    expense: int,
    created: datetime,
    modified: datetime,
    recurring: tuple[datetime, int, int | None, str] | None,
) -> dict:
    percentage = 100 if kind == "agent" else (rm.split if rm.agents else 0)
    agent_net = round((income - expense) * percentage / 100)
    agents = [user] if kind == "agent" else [_USERS_BY_ID[a] for a in rm.agents]
    start, count, max_count, period = recurring or (None, None, None, None)
    return {
        "id": item_id_, "type": kind, "item_id": item_id, "user": user.api(), "merchant": {"mid": rm.mid, "dba": rm.name},
        "related_mid": int(rm.mid), "related_dba": rm.name, "description": description, "income": income / 100,
        "expense": expense / 100, "percentage": percentage, "agent_net": agent_net / 100, "is_recurring": recurring is not None,
        "created": iso(created), "modified": iso(modified),
        "agents": [{"user_id": a.user_id, "username": a.username, "full_name": a.full_name,
                    "agent_net": round(agent_net / max(len(agents), 1)) / 100, "percentage": percentage} for a in agents],
        "recurring_start_date": iso(start) if start else None, "recurring_payment_count": count,
        "recurring_max_payment_count": max_count, "recurring_period": period,
    }
