"""The seam's proof: a third API declared entirely here — a Laravel-style JSON API (`page`,
`per_page`, `meta.last_page`) behind an `X-API-KEY` header, served over real HTTP on 127.0.0.1 —
synced into Postgres through Dagster with nothing added under `sync_assets/` but this spec and
this declaration. SP-API and IRIS are declarations of the same kind."""

from __future__ import annotations

import threading
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
from sync_assets.definitions import build_definitions, esi_api
from sync_assets.defs.apis import ApiDefinition
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


class WidgetsResource(ApiResource):
    spec: ClassVar[ApiSpec] = WIDGETS


# -- the API itself, over real HTTP ---------------------------------------------------------------


class WidgetsServer:
    def __init__(self) -> None:
        self.shops: dict[int, list[dict[str, Any]]] = {
            1: [self.widget(i) for i in range(1, 61)],  # 3 pages of 25
            2: [self.widget(i) for i in range(101, 131)],  # 2 pages
        }
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/shops/{shop_id:int}/widgets", self.widgets)])

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
        # money as strings, the way IRIS sends some amounts: the frame makes them numbers
        body = {"data": [{**w, "price": float(w["price"])} for w in data],
                "meta": {"current_page": page, "last_page": last_page, "per_page": per_page, "total": len(items)}}
        return JSONResponse(body, headers={"X-RateLimit-Limit": "500", "X-RateLimit-Remaining": "499"})


@pytest.fixture
def widgets_api() -> Iterator[tuple[WidgetsServer, str]]:
    server = WidgetsServer()
    with serve_in_thread(server.app, log_level="critical") as url:
        yield server, url


def definitions(url: str, database_url: str, api_key: str = API_KEY) -> dg.Definitions:
    widgets = ApiDefinition(WIDGETS, [SHOP_WIDGETS],
                            WidgetsResource(base_url=url, api_key=api_key, budget_database_url=database_url, retry_round_pause_s=0))
    return build_definitions(warehouse=PostgresWarehouse(database_url=database_url), apis=[esi_api(), widgets])


def sync(defs: dg.Definitions, shop: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("sync_widgets_shop_widgets")
    return job.execute_in_process(partition_key=shop, instance=instance, raise_on_error=False)


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
