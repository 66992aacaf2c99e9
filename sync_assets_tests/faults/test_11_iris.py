"""Fault 11: IRIS CRM's paths under faults: a 5xx storm, an outage, a merchant that always fails,
a SIGKILL in the middle of a month of transactions, a malformed payload for one merchant.

Invariants 1, 3 and 4 on a sliced dataset (month x merchant, each merchant written in its own
transaction) and 5 (the circuit breaker stops a run against a dead API instead of hammering it):
every merchant's rows equal the simulator's or are absent (never half-written), its validators go
with its rows, a failure deletes nothing, and a merchant is recorded as failed (`failed_items`,
attempts and backoff) only when it failed every retry; the next run converges to exact data.

The simulator (sync_assets/apis/iris/sandbox) injects the 5xx (knobs `error_rate`, `error_routes`,
`failing_merchants`); an ASGI tap in front of it (conftest.IrisTap) counts every request per path
and status and rewrites one merchant's payload. Runs are in-process (`dagster.materialize`) except
the killed one: a real `dagster asset materialize` of the code location (SYNC_ASSETS_APIS=iris).
"""

from __future__ import annotations

import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import orjson
import pandas as pd
import pytest
from sqlalchemy import text

from sync_assets.apis.iris.datasets import MERCHANTS, RESIDUAL_ROWS, RESIDUAL_SUMMARIES, TRANSACTIONS
from sync_assets.core.errors import FailureClass
from sync_assets.fetch.budget import BudgetPolicy
from sync_assets.fetch.pagination import WalkLimits
from sync_assets.orchestration.failures import classify_failure

from .conftest import IRIS_MONTH, IRIS_YEAR_MONTH, FaultReport, Haystacks, IrisTenant
from .helpers import Brake, Observer, clean_env, dagster_materialize, failure_text, poll, retry_lines, rng_for, with_app_name

MONTH = IRIS_MONTH
YEAR, MON = IRIS_YEAR_MONTH
CIRCUIT = BudgetPolicy().circuit_threshold  # 8 failures on distinct paths open IRIS's circuit
ROUNDS = WalkLimits().max_idle_rounds  # rounds of retries of a page before its walk gives up
KILL_BRAKE = 7_349_911  # advisory lock holding the k-th merchant's write (test-owned trigger)
TX_PATH = "/api/v1/merchants/{mid}/transactions"
ROWS_PATH = f"/api/v1/residuals/reports/summary/rows/{{pid}}/{YEAR}/{MON:02d}"


def _entry(fault_report: FaultReport, test: str, injection: str, main: str = ""):
    entry = fault_report.entry("11", "IRIS CRM: 5xx storm, outage, failing merchant, SIGKILL mid-month, bad payload",
                               invariant="1, 3, 4, 5", injection=injection, main=main)
    entry.tests.append(f"test_11_iris.py::{test}")
    return entry


# --- what the simulator says, and what the tables hold -------------------------------------------

def _money(value: Any) -> Decimal | None:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else Decimal(str(value)).quantize(Decimal("0.01"))


def _us(value: str | None) -> Any:
    return None if not value else datetime.strptime(value, "%m/%d/%Y").date()


def _day(value: Any) -> Any:
    return None if value is None or pd.isna(value) else pd.Timestamp(value).date()


def _text(value: Any) -> str | None:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) or value == "" else str(value)


def _active(tenant: IrisTenant) -> list[str]:
    """Merchants the month's sync asks (first/last batch overlap the month), computed independently."""
    lo, hi = datetime(YEAR, MON, 1).date(), datetime(YEAR + (MON == 12), MON % 12 + 1, 1).date()
    return sorted(m["mid"] for m in tenant.world.merchant_list()
                  if m["first_batch"] and _us(m["first_batch"]) < hi and _us(m["last_batch"]) >= lo)


def _expected(tenant: IrisTenant, mid: str) -> set[tuple]:
    """One merchant's month as the simulator serves it: every transaction with its batch."""
    rows = set()
    for batch in tenant.world.batches_for(mid, YEAR, MON):
        for t in batch["transactions"]:
            rows.add((t["id"], mid, _us(t["date"]), t["type"], _money(t["amount"]), _text(t["cardholder"]),
                      _text(t["auth_code"]), _us(batch["date"]), _text(batch["reference_number"]), _money(batch["amount"]),
                      int(batch["count"])))
    return rows


def _stored(tenant: IrisTenant) -> dict[str, set[tuple]]:
    out: dict[str, set[tuple]] = {}
    for r in tenant.table(TRANSACTIONS, MONTH).itertuples():
        out.setdefault(r.mid, set()).add((
            int(r.id), r.mid, _day(r.date), r.type, _money(r.amount), _text(r.cardholder), _text(r.auth_code),
            _day(r.batch_date), _text(r.batch_reference_number), _money(r.batch_amount), int(r.batch_count)))
    return out


def _diff(tenant: IrisTenant, mids: list[str]) -> dict[str, str]:
    """Merchants whose stored rows differ from the simulator's (empty: exact)."""
    stored, bad = _stored(tenant), {}
    for mid in mids:
        have, want = stored.get(mid, set()), _expected(tenant, mid)
        if have != want:
            bad[mid] = f"{len(have)} rows stored, {len(want)} served, {len(have ^ want)} differ"
    return bad


def _residual_rows_exact(tenant: IrisTenant) -> bool:
    stored = {(int(r.processor_id), r.mid, _money(r.net), _money(r.sales_amount), _money(r.agent_net))
              for r in tenant.table(RESIDUAL_ROWS, MONTH).itertuples()}
    want = {(s["processor_id"], str(r["mid"]), _money(r["net"]), _money(r["sales_amount"]), _money(r["agent_net"]))
            for s in tenant.world.residual_summary(YEAR, MON)
            for r in tenant.world.residual_rows(s["processor_id"], YEAR, MON, template=False, hide_null_merchants=False)}
    return bool(want) and stored == want


def _states(tenant: IrisTenant, dataset: str = "iris.transactions") -> dict[str, tuple]:
    """sync_state rows of the month's slices: {state key: (etags, last_modified, row_count)}."""
    with tenant.engine.connect() as conn:
        rows = conn.execute(text("SELECT partition_key, page_etags, last_modified, row_count FROM sync_assets.sync_state "
                                 "WHERE dataset = :d AND partition_key LIKE :p"), {"d": dataset, "p": f"{MONTH}%"}).all()
    return {r.partition_key: (tuple(r.page_etags or ()), r.last_modified, r.row_count) for r in rows}


def _digest(tenant: IrisTenant) -> tuple[int, str]:
    with tenant.engine.connect() as conn:
        row = conn.execute(text("SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY id)), '') "
                                "FROM iris.transactions t")).one()
    return int(row[0]), row[1]


def _item(mid: str) -> str:
    return f"{MONTH}/mid={mid}"


def _items(tenant: IrisTenant, dataset: Any = TRANSACTIONS) -> dict[str, Any]:
    return {f.item: f for f in tenant.failed_items(dataset)}


def _backoff_s(tenant: IrisTenant, mid: str) -> float:
    with tenant.engine.connect() as conn:
        return float(conn.execute(text("SELECT EXTRACT(EPOCH FROM retry_at - last_failed_at) FROM sync_assets.failed_items "
                                       "WHERE dataset = 'iris.transactions' AND item = :i"), {"i": _item(mid)}).scalar_one())


def _messages(tenant: IrisTenant, result: Any) -> list[str]:
    return [e.user_message for e in tenant.instance.all_logs(result.run_id) if e.user_message]


def _failure_class(result: Any) -> FailureClass:
    return classify_failure([e.step_failure_data.error for e in result.get_step_failure_events()])


def _statuses(tenant: IrisTenant, path: str) -> list[int]:
    return [s for p, s, _ in tenant.tap.seen() if p == path]


def _clean_month(tenant: IrisTenant) -> list[str]:
    """The merchants synced without faults; returns the merchants the month's sync asks."""
    assert tenant.sync(MERCHANTS).success
    active = _active(tenant)
    assert len(active) >= 6 and sum(bool(tenant.world.transactions_for(m, YEAR, MON)) for m in active) >= 6
    return active


# --- 1. a 5xx storm ---------------------------------------------------------------------------------

STORM_RATE = 0.3


def test_a_5xx_storm_ends_with_exact_data_and_no_merchant_wrongly_failed(iris_tenants: Callable[..., IrisTenant],
                                                                         fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_a_5xx_storm_ends_with_exact_data_and_no_merchant_wrongly_failed",
                   f"IRIS simulator knob `error_rate` {STORM_RATE:.0%} on the transactions and residual-rows routes "
                   "(500/502/503/504, HTML and JSON bodies);", main="run")
    tenant = iris_tenants(merchants=24)  # ~18 merchants active in the month: ~25 requests before the retries
    active = _clean_month(tenant)
    assert tenant.sync(RESIDUAL_SUMMARIES, MONTH).success
    tenant.sandbox.configure(error_rate=STORM_RATE, error_seed=int(rng_for("iris-storm").random() * 1e6),
                             error_routes=["transactions", "residual_rows"])
    storm: list[tuple[int, str]] = []  # every 5xx served, in order
    for dataset, route, path_of, slices in ((TRANSACTIONS, "/transactions", lambda i: TX_PATH.format(mid=i), active),
                                            (RESIDUAL_ROWS, "/summary/rows/", lambda i: ROWS_PATH.format(pid=i),
                                             [s["processor_id"] for s in tenant.world.residual_summary(YEAR, MON)])):
        tenant.tap.reset()
        result = tenant.sync(dataset, MONTH)
        served = tenant.tap.seen(route)
        errors = [(s, ctype) for _, s, ctype in served if s >= 500]
        # a slice may be recorded as failed only if it failed every retry: each attempt of each round a 5xx
        tries = tenant.iris.max_attempts * ROUNDS
        failed_every_retry = {str(i) for i in slices if (st := _statuses(tenant, path_of(i))) and min(st) >= 500 and len(st) == tries}
        recorded = {k.rsplit("=", 1)[-1] for k in _items(tenant, dataset)}
        assert recorded == failed_every_retry, (recorded, failed_every_retry)
        if not result.success:  # 8 distinct paths failing in a row (~1% of storms at 30%): only the circuit may stop it
            message = failure_text(result)
            assert "iris circuit is open" in message, message[:2000]
            entry.notes.append(f"{dataset.key}: the storm opened the circuit ({message.splitlines()[-1][:160]}); rerun after its cooldown")
            with tenant.engine.begin() as conn:
                conn.execute(text("DELETE FROM sync_assets.api_latches"))
            tenant.sandbox.configure(error_rate=0.0)
            assert tenant.sync(dataset, MONTH).success
            tenant.sandbox.configure(error_rate=STORM_RATE)
        else:
            lines = retry_lines(_messages(tenant, result))
            meta = {k: getattr(v, "value", v) for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
            # every 5xx the simulator served was retried, counted and logged once
            assert meta["retries"] == len(errors) == len(lines), (meta["retries"], len(errors), len(lines))
            assert all("HTTP 50" in line for line in lines), lines[:3]
        storm += errors
        entry.tally(f"run in a {STORM_RATE:.0%} 5xx storm ({len(slices)} slices)").add(
            f"{dataset.key}: " + ("exact data" if result.success else "circuit opened, exact after the rerun"))
        entry.tally("5xx served in the storms (all retried)").add(
            f"{dataset.key}: {sum('html' in c for _, c in errors)} HTML, {sum('html' not in c for _, c in errors)} JSON", len(errors))
    assert storm, "the storm served no 5xx"
    if len(storm) >= 5:  # bodies come from shuffled bags of five (re-seeded above): the first bag holds both kinds
        assert {"html" in c for _, c in storm} == {True, False}, storm
    assert _diff(tenant, active) == {}
    assert _residual_rows_exact(tenant)
    assert _items(tenant) == {} and _items(tenant, RESIDUAL_ROWS) == {}


# --- 2. an outage -------------------------------------------------------------------------------------

OUTAGES = {  # setting: (IrisResource settings, merchants, known bug)
    # the product's own settings: 8 workers, retries 0.5 s+ apart, so the 8 first failures come before any retry
    "product defaults": ({"backoff_initial_s": 0.5, "backoff_max_s": 30.0, "retry_round_pause_s": 2.0}, 12, None),
    # fewer pages at once (a setting a tenant may choose): retries of failed paths interleave with new paths
    "4 pages at once": ({"max_concurrency": 4}, 24, None),  # a repeated failure once reset the count: fixed
}


@pytest.mark.parametrize("setting", [pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=v[2])) if v[2] else k
                                     for k, v in OUTAGES.items()])
def test_an_outage_opens_the_circuit_and_stops_the_run_instead_of_hammering(
    setting: str, iris_tenants: Callable[..., IrisTenant], fault_report: FaultReport,
) -> None:
    entry = _entry(fault_report, f"test_an_outage_opens_the_circuit_and_stops_the_run_instead_of_hammering[{setting}]",
                   "every IRIS request answered 5xx (`error_rate` 100%) while a synced month is synced again;")
    settings, merchants, bug = OUTAGES[setting]
    tenant = iris_tenants(merchants=merchants, resource=settings)
    active = _clean_month(tenant)
    assert tenant.sync(TRANSACTIONS, MONTH).success and _diff(tenant, active) == {}
    before, states = _digest(tenant), _states(tenant)
    tenant.sandbox.configure(error_rate=1.0)
    tenant.sandbox.reset_counters()
    tenant.tap.reset()
    started = time.monotonic()
    result = tenant.sync(TRANSACTIONS, MONTH)
    seconds = time.monotonic() - started
    asked = tenant.tap.count("/transactions")
    assert asked == sum(c["routes"].get("transactions", 0) for c in tenant.sandbox.counters().values())  # as the simulator saw
    paths = {p for p, _, _ in tenant.tap.seen("/transactions")}
    workers = tenant.iris.max_concurrency
    assert not result.success
    assert _digest(tenant) == before and _states(tenant) == states  # the table and its validators unchanged
    message = failure_text(result)
    opened = "iris circuit is open" in message
    entry.tally("run against a dead API").add(
        f"{setting}: {asked} requests on {len(paths)} paths in {seconds:.1f}s, "
        + ("stopped by the circuit" if opened else "CIRCUIT NEVER OPENED")
        + f" (every attempt of every merchant: {len(active) * tenant.iris.max_attempts * ROUNDS})")
    if not opened and bug:
        entry.notes.append(f"known bug ({setting}): {bug}")
    assert "iris circuit is open" in message and f"{CIRCUIT} consecutive failures, last: HTTP 50" in message, \
        f"{asked} requests on {len(paths)} paths: {message.splitlines()[-1][:300]}"
    assert _failure_class(result) is FailureClass.TRANSIENT
    # it opened at the 8th failing path. Retries of a failing path do not count (one merchant failing is not an
    # outage): with 8 workers the 8 first failures open it, at most one request per worker on its way; with fewer,
    # some paths spend every attempt of every round first, but never more than 8 of them
    tries = tenant.iris.max_attempts * ROUNDS
    bound = CIRCUIT + workers if workers >= CIRCUIT else CIRCUIT * tries
    assert len(paths) >= CIRCUIT and asked <= bound < len(active) * tries, (asked, bound, len(paths))
    assert tenant.tap.count() == asked and min(s for _, s, _ in tenant.tap.seen()) >= 500
    assert _items(tenant) == {}  # an outage is not each merchant's failure
    # while the circuit is open, the next run asks nothing and says why
    tenant.tap.reset()
    again = tenant.sync(TRANSACTIONS, MONTH)
    assert not again.success and "iris circuit is open" in failure_text(again) and tenant.tap.count() == 0
    assert _digest(tenant) == before
    entry.tally("run while the circuit is open").add("0 requests, failed naming the circuit")
    entry.notes.append(f"outage ({setting}): `{message.splitlines()[-1][:200]}`")
    # the cooldown over and the API back: the month converges
    tenant.sandbox.configure(error_rate=0.0)
    with tenant.engine.begin() as conn:
        conn.execute(text("DELETE FROM sync_assets.api_latches"))
    assert tenant.sync(TRANSACTIONS, MONTH).success and _diff(tenant, active) == {}


# --- 3. a merchant that always fails -----------------------------------------------------------------

def test_a_failing_merchant_is_recorded_backed_off_deletes_nothing_and_recovers_exactly(
    iris_tenants: Callable[..., IrisTenant], fault_report: FaultReport,
) -> None:
    entry = _entry(fault_report, "test_a_failing_merchant_is_recorded_backed_off_deletes_nothing_and_recovers_exactly",
                   "one merchant's transactions answer HTTP 500 every time (knob `failing_merchants`);")
    tenant = iris_tenants()
    active = _clean_month(tenant)
    broken = next(m for m in active if tenant.world.transactions_for(m, YEAR, MON))
    others = [m for m in active if m != broken]
    path = TX_PATH.format(mid=broken)
    tenant.sandbox.set_failing_merchants([broken])

    result = tenant.sync(TRANSACTIONS, MONTH)
    assert not result.success and any(broken in m for m in failure_text(result).splitlines()), failure_text(result)[:2000]
    assert _failure_class(result) is FailureClass.TRANSIENT
    tries = tenant.iris.max_attempts * ROUNDS
    assert _statuses(tenant, path) == [500] * tries  # every attempt of every round, then given up
    [item] = _items(tenant).values()
    assert (item.item, item.attempts, item.failure_class) == (_item(broken), 1, "transient") and "HTTP 500" in item.message
    assert _backoff_s(tenant, broken) == pytest.approx(300, abs=1)
    assert _diff(tenant, others) == {} and broken not in _stored(tenant)  # the others committed, nothing of it
    assert _item(broken) not in _states(tenant) and len(_states(tenant)) == len(others)
    entry.tally("run with a failing merchant").add(f"recorded after {tries} requests (all 500), others committed, none of its rows")

    # before its backoff ends it is not asked again
    tenant.tap.reset()
    held = tenant.sync(TRANSACTIONS, MONTH)
    assert not held.success and any("not asked again before" in m for m in failure_text(held).splitlines())
    assert _statuses(tenant, path) == [] and _items(tenant)[_item(broken)].attempts == 1

    # backoff over, still failing: a second attempt, a longer backoff
    _expire_backoff(tenant)
    tenant.tap.reset()
    assert not tenant.sync(TRANSACTIONS, MONTH).success
    assert _statuses(tenant, path) == [500] * tries
    assert _items(tenant)[_item(broken)].attempts == 2 and _backoff_s(tenant, broken) == pytest.approx(600, abs=1)
    entry.tally("run with a failing merchant").add("held during its backoff (0 requests), then attempt 2 with the backoff doubled")

    # the fault cleared and the backoff over: recovered with exact data, nothing recorded
    tenant.sandbox.set_failing_merchants([])
    _expire_backoff(tenant)
    assert tenant.sync(TRANSACTIONS, MONTH).success
    assert _diff(tenant, active) == {} and _items(tenant) == {}
    entry.tally("next run, the fault cleared").add("recovered on the next run: exact rows, no failed item left")

    # failing again once it has rows: nothing of it is deleted or changed
    before, states = _digest(tenant), _states(tenant)
    tenant.sandbox.set_failing_merchants([broken])
    assert not tenant.sync(TRANSACTIONS, MONTH).success
    assert _digest(tenant) == before and _states(tenant)[_item(broken)] == states[_item(broken)]
    assert _diff(tenant, active) == {}
    entry.tally("run with a failing merchant").add("failing again with its rows stored: none deleted or changed")


def _expire_backoff(tenant: IrisTenant) -> None:
    with tenant.engine.begin() as conn:
        conn.execute(text("UPDATE sync_assets.failed_items SET retry_at = now() - interval '1 second'"))


# --- 4. SIGKILL in the middle of a month ----------------------------------------------------------

def test_sigkill_mid_month_leaves_whole_merchants_and_the_next_run_converges(
    iris_tenants: Callable[..., IrisTenant], fault_report: FaultReport, haystacks: Haystacks, tmp_path: Path,
) -> None:
    entry = _entry(fault_report, "test_sigkill_mid_month_leaves_whole_merchants_and_the_next_run_converges",
                   "`dagster asset materialize --select iris/transactions` (SYNC_ASSETS_APIS=iris) killed with SIGKILL "
                   "while writing the k-th merchant of the month (held by a test-owned trigger on sync_state);")
    tenant = iris_tenants()
    active = _clean_month(tenant)
    k = rng_for("iris-sigkill").randint(2, len(active) - 1)  # merchants 1..k-1 committed, k in its transaction
    observer = Observer(tenant.database_url)
    brake = Brake(tenant.database_url, "faults-iris-brake")
    name = "faults-iris-kill"
    try:
        _install_kill_brake(observer.conn, k)
        brake.advisory(KILL_BRAKE)
        home, logs = tmp_path / "dagster_home", tmp_path / "logs"
        home.mkdir()
        logs.mkdir()
        haystacks.paths += [home, logs]
        env = clean_env(SYNC_ASSETS_DATABASE_URL=with_app_name(tenant.database_url, name), SYNC_ASSETS_APIS="iris",
                        IRIS_API_KEY=tenant.key, SYNC_ASSETS_IRIS_URL=f"{tenant.url}/api/v1", DAGSTER_HOME=str(home))
        proc = dagster_materialize(env, logs / f"{name}.log", partition=MONTH, select="iris/transactions")
        with proc:
            blocked = poll(lambda: (not proc.alive()) or any(
                b.phase == "state" and b.wait_event_type == "Lock" for b in observer.backends(name)), 180, 0.005)
            assert blocked and proc.alive(), f"the run never reached merchant {k}'s write:\n{proc.output()[-3000:]}"
            asked = tenant.tap.count("/transactions")
            proc.kill_group()
            assert proc.wait(30) is not None
        observer.wait_gone(name)
        haystacks.texts.append(proc.output())
        brake.release()
        observer.conn.execute(text("DROP TRIGGER faults_iris_kill_brake ON sync_assets.sync_state"))
    finally:
        brake.dispose()
        observer.close()

    # every merchant committed is whole (rows and validators), the others have nothing
    states, stored = _states(tenant), _stored(tenant)
    committed = {key.rsplit("=", 1)[-1] for key in states}
    assert len(committed) == k - 1, (k, sorted(committed))
    assert _diff(tenant, sorted(committed)) == {}
    assert set(stored) <= committed, f"rows of merchants without validators: {sorted(set(stored) - committed)}"
    assert all(states[_item(m)][2] == len(_expected(tenant, m)) for m in committed)
    assert asked == len(active)  # the whole month was fetched before the writes began
    entry.tally("run killed (SIGKILL)").add(f"while writing merchant {k} of {len(active)}: {k - 1} merchants whole, the rest absent")

    result = tenant.sync(TRANSACTIONS, MONTH)
    assert result.success
    assert _diff(tenant, active) == {} and len(_states(tenant)) == len(active) and _items(tenant) == {}
    entry.tally("next run after a kill").add("converged to the simulator's month exactly")


def _install_kill_brake(conn: Any, k: int) -> None:
    """Test-owned trigger: the k-th write of an iris.transactions validator (one per merchant, in its
    transaction after its rows) waits on an advisory lock the test holds."""
    conn.execute(text("CREATE SCHEMA IF NOT EXISTS faults"))
    conn.execute(text("DROP SEQUENCE IF EXISTS faults.iris_writes"))
    conn.execute(text("CREATE SEQUENCE faults.iris_writes"))
    conn.execute(text(
        "CREATE OR REPLACE FUNCTION faults.iris_kill_brake() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.dataset = 'iris.transactions' AND nextval('faults.iris_writes') = TG_ARGV[0]::bigint THEN "
        "PERFORM pg_advisory_lock_shared(TG_ARGV[1]::bigint); PERFORM pg_advisory_unlock_shared(TG_ARGV[1]::bigint); "
        "END IF; RETURN NEW; END $$"))
    conn.execute(text(f"CREATE TRIGGER faults_iris_kill_brake BEFORE INSERT OR UPDATE ON sync_assets.sync_state "
                      f"FOR EACH ROW EXECUTE FUNCTION faults.iris_kill_brake('{k}', '{KILL_BRAKE}')"))


# --- 5. a malformed payload for one merchant -------------------------------------------------------

MALFORMED = {
    "amount as an object": lambda amount: {"value": amount, "currency": "EUR"},
    "amount with a decimal comma": lambda amount: amount.replace(".", ","),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_a_malformed_payload_is_recorded_as_bad_payload_for_that_merchant_only(
    kind: str, iris_tenants: Callable[..., IrisTenant], fault_report: FaultReport,
) -> None:
    entry = _entry(fault_report, f"test_a_malformed_payload_is_recorded_as_bad_payload_for_that_merchant_only[{kind}]",
                   "one merchant's transactions payload with a wrong-typed amount (an object; a decimal comma), rewritten "
                   "by the tap in front of the simulator.")
    tenant = iris_tenants()
    active = _clean_month(tenant)
    broken = max(active, key=lambda m: len(tenant.world.transactions_for(m, YEAR, MON)))
    path = TX_PATH.format(mid=broken)

    def rewrite(at: str, body: bytes) -> bytes | None:
        if at != path:
            return None
        payload = orjson.loads(body)
        batch = payload["data"][len(payload["data"]) // 2]
        tx = batch["transactions"][len(batch["transactions"]) // 2]
        tx["amount"] = MALFORMED[kind](tx["amount"])
        return orjson.dumps(payload)

    tenant.tap.rewrite = rewrite
    result = tenant.sync(TRANSACTIONS, MONTH)
    assert not result.success and tenant.tap.rewritten
    assert _failure_class(result) is FailureClass.BAD_PAYLOAD
    items = _items(tenant)
    assert set(items) == {_item(broken)}, sorted(items)
    item = items[_item(broken)]
    assert item.failure_class == "bad_payload" and item.attempts == 1
    assert "'amount'" in item.message and broken in item.message, item.message
    assert broken not in _stored(tenant) and _item(broken) not in _states(tenant)  # none of its page written
    assert _diff(tenant, [m for m in active if m != broken]) == {}
    entry.tally("run with a malformed payload for one merchant").add(f"{kind}: bad_payload for it alone, none of its rows, others exact")
    entry.notes.append(f"{kind}: `{item.message[:200]}`")
