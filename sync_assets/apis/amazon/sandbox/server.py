"""Serving the SP-API sandbox: a blocking runner for the CLI (``python -m
sync_assets.apis.amazon.sandbox.server --port 8766``); tests use
:func:`sync_assets.apis.sandbox_serving.serve_in_thread` on an :class:`AmazonSandbox`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import uvicorn

from ...sandbox_serving import serve_in_thread, uvicorn_config
from .sandbox import AmazonSandbox

__all__ = ["main", "run", "serve_in_thread"]


def _scale(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def run(
    host: str = "127.0.0.1",
    port: int = 8766,
    *,
    scale: str | int = "full",
    uvicorn_kwargs: dict[str, Any] | None = None,
    **sandbox_kwargs: Any,
) -> None:
    """Build the sandbox and serve it (blocking) until interrupted."""
    t0 = time.perf_counter()
    sandbox = AmazonSandbox(scale=scale, **sandbox_kwargs)
    sizes = {sid: {k: v for k, v in s.items() if k in ("skus", "orders", "transactions", "claims")} for sid, s in sandbox.world.summary().items()}
    print(
        f"SP-API sandbox ({sandbox.config.mode}): sellers {sizes}, built in {time.perf_counter() - t0:.2f}s; "
        f"serving http://{host}:{port} (LWA: /auth/o2/token; credentials: GET /_sandbox/credentials)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.Server(uvicorn_config(sandbox.app, host, port, **(uvicorn_kwargs or {}))).run()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Offline Amazon SP-API + LWA sandbox")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--scale", default="full", help="full | small | tiny | <SKUs per seller>")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("dynamic", "static"), default="dynamic")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply every usage plan's rate")
    p.add_argument("--no-rate-limits", action="store_true")
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--access-token-ttl", type=int, default=3600)
    a = p.parse_args(argv)
    run(
        a.host,
        a.port,
        scale=_scale(a.scale),
        seed=a.seed,
        mode=a.mode,
        rate_scale=a.rate_scale,
        rate_limits_enabled=not a.no_rate_limits,
        latency=a.latency,
        error_rate=a.error_rate,
        access_token_ttl=a.access_token_ttl,
    )


if __name__ == "__main__":
    main()
