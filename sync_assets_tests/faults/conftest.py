"""Fixtures of the fault tests: databases kept until the secret scan, the session's secrets (SSO
client secret, token key, IRIS API key), the haystacks that scan reads, the figures for
docs/RELIABILITY.md, and IRIS tenants (the simulator behind a tap, in-process runs).

Set SYNC_ASSETS_FAULT_RESULTS=<file.json> to have the figures and every test's outcome written at
the end of the session (`python -m sync_assets_tests.faults.report` does, then renders Markdown).
"""

from __future__ import annotations

import contextlib
import gc
import json
import threading
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import dagster as dg
import pytest
from cryptography.fernet import Fernet

from ..conftest import create_database, drop_database
from .helpers import SCALE, Tally, close_all_processes, live_processes

RESULTS_ENV = "SYNC_ASSETS_FAULT_RESULTS"


# --- figures for the report ------------------------------------------------------------------------

@dataclass
class FaultEntry:
    fault: str
    title: str
    invariant: str = ""
    injection: str = ""
    tallies: dict[str, Tally] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tests: list[str] = field(default_factory=list)
    main: str = ""  # what the summary counts: tallies whose name starts with this ("" = all)

    def tally(self, name: str) -> Tally:
        return self.tallies.setdefault(name, Tally())


class FaultReport:
    def __init__(self) -> None:
        self.entries: dict[str, FaultEntry] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.started = time.time()

    def entry(self, fault: str, title: str, *, invariant: str = "", injection: str = "", main: str = "") -> FaultEntry:
        entry = self.entries.setdefault(fault, FaultEntry(fault, title))
        entry.invariant = entry.invariant or invariant
        entry.main = entry.main or main
        if injection and injection not in entry.injection:
            entry.injection = f"{entry.injection} {injection}".strip()
        return entry

    def as_json(self) -> dict[str, Any]:
        return {
            "scale": SCALE,
            "seed": os.environ.get("SYNC_ASSETS_FAULT_SEED", "0"),
            "seconds": round(time.time() - self.started, 1),
            "faults": {
                k: {
                    "title": e.title, "invariant": e.invariant, "injection": e.injection, "notes": e.notes, "tests": e.tests,
                    "main": e.main,
                    "tallies": {n: {"tried": t.tried, "outcomes": t.outcomes} for n, t in e.tallies.items()},
                }
                for k, e in sorted(self.entries.items())
            },
            "tests": self.outcomes,
        }


REPORT = FaultReport()


@pytest.fixture(scope="session")
def fault_report() -> FaultReport:
    return REPORT


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if "faults" not in item.nodeid:
        return
    record = REPORT.outcomes.setdefault(item.nodeid, {"outcome": "passed", "seconds": 0.0, "error": ""})
    record["seconds"] = round(record["seconds"] + report.duration, 2)
    if report.failed:
        record["outcome"] = "failed" if report.when == "call" else f"error ({report.when})"
        record["error"] = (report.longreprtext or "").strip().splitlines()[-1][:500] if report.longreprtext else ""
    elif report.skipped and record["outcome"] == "passed":
        record["outcome"] = "skipped"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    close_all_processes()
    path = os.environ.get(RESULTS_ENV)
    if path and REPORT.outcomes:
        Path(path).write_text(json.dumps(REPORT.as_json(), indent=2, default=str))


# --- processes, databases, secrets -------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """Whatever a test started is stopped when it ends, even on failure (module fixtures stop theirs).
    Connections of finished runs are collected too: each in-process run leaves its budget engine's
    pool to the garbage collector (see test_02's connection test), and the suite makes ~100 runs
    against one server (max_connections 100)."""
    before = live_processes()
    yield
    close_all_processes(keep=before)
    gc.collect()


@dataclass
class Haystacks:
    """Everything a secret could leak into, gathered by the fault tests for the final scan."""

    secrets: set[str] = field(default_factory=set)
    secret_sources: list[Callable[[], set[str]]] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    instances: list[dg.DagsterInstance] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)  # DAGSTER_HOMEs, logs: every file below is read
    texts: list[str] = field(default_factory=list)
    iris_runs: int = 0  # IRIS runs made: the scan must see at least one (run alone, it makes some)

    def all_instances(self) -> list[dg.DagsterInstance]:
        from .helpers import INSTANCES

        return list({id(i): i for i in [*self.instances, *INSTANCES]}.values())

    def all_secrets(self) -> set[str]:
        found = set(self.secrets)
        for source in self.secret_sources:
            found |= source()
        return {s for s in found if s}


HAYSTACKS = Haystacks()


@pytest.fixture(scope="session")
def haystacks() -> Haystacks:
    return HAYSTACKS


@dataclass(frozen=True)
class SessionSecrets:
    client_secret: str
    token_key: str


@pytest.fixture(scope="session")
def session_secrets(haystacks: Haystacks) -> SessionSecrets:
    """The SSO client secret every fault sandbox uses and the key encrypting stored tokens."""
    found = SessionSecrets(client_secret=f"fsec-{secrets.token_urlsafe(24)}", token_key=Fernet.generate_key().decode())
    haystacks.secrets |= {found.client_secret, found.token_key}
    return found


@pytest.fixture(scope="session")
def fault_databases(pg_server_url: str, haystacks: Haystacks) -> Iterator[Callable[[str], str]]:
    """Makes fresh databases that live until the end of the session (the secret scan reads them)."""
    created: list[str] = []

    def make(prefix: str = "fault") -> str:
        url = create_database(pg_server_url, prefix)
        created.append(url)
        haystacks.databases.append(url)
        return url

    yield make
    for url in created:
        drop_database(pg_server_url, url)


@pytest.fixture
def fault_db(fault_databases: Callable[[str], str]) -> str:
    return fault_databases("fault")


@pytest.fixture
def ephemeral_instance(haystacks: Haystacks) -> dg.DagsterInstance:
    instance = dg.DagsterInstance.ephemeral()
    haystacks.instances.append(instance)
    return instance


# --- corporation datasets: EVE SSO tokens, a sandbox with corporations, a fault proxy in front -----

class CorpWorld:
    """Sandbox corporations (+ its SSO, with the session's client secret) behind a fault proxy; the
    tokens and the synced tables in one database; Dagster runs in an ephemeral instance."""

    def __init__(self, sandbox: Any, upstream: str, url: str, proxy: Any, database_url: str, secrets_: SessionSecrets,
                 instance: dg.DagsterInstance):
        from functools import partial

        from sync_assets.apis.esi import EsiResource
        from sync_assets.apis.esi.auth import EsiAuthResource, lookup_identity
        from sync_assets.apis.esi.sso.crypto import TokenCipher
        from sync_assets.apis.esi.datasets import ESI_CORPORATION_DATASETS
        from sync_assets.orchestration.assets import IO_MANAGER_KEY, build_sync_asset
        from sync_assets.apis.esi.spec import ESI
        from sync_assets.warehouse import PostgresWarehouse, SnapshotIOManager

        self.sandbox, self.upstream, self.url, self.proxy, self.database_url = sandbox, upstream, url, proxy, database_url
        self.instance = instance
        self.cipher = TokenCipher(secrets_.token_key)
        self.warehouse = PostgresWarehouse(database_url=database_url)
        esi = dict(base_url=url, backoff_initial_s=0.01, backoff_max_s=0.05, expiry_guard_s=0)
        if "budget_database_url" in EsiResource.model_fields:
            esi["budget_database_url"] = database_url
        self.esi = EsiResource(**esi)
        # tokens come from the SSO directly (not through the proxy): the faults are ESI's
        self.auth = EsiAuthResource(
            esi=EsiResource(**{**esi, "base_url": upstream}), database_url=database_url, client_id=sandbox.sso.client_id,
            client_secret=secrets_.client_secret, token_key=secrets_.token_key, sso_url=upstream, sso_issuer="login.eveonline.com",
        )
        self._lookup = partial(lookup_identity, EsiResource(**{**esi, "base_url": upstream}))
        self.assets = {d.key: build_sync_asset(d, ESI) for d in ESI_CORPORATION_DATASETS}
        self.partitions = ESI_CORPORATION_DATASETS[0].partitioning.dynamic
        self.resources = {"esi": self.esi, "warehouse": self.warehouse, ESI.credentials_resource: self.auth,
                          IO_MANAGER_KEY: SnapshotIOManager(warehouse=self.warehouse)}
        self.characters: dict[int, int] = {}

    @property
    def engine(self) -> Any:
        return self.warehouse.engine()

    def connect(self, corporation_id: int) -> int:
        from sync_assets.apis.esi.sso import tokens

        character_id, refresh_token = self.sandbox.add_director(corporation_id)
        tokens.add_refresh_token(self.engine, self.auth.sso(), refresh_token, lookup=self._lookup, cipher=self.cipher)
        self.instance.add_dynamic_partitions(self.partitions, [str(corporation_id)])
        self.characters[corporation_id] = character_id
        return character_id

    def sync(self, datasets: list[Any], corporation_id: int) -> dg.ExecuteInProcessResult:
        return dg.materialize([self.assets[d.key] for d in datasets], partition_key=str(corporation_id),
                              resources=self.resources, instance=self.instance, raise_on_error=False)

    def expire(self, corporation_id: int) -> None:
        from sqlalchemy import text

        with self.engine.begin() as conn:
            conn.execute(text("UPDATE sync_assets.sync_state SET expires_at = now() - interval '1 second' "
                              "WHERE partition_key LIKE :p"), {"p": f"{corporation_id}%"})

    def table(self, dataset: Any, corporation_id: int) -> Any:
        return self.warehouse.read_table(dataset, [str(corporation_id)])

    def let_latches_expire(self) -> None:
        """As if the circuit breaker's cooldown and every wait had passed (the clock moving on)."""
        from sqlalchemy import text

        with self.engine.begin() as conn:
            if conn.execute(text("SELECT to_regclass('sync_assets.api_latches')")).scalar():
                conn.execute(text("DELETE FROM sync_assets.api_latches"))


@pytest.fixture(scope="session")
def corp_world(fault_databases: Callable[[str], str], session_secrets: SessionSecrets, haystacks: Haystacks) -> Iterator[CorpWorld]:
    from sync_assets.apis.esi.sandbox.esi import EsiSandbox
    from sync_assets.apis.esi.sandbox.server import serve_in_thread
    from sync_assets.apis.esi.sandbox.sso import SsoSandbox

    from .proxy import FaultProxy

    sso = SsoSandbox(client_secret=session_secrets.client_secret)
    haystacks.secret_sources.append(sso.issued_secrets)
    corporations = {98000001: "small", 98000002: "small", 98000003: "small"}
    sandbox = EsiSandbox(regions={10000002: 1}, n_price_types=10, corporations=corporations, sso=sso,
                         corp_page_size={"assets": 250})
    choose: list[Callable[[Any], Any]] = [lambda req: None]
    instance = dg.DagsterInstance.ephemeral()
    haystacks.instances.append(instance)
    with serve_in_thread(sandbox) as upstream:
        proxy = FaultProxy(upstream, lambda req: choose[0](req))
        with serve_in_thread(proxy, log_level="critical") as url:
            world = CorpWorld(sandbox, upstream, url, proxy, fault_databases("corp"), session_secrets, instance)
            world.choose = choose  # type: ignore[attr-defined]
            yield world


# --- IRIS CRM: the simulator behind a tap, a database of its own, in-process runs -------------------

IRIS_MONTH, IRIS_YEAR_MONTH = "2026-09-01", (2026, 9)
IRIS_TODAY = (2026, 11, 20)


@pytest.fixture(scope="session")
def iris_key(haystacks: Haystacks) -> str:
    """The IRIS API key every fault tenant uses (a user's token: a secret the scan searches for)."""
    key = f"iris_live_{secrets.token_urlsafe(24)}"
    haystacks.secrets.add(key)
    return key


class IrisTap:
    """ASGI app in front of the IRIS simulator: records the path, status and content type of every
    /api/v1 request, and lets a test rewrite 200 bodies (`rewrite(path, body) -> new body or None`)."""

    def __init__(self, app: Any):
        self.app = app
        self.rewrite: Callable[[str, bytes], bytes | None] | None = None
        self.rewritten: list[str] = []
        self._seen: list[tuple[str, int, str]] = []
        self._lock = threading.Lock()

    def seen(self, contains: str = "") -> list[tuple[str, int, str]]:
        """(path, status, content type) of the requests whose path contains `contains`, in order."""
        with self._lock:
            return [r for r in self._seen if contains in r[0]]

    def count(self, contains: str = "", status: Callable[[int], bool] = lambda s: True) -> int:
        return sum(1 for _, s, _ in self.seen(contains) if status(s))

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()
            self.rewritten.clear()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        path, start = scope["path"], {}

        async def tapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)  # held until the body (which may be rewritten)
                return
            body, status = message.get("body", b""), start["status"]
            rewrite = self.rewrite
            new = rewrite(path, body) if rewrite is not None and status == 200 else None
            ctype = next((v.decode() for k, v in start["headers"] if k.lower() == b"content-type"), "")
            with self._lock:
                self._seen.append((path, status, ctype))
                if new is not None:
                    self.rewritten.append(path)
            if new is not None:
                body = new
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, tapped)


class IrisTenant:
    """An IRIS simulator (behind an `IrisTap`) and the product's IRIS assets over HTTP into a
    database of its own; runs in an ephemeral Dagster instance the secret scan reads."""

    def __init__(self, sandbox: Any, tap: IrisTap, url: str, database_url: str, key: str, instance: dg.DagsterInstance,
                 **resource: Any):
        from sync_assets.apis.iris import IRIS, IRIS_DATASETS, IrisResource
        from sync_assets.orchestration.apis import ApiDefinition
        from sync_assets.orchestration.build import build_definitions
        from sync_assets.warehouse import PostgresWarehouse

        self.sandbox, self.world, self.tap, self.url, self.database_url = sandbox, sandbox.world, tap, url, database_url
        self.key, self.instance = key, instance
        self.warehouse = PostgresWarehouse(database_url=database_url)
        # quick retries unless told otherwise: the product's attempts and rounds, without its waits
        settings = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "retry_round_pause_s": 0.05, **resource}
        self.iris = IrisResource(base_url=f"{url}/api/v1", api_key=key, budget_database_url=database_url, **settings)
        self.datasets = IRIS_DATASETS
        self.defs = build_definitions([ApiDefinition(IRIS, IRIS_DATASETS, self.iris)], self.warehouse)

    @property
    def engine(self) -> Any:
        return self.warehouse.engine()

    def asset(self, dataset: Any) -> dg.AssetsDefinition:
        return self.defs.get_assets_def(dg.AssetKey(["iris", dataset.name]))

    def sync(self, dataset: Any, partition: str | None = None, *, full_refresh: bool = False) -> dg.ExecuteInProcessResult:
        from sync_assets.orchestration.assets import IO_MANAGER_KEY
        from sync_assets.warehouse import SnapshotIOManager

        HAYSTACKS.iris_runs += 1
        asset = self.asset(dataset)
        resources = {"iris": self.iris, "warehouse": self.warehouse, IO_MANAGER_KEY: SnapshotIOManager(warehouse=self.warehouse)}
        config = {"ops": {asset.op.name: {"config": {"full_refresh": full_refresh}}}} if not dataset.derived_from else None
        return dg.materialize([self.asset(d) for d in self.datasets], partition_key=partition, resources=resources,
                              instance=self.instance, selection=[asset.key], raise_on_error=False, run_config=config)

    def table(self, dataset: Any, partition: str | None = None) -> Any:
        return self.warehouse.read_table(dataset, [partition] if partition else None)

    def failed_items(self, dataset: Any) -> list[Any]:
        return self.warehouse.failed_items(dataset.key)


@pytest.fixture
def iris_tenants(fault_databases: Callable[[str], str], iris_key: str, haystacks: Haystacks) -> Iterator[Callable[..., IrisTenant]]:
    """Makes IRIS tenants (`merchants`, `resource` settings of IrisResource, simulator knobs); their
    servers stop when the test ends."""
    from datetime import date

    from sync_assets.apis.iris.sandbox.app import IrisSandbox
    from sync_assets.apis.sandbox_serving import serve_in_thread

    with contextlib.ExitStack() as stack:
        def make(merchants: int = 12, resource: dict[str, Any] | None = None, **knobs: Any) -> IrisTenant:
            sandbox = IrisSandbox(api_keys={"team": iris_key}, merchants=merchants, today=date(*IRIS_TODAY), **knobs)
            tap = IrisTap(sandbox.app)
            url = stack.enter_context(serve_in_thread(tap, log_level="critical"))
            instance = dg.DagsterInstance.ephemeral()
            haystacks.instances.append(instance)
            return IrisTenant(sandbox, tap, url, fault_databases("iris"), iris_key, instance, **(resource or {}))

        yield make
