"""Per-dataset overrides from the environment, validated at load with messages naming the variable.

    SYNC_ASSETS_CRON__ESI__MARKET_PRICES="*/30 * * * *"     schedule (UTC) of esi.market_prices
    SYNC_ASSETS_FRESHNESS__ESI__MARKET_PRICES="1800,3600"   freshness warn,fail windows in seconds
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from dagster._utils.schedules import is_valid_cron_string

from ..core.datasets import Dataset
from ..core.errors import ConfigurationError


class SettingError(ConfigurationError):
    """An environment variable holds a value that cannot work; the message names it."""


def variable(prefix: str, dataset: Dataset) -> str:
    return f"SYNC_ASSETS_{prefix}__{dataset.api.upper()}__{dataset.name.upper()}"


def with_overrides(dataset: Dataset, env: Mapping[str, str] | None = None) -> Dataset:
    env = os.environ if env is None else env
    changes: dict[str, object] = {}
    cron_var, freshness_var = variable("CRON", dataset), variable("FRESHNESS", dataset)
    if cron := env.get(cron_var, "").strip():
        if not is_valid_cron_string(cron):
            raise SettingError(f"{cron_var}={cron!r} is not a cron expression (five fields, e.g. '*/15 * * * *')")
        changes["cron"] = cron
    if raw := env.get(freshness_var, "").strip():
        try:
            warn, fail = (int(part) for part in raw.split(","))
        except ValueError:
            raise SettingError(f"{freshness_var}={raw!r}: expected 'warn_seconds,fail_seconds', e.g. '900,1800'") from None
        if not 60 <= warn < fail:
            raise SettingError(f"{freshness_var}={raw!r}: need 60 <= warn < fail (Dagster's minimum window is a minute)")
        changes["freshness"] = (warn, fail)
    return dataclasses.replace(dataset, **changes) if changes else dataset
