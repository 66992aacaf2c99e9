"""Serving the IRIS sandbox: the shared background-thread server for tests and a blocking CLI
runner (``python -m sync_assets.apis.iris.sandbox.server --port 8766 --api-key K``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date
from typing import Any

import uvicorn

from ...sandbox_serving import serve_in_thread, uvicorn_config
from .app import DEFAULT_API_KEY, IrisSandbox
from .data import DEFAULT_MERCHANTS, DEFAULT_TIMEZONE, PROCESSORS

__all__ = ["KEYS_ENV", "build_parser", "main", "run", "sandbox_kwargs", "serve_in_thread"]

#: Comma-separated keys, read when no --api-key is given (keeps keys out of the process list).
KEYS_ENV = "IRIS_SANDBOX_API_KEYS"


def run(host: str = "127.0.0.1", port: int = 8766, *, uvicorn_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """Build an :class:`IrisSandbox` from ``kwargs`` and serve it (blocking) until interrupted."""
    t0 = time.perf_counter()
    sandbox = IrisSandbox(**kwargs)
    sandbox.world.warm_merchants()  # the first walk of /merchants serves cached JSON, like every later one
    s = sandbox.world.summary()
    print(
        f"IRIS sandbox: {s['merchants']} merchants, {len(s['processors'])} processors, {s['report_months']} report months "
        f"(today {s['today']}), built and serialized in {time.perf_counter() - t0:.2f}s; {len(sandbox.key_labels)} API key(s); "
        f"serving http://{host}:{port}/api/v1 (admin: http://{host}:{port}/_sandbox/state)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.Server(uvicorn_config(sandbox.app, host, port, **(uvicorn_kwargs or {}))).run()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Offline IRIS CRM sandbox (API v1.23.0)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY",
                   help=f"accepted X-API-KEY (repeatable); default ${KEYS_ENV}, else the documented sandbox key")
    p.add_argument("--merchants", type=int, default=DEFAULT_MERCHANTS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--today", type=date.fromisoformat, default=None, help="the simulator's today (YYYY-MM-DD); default the real date")
    p.add_argument("--timezone", default=DEFAULT_TIMEZONE)
    p.add_argument("--processors", type=int, default=len(PROCESSORS), choices=range(1, len(PROCESSORS) + 1))
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--error-seed", type=int, default=0)
    p.add_argument("--rate-limit", type=int, default=500)
    p.add_argument("--rate-limit-window", type=float, default=60.0)
    p.add_argument("--validation-status", type=int, default=405, choices=(405, 422))
    p.add_argument("--links-with-query", action="store_true", help="page links keep the query string")
    p.add_argument("--failing-merchant", action="append", dest="failing_merchants", default=[], metavar="MID")
    return p


def sandbox_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """:class:`IrisSandbox` arguments of parsed CLI flags."""
    keys = args.api_keys or [k for k in os.environ.get(KEYS_ENV, "").split(",") if k] or [DEFAULT_API_KEY]
    return dict(
        api_keys=keys, merchants=args.merchants, seed=args.seed, today=args.today, timezone=args.timezone,
        processors=args.processors, latency=args.latency, error_rate=args.error_rate, error_seed=args.error_seed,
        rate_limit=args.rate_limit, rate_limit_window=args.rate_limit_window, validation_status=args.validation_status,
        links_with_query=args.links_with_query, failing_merchants=args.failing_merchants,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run(args.host, args.port, **sandbox_kwargs(args))


if __name__ == "__main__":
    main()
