"""`sync-assets amazon add-seller | sellers` run as a subprocess against the SP-API sandbox over real
HTTP on 127.0.0.1 and a real PostgreSQL: refresh tokens from stdin and from the environment, the
listing, refusals and missing settings as one line on stderr with exit code 2, the seller as a
Dagster dynamic partition, and no secret in any output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.fernet import Fernet

from sync_assets.apis.amazon.sandbox import AmazonSandbox, serve_in_thread
from sync_assets.apis.amazon.sellers import SELLERS_PARTITIONS

from .conftest import create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("sync-assets"))
US, CA = "ATVPDKIKX0DER", "A2EUQ1WTGCTBG2"


class Cli:
    """The sandbox served over HTTP, a fresh database, a key, and the CLI run against them."""

    def __init__(self, sandbox: AmazonSandbox, url: str, database_url: str) -> None:
        self.sb, self.url, self.database_url = sandbox, url, database_url
        self.key = Fernet.generate_key().decode()
        self.outputs: list[str] = []
        self.extra_secrets: set[str] = set()

    def env(self, **changes: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_ASSETS_", "DAGSTER_", "SP_API_"))}
        env.update(
            SYNC_ASSETS_DATABASE_URL=self.database_url, SYNC_ASSETS_TOKEN_KEY=self.key,
            SP_API_CLIENT_ID=self.sb.client_id, SP_API_CLIENT_SECRET=self.sb.client_secret,
            SP_API_LWA_URL=f"{self.url}/auth/o2/token",
        )
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def run(self, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([CLI, "amazon", *args], input=stdin, cwd=ROOT, env=env or self.env(),
                              capture_output=True, text=True, timeout=300)
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def add(self, seller: str, *options: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("add-seller", "--seller-id", seller, "--region", "na", *options, stdin=stdin, env=env)

    def secrets(self) -> set[str]:
        with self.sb.lwa._lock:  # every access token the sandbox ever issued
            access = set(self.sb.lwa._access)
        return access | set(self.sb.refresh_tokens.values()) | {self.sb.client_secret, self.key} | self.extra_secrets


@pytest.fixture
def cli(database_url: str) -> Iterator[Cli]:
    sandbox = AmazonSandbox(scale="tiny", rate_limits_enabled=False)
    with serve_in_thread(sandbox) as url:
        c = Cli(sandbox, url, database_url)
        yield c
        # no refresh token, access token, client secret or key in anything the CLI printed
        leaks = [(s[:8] + "…", out[:200]) for s in c.secrets() for out in c.outputs if s and s in out]
        assert not leaks
        assert not any("Traceback" in out for out in c.outputs)


def test_add_sellers_from_stdin_and_env_then_list(cli: Cli) -> None:
    first, second = cli.sb.seller_ids
    tokens = cli.sb.refresh_tokens
    assert cli.run("sellers").stdout.startswith("No SP-API sellers stored; add one with `sync-assets amazon add-seller`")

    added = cli.add(first, "--marketplace", US, stdin=tokens[first] + "\n")  # piped stdin: one line
    assert added.returncode == 0, added.stderr
    line, = added.stdout.splitlines()
    assert line.startswith(f"Stored SP-API seller {first}: region na, marketplaces {US}, status valid, access token until ")

    # SP_API_REFRESH_TOKEN wins over stdin; marketplaces repeated and comma-separated
    added = cli.add(second, "--marketplace", US, "--marketplace", f"{CA},{US}", stdin="ignored\n",
                    env=cli.env(SP_API_REFRESH_TOKEN=tokens[second]))
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines() == [added.stdout.strip()]
    assert f"seller {second}: region na, marketplaces {US}, {CA}, status valid" in added.stdout
    assert cli.sb.lwa.counters["tokens_issued"] == 2  # each refresh token proven by a real grant
    # with DAGSTER_HOME unset no Dagster instance is touched: a note says the sensor adds the partition
    assert SELLERS_PARTITIONS in added.stderr and "DAGSTER_HOME" in added.stderr

    # another variable with --refresh-token-env (a re-add: new grant, same seller); NA is accepted as na
    again = cli.run("add-seller", "--seller-id", first, "--region", "NA", "--marketplace", f"{US},{CA}",
                    "--refresh-token-env", "MY_SELLER_TOKEN", env=cli.env(MY_SELLER_TOKEN=tokens[first]))
    assert again.returncode == 0, again.stderr
    assert f"marketplaces {US}, {CA}, status valid" in again.stdout
    unset = cli.add(first, "--marketplace", US, "--refresh-token-env", "NOT_SET_ANYWHERE", stdin=tokens[first] + "\n")
    assert unset.returncode == 2 and "NOT_SET_ANYWHERE (--refresh-token-env) is not set" in unset.stderr

    table = cli.run("sellers")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:4] == ["seller", "region", "marketplaces", "status"]
    assert [r.split()[:4] for r in rows] == sorted([[first, "na", f"{US},{CA}", "valid"], [second, "na", f"{US},{CA}", "valid"]])

    listed = cli.run("sellers", "--json")
    assert listed.returncode == 0, listed.stderr
    sellers = {s["seller_id"]: s for s in json.loads(listed.stdout)}
    assert set(sellers) == {first, second}
    for seller in sellers.values():
        assert (seller["region"], seller["marketplace_ids"], seller["status"]) == ("na", [US, CA], "valid")
        assert seller["status_detail"] is None
        assert seller["access_expires_at"] and seller["last_grant_at"]
        assert seller["endpoint"] == "https://sellingpartnerapi-na.amazon.com"


def test_revoked_or_invalid_refresh_token_exits_2_and_stores_nothing(cli: Cli) -> None:
    first, second = cli.sb.seller_ids
    revoked = cli.sb.refresh_tokens[first]
    cli.sb.revoke_refresh_token(first)
    bogus = "Atzr|IwEBI" + "e" * 48
    cli.extra_secrets.add(bogus)
    for seller, token in ((first, revoked), (second, bogus)):
        proc = cli.add(seller, "--marketplace", US, stdin=token + "\n")
        assert proc.returncode == 2 and proc.stdout == ""
        message, = proc.stderr.splitlines()  # one line, no traceback
        assert message.startswith(f"sync-assets: the refresh token given for seller {seller} was refused by LWA (invalid_grant")
        assert "nothing was stored" in message and "sync-assets amazon add-seller" in message
    assert cli.run("sellers", "--json").stdout.strip() == "[]"

    # LWA refusing the application's credentials says which settings to check
    proc = cli.add(second, "--marketplace", US, stdin=cli.sb.refresh_tokens[second] + "\n",
                   env=cli.env(SP_API_CLIENT_SECRET="amzn1.oa2-cs.v1.wrong-secret-value"))
    cli.extra_secrets.add("amzn1.oa2-cs.v1.wrong-secret-value")
    assert proc.returncode == 2 and "LWA rejected the SP-API application's credentials" in proc.stderr
    assert "SP_API_CLIENT_SECRET" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_missing_settings_and_bad_arguments_exit_2_naming_the_problem(cli: Cli) -> None:
    seller = cli.sb.seller_ids[0]
    token = cli.sb.refresh_tokens[seller] + "\n"
    before = cli.sb.lwa.counters["token_requests"]
    cases = [
        ({"SP_API_CLIENT_ID": None}, ["--marketplace", US], "sync-assets: SP_API_CLIENT_ID is not set"),
        ({"SP_API_CLIENT_ID": ""}, ["--marketplace", US], "sync-assets: SP_API_CLIENT_ID is not set"),
        ({"SP_API_CLIENT_SECRET": None}, ["--marketplace", US], "sync-assets: SP_API_CLIENT_SECRET is not set"),
        ({"SYNC_ASSETS_TOKEN_KEY": None}, ["--marketplace", US], "sync-assets: SYNC_ASSETS_TOKEN_KEY is not set"),
        ({"SP_API_LWA_URL": "api.amazon.com/auth/o2/token"}, ["--marketplace", US], "SP_API_LWA_URL must be an http(s) URL"),
        ({"SYNC_ASSETS_DATABASE_URL": "mysql://u@h/db"}, ["--marketplace", US], "SYNC_ASSETS_DATABASE_URL must point at PostgreSQL"),
        ({}, ["--marketplace", "A1PA6795UKMFR9"], "marketplace A1PA6795UKMFR9 (DE) is served by region eu, not na"),
    ]
    for changes, options, needle in cases:
        proc = cli.add(seller, *options, stdin=token, env=cli.env(**changes))
        assert proc.returncode == 2, (changes, proc.stdout, proc.stderr)
        assert proc.stdout == "" and needle in proc.stderr and len(proc.stderr.splitlines()) == 1, (changes, proc.stderr)
    bad_region = cli.run("add-seller", "--seller-id", seller, "--region", "us", "--marketplace", US, stdin=token)
    assert bad_region.returncode == 2 and "region must be one of na, eu, fe" in bad_region.stderr
    no_token = cli.add(seller, "--marketplace", US, stdin="")
    assert no_token.returncode == 2
    assert no_token.stderr.strip() == "sync-assets: no refresh token given: pipe it on stdin or set SP_API_REFRESH_TOKEN"
    assert cli.sb.lwa.counters["token_requests"] == before  # none of these reached LWA
    assert cli.run("sellers", "--json").stdout.strip() == "[]"


def test_added_seller_becomes_a_dynamic_partition(cli: Cli, pg_server_url: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster import DagsterInstance

    from sync_assets.runtime import write_instance_yaml

    first, second = cli.sb.seller_ids
    home = tmp_path / "dagster_home"
    home.mkdir()
    write_instance_yaml(home)  # a deployment's instance: Dagster's storage in Postgres (DAGSTER_PG_URL)
    dagster_url = create_database(pg_server_url, "dagster")
    try:
        env = cli.env(DAGSTER_HOME=str(home), DAGSTER_PG_URL=dagster_url)
        added = cli.add(first, "--marketplace", US, stdin=cli.sb.refresh_tokens[first] + "\n", env=env)
        assert added.returncode == 0, added.stderr
        assert f"partition {first} of {SELLERS_PARTITIONS} added" in added.stderr
        again = cli.add(first, "--marketplace", US, stdin=cli.sb.refresh_tokens[first] + "\n", env=env)
        assert again.returncode == 0 and f"partition {first} of {SELLERS_PARTITIONS} was there already" in again.stderr

        monkeypatch.setenv("DAGSTER_HOME", str(home))
        monkeypatch.setenv("DAGSTER_PG_URL", dagster_url)
        with DagsterInstance.get() as instance:
            assert instance.get_dynamic_partitions(SELLERS_PARTITIONS) == [first]

        # best effort: an instance that cannot be loaded is a note; the seller is stored all the same
        broken = cli.add(second, "--marketplace", US, stdin=cli.sb.refresh_tokens[second] + "\n",
                         env=cli.env(DAGSTER_HOME=str(tmp_path / "missing_home"), DAGSTER_PG_URL=dagster_url))
        assert broken.returncode == 0, broken.stderr
        assert f"Stored SP-API seller {second}" in broken.stdout
        assert f"note: partition {second} of {SELLERS_PARTITIONS} not added" in broken.stderr
        assert "the sellers sensor adds it" in broken.stderr
        with DagsterInstance.get() as instance:
            assert instance.get_dynamic_partitions(SELLERS_PARTITIONS) == [first]
        assert [s["seller_id"] for s in json.loads(cli.run("sellers", "--json").stdout)] == sorted([first, second])
    finally:
        drop_database(pg_server_url, dagster_url)
