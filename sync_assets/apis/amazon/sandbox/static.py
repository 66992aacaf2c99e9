"""Static mode: Amazon's static sandbox, which answers canned responses by exact parameter match.

The fixtures (``fixtures/*.json``) are the ``x-amzn-api-sandbox.static`` examples of the vendored
models, each ``{operationId, method, path, status, request: {parameters: {name: {value}}}, response}``
(getInventorySummaries' from the model before its sandbox turned dynamic-only).  A request matches
an example when every parameter the example lists is present with exactly that value (csv arrays,
booleans and integers compared as their query text; ``body`` as parsed JSON); other parameters are
ignored.  The most specific matching example wins.  No match: 400 InvalidInput "Could not match input
arguments", as the static sandbox answers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable, Mapping

import orjson

from .common import ApiError

__all__ = ["NO_MATCH", "StaticFixtures", "load_fixtures"]

NO_MATCH = "Could not match input arguments"
_MISSING = object()


@dataclass(frozen=True)
class _Route:
    method: str
    template: str
    regex: re.Pattern[str]
    op: str
    examples: tuple[dict[str, Any], ...]


def load_fixtures() -> list[dict[str, Any]]:
    """Every static example shipped with the package."""
    folder = resources.files(__package__).joinpath("fixtures")
    entries: list[dict[str, Any]] = []
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".json"):
            entries += [e for e in json.loads(item.read_text()) if e.get("kind") == "static"]
    return entries


def _regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "/?$")


class StaticFixtures:
    def __init__(self, entries: Iterable[dict[str, Any]]) -> None:
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for e in entries:
            grouped.setdefault((e["method"], e["path"]), []).append(e)
        self.routes = [
            _Route(method, path, _regex(path), examples[0]["operationId"], tuple(examples))
            for (method, path), examples in grouped.items()
        ]

    def route(self, method: str, path: str) -> tuple[_Route, dict[str, str]] | None:
        for route in self.routes:
            m = route.regex.match(path)
            if m and route.method == method:
                return route, m.groupdict()
        return None

    def answer(self, route: _Route, query: Mapping[str, list[str]], path_params: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        best: dict[str, Any] | None = None
        for example in route.examples:
            wanted = example["request"]["parameters"]
            if all(_matches(spec["value"], _given(name, query, path_params, body)) for name, spec in wanted.items()):
                if best is None or len(wanted) > len(best["request"]["parameters"]):
                    best = example
        if best is None:
            raise ApiError(400, "InvalidInput", NO_MATCH, "")
        return int(best["status"]), best["response"]


def _given(name: str, query: Mapping[str, list[str]], path_params: Mapping[str, str], body: bytes) -> Any:
    if name in path_params:
        return path_params[name]
    if name in query:
        return query[name]
    if name in ("body", "payload") and body.strip():
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return _MISSING
    return _MISSING


def _matches(expected: Any, given: Any) -> bool:
    if given is _MISSING:
        return False
    if isinstance(expected, dict):
        return given == expected
    values = given if isinstance(given, list) else [given]
    if isinstance(expected, list):
        return [v.strip() for raw in values for v in raw.split(",")] == [str(x) for x in expected]
    text = values[-1]
    if isinstance(expected, bool):
        return text.lower() == str(expected).lower()
    return text == str(expected)
