"""Per-dataset overrides from the environment, validated at load with messages naming the variable.

    SYNC_ASSETS_CRON__ESI__MARKET_PRICES="*/30 * * * *"     schedule (UTC) of esi.market_prices
    SYNC_ASSETS_FRESHNESS__ESI__MARKET_PRICES="1800,3600"   freshness warn,fail windows in seconds
    SYNC_ASSETS_OWNERS="team:trading,ops@example.com"       asset owners (all APIs; SYNC_ASSETS_OWNERS__ESI for one)
    SYNC_ASSETS_SCHEDULE_TIMEZONE__IRIS="Europe/London"     the zone of an API's schedule crons
"""

from __future__ import annotations

import dataclasses
import os
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
from typing import Mapping

from croniter import croniter

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
        if len(cron.split()) != 5 or not croniter.is_valid(cron):
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
    zone_var = f"SYNC_ASSETS_SCHEDULE_TIMEZONE__{dataset.api.upper()}"
    if zone := env.get(zone_var, "").strip():
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise SettingError(f"{zone_var}={zone!r} is not a time zone (e.g. Europe/Dublin)") from None
        changes["schedule_timezone"] = zone
    return dataclasses.replace(dataset, **changes) if changes else dataset


DEFAULT_OWNERS = ("team:sync_assets",)


def owners(api: str, env: Mapping[str, str] | None = None) -> list[str]:
    """Asset owners: e-mail addresses or `team:<name>`, per API or for all; the UI filters by them."""
    env = os.environ if env is None else env
    for name in (f"SYNC_ASSETS_OWNERS__{api.upper()}", "SYNC_ASSETS_OWNERS"):
        if raw := env.get(name, "").strip():
            found = [o.strip() for o in raw.split(",") if o.strip()]
            bad = [o for o in found if not (o.startswith("team:") and len(o) > 5) and "@" not in o]
            if bad:
                raise SettingError(f"{name}={raw!r}: owners are e-mail addresses or team:<name>, not {bad}")
            return found
    return list(DEFAULT_OWNERS)
