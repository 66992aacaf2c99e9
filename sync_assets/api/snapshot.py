"""What the API resource hands to the warehouse: rows plus the validators that describe them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

import pandas as pd


@dataclass(frozen=True)
class Validators:
    """Conditional-request state of one dataset partition: per-page ETags and cache times."""

    page_etags: tuple[str, ...] = ()  # index i holds the ETag of page i + 1
    last_modified: datetime | None = None
    expires_at: datetime | None = None

    @property
    def data_version(self) -> str:
        """Stable while the API says nothing changed: derived from Last-Modified and the ETags."""
        digest = hashlib.sha256()
        digest.update((self.last_modified.isoformat() if self.last_modified else "").encode())
        for etag in self.page_etags:
            digest.update(b"\0" + etag.encode())
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


class Outcome(str, Enum):
    CHANGED = "changed"  # a complete new snapshot was fetched (all pages 200)
    NOT_MODIFIED = "not_modified"  # every page answered 304: the stored rows are current
    CACHE_VALID = "cache_valid"  # the stored Expires is in the future: the API was not asked


@dataclass
class Snapshot:
    dataset: str
    partition_key: str | None
    outcome: Outcome
    validators: Validators
    frame: pd.DataFrame | None = None  # rows of a CHANGED snapshot, table columns and dtypes
    stats: FetchStats = field(default_factory=FetchStats)

    @property
    def changed(self) -> bool:
        return self.outcome is Outcome.CHANGED

    @property
    def data_version(self) -> str:
        return self.validators.data_version
