"""How a route's results are split into pages: declarations only. The walk engine in
`sync_assets.fetch.walks` interprets them.

Two families:
- a **known page count** (`PageNumbers`): the first page tells how many there are (ESI's `X-Pages`
  header, Laravel's `meta.last_page` in the body), so the rest are fetched concurrently and must all
  come from one snapshot;
- **cursors** (`FromId`, `NextToken`): each page tells where the next one starts, so pages are
  fetched one after another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


def at_path(body: Any, path: str | None) -> Any:
    """`body` at a dotted path ("meta.last_page"); the body itself for None; None when missing."""
    if path is None:
        return body
    node = body
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


@dataclass(frozen=True)
class Single:
    """One response holds every record."""

    records_path: str | None = None  # where the list is in the body; None: the body is the list


@dataclass(frozen=True)
class PageNumbers:
    """`?page=N` with the page count known from the first page; walked concurrently."""

    param: str = "page"
    count_header: str | None = "X-Pages"  # the page count in a header (ESI) ...
    count_path: str | None = None  # ... or in the body (Laravel: "meta.last_page")
    records_path: str | None = None  # where the list is in the body ("data"); None: the body is the list
    size_param: str | None = None  # page-size parameter ("per_page") and the size to ask for
    size: int | None = None

    def __post_init__(self) -> None:
        if (self.count_header is None) == (self.count_path is None):
            raise ValueError("PageNumbers needs exactly one of count_header and count_path")
        if (self.size_param is None) != (self.size is None):
            raise ValueError("PageNumbers: size_param and size go together")

    def params(self, page: int) -> dict[str, Any]:
        params: dict[str, Any] = {self.param: page}
        if self.size_param:
            params[self.size_param] = self.size
        return params


@dataclass(frozen=True)
class FromId:
    """ESI's `from_id`: newest first; each call passes the smallest id seen (and gets it again)."""

    field: str  # the id field, also the stored cursor (the newest id already stored)
    param: str = "from_id"
    records_path: str | None = None


@dataclass(frozen=True)
class NextToken:
    """A next-page token read from the body and sent as a query parameter (SP-API)."""

    token_path: str  # "pagination.nextToken", "payload.NextToken"
    param: str  # "nextToken", "paginationToken"
    records_path: str | None = None
    only_param: bool = False  # send the token alone, without the first call's parameters
    lifetime_s: float | None = None  # tokens die this long after they were issued: then the walk restarts
    max_pages: int = 100_000  # a guard against an API that never stops answering tokens


Paginator = Single | PageNumbers | FromId | NextToken
SINGLE = Single()
X_PAGES = PageNumbers()
