"""The IRIS routes the sandbox serves under ``/api/v1`` (paths exactly as in the v1.23.0 spec):
parameters validated as IRIS/Laravel does, data from the world, lists through the paginator.

Handlers are plain functions ``(world, request) -> body``; they raise :class:`NotFound` or
:class:`~.laravel.Invalid`, which the app renders (404 / the configured validation status).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping

import orjson

from .data import IrisWorld, Merchant
from .laravel import Invalid, boolean, choice, integer, iso_datetime, page_number, paginate, per_page, ymd

__all__ = ["API_PREFIX", "PER_PAGE", "ROUTES", "ROUTE_NAMES", "ApiRequest", "NotFound", "Route", "match_route"]

API_PREFIX = "/api/v1"
SMALL = (10, 25, 50, 100)
LARGE = (10, 25, 50, 100, 500, 1000)
#: Route name -> the per_page enum of its spec operation.
PER_PAGE: dict[str, tuple[int, ...]] = {
    "merchants": LARGE, "transactions": SMALL, "chargebacks": SMALL, "residual_summary": SMALL,
    "residual_rows": LARGE, "line_items": SMALL,
}
DATE_FILTERS = ("opened", "closed", "created", "modified", "first_batch", "last_batch", "deactivated")
TIMESTAMP_FILTERS = ("created", "modified")  # ISO 8601 with offset; the others take Y-m-d
_SORT_KEYS: dict[str, Callable[[Merchant], Any]] = {
    "mid": lambda m: m.mid, "name": lambda m: m.name.lower(), "closed": lambda m: m.closed,
    "opened": lambda m: m.opened, "created": lambda m: m.created, "modified": lambda m: m.modified,
    "first_batch": lambda m: m.first_batch, "last_batch": lambda m: m.last_batch,
    "processor": lambda m: m.processor.name.lower(), "group": lambda m: m.group.name.lower(),
    "datasource": lambda m: m.datasource.name.lower(), "deactivated": lambda m: m.deactivated,
    "vim": lambda m: m.vim, "status": lambda m: m.status, "active": lambda m: m.active,
}


class NotFound(Exception):
    """404 ``{"message":"Not found"}``."""


@dataclass(frozen=True)
class ApiRequest:
    """What a handler reads from the HTTP request."""

    params: Mapping[str, str]  # query parameters: last value wins, empty ones dropped (Laravel: null)
    path_params: Mapping[str, str]
    url: str  # absolute URL of the path, no query (the paginator's ``path``)
    query: tuple[tuple[str, str], ...] = ()  # raw pairs, for links that keep the query string
    links_with_query: bool = False

    def page(self, data: list[Any], route: str) -> dict[str, Any]:
        return paginate(
            data, page=page_number(self.params.get("page")), per_page=per_page(self.params.get("per_page"), PER_PAGE[route]),
            path=self.url, query=self.query if self.links_with_query else None,
        )


# --------------------------------------------------------------------------------------
# Merchants
# --------------------------------------------------------------------------------------


def _flag(params: Mapping[str, str], name: str) -> bool | None:
    """vim/active: the spec's enum is true|false; "yes"/"no" (the SDK sample) are accepted too."""
    raw = params.get(name)
    if raw is None:
        return None
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(raw.lower())
    if value is None:
        raise Invalid(name, f"The selected {name} is invalid.")
    return value


def _date_window(params: Mapping[str, str], field: str | None) -> tuple[Any, Any] | None:
    """(start, end) of ``date_filter``: both required; ISO 8601 with offset for created/modified."""
    if field is None:
        return None
    parse = iso_datetime if field in TIMESTAMP_FILTERS else ymd
    start, end = parse(params, "start_date"), parse(params, "end_date")
    for name, value in (("start_date", start), ("end_date", end)):
        if value is None:
            raise Invalid(name, f"The {name.replace('_', ' ')} field is required when date filter is present.")
    return start, end


def _merchant_filter(params: Mapping[str, str]) -> tuple[Hashable, Callable[[Merchant], bool]]:
    """(the filters as a cache key, the predicate); raises :class:`Invalid` like IRIS."""
    names = {k: params[k].lower() for k in ("group", "processor", "datasource") if k in params}
    mid, name = params.get("mid"), (params.get("name") or "").lower()
    vim, active = _flag(params, "vim"), _flag(params, "active")
    status = choice(params, "status", ("Open", "Closed"))
    field = choice(params, "date_filter", DATE_FILTERS)
    window = _date_window(params, field)

    def keep(m: Merchant) -> bool:
        served = {"group": m.group.name, "processor": m.processor.name, "datasource": m.datasource.name}
        if any(served[k].lower() != v for k, v in names.items()):
            return False
        if (mid and mid not in m.mid) or (name and name not in m.name.lower()):
            return False
        if (vim is not None and m.vim != vim) or (active is not None and m.active != active):
            return False
        if status is not None and m.status != status:
            return False
        if window is not None:
            value = getattr(m, field)
            return value is not None and window[0] <= value <= window[1]
        return True

    key = (tuple(sorted(names.items())), mid, name, vim, active, status, field, window)
    return key, keep


def merchants(world: IrisWorld, req: ApiRequest) -> dict[str, Any]:
    p = req.params
    sort_by = choice(p, "sort_by", tuple(_SORT_KEYS))
    descending = choice(p, "sort_dir", ("asc", "desc")) == "desc"
    filters, keep = _merchant_filter(p)

    def query() -> list[Merchant]:
        found = sorted((m for m in world.merchants.values() if keep(m)), key=lambda m: m.mid)
        if sort_by:  # stable: ties stay in mid order; nulls first ascending, like MySQL
            key = _SORT_KEYS[sort_by]
            found.sort(key=lambda m: (0,) if key(m) is None else (1, key(m)), reverse=descending)
        return found

    with world.lock:  # the same matches and order for every page until a merchant changes
        body = req.page(world.merchant_query((filters, sort_by, sort_by is not None and descending), query), "merchants")
        # the items' cached JSON as one fragment: the same bytes orjson makes of their api() dicts
        body["data"] = orjson.Fragment(b"[" + b",".join([m.api_json() for m in body["data"]]) + b"]")
    return body


def _merchant(world: IrisWorld, req: ApiRequest) -> Merchant:
    m = world.merchant(req.path_params["mid"])
    if m is None:
        raise NotFound
    return m


def merchant(world: IrisWorld, req: ApiRequest) -> dict[str, Any]:
    with world.lock:
        return _merchant(world, req).detail_api()


def transactions(world: IrisWorld, req: ApiRequest) -> dict[str, Any]:
    """Batches dated in [start_date, end_date] (Y-m-d) with their transactions; ``adjustments``
    in the same window ride along on every page."""
    m = _merchant(world, req)
    start, end = ymd(req.params, "start_date"), ymd(req.params, "end_date")
    batches, adjustments = world.batches_between(m.mid, start, end)
    return {**req.page(batches, "transactions"), "adjustments": adjustments}


def chargebacks(world: IrisWorld, req: ApiRequest) -> dict[str, Any]:
    m = _merchant(world, req)
    start, end = ymd(req.params, "start_date"), ymd(req.params, "end_date")
    return req.page(world.chargebacks_for(m.mid, start, end), "chargebacks")


def processors(world: IrisWorld, req: ApiRequest) -> dict[str, Any]:
    return {"processors": [p.api() for p in world.processors]}


# --------------------------------------------------------------------------------------
# Residuals
# --------------------------------------------------------------------------------------


def _year_month(req: ApiRequest) -> tuple[int, int]:
    year, month = int(req.path_params["year"]), int(req.path_params["month"])
    if not (1 <= month <= 12 and 2000 <= year <= 2100):
        raise NotFound
    return year, month


def _row_filters(p: Mapping[str, str]) -> dict[str, Any]:
    return {
        "group": integer(p, "group"), "agent": integer(p, "agent"), "search": p.get("search"),
        "hide_null_merchants": boolean(p, "hide_null_merchants", True),
    }


def residual_summary(world: IrisWorld, req: ApiRequest) -> dict[str, Any]:
    year, month = _year_month(req)
    filters = _row_filters(req.params)
    rows = world.residual_summary(year, month, processor=integer(req.params, "processor"), **filters)
    return req.page(rows, "residual_summary")


def residual_rows(world: IrisWorld, req: ApiRequest) -> dict[str, Any]:
    year, month = _year_month(req)
    filters = _row_filters(req.params)
    template = boolean(req.params, "template", True)
    rows = world.residual_rows(int(req.path_params["processor_id"]), year, month, template=template, **filters)
    return req.page(rows, "residual_rows")


def line_items(world: IrisWorld, req: ApiRequest) -> dict[str, Any]:
    year, month = _year_month(req)
    p = req.params
    items = world.line_items(
        year, month, created=ymd(p, "created"), dba=p.get("dba"), username=p.get("username"),
        user_id=integer(p, "user_id"), description=p.get("description"),
    )
    return req.page(items, "line_items")


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    name: str  # counter bucket and error-injection scope
    spec_path: str
    pattern: re.Pattern[str]
    handler: Callable[[IrisWorld, ApiRequest], dict[str, Any]]


def _route(name: str, spec_path: str, handler: Callable[[IrisWorld, ApiRequest], dict[str, Any]]) -> Route:
    rx = re.sub(r"\{(\w+)\}", lambda m: rf"(?P<{'mid' if m[1] == 'merchantNumber' else m[1]}>[^/]+)", spec_path)
    return Route(name, spec_path, re.compile(re.escape(API_PREFIX) + rx + "/?"), handler)


ROUTES: tuple[Route, ...] = (
    _route("merchants", "/merchants", merchants),
    _route("merchant", "/merchants/{merchantNumber}", merchant),
    _route("transactions", "/merchants/{merchantNumber}/transactions", transactions),
    _route("chargebacks", "/merchants/{merchantNumber}/chargebacks", chargebacks),
    _route("processors", "/processors", processors),
    _route("residual_summary", "/residuals/reports/summary/{year}/{month}", residual_summary),
    _route("residual_rows", "/residuals/reports/summary/rows/{processor_id}/{year}/{month}", residual_rows),
    _route("line_items", "/residuals/lineitems/{year}/{month}", line_items),
)
ROUTE_NAMES: tuple[str, ...] = tuple(r.name for r in ROUTES)
_NUMERIC = {"year", "month", "processor_id"}


def match_route(path: str) -> tuple[Route, dict[str, str]] | None:
    """The route of a request path and its path parameters (numbers only where the spec says integer)."""
    for route in ROUTES:
        m = route.pattern.fullmatch(path)
        if m and all(v.isdigit() for k, v in m.groupdict().items() if k in _NUMERIC):
            return route, m.groupdict()
    return None

