"""`dg` works in the project directory as cloned: nothing exported, no server started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DG = str(Path(sys.executable).with_name("dg"))


def _clean_env() -> dict[str, str]:
    """No DAGSTER_HOME and no database: `dg` reads ./dagster.yaml on a temporary instance."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_ASSETS_", "DAGSTER_", "ESI_"))}


def test_dg_check_defs_passes_with_nothing_set() -> None:
    proc = subprocess.run([DG, "check", "defs"], cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All definitions loaded successfully" in proc.stdout + proc.stderr


def test_dg_list_defs_lists_assets_jobs_schedules_and_sensors() -> None:
    proc = subprocess.run([DG, "list", "defs", "--json"], cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assets = {a["asset_key"] for a in listed["assets"]}
    assert {"esi/market_orders", "esi/market_prices", "esi/corporation_killmails"} <= assets
    assert "sync_esi_market_orders" in {j["name"] for j in listed["jobs"]}
    assert "sync_esi_market_orders_schedule" in {s["name"] for s in listed["schedules"]}
    assert {"esi_expiry_sensor", "esi_corporations_sensor", "sync_failure_sensor"} <= {s["name"] for s in listed["sensors"]}
