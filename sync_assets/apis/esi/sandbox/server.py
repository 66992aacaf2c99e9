"""Serving helpers for the ESI sandbox: a background-thread server for tests/benchmarks and a
blocking runner for the CLI (``sync-assets sandbox esi --port N``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import uvicorn

from . import market_data as md
from ...sandbox_serving import serve_in_thread, uvicorn_config
from .esi import EsiSandbox

__all__ = ["build_default_sandbox", "serve_in_thread", "run", "main", "SCALES"]

#: Named sizes for :func:`build_default_sandbox` (pages per region).
SCALES: dict[str, dict[int, int]] = {
    "full": md.DEFAULT_REGION_PAGES,  # The Forge 300 pages (~300k orders), ~425 pages total
    "small": md.SMALL_REGION_PAGES,  # The Forge 30 pages, ~43 pages total
    "tiny": {r: 1 for r in md.DEFAULT_REGION_PAGES},  # 1 page per region
}


def build_default_sandbox(scale: str | float = "full", **overrides: Any) -> EsiSandbox:
    """The five default trade regions (The Forge, Domain, Sinq Laison, Heimatar, Metropolis).

    ``scale``: ``"full"`` (Forge 300 pages), ``"small"`` (Forge 30 pages), ``"tiny"`` (1 page each)
    or a float factor applied to the full page counts (min 1 page).  ``overrides`` go to
    :class:`EsiSandbox` (e.g. ``regions=``, ``orders_per_page=``, ``seed=``, ``latency=``...).
    """
    if isinstance(scale, str):
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(SCALES)} or a number")
        pages = dict(SCALES[scale])
    else:
        pages = {r: max(1, round(p * float(scale))) for r, p in md.DEFAULT_REGION_PAGES.items()}
    overrides.setdefault("regions", pages)
    return EsiSandbox(**overrides)


def run(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    scale: str | float = "full",
    uvicorn_kwargs: dict[str, Any] | None = None,
    **sandbox_kwargs: Any,
) -> None:
    """Build the default sandbox and serve it (blocking) until interrupted."""
    t0 = time.perf_counter()
    sandbox = build_default_sandbox(scale, **sandbox_kwargs)
    build_s = time.perf_counter() - t0
    pages = {r: sandbox.page_count(r) for r in sandbox.regions}
    print(
        f"ESI sandbox: {sum(pages.values())} order pages in {len(pages)} regions {pages}, "
        f"built in {build_s:.2f}s; serving http://{host}:{port} "
        f"(admin: http://{host}:{port}/_sandbox/state)",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn_config(sandbox.app, host, port, **(uvicorn_kwargs or {}))
    uvicorn.Server(config).run()


def main(argv: list[str] | None = None) -> None:
    """``python -m sync_assets.apis.esi.sandbox.server --port 8765 [--scale small] [--latency 0.05] ...``"""
    p = argparse.ArgumentParser(description="Offline ESI sandbox")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--scale", default="full", help="full | small | tiny | <factor>")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--auto-refresh", action="store_true", help="new data after each cache window, like ESI")
    a = p.parse_args(argv)
    try:
        scale: str | float = float(a.scale)
    except ValueError:
        scale = a.scale
    run(
        a.host,
        a.port,
        scale=scale,
        seed=a.seed,
        latency=a.latency,
        error_rate=a.error_rate,
        auto_refresh=a.auto_refresh,
    )


if __name__ == "__main__":
    main()
