"""Defect 1 end to end: a rate-limited route whose responses carry no X-Ratelimit-* headers is
walked at the declared rate (ESI's spec: market-order, 12000 tokens / 15 min), never probed one
request at a time. Before the fix every request waited ~5 s for a 'sizing the bucket' probe."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread

from .faults.helpers import FORGE, Runner, expected_orders, frame_diff, materialization_metadata


def test_a_route_without_rate_limit_headers_is_walked_at_the_declared_rate(database_url: str) -> None:
    sandbox = EsiSandbox(regions={int(FORGE): 40}, orders_per_page=20, n_price_types=10, corporations={},
                         rate_limit_enabled=False)
    with serve_in_thread(sandbox) as url:
        runner = Runner(url, database_url)
        result = runner.sync()
        assert result.success
        assert frame_diff(runner.table(), expected_orders(sandbox), ["region_id", "order_id"]) is None
        meta = materialization_metadata(result)
        assert meta["budget_wait_seconds"] == 0  # 40 pages of a 12000-token window: nothing to wait for
        assert meta["budget_remaining"] <= 12000 - 2 * 40  # charged against the declared size
        engine = create_engine(database_url)
        with engine.connect() as conn:
            probes = conn.execute(text("SELECT count(*) FROM sync_assets.api_latches WHERE latch LIKE '%/probe'")).scalar()
        engine.dispose()
        assert probes == 0


def test_a_bucket_limited_route_without_error_limit_headers_is_walked_concurrently(database_url: str) -> None:
    """ESI documents the two header families as exclusive: a route with an x-rate-limit group sends
    X-Ratelimit-* and never X-ESI-Error-Limit-*. The error budget then starts from ESI's declared
    100 errors a minute (minus the errors we counted), not from one request at a time."""
    from sync_assets.apis.esi import EsiResource
    from sync_assets.apis.esi.datasets import MARKET_ORDERS
    from sync_assets.core.requests import plan_requests

    sandbox = EsiSandbox(regions={int(FORGE): 30}, orders_per_page=20, n_price_types=10, corporations={},
                         error_limit_headers_everywhere=False)
    with serve_in_thread(sandbox) as url:
        esi = EsiResource(base_url=url, budget_database_url=database_url, expiry_guard_s=0)
        snapshot = esi.fetch_snapshot(MARKET_ORDERS, plan_requests(MARKET_ORDERS, FORGE)[0])
        assert snapshot.rows == len(expected_orders(sandbox))
        budget = esi._client().budget
        assert budget._slots["esi"].granted == esi.max_concurrency  # 100 - floor 10 errors: every page worker
        esi.close()
