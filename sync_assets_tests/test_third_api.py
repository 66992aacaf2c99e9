"""The seam's proof: a third API declared entirely here — a Laravel-style JSON API (`page`,
`per_page`, `meta.last_page`) behind an `X-API-KEY` header, served over real HTTP on 127.0.0.1 —
synced into Postgres through Dagster with nothing added under `sync_assets/` but this spec and
this declaration. SP-API and IRIS are declarations of the same kind."""

from __future__ import annotations

import threading
from datetime import date, datetime
from typing import Any, ClassVar, Iterator

import dagster as dg
import pytest
from sqlalchemy import create_engine, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.core.datasets import Column, ColumnType, Dataset, Partitioning, WriteMode
from sync_assets.core.limits import SlidingWindow
from sync_assets.core.paging import PageNumbers
from sync_assets.core.windows import Granularity, TimeWindows
from sync_assets.definitions import build_definitions, esi_api
from sync_assets.orchestration.apis import ApiDefinition
from sync_assets.fetch.resource import ApiResource
from sync_assets.fetch.spec import ApiKeyAuth, ApiSpec
from sync_assets.warehouse import PostgresWarehouse

I, F, S, T = ColumnType.INT64, ColumnType.FLOAT64, ColumnType.STRING, ColumnType.TIMESTAMP
API_KEY = "wk_live_5ecret-key-for-the-test"

# -- the API's spec and one dataset: all a new API brings ------------------------------------------

WIDGETS = ApiSpec(
    name="widgets",
    title="Widgets API",
    base_url="https://widgets.example.com/api/v1",
    base_url_env="WIDGETS_URL",
    api_key=ApiKeyAuth(header="X-API-KEY", env="WIDGETS_API_KEY"),
    default_limit=SlidingWindow(capacity=500, window_s=60),  # 500 requests a minute per key
)

SHOP_WIDGETS = Dataset(
    api="widgets",
    name="shop_widgets",
    route="/shops/{shop_id}/widgets",
    description="Every widget of a shop.",
    paginator=PageNumbers(count_header=None, count_path="meta.last_page", records_path="data", size_param="per_page", size=25),
    partitioning=Partitioning(path_param="shop_id", column=Column("shop_id", I), keys=("1", "2")),
    columns=(Column("id", I), Column("name", S), Column("price", F), Column("updated_at", T)),
    primary_key=("shop_id", "id"),
    write_mode=WriteMode.MIRROR,
    cache_seconds=600,  # no cache headers: the declared cadence
)


# a monthly dataset: each month asked with inclusive MM/DD/YYYY dates (IRIS's style), mirrored by month
SALES = Dataset(
    api="widgets",
    name="sales",
    route="/sales",
    description="Every sale, by month.",
    paginator=PageNumbers(count_header=None, count_path="meta.last_page", records_path="data", size_param="per_page", size=10),
    windows=TimeWindows(Granularity.MONTH, date(2026, 1, 1), "from", "to", column=Column("sold_at", T),
                        timezone="Europe/Dublin", format="%m/%d/%Y", end_inclusive=True),
    columns=(Column("sale_id", I), Column("sold_at", T), Column("amount", ColumnType.DECIMAL)),  # money sent as "12.50"
    primary_key=("sale_id",),
    write_mode=WriteMode.MIRROR,
    cache_seconds=3600,
)


class WidgetsResource(ApiResource):
    spec: ClassVar[ApiSpec] = WIDGETS


# -- the API itself, over real HTTP ---------------------------------------------------------------


class WidgetsServer:
    def __init__(self) -> None:
        self.shops: dict[int, list[dict[str, Any]]] = {
            1: [self.widget(i) for i in range(1, 61)],  # 3 pages of 25
            2: [self.widget(i) for i in range(101, 131)],  # 2 pages
        }
        # 25 sales a month from September to November 2026, at noon Dublin time
        self.sales = [{"sale_id": m * 100 + d, "sold_at": f"2026-{m:02d}-{d:02d}T12:00:00+01:00", "amount": f"{d}.50"}
                      for m in (9, 10, 11) for d in range(1, 26)]
        self.requests: list[tuple[str, str, str | None]] = []
        self.settle: tuple[int, int, list[dict[str, Any]]] | None = None  # (after N widget pages, shop, its widgets then)
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/shops/{shop_id:int}/widgets", self.widgets), Route("/sales", self.sales_route)])

    @staticmethod
    def widget(i: int) -> dict[str, Any]:
        return {"id": i, "name": f"widget {i}", "price": f"{i * 1.5:.2f}", "updated_at": "2026-11-30T10:00:00+00:00"}

    async def widgets(self, request: Request) -> JSONResponse:
        with self.lock:
            self.requests.append((request.url.path, request.url.query, request.headers.get("x-api-key")))
        if request.headers.get("x-api-key") != API_KEY:
            return JSONResponse({"message": "Unauthenticated."}, status_code=401)
        page, per_page = int(request.query_params.get("page", 1)), int(request.query_params.get("per_page", 15))
        items = self.shops[request.path_params["shop_id"]]
        last_page = max(1, -(-len(items) // per_page))
        data = items[(page - 1) * per_page : page * per_page]
        body = {"data": [{**w, "price": float(w["price"])} for w in data],
                "meta": {"current_page": page, "last_page": last_page, "per_page": per_page, "total": len(items)}}
        with self.lock:
            if self.settle is not None and sum(path.endswith("/widgets") for path, _, _ in self.requests) >= self.settle[0]:
                self.shops[self.settle[1]], self.settle = self.settle[2], None  # the data moves on after this answer
        return JSONResponse(body, headers={"X-RateLimit-Limit": "500", "X-RateLimit-Remaining": "499"})


    async def sales_route(self, request: Request) -> JSONResponse:
        with self.lock:
            self.requests.append((request.url.path, request.url.query, request.headers.get("x-api-key")))
        q = request.query_params
        first, last = (datetime.strptime(q[k], "%m/%d/%Y").date() for k in ("from", "to"))
        chosen = [s for s in self.sales if first <= date.fromisoformat(s["sold_at"][:10]) <= last]
        page, per_page = int(q.get("page", 1)), int(q.get("per_page", 15))
        return JSONResponse({"data": chosen[(page - 1) * per_page : page * per_page],
                             "meta": {"current_page": page, "last_page": max(1, -(-len(chosen) // per_page))}})


@pytest.fixture
def widgets_api() -> Iterator[tuple[WidgetsServer, str]]:
    server = WidgetsServer()
    with serve_in_thread(server.app, log_level="critical") as url:
        yield server, url


def definitions(url: str, database_url: str, api_key: str = API_KEY) -> dg.Definitions:
    widgets = ApiDefinition(WIDGETS, [SHOP_WIDGETS, SALES],
                            WidgetsResource(base_url=url, api_key=api_key, budget_database_url=database_url, retry_round_pause_s=0))
    return build_definitions(warehouse=PostgresWarehouse(database_url=database_url), apis=[esi_api(), widgets])


def sync(defs: dg.Definitions, partition: str, instance: dg.DagsterInstance, dataset: str = "shop_widgets") -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def(f"sync_widgets_{dataset}")
    return job.execute_in_process(partition_key=partition, instance=instance, raise_on_error=False)


def rows(database_url: str) -> list[tuple[int, int, float]]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        found = conn.execute(text("SELECT shop_id, id, price FROM widgets.shop_widgets ORDER BY shop_id, id")).all()
    engine.dispose()
    return [tuple(r) for r in found]


def test_a_third_api_is_a_spec_and_a_declaration(widgets_api, database_url: str) -> None:
    server, url = widgets_api
    defs = definitions(url, database_url)
    instance = dg.DagsterInstance.ephemeral()
    asset_key = dg.AssetKey(["widgets", "shop_widgets"])
    assert asset_key in {key for a in defs.assets for key in a.keys}  # type: ignore[union-attr]

    first, second = sync(defs, "1", instance), sync(defs, "2", instance)
    assert first.success and second.success
    assert rows(database_url) == [(1, i, i * 1.5) for i in range(1, 61)] + [(2, i, i * 1.5) for i in range(101, 131)]
    # pages walked with the declared page size, every request with the key
    shop1 = [query for path, query, _ in server.requests if path == "/shops/1/widgets"]
    assert sorted(shop1) == sorted(f"page={p}&per_page=25" for p in (1, 2, 3))
    assert {key for _, _, key in server.requests} == {API_KEY}

    # the partitioned mirror replaces exactly its shop: widgets gone from shop 2 go, shop 1 stays
    server.shops[2] = server.shops[2][:5]
    assert sync(defs, "2", instance).success
    assert rows(database_url) == [(1, i, i * 1.5) for i in range(1, 61)] + [(2, i, i * 1.5) for i in range(101, 106)]
    materialization = instance.get_latest_materialization_event(asset_key)
    assert materialization is not None and materialization.asset_materialization.partition == "2"  # type: ignore[union-attr]
    metadata = materialization.asset_materialization.metadata  # type: ignore[union-attr]
    assert metadata["rows_deleted"].value == 25 and metadata["pages"].value == 1

    # the key is never in the event log
    logged = " ".join(str(e.user_message) + str(e.dagster_event) for e in instance.all_logs(first.run_id))
    assert API_KEY not in logged


def test_a_refused_key_fails_the_run_as_an_auth_failure_and_writes_nothing(widgets_api, database_url: str) -> None:
    server, url = widgets_api
    instance = dg.DagsterInstance.ephemeral()
    result = sync(definitions(url, database_url, api_key="wrong-key"), "1", instance)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    chain = []
    while error is not None:
        chain.append((error.cls_name, error.message))
        error = error.cause
    assert ("Unauthorized" in [name for name, _ in chain]), chain
    assert any("HTTP 401: Unauthenticated." in message for _, message in chain), chain
    assert "wrong-key" not in " ".join(message for _, message in chain)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        exists = conn.execute(text("SELECT to_regclass('widgets.shop_widgets')")).scalar()
        written = conn.execute(text("SELECT count(*) FROM widgets.shop_widgets")).scalar() if exists else 0
    engine.dispose()
    assert written == 0


def test_a_monthly_dataset_asks_each_month_and_mirrors_it_alone(widgets_api, database_url: str) -> None:
    server, url = widgets_api
    defs = definitions(url, database_url)
    instance = dg.DagsterInstance.ephemeral()
    assert sync(defs, "2026-10-01", instance, "sales").success and sync(defs, "2026-11-01", instance, "sales").success
    asked = sorted(query for path, query, _ in server.requests if path == "/sales")
    assert asked == sorted([f"from=10%2F01%2F2026&to=10%2F31%2F2026&page={p}&per_page=10" for p in (1, 2, 3)]
                           + [f"from=11%2F01%2F2026&to=11%2F30%2F2026&page={p}&per_page=10" for p in (1, 2, 3)])
    server.sales = [s for s in server.sales if s["sale_id"] != 1003]  # a sale of October withdrawn
    assert sync(defs, "2026-10-01", instance, "sales").success
    engine = create_engine(database_url)
    with engine.connect() as conn:
        by_month = dict(conn.execute(text(
            "SELECT to_char(sold_at AT TIME ZONE 'Europe/Dublin', 'YYYY-MM'), count(*) FROM widgets.sales GROUP BY 1")).all())
        total = conn.execute(text("SELECT sum(amount)::text FROM widgets.sales WHERE sold_at < '2026-11-01'")).scalar()
    engine.dispose()
    assert by_month == {"2026-10": 24, "2026-11": 25}  # October mirrored, November untouched, September never asked
    assert total == str(sum(d + 0.5 for d in range(1, 26)) - 3.5) + "0"  # exact NUMERIC from "12.50"-style strings


def test_a_row_on_two_pages_is_written_once_from_a_second_walk(widgets_api, database_url: str) -> None:
    """Pages load into the database while they are fetched and the walk keeps only digests; a key on
    two pages (a row that moved during the walk) makes the walk fetch the snapshot once more, whole,
    and write that: the pages loaded the first time are rolled back, never merged. The row has
    settled by the second walk, so the second walk alone holds no duplicate."""
    server, url = widgets_api
    instance = dg.DagsterInstance.ephemeral()
    clean = list(server.shops[1])
    for attempt, price in enumerate((1.5, 2.0)):  # the partition's first sync (COPY straight into the table), then a re-sync (the stage)
        widgets = [{**w, "price": f"{w['id'] * price:.2f}"} for w in clean]
        server.shops[1] = widgets[:25] + [{**widgets[24], "price": "99.00"}] + widgets[25:]  # widget 25 ends page 1, starts page 2
        server.requests.clear()
        server.settle = (3, 1, widgets)  # after the first walk's 3 pages
        result = sync(definitions(url, database_url), "1", instance)
        assert result.success, attempt
        assert rows(database_url) == [(1, i, i * price) for i in range(1, 61)]
        assert len([q for path, q, _ in server.requests if path == "/shops/1/widgets"]) == 2 * 3  # two walks of 3 pages
        said = " ".join(str(e.user_message) for e in instance.all_logs(result.run_id))
        assert "rows appear on two pages" in said and "fetching the snapshot again" in said
