"""Fault 6: ESI maintenance (404s, HTML 503 pages, pages that vanish) and 403s after a role loss or
after the character left the corporation, on the corporation datasets (EVE SSO tokens).

Invariant 3: never delete on an error. Every mirror table keeps exactly its rows; deletes come
only from a complete snapshot of 200s (checked at the end: the same data, without the fault, does
delete rows). A 403 marks the token (`lost_role`), and the message says what ESI refused.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from sync_assets.apis.esi.sso import tokens
from sync_assets.apis.esi import datasets as declared
from sync_assets.apis.esi.sandbox.esi import ERROR_PAGE_NOT_FOUND

from .conftest import CorpWorld, FaultReport
from .helpers import failure_text, scaled
from .proxy import HTML_MAINTENANCE, Req, Status

CORP_A, CORP_B, CORP_C = 98000001, 98000002, 98000003
MIRRORS = [declared.CORPORATION_MEMBERS, declared.MEMBER_TRACKING, declared.CORPORATION_ASSETS,
           declared.CORPORATION_ORDERS, declared.MINING_OBSERVERS]


def _entry(fault_report: FaultReport, test: str, injection: str):
    entry = fault_report.entry("6", "Maintenance 404s, 403 after a role loss: no rows deleted", invariant="3", main="",
                               injection=injection)
    entry.tests.append(f"test_06_no_delete_on_error.py::{test}")
    return entry


def _tables(world: CorpWorld, datasets: list[Any], corp: int) -> dict[str, pd.DataFrame]:
    return {d.key: world.table(d, corp) for d in datasets}


def _unchanged(before: dict[str, pd.DataFrame], after: dict[str, pd.DataFrame]) -> list[str]:
    changed = []
    for key, frame in before.items():
        try:
            pd.testing.assert_frame_equal(after[key], frame)
        except AssertionError:
            changed.append(key)
    return changed


def _deleted_by_a_clean_run(world: CorpWorld, datasets: list[Any], corp: int) -> dict[str, int]:
    world.choose[0] = lambda req: None  # type: ignore[attr-defined]
    world.let_latches_expire()
    result = world.sync(datasets, corp)
    assert result.success, failure_text(result)
    deleted = {}
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        if "rows_deleted" in meta:
            deleted[event.asset_key.to_user_string()] = meta["rows_deleted"].value
    return deleted


MAINTENANCE = {
    "404 Not found on every ESI route": lambda req: Status(404, b'{"error": "Not found"}') if "/corporation" in req.path else None,
    "'page does not exist' 404 on page 2 of the assets": lambda req: (
        Status(404, f'{{"error": "{ERROR_PAGE_NOT_FOUND}"}}'.encode()) if "/assets" in req.path and req.page == 2 else None),
    "503 HTML maintenance page on every ESI route": lambda req: (
        Status(503, HTML_MAINTENANCE, "text/html") if "/corporation" in req.path else None),
}


def test_maintenance_errors_delete_nothing(corp_world: CorpWorld, fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_maintenance_errors_delete_nothing",
                   "the fault proxy answers 404s / HTML 503 pages / a vanished page while ESI's data changed "
                   "(a clean run would delete rows);")
    world = corp_world
    world.connect(CORP_A)
    assert world.sync(MIRRORS, CORP_A).success
    before = _tables(world, MIRRORS, CORP_A)
    world.sandbox.refresh("corporation", corporation_id=CORP_A)
    for round_ in range(scaled(1)):
        for name, choose in MAINTENANCE.items():
            world.expire(CORP_A)
            world.choose[0] = choose  # type: ignore[attr-defined]
            result = world.sync(MIRRORS, CORP_A)
            world.choose[0] = lambda req: None  # type: ignore[attr-defined]
            assert not result.success, f"{name}: the run succeeded"
            message = failure_text(result)
            assert ("HTTP 404" in message or "HTTP 503" in message or "no consistent snapshot" in message), message[:2000]
            failed = {e.step_key.replace("__", ".", 1) for e in result.get_step_failure_events()}
            assert failed, f"{name}: nothing failed"
            after = _tables(world, MIRRORS, CORP_A)
            changed = _unchanged({k: v for k, v in before.items() if k in failed}, after)
            entry.tally("maintenance errors (5 mirror datasets per run)").add(
                f"{name}: {len(failed)} datasets failed, " + ("no row deleted or changed" if not changed else f"CHANGED {changed}"))
            assert not changed, f"{name}: {changed} changed although ESI answered with errors"
            before.update({k: v for k, v in after.items() if k not in failed})  # those synced the new data
            world.let_latches_expire()  # the 503s open the circuit breaker for a minute
    deleted = _deleted_by_a_clean_run(world, MIRRORS, CORP_A)
    entry.notes.append(f"the same data without the fault: a clean run deletes {deleted} rows, so the faulty runs had rows to lose")
    assert sum(deleted.values()) > 0


def test_a_role_lost_mid_walk_is_a_403_that_deletes_nothing(corp_world: CorpWorld, fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_a_role_lost_mid_walk_is_a_403_that_deletes_nothing",
                   "the director loses the Director role in game while the assets (10 pages) are walked: ESI answers 403 "
                   "from page 3 on; another character leaves the corporation mid-walk (403 'not in the corporation').")
    world = corp_world
    datasets = [declared.CORPORATION_ASSETS, declared.MEMBER_TRACKING]
    for corp, how in ((CORP_B, "role"), (CORP_C, "left")):
        character = world.connect(corp)
        assert world.sync(datasets, corp).success
        before = _tables(world, datasets, corp)
        world.sandbox.refresh("corporation", corporation_id=corp)
        world.expire(corp)

        def choose(req: Req, character: int = character, how: str = how) -> None:
            if "/assets" in req.path and req.page == 3:  # in game, between two pages
                if how == "role":
                    world.sandbox.sso.set_roles(character, ["Accountant"])
                else:
                    world.sandbox.sso.set_corporation(character, 98000097)
            return None

        world.choose[0] = choose  # type: ignore[attr-defined]
        result = world.sync(datasets, corp)
        world.choose[0] = lambda req: None  # type: ignore[attr-defined]
        assert not result.success
        message = failure_text(result)
        expected = "required role" if how == "role" else "not in the corporation"
        assert expected in message, message[:2000]
        changed = _unchanged(before, _tables(world, datasets, corp))
        status = tokens.get_token(world.engine, character).status
        entry.tally("403 mid-walk").add(
            f"{'role lost' if how == 'role' else 'left the corporation'}: "
            + ("no row deleted or changed" if not changed else f"CHANGED {changed}") + f", token marked {status}")
        assert not changed, f"{changed} changed after a 403"
        assert status == "lost_role"
        # in game again: the same data, now readable, does delete rows - the 403 run had rows to lose
        if how == "role":
            world.sandbox.sso.set_roles(character, ["Director", "Accountant", "Factory_Manager", "Trader"])
        else:
            world.sandbox.sso.set_corporation(character, corp)
        tokens.mark_status(world.engine, character, "valid", None)
        world.expire(corp)
        deleted = _deleted_by_a_clean_run(world, datasets, corp)
        assert sum(deleted.values()) > 0, deleted
