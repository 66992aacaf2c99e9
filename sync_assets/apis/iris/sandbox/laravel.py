"""What IRIS inherits from Laravel: the length-aware paginator's JSON envelope and the request
validation the sandbox applies (per_page enums, booleans, Y-m-d and ISO 8601 dates)."""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from typing import Any, Mapping, Sequence
from urllib.parse import urlencode

__all__ = [
    "Invalid",
    "boolean",
    "choice",
    "integer",
    "iso_datetime",
    "page_number",
    "paginate",
    "per_page",
    "url_window",
    "ymd",
]

PREVIOUS_LABEL = "&laquo; Previous"
NEXT_LABEL = "Next &raquo;"
ON_EACH_SIDE = 3  # Laravel's default onEachSide

_YMD = re.compile(r"\d{4}-\d{2}-\d{2}")
# Y-m-d\TH:i:sP: whole seconds and a numeric offset; a "+" the query decoded to a space fails here
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}")


class Invalid(Exception):
    """A validation failure: ``errors`` maps each failing field to its messages (Laravel's bag)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.errors: dict[str, list[str]] = {field: [message]}


# --------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------


def page_number(raw: str | None) -> int:
    """Laravel resolves anything but an integer >= 1 to page 1 (no validation error)."""
    return int(raw) if raw is not None and raw.isdigit() and int(raw) >= 1 else 1


def per_page(raw: str | None, allowed: Sequence[int]) -> int:
    """``per_page`` from the endpoint's enum; absent means the largest (IRIS: up to 1,000 per list)."""
    if raw is None:
        return max(allowed)
    if not raw.isdigit() or int(raw) not in allowed:
        raise Invalid("per_page", f"The selected per page is invalid (one of {', '.join(map(str, allowed))}).")
    return int(raw)


def integer(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    if not re.fullmatch(r"-?\d+", raw):
        raise Invalid(name, f"The {name} must be an integer.")
    return int(raw)


def boolean(params: Mapping[str, str], name: str, default: bool) -> bool:
    """Laravel's ``boolean`` rule: true/false/1/0 (case-insensitive here)."""
    raw = params.get(name)
    if raw is None:
        return default
    value = {"true": True, "1": True, "false": False, "0": False}.get(raw.lower())
    if value is None:
        raise Invalid(name, f"The {name} field must be true or false.")
    return value


def choice(params: Mapping[str, str], name: str, allowed: Sequence[str]) -> str | None:
    """One of ``allowed`` (matched case-insensitively, returned as spelled in ``allowed``)."""
    raw = params.get(name)
    if raw is None:
        return None
    for option in allowed:
        if raw.lower() == option.lower():
            return option
    raise Invalid(name, f"The selected {name} is invalid.")


def ymd(params: Mapping[str, str], name: str) -> date | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        if _YMD.fullmatch(raw):
            return date.fromisoformat(raw)
    except ValueError:
        pass
    raise Invalid(name, f"The {name} does not match the format Y-m-d.")


def iso_datetime(params: Mapping[str, str], name: str) -> datetime | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        if _ISO.fullmatch(raw):
            return datetime.fromisoformat(raw)
    except ValueError:
        pass
    raise Invalid(name, f"The {name} does not match the format Y-m-d\\TH:i:sP.")


# --------------------------------------------------------------------------------------
# The paginator
# --------------------------------------------------------------------------------------


def url_window(current: int, last: int, on_each_side: int = ON_EACH_SIDE) -> list[list[int] | None]:
    """Laravel's ``UrlWindow`` as the element list of ``linkCollection``: page ranges, ``None``
    standing for a "..." separator."""
    if last < on_each_side * 2 + 8:
        return [list(range(1, last + 1))]
    window = on_each_side + 4
    start, finish = [1, 2], [last - 1, last]
    if current <= window:
        return [list(range(1, window + on_each_side + 1)), None, finish]
    if current > last - window:
        return [start, None, list(range(last - (window + (on_each_side - 1)), last + 1))]
    return [start, None, list(range(current - on_each_side, current + on_each_side + 1)), None, finish]


def paginate(
    items: Sequence[Any],
    *,
    page: int,
    per_page: int,
    path: str,
    query: Sequence[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """``{data, links, meta}`` of a Laravel ``LengthAwarePaginator`` resource collection.

    ``path`` is the absolute URL without query; page URLs are ``path?page=N``, or, with ``query``
    (``withQueryString()``), the request's parameters with ``page`` set in place.  A page past the
    end has ``data: []``, ``from``/``to`` null and the same ``total``.
    """
    total = len(items)
    last = max(math.ceil(total / per_page), 1)
    data = list(items[(page - 1) * per_page: page * per_page])

    def url(n: int) -> str:
        params = dict(query or ())
        params["page"] = str(n)  # replaces an existing page in place, else appends (array_merge)
        return f"{path}?{urlencode(params) if query else f'page={n}'}"

    prev_url = url(page - 1) if page > 1 else None
    next_url = url(page + 1) if page < last else None
    links: list[dict[str, Any]] = [{"url": prev_url, "label": PREVIOUS_LABEL, "active": False}]
    for element in url_window(page, last):
        if element is None:
            links.append({"url": None, "label": "...", "active": False})
        else:
            links += [{"url": url(n), "label": str(n), "active": n == page} for n in element]
    links.append({"url": next_url, "label": NEXT_LABEL, "active": False})
    first_item = (page - 1) * per_page + 1 if data else None
    return {
        "data": data,
        "links": {"first": url(1), "last": url(last), "prev": prev_url, "next": next_url},
        "meta": {
            "current_page": page, "from": first_item, "last_page": last, "links": links, "path": path,
            "per_page": per_page, "to": first_item + len(data) - 1 if first_item else None, "total": total,
        },
    }
