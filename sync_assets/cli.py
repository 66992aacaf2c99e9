"""`sync-assets`: run the Dagster UI on embedded Postgres, against real ESI or the sandbox."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import httpx

from .runtime import PROJECT_DIR, URL_SETTINGS, Runtime, prepare_environment

if TYPE_CHECKING:
    from datetime import datetime

    from .apis.amazon.auth import AmazonAuthResource
    from .apis.amazon.sellers import SellerInfo

STOP_TIMEOUT_S = 10.0  # after Ctrl-C, what is still running this long after SIGTERM is killed
SP_API_REFRESH_TOKEN = "SP_API_REFRESH_TOKEN"  # `sync-assets amazon add-seller` reads it when set, else stdin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sync-assets", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="Dagster UI + daemon against the real ESI (https://esi.evetech.net)")
    demo = commands.add_parser("demo", help="the same against the offline ESI sandbox")
    for command in (dev, demo):
        command.add_argument("--host", default="127.0.0.1", help="UI address (default 127.0.0.1: Dagster OSS has no login)")
        command.add_argument("--port", type=int, default=3000, help="UI port (default 3000)")
    demo.add_argument("--sandbox-port", type=int, default=0, help="sandbox port (default: a free one)")
    demo.add_argument("--sandbox-scale", default="full", metavar="full|small|tiny|FACTOR", help="market size: full (The Forge 300 pages), small (30), "
                      "tiny (1 page per region) or a factor of full (default full)")
    demo.add_argument("--sandbox-config", metavar="JSON", help="sandbox knobs, e.g. "
                      '\'{"cache_seconds": {"orders": 60}, "rate_limit_tokens": {"killmail": 40}, "rate_limit_window": 90}\'')
    demo.add_argument("--sandbox-corporations", metavar="SIZE|JSON", help="size of each demo corporation (small, default, "
                      'large), or JSON {"<corporation id>": size} (default: 98000001 and 98000002, size default)')

    sandbox = commands.add_parser("sandbox", help="serve an API sandbox")
    sandbox_api = sandbox.add_subparsers(dest="api", required=True)
    esi = sandbox_api.add_parser("esi", help="the ESI sandbox")
    esi.add_argument("--host", default="127.0.0.1")
    esi.add_argument("--port", type=int, default=8765)
    esi.add_argument("--scale", default="full", metavar="full|small|tiny|FACTOR", help="full (The Forge 300 pages), small, tiny or a factor")
    esi.add_argument("--auto-refresh", action="store_true", help="new data after every cache window, like ESI")
    esi.add_argument("--config", metavar="JSON", help="knobs, e.g. '{\"cache_seconds\": {\"orders\": 60}, "
                     "\"rate_limit_window\": 90}' (fields of SandboxConfig; they win over --auto-refresh)")
    esi.add_argument("--corporations", metavar="SIZE|JSON", help='small | default | large, or JSON {"<corporation id>": size}')

    esi_tokens = commands.add_parser("esi", help="EVE SSO tokens for the corporation datasets")
    token_commands = esi_tokens.add_subparsers(dest="action", required=True)
    login = token_commands.add_parser("login", help="log a character in (browser, PKCE, local callback on 127.0.0.1)")
    login.add_argument("--scope", action="append", help="request only these scopes (default: every dataset's)")
    login.add_argument("--open", action="store_true", help="open the login page in a browser")
    token_commands.add_parser("add-token", help="store a refresh token read from stdin or ESI_REFRESH_TOKEN (headless)")
    token_commands.add_parser("tokens", help="list stored tokens (no secrets)")

    amazon = commands.add_parser("amazon", help="SP-API sellers (Login with Amazon refresh tokens)")
    seller_commands = amazon.add_subparsers(dest="action", required=True)
    add_seller = seller_commands.add_parser(
        "add-seller", help=f"store a seller's LWA refresh token read from stdin or {SP_API_REFRESH_TOKEN} (a real grant first)")
    add_seller.add_argument("--seller-id", required=True, help="the selling partner id (merchant token), e.g. A2EXAMPLE12345")
    add_seller.add_argument("--region", required=True, metavar="na|eu|fe", help="the SP-API region serving the seller")
    add_seller.add_argument("--marketplace", action="append", required=True, metavar="ID",
                            help="a marketplace id to sync, e.g. ATVPDKIKX0DER (repeat, or comma-separated)")
    add_seller.add_argument("--refresh-token-env", metavar="NAME",
                            help=f"read the refresh token from this variable (default {SP_API_REFRESH_TOKEN}, else stdin)")
    sellers = seller_commands.add_parser("sellers", help="list stored sellers (no secrets)")
    sellers.add_argument("--json", action="store_true", help="as JSON")

    commands.add_parser("env", help="start the embedded PostgreSQL if needed and print the exports `dg dev` needs: "
                        'eval "$(sync-assets env)" && dg dev')
    postgres = commands.add_parser("postgres", help="the embedded PostgreSQL in $DAGSTER_HOME/pgdata")
    postgres.add_subparsers(dest="action", required=True).add_parser("stop", help="stop it (dev/demo stop the one they start)")

    args = parser.parse_args(argv)
    if args.command in ("sandbox", "demo"):  # a typo fails here, before anything is started
        from .apis.esi.sandbox.server import parse_config, parse_corporations, parse_scale

        prefix = "--sandbox-" if args.command == "demo" else "--"
        for option, parse in (("scale", parse_scale), ("config", parse_config), ("corporations", parse_corporations)):
            try:
                value = getattr(args, f"sandbox_{option}" if args.command == "demo" else option)
                setattr(args, f"{option}_parsed", parse(value) if value is not None else None)
            except ValueError as exc:
                parser.error(f"{prefix}{option}: {exc}")
    if args.command == "esi":
        return _esi_tokens(args)
    if args.command == "amazon":
        return _amazon_sellers(args)
    if args.command == "env":
        env = dict(os.environ)
        runtime = prepare_environment(env)  # the server keeps running: you asked for it (`sync-assets postgres stop`)
        for name in ("DAGSTER_HOME", *URL_SETTINGS):  # only what was not set already: nothing of yours is echoed
            if not os.environ.get(name):
                print(f"export {name}={shlex.quote(env[name])}")
        if runtime.started_postgres:
            print(f"sync-assets: embedded PostgreSQL started in {runtime.dagster_home / 'pgdata'}", file=sys.stderr)
        return 0
    if args.command == "postgres":
        from .db.embedded import stop_embedded_postgres

        home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_DIR / ".dagster_home").resolve()
        stop_embedded_postgres(home / "pgdata")
        print(f"sync-assets: embedded PostgreSQL in {home / 'pgdata'} stopped (or was not running)")
        return 0
    if args.command == "sandbox":
        from .apis.esi.sandbox.server import run

        knobs = {"auto_refresh": args.auto_refresh, **(args.config_parsed or {})}
        if args.corporations_parsed is not None:
            knobs["corporations"] = args.corporations_parsed
        run(host=args.host, port=args.port, scale=args.scale_parsed, **knobs)
        return 0
    env = dict(os.environ)
    runtime = prepare_environment(env)
    print(f"sync-assets: DAGSTER_HOME={runtime.dagster_home}", flush=True)
    if runtime.embedded_postgres:
        print(f"sync-assets: embedded PostgreSQL in {runtime.dagster_home / 'pgdata'}", flush=True)
    try:
        if args.command == "dev":
            return _run_dagster_dev(env, args.host, args.port)
        sandbox_options = ["--scale", args.sandbox_scale]
        if args.sandbox_config is not None:
            sandbox_options += ["--config", args.sandbox_config]
        if args.sandbox_corporations is not None:
            sandbox_options += ["--corporations", args.sandbox_corporations]
        return _run_demo(env, args.host, args.port, args.sandbox_port, sandbox_options)
    finally:
        _stop_postgres(runtime)


def _stop_postgres(runtime: Runtime) -> None:
    """The embedded server lives as long as the command that started it; one that was already
    running (another sync-assets, or started by hand) is left alone."""
    if runtime.started_postgres:
        runtime.stop()
        print("sync-assets: embedded PostgreSQL stopped", flush=True)
    elif runtime.embedded_postgres:
        print("sync-assets: embedded PostgreSQL left running (it was running before); "
              "`sync-assets postgres stop` stops it", flush=True)


def _esi_tokens(args: argparse.Namespace) -> int:
    from functools import partial

    from .apis.esi import DEFAULT_ESI_URL, EsiResource
    from .apis.esi.auth import lookup_identity
    from .apis.esi.sso import login as sso_login
    from .apis.esi.sso.errors import AuthError

    env = dict(os.environ)
    runtime = None
    if not env.get("SYNC_ASSETS_DATABASE_URL"):  # the embedded database, as `sync-assets dev` uses it; stopped after
        runtime = prepare_environment(env, dagster=False)
    lookup = partial(lookup_identity, EsiResource(base_url=env.get("SYNC_ASSETS_ESI_URL") or DEFAULT_ESI_URL))
    try:
        if args.action == "login":
            sso_login.login(tuple(args.scope) if args.scope else sso_login.DEFAULT_SCOPES, lookup=lookup, env=env, open_browser=args.open)
        elif args.action == "add-token":
            sso_login.add_token(lookup=lookup, env=env)
        else:
            sso_login.print_tokens(env=env)
    except AuthError as exc:
        print(f"sync-assets: {exc}", file=sys.stderr)
        return 1
    finally:
        if runtime is not None and runtime.started_postgres:
            runtime.stop()
    return 0


class _CommandError(Exception):
    """A mistake in how a command was called: printed as one line, exit code 2."""


def _amazon_sellers(args: argparse.Namespace) -> int:
    """`sync-assets amazon add-seller | sellers`. Errors are one line on stderr and exit code 2;
    no refresh token, access token, client secret or key is ever printed."""
    from sqlalchemy.exc import SQLAlchemyError

    from .apis.amazon.auth import AmazonAuthResource
    from .core.errors import SyncError

    env = dict(os.environ)
    # DAGSTER_HOME set: the seller also becomes a partition of that instance (its database too, if embedded)
    dagster = args.action == "add-seller" and bool(os.environ.get("DAGSTER_HOME"))
    runtime = None
    auth = None
    try:
        if not all(env.get(name) for name in (URL_SETTINGS if dagster else URL_SETTINGS[:1])):
            runtime = prepare_environment(env, dagster=dagster)  # the embedded database; stopped after
        auth = AmazonAuthResource.from_env(env)
        if args.action == "add-seller":
            _add_seller(args, auth, env, dagster)
        else:
            _print_sellers(auth.sellers(), as_json=args.json)
    except (SyncError, ValueError, _CommandError) as exc:
        print(f"sync-assets: {_one_line(str(exc), env)}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc)
        print(f"sync-assets: the sellers database failed ({type(exc).__name__}: {_one_line(detail, env)})", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, EOFError):
        print("\nsync-assets: cancelled", file=sys.stderr)
        return 130
    finally:
        if auth is not None:
            auth.close()
        if runtime is not None and runtime.started_postgres:
            runtime.stop()
    return 0


def _add_seller(args: argparse.Namespace, auth: AmazonAuthResource, env: dict[str, str], dagster: bool) -> None:
    import getpass

    from .apis.amazon.auth import KEY_SETTING
    from .apis.amazon.sellers import SELLERS_PARTITIONS

    auth.lwa()  # SP_API_CLIENT_ID, SP_API_CLIENT_SECRET, SP_API_LWA_URL: checked before the token is asked for
    if not env.get(KEY_SETTING):
        raise _CommandError(f"{KEY_SETTING} is not set: the Fernet key encrypting the sellers' tokens in Postgres; generate "
                            "one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'")
    auth.cipher()
    name = args.refresh_token_env or SP_API_REFRESH_TOKEN
    token = (env.get(name) or "").strip()
    if not token and args.refresh_token_env:
        raise _CommandError(f"{name} (--refresh-token-env) is not set or empty; it should hold the seller's LWA refresh token")
    if not token and sys.stdin is not None:
        token = (getpass.getpass(f"LWA refresh token of seller {args.seller_id} (not echoed): ")
                 if sys.stdin.isatty() else sys.stdin.readline()).strip()
    if not token:
        raise _CommandError(f"no refresh token given: pipe it on stdin or set {SP_API_REFRESH_TOKEN}")
    marketplaces = [m for value in args.marketplace for m in value.split(",")]
    info = auth.add_seller(args.seller_id, token, args.region, marketplaces)
    until = f", access token until {_utc(info.access_expires_at)} UTC" if info.access_expires_at else ""
    print(f"Stored SP-API seller {info.seller_id}: region {info.region}, marketplaces {', '.join(info.marketplace_ids)}, "
          f"status {info.status}{until}", flush=True)
    if dagster:
        _add_partition(env, SELLERS_PARTITIONS, info.seller_id)
    else:
        print(f"sync-assets: DAGSTER_HOME is not set: partition {info.seller_id} of {SELLERS_PARTITIONS} is left to "
              "the sellers sensor", file=sys.stderr)


def _add_partition(env: dict[str, str], partitions: str, key: str) -> None:
    """Best effort: the seller as a dynamic partition of the Dagster instance in DAGSTER_HOME (the
    sellers sensor adds it too, so a failure is only a note)."""
    home = env.get("DAGSTER_HOME", "")
    names = ("DAGSTER_HOME", "DAGSTER_PG_URL")
    saved = {name: os.environ.get(name) for name in names}
    try:
        os.environ.update({name: env[name] for name in names if env.get(name)})  # dagster.yaml reads them from os.environ
        from dagster import DagsterInstance

        with DagsterInstance.get() as instance:
            known = instance.has_dynamic_partition(partitions, key)
            if not known:
                instance.add_dynamic_partitions(partitions, [key])
        print(f"sync-assets: partition {key} of {partitions} {'was there already' if known else 'added'} "
              f"(Dagster instance in {home})", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - a note, never a failure: the seller is stored
        print(f"sync-assets: note: partition {key} of {partitions} not added to the Dagster instance in {home} "
              f"({type(exc).__name__}: {_one_line(str(exc), env)}); the sellers sensor adds it", file=sys.stderr)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _print_sellers(sellers: list[SellerInfo], *, as_json: bool) -> None:
    import json

    from .apis.amazon.sellers import ADD_SELLER

    if as_json:
        def when(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        print(json.dumps([
            {"seller_id": s.seller_id, "region": s.region, "endpoint": s.endpoint, "marketplace_ids": list(s.marketplace_ids),
             "status": s.status, "status_detail": s.status_detail, "status_at": when(s.status_at),
             "access_expires_at": when(s.access_expires_at), "last_grant_at": when(s.last_grant_at),
             "created_at": when(s.created_at), "updated_at": when(s.updated_at)}
            for s in sellers
        ], indent=2))
        return
    if not sellers:
        print(f"No SP-API sellers stored; add one with `{ADD_SELLER}`.")
        return
    header = ("seller", "region", "marketplaces", "status", "access until (UTC)", "last grant (UTC)")
    rows = [(s.seller_id, s.region, ",".join(s.marketplace_ids) or "-", s.status, _utc(s.access_expires_at), _utc(s.last_grant_at))
            for s in sellers]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for s in sellers:
        if s.status != "valid" and s.status_detail:
            print(f"{s.seller_id}: {s.status_detail}")


def _utc(value: datetime | None) -> str:
    from datetime import timezone

    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M") if value else "-"


def _one_line(text: str, env: dict[str, str]) -> str:
    """An error message on one line, database URLs redacted (a password in a URL is not echoed)."""
    from .db.urls import redacted

    line = " ".join(text.split())
    for name in URL_SETTINGS:
        url = env.get(name)
        if url and url in line:
            line = line.replace(url, redacted(url))
    return line[:500]


def _run_demo(env: dict[str, str], host: str, port: int, sandbox_port: int, sandbox_options: tuple[str, ...] | list[str] = ()) -> int:
    """`sandbox_options`: arguments of `sync-assets sandbox esi` (--scale, --config, --corporations)."""
    sandbox_port = sandbox_port or _free_port()
    url = f"http://127.0.0.1:{sandbox_port}"
    command = [sys.executable, "-m", "sync_assets.cli", "sandbox", "esi", "--port", str(sandbox_port), "--auto-refresh",
               *sandbox_options]
    sandbox = subprocess.Popen(command, env=env, start_new_session=True)  # stopped by us, after dagster dev
    iris = amazon = None
    try:
        _wait_for(f"{url}/status", sandbox)
        env["SYNC_ASSETS_ESI_URL"] = url
        print(f"sync-assets: ESI sandbox at {url}", flush=True)
        _connect_demo_corporations(env, url)
        iris = _start_iris_sandbox(env)
        amazon = _start_amazon_sandbox(env)
        return _run_dagster_dev(env, host, port)
    finally:
        for process in (iris, amazon):
            if process is not None:
                _stop(process)
        _stop(sandbox)


def _left_out(env: dict[str, str], api: str) -> bool:
    """SYNC_ASSETS_APIS is set and does not name `api`."""
    chosen = env.get("SYNC_ASSETS_APIS", "").strip()
    return bool(chosen) and api not in {name.strip() for name in chosen.split(",")}


def _serve_sandbox(module: str, options: list[str], ready: str, env: dict[str, str]) -> tuple[str, subprocess.Popen]:
    """A sandbox server on a free port, in its own session (stopped by us), once `ready` answers."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", module, "--port", str(port), *options], env=env, start_new_session=True)
    _wait_for(f"{url}{ready}", process)
    return url, process


def _start_iris_sandbox(env: dict[str, str]) -> subprocess.Popen | None:
    """The IRIS simulator and the settings pointing the IRIS datasets at it, unless SYNC_ASSETS_APIS
    leaves IRIS out. Its key is the sandbox's own (not a secret: it opens nothing real)."""
    if _left_out(env, "iris"):
        return None
    from .apis.iris.sandbox.app import DEFAULT_API_KEY

    url, process = _serve_sandbox("sync_assets.apis.iris.sandbox.server", ["--merchants", "40"], "/_sandbox/state",
                                  {**env, "IRIS_SANDBOX_API_KEYS": DEFAULT_API_KEY})
    env.update(SYNC_ASSETS_IRIS_URL=f"{url}/api/v1", IRIS_API_KEY=DEFAULT_API_KEY)
    print(f"sync-assets: IRIS sandbox at {url} (40 merchants since April 2024)", flush=True)
    return process


def _start_amazon_sandbox(env: dict[str, str]) -> subprocess.Popen | None:
    """The SP-API + LWA simulator (two sellers: US, and US + CA), the settings pointing the Amazon
    datasets at it, and both sellers' authorizations stored as `amazon add-seller` stores them,
    unless SYNC_ASSETS_APIS leaves Amazon out. The app credentials are the sandbox's own."""
    if _left_out(env, "amazon"):
        return None
    from .apis.amazon.auth import AmazonAuthResource

    url, process = _serve_sandbox("sync_assets.apis.amazon.sandbox.server", ["--scale", "small"], "/_sandbox/config", env)
    grant = httpx.get(f"{url}/_sandbox/credentials", timeout=30).json()
    sellers = httpx.get(f"{url}/_sandbox/sellers", timeout=30).json()
    env.update(SYNC_ASSETS_AMAZON_URL=url, SP_API_LWA_URL=f"{url}/auth/o2/token", SP_API_CLIENT_ID=grant["client_id"],
               SP_API_CLIENT_SECRET=grant["client_secret"])
    auth = AmazonAuthResource.from_env(env)
    for seller_id, seller in sellers.items():
        auth.add_seller(seller_id, grant["refresh_tokens"][seller_id], "na", seller["marketplaces"])
    auth.close()
    print(f"sync-assets: SP-API sandbox at {url} ({len(sellers)} sellers authorized)", flush=True)
    return process


def _connect_demo_corporations(env: dict[str, str], url: str) -> None:
    """Point the EVE SSO settings at the sandbox and log in a director of each sandbox
    corporation, so the corporation datasets work offline too (the sensor adds the partitions)."""
    from functools import partial

    from cryptography.fernet import Fernet

    from .apis.esi import EsiResource
    from .apis.esi.auth import lookup_identity
    from .apis.esi.sso import tokens
    from .apis.esi.sso.crypto import TokenCipher
    from .apis.esi.sso.login import engine_from_env
    from .apis.esi.sso.sso import EveSso
    from .apis.esi.sandbox.sso import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET

    key_file = Path(env["DAGSTER_HOME"]) / "demo_token_key"
    if not key_file.exists():
        key_file.write_text(Fernet.generate_key().decode())
        key_file.chmod(0o600)
    env.update(
        ESI_SSO_URL=url, ESI_SSO_ISSUER="login.eveonline.com", ESI_CLIENT_ID=SANDBOX_CLIENT_ID,
        ESI_CLIENT_SECRET=SANDBOX_CLIENT_SECRET, SYNC_ASSETS_TOKEN_KEY=env.get("SYNC_ASSETS_TOKEN_KEY") or key_file.read_text().strip(),
    )
    engine = engine_from_env(env)
    lookup = partial(lookup_identity, EsiResource(base_url=url))
    with EveSso.from_env(env) as sso:
        for corporation_id in map(int, httpx.get(f"{url}/_sandbox/corporations", timeout=30).json()):
            grant = httpx.post(f"{url}/_sandbox/characters", json={"corporation_id": corporation_id, "director": True}, timeout=30).json()
            info = tokens.add_refresh_token(engine, sso, grant["refresh_token"], lookup=lookup, cipher=TokenCipher.from_env(env))
            print(f"sync-assets: demo director {info.label} of corporation {corporation_id} connected", flush=True)
    engine.dispose()


def _run_dagster_dev(env: dict[str, str], host: str, port: int) -> int:
    env.setdefault("SYNC_ASSETS_ESI_URL", "https://esi.evetech.net")
    print(f"sync-assets: ESI at {env['SYNC_ASSETS_ESI_URL']}; UI at http://{host}:{port}", flush=True)
    command = [
        str(Path(sys.executable).with_name("dg")), "dev",  # dg dev: `dagster dev` is superseded in 1.13
        "-w", str(PROJECT_DIR / "workspace.yaml"), "-h", host, "-p", str(port),
    ]
    # its own process group: a terminal's Ctrl-C reaches only us, and we stop the whole group
    return _supervise(lambda: subprocess.Popen(command, env=env, cwd=PROJECT_DIR, start_new_session=True))


def _supervise(start: Callable[[], subprocess.Popen]) -> int:
    """Start and wait for a process, the leader of its own process group. Ctrl-C (SIGINT) or SIGTERM
    stops the group: SIGTERM to the leader (dagster dev shuts its webserver, daemon and code servers
    down), then SIGKILL to whatever of the group is left after STOP_TIMEOUT_S.

    Our handlers are in place before the child starts: it inherits SIGINT's disposition, and one
    ignored by whoever started us (a background job of a shell) would have dagster dev ignore SIGTERM
    too (it maps SIGTERM onto SIGINT's handler), so that every stop waited out STOP_TIMEOUT_S."""
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        process = start()
        while process.poll() is None and not stopping.wait(0.25):
            pass
        if not stopping.is_set():
            _stop_group(process.pid, time.monotonic())  # dagster dev exited by itself: its group goes with it
            return process.returncode
        print("sync-assets: stopping dagster dev and the sandbox", flush=True)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _stop_group(process.pid, deadline)
        process.wait()
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_group(pgid: int, deadline: float) -> None:
    """Wait until process group `pgid` is empty, until `deadline`; then SIGKILL what is left."""
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"sync-assets: the sandbox exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"sync-assets: the sandbox did not answer at {url} within {timeout_s:.0f}s")


def _stop(process: subprocess.Popen) -> None:
    """Stop a helper started in its own process group (the sandbox): SIGTERM, SIGKILL after 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _stop_group(process.pid, time.monotonic())


if __name__ == "__main__":
    raise SystemExit(main())
