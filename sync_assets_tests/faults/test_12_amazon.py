"""Fault 12: Amazon SP-API's paths under faults: a SIGKILL while a report is polled and while its
document downloads, next tokens that expire mid-walk, 5xx storms, access tokens that expire
mid-walk, a seller who revokes the app, and the secret scan of all of it.

Invariants 1, 3, 4 and 6 on report jobs and LWA: a report is requested once per window, however
often its run dies (`sync_assets.report_jobs` keeps the job; the next run polls the same reportId,
the sandbox counts createReport calls); a run that dies or fails leaves every table as it was
(never half a document, never a mirror emptied by a failure); a next token or access token that
expires mid-walk costs one restart or one refresh, never wrong data; a revoked seller is marked
with what to do and nothing of its data is deleted; no LWA secret, refresh or access token appears
in any event log, metadata, log line, captured log or table.

The SP-API sandbox (sync_assets/apis/amazon/sandbox) answers over HTTP behind a tap (`SpApiTap`)
that counts every request, runs a test's fault at the k-th page (expire next tokens, expire access
tokens, revoke the seller), holds a chosen request (a getReport, a getReportDocument, or the
document download after half its body) and records every access token LWA hands out. Killed runs
are real `dagster asset materialize` processes of the code location (SYNC_ASSETS_APIS=amazon)
killed with SIGKILL; the other runs are in-process `dagster.materialize` calls on an on-disk
instance (its event log and captured logs are scanned).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator

import dagster as dg
import orjson
import pandas as pd
import pytest
from sqlalchemy import text

from sync_assets.apis.amazon import AMAZON, AMAZON_DATASETS, SELLERS_PARTITIONS, AmazonResource
from sync_assets.apis.amazon.auth import AmazonAuthResource
from sync_assets.apis.amazon.datasets import (
    FINANCIAL_TRANSACTIONS, INVENTORY_LEDGER, INVENTORY_SUMMARIES, REIMBURSEMENTS,
)
from sync_assets.apis.amazon.sandbox import AmazonSandbox
from sync_assets.apis.amazon.sandbox.world import parse_ledger_time, parse_reimbursement_time
from sync_assets.apis.amazon.sellers import ADD_SELLER
from sync_assets.apis.sandbox_serving import serve_in_thread
from sync_assets.orchestration.apis import ApiDefinition
from sync_assets.orchestration.assets import IO_MANAGER_KEY
from sync_assets.orchestration.build import build_definitions
from sync_assets.warehouse import PostgresWarehouse, SnapshotIOManager

from .conftest import FaultReport, Haystacks, SessionSecrets
from .helpers import Observer, Proc, clean_env, dagster_materialize, failure_text, poll, rng_for, with_app_name

FAULT = "12"
TITLE = "Amazon SP-API: SIGKILL while a report is polled / downloaded, expired next and access tokens, 5xx storms, revoked seller"
US = "ATVPDKIKX0DER"  # the US marketplace (both sellers sell there; the second in Canada too)
REPORTS = "/reports/2021-06-30/reports"
REPORT = REPORTS + "/"  # getReport /reports/2021-06-30/reports/{reportId}
DOCUMENT_INFO = "/reports/2021-06-30/documents/"  # getReportDocument
DOWNLOAD = "/_documents/"  # the pre-signed document URL (the sandbox's storage host)
INVENTORY = "/fba/inventory/v1/summaries"
TRANSACTIONS = "/finances/2024-06-19/transactions"
TOKEN = "/auth/o2/token"
FAST = dict(rate_scale=2000.0, report_queue_seconds=0.05, report_processing_seconds=0.1)
KILL_TIMEOUT_S = 240.0
WORLDS: list["AmazonWorld"] = []  # every world of the module: the scan at the end reads them all


def _entry(fault_report: FaultReport, test: str, injection: str):
    # the summary counts the runs a fault was injected into: the tallies named "runs ..."
    entry = fault_report.entry(FAULT, TITLE, invariant="1, 3, 4, 6", injection=injection, main="runs ")
    entry.tests.append(f"test_12_amazon.py::{test}")
    return entry


# --- the tap in front of the sandbox ---------------------------------------------------------------

@dataclass
class _Hold:
    prefix: str
    body: bool  # let the sandbox answer, send half the body, then stop
    after: int  # matching requests let through first
    seen: int = 0
    held: int = 0
    released: threading.Event = field(default_factory=threading.Event)


class SpApiTap:
    """ASGI app in front of the SP-API sandbox (its LWA endpoint and document host too): records
    every request (method, path, query, status), the access tokens LWA hands out and the ones SP-API
    refused, runs `on_request(method, path)` before a request reaches the sandbox (a test's fault at
    the k-th page) and holds requests on cue (`hold`)."""

    def __init__(self, app: Any):
        self.app = app
        self.on_request: Callable[[str, str], None] | None = None
        self.issued: list[str] = []  # access tokens LWA answered through the tap, in order
        self.refused: list[str] = []  # access tokens of SP-API requests answered 403
        self._hold: _Hold | None = None
        self._arrived: list[tuple[str, str, str]] = []
        self._answered: list[tuple[str, str, str, int]] = []
        self._lock = threading.Lock()

    def hold(self, prefix: str, *, body: bool = False, after: int = 0) -> None:
        """Hold requests under `prefix` (after letting `after` through) until `release()`: before
        the sandbox sees them, or (`body`) after the sandbox answered and half the body was sent."""
        with self._lock:
            self._hold = _Hold(prefix, body, after)

    def held(self) -> int:
        with self._lock:
            return self._hold.held if self._hold else 0

    def release(self) -> None:
        with self._lock:
            hold, self._hold = self._hold, None
        if hold is not None:
            hold.released.set()

    def arrived(self, prefix: str = "", method: str | None = None) -> list[tuple[str, str, str]]:
        with self._lock:
            return [r for r in self._arrived if r[1].startswith(prefix) and method in (None, r[0])]

    def answered(self, prefix: str = "", status: Callable[[int], bool] = lambda s: True,
                 method: str | None = None) -> list[tuple[str, str, str, int]]:
        with self._lock:
            return [r for r in self._answered if r[1].startswith(prefix) and status(r[3]) and method in (None, r[0])]

    def reset(self) -> None:
        with self._lock:
            self._arrived.clear()
            self._answered.clear()
            self.refused.clear()

    def _claim(self, path: str, body: bool) -> _Hold | None:
        with self._lock:
            hold = self._hold
            if hold is None or hold.body != body or not path.startswith(hold.prefix):
                return None
            hold.seen += 1
            if hold.seen <= hold.after:
                return None
            hold.held += 1
            return hold

    @staticmethod
    async def _wait(hold: _Hold) -> None:
        while not hold.released.is_set():
            await asyncio.sleep(0.005)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path, query = scope["method"], scope["path"], scope.get("query_string", b"").decode()
        token = next((v.decode() for k, v in scope["headers"] if k == b"x-amz-access-token"), None)
        with self._lock:
            self._arrived.append((method, path, query))
        if self.on_request is not None:
            self.on_request(method, path)
        if (hold := self._claim(path, body=False)) is not None:
            await self._wait(hold)
        status: list[int] = []
        token_body: list[bytes] = []

        async def tapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                with self._lock:
                    self._answered.append((method, path, query, message["status"]))
                    if message["status"] == 403 and token:
                        self.refused.append(token)
                await send(message)
                return
            body = message.get("body", b"")
            if path == TOKEN:
                token_body.append(body)
                if not message.get("more_body"):
                    with contextlib.suppress(ValueError, AttributeError):
                        issued = orjson.loads(b"".join(token_body)).get("access_token")
                        if issued:
                            with self._lock:
                                self.issued.append(issued)
            if body and status and status[0] == 200 and (hold := self._claim(path, body=True)) is not None:
                half = len(body) // 2
                await send({"type": "http.response.body", "body": body[:half], "more_body": True})
                await self._wait(hold)
                with contextlib.suppress(Exception):  # the client was killed meanwhile
                    await send({**message, "body": body[half:]})
                return
            await send(message)

        await self.app(scope, receive, tapped)


def at_request(prefix: str, counts: dict[int, Callable[[], Any]], method: str = "GET") -> Callable[[str, str], None]:
    """A tap hook: the k-th request under `prefix` first runs `counts[k]` (a fault)."""
    seen = [0]
    lock = threading.Lock()

    def hook(m: str, path: str) -> None:
        if m != method or not path.startswith(prefix):
            return
        with lock:
            seen[0] += 1
            action = counts.get(seen[0])
        if action is not None:
            action()

    return hook


# --- one sandbox, one database, one Dagster instance ------------------------------------------------

class AmazonWorld:
    """An SP-API sandbox (behind an `SpApiTap`; its client secret rotated to a fresh one) and the
    product's Amazon assets over HTTP into a database of its own; both sellers stored with their
    refresh tokens; in-process runs recorded in an on-disk instance."""

    def __init__(self, sandbox: AmazonSandbox, tap: SpApiTap, url: str, database_url: str, home: Path, token_key: str,
                 **amazon: Any):
        self.sb, self.world, self.tap, self.url, self.database_url = sandbox, sandbox.world, tap, url, database_url
        self.home, self.token_key = home, token_key
        self.sellers = list(self.world.seller_ids)
        self.warehouse = PostgresWarehouse(database_url=database_url)
        self.amazon = AmazonResource(base_url=url, budget_database_url=database_url, backoff_initial_s=0.01,
                                     backoff_max_s=0.05, report_poll_s=0.2, **amazon)
        self.auth = AmazonAuthResource(database_url=database_url, client_id=sandbox.client_id,
                                       client_secret=sandbox.client_secret, token_key=token_key,
                                       lwa_url=f"{url}{TOKEN}", endpoint=url)
        self.refresh_tokens = dict(sandbox.refresh_tokens)
        for seller in self.sellers:
            self.auth.add_seller(seller, self.refresh_tokens[seller], "na", self.world.seller(seller).marketplaces)
        self.instance = _home_instance(home, self.sellers)
        self.defs = build_definitions([ApiDefinition(AMAZON, AMAZON_DATASETS, self.amazon, credentials=self.auth)],
                                      self.warehouse)
        self.outputs: list[str] = []  # CLI outputs (scanned)
        self.homes: list[Path] = [home]
        self.texts: list[str] = []  # log lines of the product's loggers (scanned)

    @property
    def engine(self) -> Any:
        return self.warehouse.engine()

    def asset(self, dataset: Any) -> dg.AssetsDefinition:
        return self.defs.get_assets_def(dg.AssetKey(["amazon", dataset.name]))

    def sync(self, dataset: Any, seller: str, month: str | None = None) -> dg.ExecuteInProcessResult:
        key = dataset.join_partition(seller, month) if month else seller
        resources = {"amazon": self.amazon, "amazon_auth": self.auth, "warehouse": self.warehouse,
                     IO_MANAGER_KEY: SnapshotIOManager(warehouse=self.warehouse)}
        return dg.materialize([self.asset(d) for d in AMAZON_DATASETS], partition_key=key, resources=resources,
                              instance=self.instance, selection=[self.asset(dataset).key], raise_on_error=False)

    def cli(self, dataset: Any, seller: str, month: str, name: str, logs: Path) -> Proc:
        """`dagster asset materialize` of the code location, as a user types it, in a home of its own."""
        home = logs / f"{name}-home"
        home.mkdir()
        _home_instance(home, self.sellers).dispose()
        self.homes.append(home)
        env = clean_env(
            SYNC_ASSETS_DATABASE_URL=with_app_name(self.database_url, name), SYNC_ASSETS_APIS="amazon",
            SP_API_CLIENT_ID=self.sb.client_id, SP_API_CLIENT_SECRET=self.sb.client_secret,
            SYNC_ASSETS_TOKEN_KEY=self.token_key, SP_API_LWA_URL=f"{self.url}{TOKEN}", SYNC_ASSETS_AMAZON_URL=self.url,
            SYNC_ASSETS_AMAZON__BACKOFF_INITIAL_S="0.01", SYNC_ASSETS_AMAZON__BACKOFF_MAX_S="0.05", DAGSTER_HOME=str(home),
        )
        return dagster_materialize(env, logs / f"{name}.log", partition=dataset.join_partition(seller, month),
                                   select=f"amazon/{dataset.name}")

    def table(self, dataset: Any, seller: str) -> pd.DataFrame:
        frame = self.warehouse.read_table(dataset)
        return frame[frame["seller_id"] == seller].reset_index(drop=True)

    def digest(self, dataset: Any) -> tuple[int, str, str]:
        """Every row of the dataset's table (all sellers) and its validators, as fingerprints (no
        table yet is the same as an empty one)."""
        table = f'"{dataset.api}"."{dataset.name}"'
        with self.engine.connect() as conn:
            if not conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar():
                return 0, "", ""
            rows = conn.execute(text(f"SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') "
                                     f"FROM {table} t")).one()
            state = conn.execute(text("SELECT coalesce(md5(string_agg(s::text, E'\\n' ORDER BY s::text)), '') FROM "
                                      "sync_assets.sync_state s WHERE dataset = :d"), {"d": dataset.key}).scalar()
        return int(rows[0]), rows[1], state or ""

    def jobs(self, dataset: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            if not conn.execute(text("SELECT to_regclass('sync_assets.report_jobs')")).scalar():
                return []
            rows = conn.execute(text("SELECT id, scope, report_id, state, document_id, finished_at, attempts, window_start, "
                                     "window_end FROM sync_assets.report_jobs WHERE dataset = :d ORDER BY id"),
                                {"d": dataset.key}).mappings().all()
        return [dict(r) for r in rows]

    def seller_row(self, seller: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return dict(conn.execute(text("SELECT status, status_detail FROM sync_assets.amazon_sellers WHERE seller_id = :s"),
                                     {"s": seller}).mappings().one())

    def messages(self, result: dg.ExecuteInProcessResult) -> list[str]:
        return [e.user_message for e in self.instance.all_logs(result.run_id) if e.user_message]

    def creates(self, seller: str, report_type: str) -> dict[tuple[str, str], int]:
        """createReport calls the sandbox handled, per window (dataStartTime, dataEndTime)."""
        return {(k[2], k[3]): n for k, n in self.sb.create_report_calls(seller, report_type).items()}

    def secrets(self) -> set[str]:
        """What must never be written anywhere: the app's LWA secret, every refresh token, every
        access token LWA issued (through the tap or still known to the sandbox), the token key."""
        issued = set(self.tap.issued) | set(getattr(self.sb.lwa, "_access", {}))
        return {self.sb.client_secret, self.token_key, *self.refresh_tokens.values(), *issued}


def _home_instance(home: Path, sellers: list[str]) -> dg.DagsterInstance:
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    instance.add_dynamic_partitions(SELLERS_PARTITIONS, sellers)
    return instance


class _Lines(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.sink.append(self.format(record))


@pytest.fixture
def amazon_worlds(fault_databases: Callable[[str], str], session_secrets: SessionSecrets, haystacks: Haystacks,
                  tmp_path: Path) -> Iterator[Callable[..., AmazonWorld]]:
    """Makes Amazon worlds (`scale`, `amazon` settings of AmazonResource, sandbox knobs); their
    servers stop when the test ends. Every log line of the product's loggers is kept for the scan."""
    lines: list[str] = []
    handler = _Lines(lines)
    product = logging.getLogger("sync_assets")
    level = product.level
    product.addHandler(handler)
    product.setLevel(logging.INFO)
    made: list[AmazonWorld] = []
    with contextlib.ExitStack() as stack:
        def make(scale: str | int = "tiny", amazon: dict[str, Any] | None = None, **knobs: Any) -> AmazonWorld:
            sandbox = AmazonSandbox(scale=scale, **{**FAST, **knobs})
            sandbox.rotate_client_secret()  # a secret of this session, not the sandbox's published one
            tap = SpApiTap(sandbox.app)
            url = stack.enter_context(serve_in_thread(tap, log_level="critical"))
            home = tmp_path / f"home-{len(made)}"
            home.mkdir()
            world = AmazonWorld(sandbox, tap, url, fault_databases("amazon"), home, session_secrets.token_key,
                                **(amazon or {}))
            world.texts = lines
            haystacks.secret_sources.append(world.secrets)
            haystacks.instances.append(world.instance)
            made.append(world)
            WORLDS.append(world)
            return world

        try:
            yield make
        finally:
            for world in made:
                world.tap.release()
            product.removeHandler(handler)
            product.setLevel(level)
            haystacks.texts.append("\n".join(lines))
            for world in made:
                haystacks.texts.extend(world.outputs)
                haystacks.paths.extend(world.homes)


# --- what the sandbox says, and what the tables hold --------------------------------------------

def _money(value: Any) -> Decimal | None:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) or value == "" \
        else Decimal(str(value)).quantize(Decimal("0.01"))


def _int(value: Any) -> int | None:
    return None if value is None or value == "" or (not isinstance(value, str) and pd.isna(value)) else int(value)


def _months_back(n: int) -> str:
    now = datetime.now(timezone.utc).replace(day=1)
    for _ in range(n):
        now = (now - timedelta(days=1)).replace(day=1)
    return now.strftime("%Y-%m-01")


def _span(dataset: Any, month: str) -> tuple[datetime, datetime]:
    [span] = dataset.windows.spans(month, datetime.now(timezone.utc))
    return span.start, span.end


def _busiest(world: AmazonWorld, dataset: Any, seller: str, months: range = range(2, 10)) -> str:
    """The month (2 to 9 months back) whose report window holds the most rows of the seller."""
    rows = world.world.ledger_rows if dataset is INVENTORY_LEDGER else world.world.reimbursement_rows
    return max((_months_back(n) for n in months), key=lambda m: (len(rows(seller, *_span(dataset, m))), m))


def _report_rows(world: AmazonWorld, dataset: Any, seller: str, months: list[str]) -> Counter:
    """The report rows of the seller's months as the sandbox makes them, as comparable tuples."""
    want: Counter = Counter()
    for month in months:
        start, end = _span(dataset, month)
        if dataset is INVENTORY_LEDGER:
            for r in world.world.ledger_rows(seller, start, end):
                want[(parse_ledger_time(r["Date and Time"]), r["FNSKU"], r["Event Type"], int(r["Quantity"]),
                      r["Reference ID"] or None, r["Reason"] or None)] += 1
        else:
            for r in world.world.reimbursement_rows(seller, start, end):
                want[(r["reimbursement-id"], r["sku"], r["fnsku"], _money(r["amount-total"]),
                      _int(r["quantity-reimbursed-total"]), parse_reimbursement_time(r["approval-date"]))] += 1
    return want


def _stored_rows(world: AmazonWorld, dataset: Any, seller: str) -> Counter:
    table = world.table(dataset, seller)
    if dataset is INVENTORY_LEDGER:
        return Counter((r.date_and_time.to_pydatetime(), r.fnsku, r.event_type, int(r.quantity),
                        r.reference_id if isinstance(r.reference_id, str) else None,
                        r.reason if isinstance(r.reason, str) else None) for r in table.itertuples())
    return Counter((r.reimbursement_id, r.sku, r.fnsku, _money(r.amount_total), _int(r.quantity_reimbursed_total),
                    r.approval_date.to_pydatetime()) for r in table.itertuples())


def _reports_exact(world: AmazonWorld, dataset: Any, seller: str, months: list[str]) -> str | None:
    want, have = _report_rows(world, dataset, seller, months), _stored_rows(world, dataset, seller)
    if want == have:
        return None
    return f"{sum(have.values())} rows stored, {sum(want.values())} in the sandbox's reports, {len(set(have) ^ set(want))} differ"


def _inventory_diff(world: AmazonWorld, seller: str) -> str | None:
    stored = world.table(INVENTORY_SUMMARIES, seller)
    data = world.world.seller(seller)
    with world.world.lock:
        want = {(mp, s["sellerSku"]): (s["fnSku"], s["totalQuantity"], s["inventoryDetails"]["fulfillableQuantity"])
                for mp in data.marketplaces for s in data.inventory[mp]}
    have = {(r.marketplace_id, r.seller_sku): (r.fn_sku, int(r.total_quantity), int(r.fulfillable_quantity))
            for r in stored.itertuples()}
    if len(stored) != len(have):
        return f"{len(stored) - len(have)} duplicate rows"
    if have != want:
        return f"{len(have)} rows stored, {len(want)} in the sandbox, {len(set(have.items()) ^ set(want.items()))} differ"
    return None


def _transactions(world: AmazonWorld, seller: str, month: str) -> list[dict[str, Any]]:
    """The seller's transactions of the month's window (its lookback included) as the sandbox serves them."""
    start, end = _span(FINANCIAL_TRANSACTIONS, month)
    return [t for t in world.world.transactions(seller, world.sb.now_datetime())
            if start <= datetime.fromisoformat(t["postedDate"].replace("Z", "+00:00")) < end]


def _busiest_transactions(world: AmazonWorld, seller: str) -> str:
    return max((_months_back(n) for n in range(2, 10)), key=lambda m: (len(_transactions(world, seller, m)), m))


def _transactions_diff(world: AmazonWorld, seller: str, month: str) -> str | None:
    want = {t["transactionId"]: (t["transactionStatus"], _money(t["totalAmount"]["currencyAmount"]))
            for t in _transactions(world, seller, month)}
    stored = world.table(FINANCIAL_TRANSACTIONS, seller)
    have = {r.transaction_id: (r.transaction_status, _money(r.total_amount)) for r in stored.itertuples()}
    if len(stored) != len(have):
        return f"{len(stored) - len(have)} duplicate rows"
    if not want or have != want:
        return f"{len(have)} rows stored, {len(want)} in the sandbox, {len(set(have.items()) ^ set(want.items()))} differ"
    return None


def _change_inventory(world: AmazonWorld, seller: str, marketplace: str) -> tuple[str, str]:
    """Amazon's inventory moves: one SKU leaves FBA, another's quantities change. Returns both SKUs."""
    with world.world.lock:
        skus = world.world.seller(seller).inventory[marketplace]
        gone = skus.pop(len(skus) // 2)
        moved = skus[0]
        moved["inventoryDetails"]["fulfillableQuantity"] += 7
        moved["totalQuantity"] += 7
    return gone["sellerSku"], moved["sellerSku"]


# --- 1. SIGKILL while a report is polled ----------------------------------------------------------

POLL_KILLS = (  # (dataset, where the run is when it dies, hold the next getReport)
    (REIMBURSEMENTS, "waiting between two getReport calls", False),
    (INVENTORY_LEDGER, "inside a getReport call (held by the tap)", True),
)
QUEUED_S = 600.0  # the sandbox keeps each report IN_QUEUE this long, then IN_PROGRESS as long


def _kill_cli(world: AmazonWorld, proc: Proc, observer: Observer, name: str) -> None:
    """SIGKILL to the run's whole process group; its database sessions end (their locks with them)."""
    proc.kill_group(signal.SIGKILL)
    assert proc.wait(30) is not None, "the killed run did not end"
    world.outputs.append(proc.output())
    observer.wait_gone(name)
    world.tap.release()


def _open_job(world: AmazonWorld, dataset: Any, report_id: str | None = None) -> dict[str, Any] | None:
    """The unfinished job of the dataset that knows its report (the one the run is working on)."""
    return next((j for j in world.jobs(dataset) if j["report_id"] and j["finished_at"] is None
                 and report_id in (None, j["report_id"])), None)


def test_sigkill_while_a_report_is_polled_then_the_next_run_polls_the_same_report(
    amazon_worlds: Callable[..., AmazonWorld], fault_report: FaultReport, tmp_path: Path,
) -> None:
    entry = _entry(fault_report, "test_sigkill_while_a_report_is_polled_then_the_next_run_polls_the_same_report",
                   "`dagster asset materialize --select amazon/<report dataset> --partition <seller>|<month>` "
                   f"(SYNC_ASSETS_APIS=amazon) killed with SIGKILL while its report is IN_QUEUE (sandbox knob "
                   f"`report_queue_seconds` {QUEUED_S:.0f}), seen in `sync_assets.report_jobs`: between two getReport calls, "
                   "or inside one held by the tap; then the sandbox clock moves on and the next run (in-process) resumes;")
    world = amazon_worlds(scale="small", report_queue_seconds=QUEUED_S, report_processing_seconds=QUEUED_S)
    seller = world.sellers[0]
    observer = Observer(world.database_url)
    try:
        for i, (dataset, where, in_call) in enumerate(POLL_KILLS):
            month = _busiest(world, dataset, seller)
            report_type = dataset.report.report_type
            before = world.digest(dataset)
            world.tap.reset()
            if in_call:
                world.tap.hold(REPORT, after=1)  # the first status check answers IN_QUEUE; the second never returns
            name = f"faults-amazon-poll-{i}"
            with world.cli(dataset, seller, month, name, tmp_path) as proc:
                def polling() -> dict[str, Any] | None:
                    assert proc.alive(), f"{name} ended before it polled:\n{proc.output()[-3000:]}"
                    job = _open_job(world, dataset)
                    if job is None:
                        return None
                    if in_call:
                        return job if world.tap.held() else None
                    return job if world.tap.answered(REPORT + job["report_id"]) else None

                job = poll(polling, KILL_TIMEOUT_S, 0.01)
                assert job is not None, f"{name}: never polled a report:\n{proc.output()[-3000:]}"
                checks = len(world.tap.answered(REPORT + job["report_id"]))
                _kill_cli(world, proc, observer, name)
            report_id = job["report_id"]
            # dead while polling: the job is kept unfinished with its report; nothing written; one report
            after_kill = _open_job(world, dataset, report_id)
            assert after_kill is not None and after_kill["id"] == job["id"] and after_kill["state"] in ("IN_QUEUE", "IN_PROGRESS")
            assert world.digest(dataset) == before, f"{dataset.key}: the killed run changed the table"
            assert list(world.creates(seller, report_type).values()) == [1]

            world.sb.advance(2 * QUEUED_S + 1)  # the report is DONE now
            world.tap.reset()
            result = world.sync(dataset, seller, month)
            assert result.success, failure_text(result)[-2000:]
            # the same report polled, never requested again: exactly one createReport per window
            assert list(world.creates(seller, report_type).values()) == [1], world.creates(seller, report_type)
            assert not world.tap.arrived(REPORTS, "POST"), "the next run requested another report"
            assert not [r for r in world.tap.arrived(REPORTS, "GET") if r[1] == REPORTS], "the next run looked for another"
            assert world.tap.answered(REPORT + report_id, lambda s: s == 200), "the next run did not poll the report"
            [resumed] = [j for j in world.jobs(dataset) if j["id"] == job["id"]]
            assert len(world.jobs(dataset)) == 1 and resumed["finished_at"] is not None and resumed["attempts"] == 2
            assert any(f"resuming report {report_id}" in m for m in world.messages(result))
            assert _reports_exact(world, dataset, seller, [month]) is None
            entry.tally("runs killed").add(f"{dataset.key}: {where}")
            entry.tally("next run after the fault").add(
                f"{dataset.key}: polled the same reportId, 1 createReport for the window, rows = the sandbox's")
            entry.notes.append(f"{dataset.key} {month[:7]}: killed after {checks} status check(s) of report {report_id}; "
                               f"the next run resumed it (attempt 2) and wrote {sum(_stored_rows(world, dataset, seller).values())} rows")
    finally:
        world.tap.release()
        observer.close()


# --- 2. SIGKILL while the report's document downloads ------------------------------------------------

DOWNLOAD_KILLS = (  # (dataset, held path, after half the body, where the run is when it dies)
    (INVENTORY_LEDGER, DOCUMENT_INFO, False, "inside getReportDocument (held by the tap)"),
    (INVENTORY_LEDGER, DOWNLOAD, True, "half of the gzip document received (the rest held by the tap)"),
    (REIMBURSEMENTS, DOWNLOAD, True, "half of the document received (the rest held by the tap)"),
)


def test_sigkill_mid_download_then_the_same_report_is_downloaded_whole(
    amazon_worlds: Callable[..., AmazonWorld], fault_report: FaultReport, tmp_path: Path,
) -> None:
    entry = _entry(fault_report, "test_sigkill_mid_download_then_the_same_report_is_downloaded_whole",
                   "the same CLI run killed with SIGKILL while its DONE report's document is fetched: inside "
                   "getReportDocument, or with half of the document's body received (the tap holds the rest);")
    world = amazon_worlds(scale="small")
    seller = world.sellers[1]
    # a month of each report already synced (the kills must leave it as it is), the months to kill in
    # (the busiest): two months apart, so no two windows overlap
    kill_months: dict[str, list[str]] = {}
    synced: dict[str, list[str]] = {}
    for dataset in (INVENTORY_LEDGER, REIMBURSEMENTS):
        kills = sum(d is dataset for d, *_ in DOWNLOAD_KILLS)
        rows = world.world.ledger_rows if dataset is INVENTORY_LEDGER else world.world.reimbursement_rows
        ranked = sorted((_months_back(n) for n in range(2, 12, 2)), key=lambda m: -len(rows(seller, *_span(dataset, m))))
        kill_months[dataset.key], synced[dataset.key] = ranked[:kills], [ranked[kills]]
        assert world.sync(dataset, seller, ranked[kills]).success
    observer = Observer(world.database_url)
    try:
        for i, (dataset, held_path, half, where) in enumerate(DOWNLOAD_KILLS):
            done, month = synced[dataset.key], kill_months[dataset.key].pop(0)
            assert _report_rows(world, dataset, seller, [month]), f"{dataset.key} {month}: no rows to download"
            report_type = dataset.report.report_type
            before = world.digest(dataset)
            downloads = world.sb.counters()["documents"]["downloads"]
            world.tap.reset()
            world.tap.hold(held_path, body=half)
            name = f"faults-amazon-download-{i}"
            with world.cli(dataset, seller, month, name, tmp_path) as proc:
                held = poll(lambda: world.tap.held() or not proc.alive(), KILL_TIMEOUT_S, 0.01)
                assert held and proc.alive(), f"{name}: never fetched the document:\n{proc.output()[-3000:]}"
                job = _open_job(world, dataset)
                _kill_cli(world, proc, observer, name)
            assert job is not None and job["state"] == "DONE" and job["document_id"]
            assert _open_job(world, dataset, job["report_id"])["id"] == job["id"], "the job was not kept unfinished"
            assert world.digest(dataset) == before, f"{dataset.key}: the killed run wrote part of a document"
            assert _reports_exact(world, dataset, seller, done) is None
            window = _span(dataset, month)
            assert sum(n for (a, _), n in world.creates(seller, report_type).items()
                       if datetime.fromisoformat(a.replace("Z", "+00:00")) == window[0]) == 1

            world.tap.reset()
            result = world.sync(dataset, seller, month)
            assert result.success, failure_text(result)[-2000:]
            assert all(n == 1 for n in world.creates(seller, report_type).values()), world.creates(seller, report_type)
            assert not world.tap.arrived(REPORTS, "POST"), "the next run requested another report"
            assert [p for _, p, _ in world.tap.arrived(DOCUMENT_INFO)] == [DOCUMENT_INFO + job["document_id"]]
            resumed = next(j for j in world.jobs(dataset) if j["id"] == job["id"])
            assert resumed["finished_at"] is not None and resumed["report_id"] == job["report_id"]
            assert world.sb.counters()["documents"]["downloads"] - downloads == 1 + half  # the killed one, if it began
            done.append(month)
            assert _reports_exact(world, dataset, seller, done) is None
            entry.tally("runs killed").add(f"{dataset.key}: {where}")
            entry.tally("next run after the fault").add(
                f"{dataset.key}: the same report downloaded again whole, 1 createReport for the window, rows = the sandbox's")
    finally:
        world.tap.release()
        observer.close()


# --- 3. next tokens that expire mid-walk ---------------------------------------------------------------

def _expire_backoff(world: AmazonWorld) -> None:
    """As if the failed slices' backoff had passed (the clock moving on)."""
    with world.engine.begin() as conn:
        if conn.execute(text("SELECT to_regclass('sync_assets.failed_items')")).scalar():
            conn.execute(text("UPDATE sync_assets.failed_items SET retry_at = now() - interval '1 second'"))


def test_an_expired_next_token_restarts_the_inventory_walk_and_the_table_is_exact(
    amazon_worlds: Callable[..., AmazonWorld], fault_report: FaultReport,
) -> None:
    entry = _entry(fault_report, "test_an_expired_next_token_restarts_the_inventory_walk_and_the_table_is_exact",
                   "inventory next tokens expired mid-walk (`expire_next_tokens()` at the 3rd page, from the tap), and a "
                   "token lifetime (`inventory_token_ttl` 0.05 s) shorter than one answer (`latency` 0.2 s);")
    world = amazon_worlds(inventory_page_size=2)
    seller = world.sellers[1]  # US (12 SKUs, 6 pages) and CA (3 SKUs, 2 pages), walked at once
    assert world.sync(INVENTORY_SUMMARIES, seller).success
    assert _inventory_diff(world, seller) is None

    # inventory moves, and every next token dies as the walk asks its 3rd page: the refused walks restart
    gone, moved = _change_inventory(world, seller, US)
    world.tap.reset()
    world.tap.on_request = at_request(INVENTORY, {3: world.sb.expire_next_tokens})
    result = world.sync(INVENTORY_SUMMARIES, seller)
    world.tap.on_request = None
    assert result.success, failure_text(result)[-2000:]
    refused = world.tap.answered(INVENTORY, lambda s: s == 400)
    restarts = [m for m in world.messages(result) if "restarting from the first page" in m]
    assert 1 <= len(refused) <= 2 and len(restarts) == len(refused), (refused, restarts)
    assert all("refused the next token" in m for m in restarts), restarts
    assert _inventory_diff(world, seller) is None  # the moved SKU updated, the gone one removed, nothing twice
    stored = world.table(INVENTORY_SUMMARIES, seller)
    keys = set(zip(stored.marketplace_id, stored.seller_sku))
    assert (US, gone) not in keys and (US, moved) in keys
    pages = len(world.tap.answered(INVENTORY, lambda s: s == 200))
    entry.tally("runs with next tokens expired mid-walk").add(
        f"{len(refused)} walk(s) refused an expired token and restarted from page 1: table exact (a SKU gone, one moved)")
    entry.notes.append(f"expired mid-walk: {pages} inventory pages answered for 8 pages of data ({len(refused)} restart(s))")

    # tokens that die before any can be used: every walk restarts until `max_walks`, then the run fails;
    # the mirror is not touched (nothing deleted, nothing half-written)
    world.sb.configure(inventory_token_ttl=0.05, latency=0.2)
    _change_inventory(world, seller, US)
    before = world.digest(INVENTORY_SUMMARIES)
    world.tap.reset()
    started = time.monotonic()
    result = world.sync(INVENTORY_SUMMARIES, seller)
    seconds = time.monotonic() - started
    assert not result.success
    message = failure_text(result)
    assert "no complete walk after 3 tries" in message and "nothing was written" in message, message[-2000:]
    assert world.digest(INVENTORY_SUMMARIES) == before, "a failed walk changed the mirror"
    asked = len(world.tap.arrived(INVENTORY))
    assert asked <= 2 * 3 * 2, asked  # two slices, three walks each, two pages a walk (the second's token is dead)
    entry.tally("runs whose next tokens always die").add(
        f"failed after 3 walks per marketplace ({asked} requests, {seconds:.1f}s): mirror unchanged")
    entry.notes.append(f"tokens always dead: `{message.splitlines()[-1][:220]}`")

    world.sb.configure(inventory_token_ttl=30.0, latency=0.0)
    _expire_backoff(world)
    result = world.sync(INVENTORY_SUMMARIES, seller)
    assert result.success and _inventory_diff(world, seller) is None
    entry.tally("next run after the fault").add("inventory, next tokens living again: table exact")


# --- 4. 5xx storms ---------------------------------------------------------------------------------------

STORM_RATE = 0.3
STORM_RUNS = 8  # runs of one partition before the storm must have let one through (a createReport 5xx fails its run)


def _let_latches_expire(world: AmazonWorld) -> None:
    """As if the circuit breaker's cooldown had passed (the clock moving on)."""
    with world.engine.begin() as conn:
        if conn.execute(text("SELECT to_regclass('sync_assets.api_latches')")).scalar():
            conn.execute(text("DELETE FROM sync_assets.api_latches"))


def test_a_5xx_storm_ends_with_exact_data_bounded_retries_or_a_clean_failure(
    amazon_worlds: Callable[..., AmazonWorld], fault_report: FaultReport,
) -> None:
    from sync_assets.fetch.pagination import WalkLimits

    entry = _entry(fault_report, "test_a_5xx_storm_ends_with_exact_data_bounded_retries_or_a_clean_failure",
                   f"sandbox knob `error_rate` {STORM_RATE:.0%} (500/503 on every SP-API operation, reports included) "
                   "and 100% (an outage);")
    world = amazon_worlds(scale="small", inventory_page_size=2, transactions_page_size=1)  # 67 + 20 pages
    seller = world.sellers[1]
    tx_month = _busiest_transactions(world, seller)
    cases = ((INVENTORY_SUMMARIES, None, INVENTORY), (FINANCIAL_TRANSACTIONS, tx_month, TRANSACTIONS),
             (INVENTORY_LEDGER, _busiest(world, INVENTORY_LEDGER, seller), "/reports/"),
             (REIMBURSEMENTS, _busiest(world, REIMBURSEMENTS, seller), "/reports/"))
    tries = world.amazon.max_attempts * WalkLimits().max_idle_rounds  # attempts of one request, every round
    world.sb.configure(error_rate=STORM_RATE, error_seed=int(rng_for("amazon-storm").random() * 1e6))
    for dataset, month, prefix in cases:
        label = f"{dataset.key}{f' {month[:7]}' if month else ''}"
        failures: list[str] = []
        for run in range(1, STORM_RUNS + 1):
            before = world.digest(dataset)
            world.tap.reset()
            result = world.sync(dataset, seller, month)
            errors = world.tap.answered(prefix, lambda s: s >= 500)
            attempts = Counter((m, p, q) for m, p, q in world.tap.arrived(prefix))
            assert max(attempts.values()) <= tries, attempts.most_common(3)  # retries are bounded per request
            retried = [m for m in world.messages(result) if "; retry " in m]
            if result.success:
                break
            # a clean failure: it says which 5xx, and nothing was written
            message = failure_text(result)
            assert "HTTP 50" in message or "InternalFailure" in message or "ServiceUnavailable" in message, message[-2000:]
            assert world.digest(dataset) == before, f"{label}: a failed run changed the table"
            entry.tally(f"runs in a {STORM_RATE:.0%} 5xx storm").add(f"{label}: failed cleanly, table unchanged")
            entry.notes.append(f"{label} run {run} failed: `{message.splitlines()[-1][:200]}`")
            failures.append(message.splitlines()[-1])
            _expire_backoff(world)
        else:
            raise AssertionError(f"{label}: {STORM_RUNS} runs in a {STORM_RATE:.0%} storm and none succeeded")
        if dataset.report is None:  # every 5xx of a walk was retried and counted
            meta = {k: getattr(v, "value", v) for k, v in
                    result.get_asset_materialization_events()[0].materialization.metadata.items()}
            assert meta["retries"] == len(errors) == len(retried), (meta["retries"], len(errors), len(retried))
            exact = _inventory_diff(world, seller) if month is None else _transactions_diff(world, seller, month)
        else:
            assert list(world.creates(seller, dataset.report.report_type).values()) == [1]  # one report, however many runs
            exact = _reports_exact(world, dataset, seller, [month])
        assert exact is None, f"{label}: {exact}"
        entry.tally(f"runs in a {STORM_RATE:.0%} 5xx storm").add(f"{label}: exact data")
        entry.tally(f"5xx served in the storm, each retried (at most {tries} attempts per request)").add(
            f"{label} (the run that succeeded)", len(errors))
        if failures and all(f"POST {world.url}{REPORTS} -> HTTP 50" in f for f in failures):
            entry.notes.append(f"{label}: each failed run ended at a createReport answered 5xx, which is never sent again "
                               "in the same run (it may have been acted on); the next run looked for the report, found "
                               "none and requested it: one createReport for the window")

    # an outage: every SP-API call fails. The inventory mirror is not touched; the run stops bounded
    world.sb.configure(error_rate=1.0)
    before = world.digest(INVENTORY_SUMMARIES)
    world.tap.reset()
    started = time.monotonic()
    result = world.sync(INVENTORY_SUMMARIES, seller)
    seconds = time.monotonic() - started
    asked = len(world.tap.arrived(INVENTORY))
    assert not result.success and world.digest(INVENTORY_SUMMARIES) == before
    assert asked <= 2 * tries, asked  # two marketplaces, each request at most `tries` times
    message = failure_text(result)
    entry.tally("runs in an outage (100% 5xx)").add(
        f"inventory: failed after {asked} requests in {seconds:.1f}s, mirror unchanged")
    entry.notes.append(f"outage: `{message.splitlines()[-1][:220]}`")
    world.sb.configure(error_rate=0.0)
    _let_latches_expire(world)
    _expire_backoff(world)
    assert world.sync(INVENTORY_SUMMARIES, seller).success and _inventory_diff(world, seller) is None


# --- 5. access tokens that expire mid-walk -------------------------------------------------------------

REFRESHED = "SP-API refused the access token (expired); using a new one"


def _grants(world: AmazonWorld) -> int:
    return int(world.sb.lwa.counters["tokens_issued"])


def test_access_tokens_expiring_mid_walk_are_refreshed_once_each_and_the_data_is_exact(
    amazon_worlds: Callable[..., AmazonWorld], fault_report: FaultReport,
) -> None:
    entry = _entry(fault_report, "test_access_tokens_expiring_mid_walk_are_refreshed_once_each_and_the_data_is_exact",
                   "every access token expired mid-walk (`expire_access_tokens()` at chosen pages, from the tap), and "
                   "access tokens living 2 s (`access_token_ttl`) on a walk of several seconds;")
    world = amazon_worlds(inventory_page_size=2, transactions_page_size=1)
    seller = world.sellers[1]
    month = _busiest_transactions(world, seller)
    assert len(_transactions(world, seller, month)) >= 5
    cases = ((INVENTORY_SUMMARIES, None, INVENTORY, (3, 6)), (FINANCIAL_TRANSACTIONS, month, TRANSACTIONS, (2, 4)))
    for dataset, when, prefix, pages in cases:
        label = dataset.key
        grants = _grants(world)
        world.tap.reset()
        world.tap.on_request = at_request(prefix, {k: world.sb.expire_access_tokens for k in pages})
        result = world.sync(dataset, seller, when)
        world.tap.on_request = None
        assert result.success, failure_text(result)[-2000:]
        refreshes = [m for m in world.messages(result) if REFRESHED in m]
        refused = set(world.tap.refused)
        # one new token per expiry: each expired token refused (both walks at once may each see it), refreshed once
        assert _grants(world) - grants == len(pages) == len(refused) == len(refreshes), \
            (_grants(world) - grants, len(refused), len(refreshes))
        exact = _inventory_diff(world, seller) if when is None else _transactions_diff(world, seller, when)
        assert exact is None, f"{label}: {exact}"
        assert world.seller_row(seller)["status"] == "valid"
        entry.tally("runs with access tokens expired mid-walk").add(
            f"{label}: {len(pages)} expiries -> {len(pages)} LWA grants, {len(world.tap.refused)} requests refused "
            "and sent again, data exact")

    # tokens that live 2 s on a walk of several seconds (one page a request, 0.3 s each): the cached token
    # is refused first (expired), each new one after two seconds; each costs one grant, no more
    world.sb.configure(access_token_ttl=2, latency=0.3, inventory_page_size=1)
    world.sb.expire_access_tokens()
    _change_inventory(world, seller, US)
    grants = _grants(world)
    world.tap.reset()
    started = time.monotonic()
    result = world.sync(INVENTORY_SUMMARIES, seller)
    seconds = time.monotonic() - started
    world.sb.configure(access_token_ttl=3600, latency=0.0, inventory_page_size=2)
    assert result.success, failure_text(result)[-2000:]
    refreshes = [m for m in world.messages(result) if REFRESHED in m]
    refused = set(world.tap.refused)
    new = _grants(world) - grants
    # a refresh per token SP-API refused; at most one more grant when the run began with a token already due
    assert len(refused) >= 2 and len(refreshes) == len(refused) and new - len(refreshes) in (0, 1), \
        (new, len(refused), len(refreshes), seconds)
    assert _inventory_diff(world, seller) is None
    entry.tally("runs with access tokens expired mid-walk").add(
        f"inventory, tokens living 2 s ({seconds:.1f}s walk): {len(refused)} tokens expired -> {len(refreshes)} "
        f"refreshes, {new} grants, data exact")


# --- 6. a seller who revokes the app -------------------------------------------------------------------

def test_a_revoked_seller_is_marked_with_what_to_do_and_nothing_is_deleted(
    amazon_worlds: Callable[..., AmazonWorld], fault_report: FaultReport,
) -> None:
    entry = _entry(fault_report, "test_a_revoked_seller_is_marked_with_what_to_do_and_nothing_is_deleted",
                   "the seller revokes the app (`revoke_refresh_token`: LWA answers invalid_grant, its access tokens die) "
                   "between runs, mid-walk (from the tap at the 3rd page) and while its report is polled;")
    world = amazon_worlds(inventory_page_size=2, transactions_page_size=1)
    seller, other = world.sellers[1], world.sellers[0]
    marketplaces = world.world.seller(seller).marketplaces
    month, ledger_month = _busiest_transactions(world, seller), _busiest(world, INVENTORY_LEDGER, seller)
    synced = ((INVENTORY_SUMMARIES, None), (FINANCIAL_TRANSACTIONS, month), (INVENTORY_LEDGER, ledger_month))
    for dataset, when in synced:
        assert world.sync(dataset, seller, when).success

    def digests() -> dict[str, Any]:
        return {d.key: world.digest(d) for d in (INVENTORY_SUMMARIES, FINANCIAL_TRANSACTIONS, INVENTORY_LEDGER, REIMBURSEMENTS)}

    def reauthorize() -> None:
        token = world.sb.authorize_again(seller)
        world.refresh_tokens[f"{seller}#{len(world.refresh_tokens)}"] = token
        world.auth.add_seller(seller, token, "na", marketplaces)  # what `sync-assets amazon add-seller` does
        assert world.seller_row(seller)["status"] == "valid"

    def revoked(result: dg.ExecuteInProcessResult, where: str, before: dict[str, Any]) -> str:
        assert not result.success, f"{where}: the run succeeded for a revoked seller"
        message = failure_text(result)
        assert seller in message and ADD_SELLER in message and "re-authorize" in message, message[-2000:]
        row = world.seller_row(seller)
        assert row["status"] == "revoked" and ADD_SELLER in (row["status_detail"] or ""), row
        assert digests() == before, f"{where}: a table changed"
        return message

    # 1. revoked between two runs: the cached token is refused, the one refresh is refused by LWA
    before = digests()
    world.sb.revoke_refresh_token(seller)
    invalid_grant = world.sb.lwa.counters["invalid_grant"]
    message = revoked(world.sync(INVENTORY_SUMMARIES, seller), "revoked between runs", before)
    assert world.sb.lwa.counters["invalid_grant"] - invalid_grant == 1  # LWA asked once, not once per walk
    entry.tally("runs of a revoked seller").add("revoked between runs: failed naming the seller and "
                                                f"`{ADD_SELLER}`, status revoked, nothing deleted")
    last = message.splitlines()[-1]
    remedy = last[last.index("LWA rejected"):][:420].replace("`", "")
    entry.notes.append(f"revoked between runs, the run's error: `... {remedy}`")

    # 2. the next runs fail at once, asking neither LWA nor SP-API; the other seller is unaffected
    world.tap.reset()
    for dataset, when in synced:
        result = world.sync(dataset, seller, when)
        assert not result.success and "marked revoked" in failure_text(result), failure_text(result)[-2000:]
    assert world.tap.arrived() == [], world.tap.arrived()[:5]
    assert digests() == before
    assert world.sync(INVENTORY_SUMMARIES, other).success and _inventory_diff(world, other) is None
    before = digests()
    entry.tally("runs of a revoked seller").add(f"{len(synced)} later runs: failed before any request (status revoked)")

    # 3. what the message says works: a new authorization stored, the seller syncs again
    reauthorize()
    _change_inventory(world, seller, US)
    assert world.sync(INVENTORY_SUMMARIES, seller).success and _inventory_diff(world, seller) is None
    entry.tally("next run after the fault").add(f"revoked seller, after `{ADD_SELLER}` with a new authorization: exact")

    # 4. revoked mid-walk: the inventory mirror is not emptied, nothing of the walk is written
    before = digests()
    _change_inventory(world, seller, US)  # something the walk would write
    world.tap.on_request = at_request(INVENTORY, {3: lambda: world.sb.revoke_refresh_token(seller)})
    revoked(world.sync(INVENTORY_SUMMARIES, seller), "revoked mid-walk", before)
    world.tap.on_request = None
    entry.tally("runs of a revoked seller").add("revoked mid-walk (page 3): failed, mirror and validators unchanged")

    # 5. revoked while its report is polled: the job is kept; once re-authorized the next run polls the same report
    reauthorize()
    report_month = _busiest(world, REIMBURSEMENTS, seller)
    world.sb.configure(report_queue_seconds=QUEUED_S, report_processing_seconds=QUEUED_S)
    before = digests()
    world.tap.on_request = at_request(REPORT, {2: lambda: world.sb.revoke_refresh_token(seller)})
    revoked(world.sync(REIMBURSEMENTS, seller, report_month), "revoked while a report is polled", before)
    world.tap.on_request = None
    job = _open_job(world, REIMBURSEMENTS)
    assert job is not None
    reauthorize()
    world.sb.advance(2 * QUEUED_S + 1)
    world.tap.reset()
    result = world.sync(REIMBURSEMENTS, seller, report_month)
    assert result.success, failure_text(result)[-2000:]
    assert not world.tap.arrived(REPORTS, "POST") and world.tap.answered(REPORT + job["report_id"])
    assert list(world.creates(seller, REIMBURSEMENTS.report.report_type).values()) == [1]
    assert _reports_exact(world, REIMBURSEMENTS, seller, [report_month]) is None
    entry.tally("runs of a revoked seller").add(
        "revoked while its report was polled: failed, job kept; re-authorized, the next run polled the same report, exact")


# --- 7. the secret scan ----------------------------------------------------------------------------------

def _open_home(home: Path) -> dg.DagsterInstance:
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def test_no_lwa_secret_or_token_in_logs_metadata_event_logs_or_tables(
    amazon_worlds: Callable[..., AmazonWorld], fault_report: FaultReport, tmp_path: Path,
) -> None:
    from .test_99_secrets import _files, _tables

    entry = _entry(fault_report, "test_no_lwa_secret_or_token_in_logs_metadata_event_logs_or_tables",
                   "then, after all of it: the event logs (run records, every event, materialization metadata) of every "
                   "instance, the captured logs and every file under the DAGSTER_HOMEs, the CLI output, the product's log "
                   "lines and every table of every database, searched for the LWA client secret, every refresh token and "
                   "every access token the sandbox issued, and the token key.")
    worlds = [w for w in WORLDS if w.tap.issued]
    if not worlds:  # run alone: LWA traffic with an expiry, a revocation and a CLI run to scan
        world = amazon_worlds(inventory_page_size=2)
        seller = world.sellers[1]
        world.tap.on_request = at_request(INVENTORY, {3: world.sb.expire_access_tokens})
        assert world.sync(INVENTORY_SUMMARIES, seller).success
        world.tap.on_request = None
        month = _busiest(world, REIMBURSEMENTS, seller)
        with world.cli(REIMBURSEMENTS, seller, month, "faults-amazon-scan", tmp_path) as proc:
            assert proc.wait(KILL_TIMEOUT_S) == 0, proc.output()[-3000:]
            world.outputs.append(proc.output())
        world.sb.revoke_refresh_token(seller)
        assert not world.sync(INVENTORY_SUMMARIES, seller).success
        worlds = [world]

    secrets_ = set().union(*(w.secrets() for w in worlds))
    access = set().union(*(set(w.tap.issued) for w in worlds))
    haystack: dict[str, list[str]] = {"event logs and run records": [], "materialization metadata": [], "tables": [],
                                      "log lines and CLI output": []}
    files: list[Path] = []
    runs = 0
    for world in worlds:
        for home in world.homes:
            instance = world.instance if home == world.home else _open_home(home)
            try:
                for run in instance.get_runs():
                    runs += 1
                    haystack["event logs and run records"].append(repr(run.run_config) + repr(run.tags))
                    for record in instance.all_logs(run.run_id):
                        haystack["event logs and run records"].append(record.user_message or "")
                        if record.dagster_event is not None:
                            haystack["event logs and run records"].append(repr(record.dagster_event))
                        if record.asset_materialization is not None:
                            haystack["materialization metadata"].append(repr(record.asset_materialization.metadata))
            finally:
                if instance is not world.instance:
                    instance.dispose()
        files += _files(list(world.homes))
        haystack["tables"].extend(_tables(world.database_url))
        haystack["log lines and CLI output"] += [*world.texts, *world.outputs]
    blobs = {name: "\n".join(parts) for name, parts in haystack.items()}
    file_bytes = {f: f.read_bytes() for f in files}
    captured = [f for f in files if f.suffix in (".out", ".err", ".complete") or "compute_logs" in f.parts]

    leaks = []
    for secret in secrets_:
        kind = "access token" if secret in access else "secret"
        leaks += [f"{kind} {secret[:6]}… in {name}" for name, blob in blobs.items() if secret in blob]
        leaks += [f"{kind} {secret[:6]}… in {path}" for path, data in file_bytes.items() if secret.encode() in data]

    sizes = {name: len(blob) for name, blob in blobs.items()}
    scanned = sum(sizes.values()) + sum(len(d) for d in file_bytes.values())
    entry.tally("secrets searched").add("LWA client secret + token key + refresh tokens", len(secrets_) - len(access))
    entry.tally("secrets searched").add("access tokens LWA issued", len(access))
    entry.tally("places searched").add(f"{len(worlds)} worlds: {runs} runs' event logs, {len(files)} files "
                                       f"({len(captured)} captured logs), {len(worlds)} databases", 1)
    entry.tally("result").add(f"{len(leaks)} secrets found in {scanned / 1e6:.1f} MB", 1)
    entry.notes.append("searched: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items())
                       + f", files {sum(len(d) for d in file_bytes.values()) / 1e6:.1f} MB")
    assert len(access) >= 3 and runs >= 3, (len(access), runs)  # the scan would prove nothing otherwise
    assert sizes["tables"] > 5_000 and sizes["event logs and run records"] > 5_000 and sizes["materialization metadata"], sizes
    assert any(REFRESHED in line for line in blobs["event logs and run records"].splitlines()), "no refresh was logged"
    assert leaks == [], leaks
