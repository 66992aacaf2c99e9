"""What the API resource hands to the warehouse: rows plus the validators that describe them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Mapping, Protocol

from .lazy import pandas as pd  # imported when a run first uses it

from .errors import BudgetExhausted


@dataclass(frozen=True)
class Validators:
    """Conditional-request state of one dataset partition: per-page ETags and cache times."""

    page_etags: tuple[str, ...] = ()  # index i holds the ETag of page i + 1
    last_modified: datetime | None = None
    expires_at: datetime | None = None
    cursor: str | None = None  # from_id walks: the newest id already stored
    # when every page was last asked (a full walk, conditional or not): page 1 alone may stand for an
    # unchanged snapshot only for a while after it (ApiResource.full_walk_every_s); not part of the version
    walked_at: datetime | None = None

    @property
    def data_version(self) -> str:
        """Stable while the API says nothing changed: derived from Last-Modified and the ETags."""
        digest = hashlib.sha256()
        digest.update((self.last_modified.isoformat() if self.last_modified else "").encode())
        for etag in self.page_etags:
            digest.update(b"\0" + etag.encode())
        digest.update(b"\0" + (self.cursor or "").encode())
        return digest.hexdigest()[:20]


@dataclass
class FetchStats:
    requests: int = 0
    pages: int = 0
    status_200: int = 0
    status_304: int = 0
    body_bytes: int = 0  # bytes of response bodies received
    retries: int = 0
    walks: int = 0  # page walks started (more than one means a refetch for consistency)
    duplicates_dropped: int = 0
    duration_s: float = 0.0
    budget_remaining: int | None = None  # tokens left in the rate-limit bucket after the fetch
    budget_wait_s: float = 0.0  # time spent waiting for shared budgets


    def count(self, status: int, body_bytes: int) -> None:
        """Account one response (200 or 304)."""
        self.requests += 1
        self.body_bytes += body_bytes
        if status == 200:
            self.status_200 += 1
        else:
            self.status_304 += 1


class Outcome(str, Enum):
    CHANGED = "changed"  # a complete new snapshot was fetched (all pages 200)
    NOT_MODIFIED = "not_modified"  # every page answered 304: the stored rows are current
    CACHE_VALID = "cache_valid"  # the stored Expires is in the future: the API was not asked


@dataclass
class SliceFailure:
    state_key: str
    error: BaseException  # one of ours (its message carries no secret): its type says the failure class

    @property
    def message(self) -> str:
        return str(self.error)


@dataclass
class SnapshotSet:
    """The snapshots of one materialization of a sliced dataset; each is written on its own, so a
    failed slice (one wallet division) does not hide the others' data."""

    dataset: str
    snapshots: list["Snapshot"]
    failures: list[SliceFailure] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # state keys a spent budget left for a later run
    deferral: BudgetExhausted | None = None  # the budget's refusal: when it pays again, and why

    @property
    def data_version(self) -> str:
        digest = hashlib.sha256()
        for snapshot in sorted(self.snapshots, key=lambda s: s.state_key):
            digest.update(f"{snapshot.state_key}={snapshot.data_version};".encode())
        return digest.hexdigest()[:20]


class PageSink(Protocol):
    """Takes each accepted page while the walk is still fetching (the warehouse loads it at once,
    overlapping the load with the walk). A restart voids every page put so far."""

    def put(self, page: int, rows: Any) -> Any:
        """Take the page's rows (a DataFrame or an Arrow table, see core.rows); return what the walk
        keeps of them instead (a digest), or None to keep the rows themselves."""
        ...

    def restart(self) -> None: ...


@dataclass
class Snapshot:
    dataset: str
    state_key: str  # partition (and slice) this snapshot describes; "" when unpartitioned
    outcome: Outcome
    validators: Validators
    frame: pd.DataFrame | None = None  # rows of a CHANGED snapshot, table columns and dtypes
    stats: FetchStats = field(default_factory=FetchStats)
    context: Mapping[str, Any] = field(default_factory=dict)  # partition/slice column values: the mirror scope
    max_delete_share: float | None = None  # mirror guard: refuse a write deleting more than this share of the rows
    staged: Any = None  # the pages already loaded while they were fetched (a PageSink's result), or None
    rows: int = 0  # rows of a CHANGED snapshot
    partial: bool = False  # an incremental read (rows changed since the cursor): upserted, nothing deleted

    def __post_init__(self) -> None:
        if self.frame is not None and not self.rows:
            self.rows = len(self.frame)

    def table_frame(self) -> pd.DataFrame:
        """The rows in table shape (context columns, one row per key). A walk whose pages a sink
        loaded holds none: they are in the database only."""
        if self.frame is None:
            raise ValueError(f"{self.dataset}[{self.state_key}]: a {self.outcome.value} snapshot carries no rows")
        return self.frame

    @property
    def changed(self) -> bool:
        return self.outcome is Outcome.CHANGED

    @property
    def data_version(self) -> str:
        return self.validators.data_version
