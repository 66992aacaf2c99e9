"""The product's error tree: one root, and every error knows its failure class.

A failure class is what a person can act on (wait, log in again, grant a role, fix a setting, look
at the payload, allow a large delete). It is a property of the error's type, declared here, never
guessed from message text; the failure sensor finds it from the class names in a failed step's
error chain (`failure_class_of`). Messages name the method, route and status and quote the API's
own error text; they never carry request headers, tokens, keys or passwords.
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar, Iterable


class FailureClass(str, Enum):
    TRANSIENT = "transient"  # try again later: 5xx, timeouts, a moving snapshot, a database restart
    AUTH = "auth"  # credentials refused or missing: log in again / store a new token or key
    PERMISSION = "permission"  # authenticated, but not allowed (a role, a scope, a seller's grant)
    BUDGET = "budget"  # rate or error limits, an open circuit: the API asked us to slow down
    BAD_PAYLOAD = "bad_payload"  # the API answered something that is not what its spec says
    GUARD = "guard"  # a safety check refused the write (e.g. a mirror deleting most rows)
    CONFIGURATION = "configuration"  # a setting is missing or wrong; the message names it
    ERROR = "error"  # not one of ours: a bug


class SyncError(Exception):
    """Root of every error this product raises on purpose."""

    failure_class: ClassVar[FailureClass | None] = FailureClass.ERROR  # None: its cause decides
    _by_name: ClassVar[dict[str, type["SyncError"]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        SyncError._by_name[cls.__name__] = cls


def failure_class_of(class_names: Iterable[str]) -> FailureClass:
    """The failure class of an error chain given as class names, outermost first (what Dagster
    keeps of a failed step: `SerializableErrorInfo.cls_name` down its causes). The first of our
    errors decides; a chain with none of ours is a bug (ERROR)."""
    for name in class_names:
        cls = SyncError._by_name.get(name)
        if cls is not None and cls.failure_class is not None:
            return cls.failure_class
    return FailureClass.ERROR


# -- the API layer ------------------------------------------------------------------------------


class ApiError(SyncError):
    """Something the API said or did prevented a complete snapshot."""

    failure_class = FailureClass.TRANSIENT


class ApiUnreachable(ApiError):
    """No response at all after every retry: connection refused, DNS, TLS, timeouts."""


class HttpStatusError(ApiError):
    def __init__(self, method: str, url: str, status: int, detail: str, retry_after: float | None = None):
        self.method, self.url, self.status, self.detail = method, url, status, detail
        self.retry_after = retry_after
        super().__init__(f"{method} {url} -> HTTP {status}: {detail}")


class PermanentHttpError(HttpStatusError):
    """A 4xx that retrying the same request cannot fix (the API's classifier decides which)."""

    failure_class = FailureClass.CONFIGURATION  # a route, id or parameter the API does not accept


class Unauthorized(PermanentHttpError):
    """The credentials were refused (expired beyond refresh, revoked, malformed)."""

    failure_class = FailureClass.AUTH


class Forbidden(PermanentHttpError):
    """Authenticated, but not allowed: a missing role, scope or grant."""

    failure_class = FailureClass.PERMISSION


class PageOutOfRange(PermanentHttpError):
    """A page below the known page count answered 404: the page count shrank during the walk."""

    failure_class = FailureClass.TRANSIENT


class TransientHttpError(HttpStatusError):
    """5xx (and anything the classifier says is worth retrying after a wait)."""


class RateLimited(TransientHttpError):
    """429, ESI's 420: the API asks us to slow down (Retry-After when it says how long)."""

    failure_class = FailureClass.BUDGET


class ErrorLimited(RateLimited):
    """ESI's 420: the error budget of the window is spent; every route answers 420 until the reset."""

    def __init__(self, method: str, url: str, status: int, detail: str, reset_s: float):
        super().__init__(method, url, status, detail, retry_after=reset_s + 1)
        self.reset_s = reset_s


class MalformedPayload(ApiError):
    """A 2xx whose body is not the shape the dataset declares."""

    failure_class = FailureClass.BAD_PAYLOAD


class InconsistentSnapshot(ApiError):
    """Pages of one walk came from different snapshots, or a cursor repeated: nothing was kept."""


class RetriesExhausted(ApiError):
    """The walk's retry budget or deadline is spent with pages still failing."""


class BudgetError(ApiError):
    """A shared budget refuses the request: a rate or error limit, an open circuit."""

    failure_class = FailureClass.BUDGET


class CircuitOpen(BudgetError):
    """The API failed repeatedly; requests are refused until the cooldown ends."""

    failure_class = FailureClass.TRANSIENT  # an outage, not our spending: try again later


class BudgetExhausted(BudgetError):
    """A budget would only allow the next request after longer than a run is willing to wait.
    `retry_at` (epoch seconds): when the budget pays for it again; the sync defers the rest of its
    work until then instead of sleeping on it (a sleeping run holds its pool slot)."""

    def __init__(self, message: str, retry_at: float | None = None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class RetryLater(ApiError):
    """An item that failed on earlier runs, not asked again before its backoff ends."""


class AuthFailed(SyncError):
    """Credentials could not be obtained or were refused (a revoked refresh token, no usable token)."""

    failure_class = FailureClass.AUTH


class ConfigurationError(SyncError, ValueError):
    """A setting is missing or wrong; the message names it."""

    failure_class = FailureClass.CONFIGURATION


# -- the warehouse -------------------------------------------------------------------------------


class WarehouseError(SyncError):
    """The data database refused or lost a write; nothing of it was committed."""

    failure_class = FailureClass.TRANSIENT


class GuardRefused(WarehouseError):
    """A safety check refused the write; the table is unchanged."""

    failure_class = FailureClass.GUARD
