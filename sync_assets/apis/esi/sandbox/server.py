"""Serving helpers for the ESI sandbox: a background-thread server for tests/benchmarks and a
blocking runner for the CLI (``sync-assets sandbox esi --port N``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import uvicorn

from . import market_data as md
from ...sandbox_serving import serve_in_thread, uvicorn_config
from .corp_common import ID_SLOTS, corp_slot
from .corp_profile import SIZES as CORPORATION_SIZES, resolve_size
from .corporation import DEFAULT_CORPORATIONS
from .esi import EsiSandbox, SandboxConfig, _coerce_config

__all__ = ["build_default_sandbox", "serve_in_thread", "run", "main", "SCALES", "parse_scale", "parse_config",
           "parse_corporations"]

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


def parse_scale(text: str) -> str | float:
    """``full``, ``small``, ``tiny`` or a positive factor of the full page counts."""
    if text in SCALES:
        return text
    try:
        factor = float(text)
    except ValueError:
        raise ValueError(f"unknown scale {text!r}; expected one of {', '.join(SCALES)} or a number") from None
    if not factor > 0:
        raise ValueError(f"scale {text!r} must be a positive number")
    return factor


def parse_config(text: str | None) -> dict[str, Any]:
    """Sandbox knobs as JSON (the fields of :class:`SandboxConfig`), e.g.
    ``{"cache_seconds": {"orders": 60}, "rate_limit_tokens": {"killmail": 40}, "rate_limit_window": 90}``;
    checked here, so a typo fails before anything is served."""
    if not text:
        return {}
    try:
        knobs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"sandbox config is not JSON: {exc}") from None
    if not isinstance(knobs, dict):
        raise ValueError("sandbox config must be a JSON object of knobs, e.g. '{\"rate_limit_window\": 90}'")
    _coerce_config(SandboxConfig(), knobs)  # raises ValueError naming an unknown or bad knob
    return knobs


def parse_corporations(text: str | None) -> dict[int, Any] | None:
    """The sandbox's corporations: None (the defaults), a size for each default corporation
    (``small``, ``default``, ``large``), or a JSON object ``{"<corporation id>": size}`` where a
    size is a name or an object of :class:`~.corp_profile.CorpSize` fields (optionally with a ``base`` size)."""
    if not text:
        return None
    if text in CORPORATION_SIZES:
        return {corporation: text for corporation in DEFAULT_CORPORATIONS}
    try:
        given = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{text!r}: expected one of {', '.join(CORPORATION_SIZES)} or a JSON object "
                         '{"<corporation id>": size}') from None
    if not isinstance(given, dict):
        raise ValueError('expected a JSON object {"<corporation id>": size}')
    corporations: dict[int, Any] = {}
    for key, size in given.items():
        try:
            corporations[int(key)] = size
        except ValueError:
            raise ValueError(f"{key!r} is not a corporation id") from None
        resolve_size(size)  # raises ValueError naming an unknown size or field
    slots: dict[int, int] = {}
    for corporation in corporations:
        other = slots.setdefault(corp_slot(corporation), corporation)
        if other != corporation:
            raise ValueError(f"corporations {other} and {corporation} are equal modulo {ID_SLOTS}: their ids would collide")
    return corporations


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
    defaults = SandboxConfig()
    knobs = {k: v for k, v in sandbox_kwargs.items() if hasattr(defaults, k) and v != getattr(defaults, k)}
    print(
        f"ESI sandbox: {sum(pages.values())} order pages in {len(pages)} regions {pages}, "
        f"corporations {sandbox.corporations}, built in {build_s:.2f}s; serving http://{host}:{port} "
        f"(admin: http://{host}:{port}/_sandbox/state)" + (f"; knobs {json.dumps(knobs, sort_keys=True)}" if knobs else ""),
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
    p.add_argument("--config", help='knobs as JSON, e.g. \'{"cache_seconds": {"orders": 60}, "rate_limit_window": 90}\' '
                   "(they win over --latency, --error-rate, --auto-refresh)")
    p.add_argument("--corporations", help='small | default | large (each default corporation), or JSON {"<id>": size}')
    a = p.parse_args(argv)
    try:
        scale = parse_scale(a.scale)
        knobs = {"latency": a.latency, "error_rate": a.error_rate, "auto_refresh": a.auto_refresh, **parse_config(a.config)}
        corporations = parse_corporations(a.corporations)
    except ValueError as exc:
        p.error(str(exc))
    run(a.host, a.port, scale=scale, seed=a.seed, **({"corporations": corporations} if corporations is not None else {}), **knobs)


if __name__ == "__main__":
    main()
