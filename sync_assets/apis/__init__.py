"""One package per API: its spec, declarations, auth and sandbox."""

from .esi.datasets import ESI_DOWNTIME

DOWNTIMES = {"esi": ESI_DOWNTIME}  # per API
