"""HOW data is fetched: one shared, ETag-aware, retrying API resource per API."""

from .errors import ApiError, HttpStatusError, InconsistentSnapshot, MalformedPayload, PermanentHttpError, TransientHttpError
from .esi import DEFAULT_ESI_URL, EsiResource
from .snapshot import FetchStats, Outcome, Snapshot, Validators

__all__ = [
    "DEFAULT_ESI_URL",
    "ApiError",
    "EsiResource",
    "FetchStats",
    "HttpStatusError",
    "InconsistentSnapshot",
    "MalformedPayload",
    "Outcome",
    "PermanentHttpError",
    "Snapshot",
    "TransientHttpError",
    "Validators",
]
