"""Fault 8: secrets. Runs last (file order): after the whole fault suite, with every kill, storm,
restart, 403 and cancellation behind it, no secret may appear anywhere the suite wrote.

Invariant 6: no secret (client secret, refresh/access token, encryption key) in logs, metadata,
exceptions or unencrypted columns. Searched: the event logs of every Dagster instance the suite
used (ephemeral ones, the CLI's sqlite DAGSTER_HOMEs, `dagster dev`'s Postgres storage), run and
compute logs and every other file under those homes, the CLI and `dagster dev` output, every table
of every database the suite created (data, sync state, budgets, tokens, Dagster's storage) and the
PostgreSQL server log. Secrets: the SSO client secret and token key of the session, every
refresh and access token any sandbox SSO issued, and the IRIS API key (test_11_iris's runs, the
killed CLI run's output and DAGSTER_HOME included).

Run alone, it first makes the corporation world do a sync and a 403, and an IRIS tenant sync its
merchants and a month with a failing merchant (so there is something to scan).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from sync_assets.apis.esi import datasets as declared
from sync_assets.apis.iris.datasets import MERCHANTS, TRANSACTIONS

from .conftest import IRIS_MONTH, IRIS_YEAR_MONTH, CorpWorld, FaultReport, Haystacks, IrisTenant

CORP = 98000003


def _files(paths: list[Path]) -> list[Path]:
    out = []
    for path in paths:
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out += [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return out


def _tables(url: str) -> list[str]:
    engine = create_engine(url)
    texts: list[str] = []
    try:
        with engine.connect() as conn:
            tables = conn.execute(text(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                "AND table_schema NOT IN ('pg_catalog', 'information_schema')")).all()
            for schema, table in tables:
                texts.extend(conn.execute(text(f'SELECT t::text FROM "{schema}"."{table}" t')).scalars().all())
    finally:
        engine.dispose()
    return texts


def test_no_secret_anywhere_after_the_fault_suite(haystacks: Haystacks, corp_world: CorpWorld, pg_server_url: str,
                                                  fault_report: FaultReport, iris_key: str,
                                                  iris_tenants: Callable[..., IrisTenant]) -> None:
    entry = fault_report.entry(
        "8", "Secrets", invariant="6", main="secrets searched",
        injection=("after the whole suite: every event log, run/compute log, CLI and `dagster dev` output, file under the "
                   "DAGSTER_HOMEs, table of every database and the PostgreSQL server log, searched for the client secret, "
                   "the token key, every refresh/access token issued and the IRIS API key."),
    )
    entry.tests.append("test_99_secrets.py::test_no_secret_anywhere_after_the_fault_suite")
    if not corp_world.characters:  # run alone: some token traffic, including a failure
        corp_world.connect(CORP)
        corp_world.sync([declared.CORPORATION_MEMBERS, declared.MEMBER_TRACKING], CORP)
        corp_world.sandbox.sso.set_roles(corp_world.characters[CORP], ["Accountant"])
        corp_world.expire(CORP)
        corp_world.sync([declared.MEMBER_TRACKING], CORP)
    if not haystacks.iris_runs:  # run alone: IRIS traffic, including a failure recorded with its message
        tenant = iris_tenants(merchants=6)
        assert tenant.sync(MERCHANTS).success
        tenant.sandbox.set_failing_merchants([next(m["mid"] for m in tenant.world.merchant_list()
                                                   if tenant.world.transactions_for(m["mid"], *IRIS_YEAR_MONTH))])
        tenant.sync(TRANSACTIONS, IRIS_MONTH)

    secrets = haystacks.all_secrets()
    assert iris_key in secrets and haystacks.iris_runs > 0
    haystack: dict[str, list[str]] = {"event logs and run records": [], "tables": [], "outputs": list(haystacks.texts)}
    for instance in haystacks.all_instances():
        for run in instance.get_runs():
            haystack["event logs and run records"].append(repr(run.run_config) + repr(run.tags))
            for record in instance.all_logs(run.run_id):
                haystack["event logs and run records"].append(record.user_message or "")
                if record.dagster_event is not None:
                    haystack["event logs and run records"].append(repr(record.dagster_event))
    existing = []
    for url in dict.fromkeys(haystacks.databases):
        try:
            haystack["tables"].extend(_tables(url))
            existing.append(url)
        except Exception:  # noqa: BLE001 - a database a test already dropped (none is, today)
            continue
    files = _files(list(haystacks.paths))
    host = make_url(pg_server_url).query.get("host")
    server_log = Path(host) / "log" if isinstance(host, str) else None
    if server_log is not None and server_log.exists():
        files.append(server_log)
    blobs = {name: "\n".join(parts) for name, parts in haystack.items()}
    file_bytes = {f: f.read_bytes() for f in files}

    leaks = []
    for secret in secrets:
        for name, blob in blobs.items():
            if secret in blob:
                leaks.append(f"{secret[:6]}… in {name}")
        needle = secret.encode()
        for path, data in file_bytes.items():
            if needle in data:
                leaks.append(f"{secret[:6]}… in {path}")

    sizes = {name: len(blob) for name, blob in blobs.items()}
    scanned = sum(sizes.values()) + sum(len(d) for d in file_bytes.values())
    entry.tally("secrets searched").add("client secret + token key + refresh/access tokens issued + IRIS API key", len(secrets))
    entry.tally("places searched").add(f"{len(haystacks.all_instances())} Dagster instances, {len(existing)} databases, "
                                       f"{len(files)} files, {len(haystacks.texts)} process outputs", 1)
    entry.tally("result").add(f"{len(leaks)} secrets found in {scanned / 1e6:.1f} MB", 1)
    entry.notes.append("bytes searched: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items())
                       + f", files {sum(len(d) for d in file_bytes.values()) / 1e6:.1f} MB")
    assert len(secrets) >= 5, secrets and "too few secrets: the scan would prove nothing"
    assert sizes["tables"] > 5_000 and sizes["event logs and run records"] > 5_000, sizes  # something was searched
    assert leaks == [], leaks
