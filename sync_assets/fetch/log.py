"""Where the fetch layer writes its lines: a Dagster context's log in runs, `logging` elsewhere."""

from __future__ import annotations

import logging
from typing import Any, Protocol


class Log(Protocol):
    def info(self, msg: str) -> Any: ...
    def warning(self, msg: str) -> Any: ...


DEFAULT_LOG: Log = logging.getLogger("sync_assets.fetch")
