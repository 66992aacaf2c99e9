"""Shared building blocks of the sandbox's corporation data (see :mod:`.corporation`).

* :class:`Field` / :class:`TableView`: a column store of one route's rows, in serving order, that
  renders ESI JSON pages (optional fields are *omitted* when absent, never ``null``) and converts
  to a pandas DataFrame with spec column names and sensible dtypes.
* deterministic RNG keyed by integers, strictly increasing time-based id allocation,
  date formatting, and the real EVE type ids used for ships, ores, structures and containers.

Everything is pure: the same inputs give the same arrays and the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Iterable

import numpy as np
import orjson
import pandas as pd

from . import market_data as md

__all__ = [
    "INT_NA",
    "ID_SLOTS",
    "Field",
    "TableView",
    "corp_rng",
    "corp_slot",
    "alloc_ids",
    "format_dt",
    "format_dates",
    "day_start",
    "etag_of",
    "SHIP_TYPES",
    "ORE_TYPES",
    "UPWELL_TYPES",
    "REFINERY_TYPES",
    "CONTAINER_TYPES",
    "FUEL_BLOCK_TYPES",
    "SERVICE_MODULE_TYPES",
    "NPC_FACTIONS",
    "NPC_CORPORATIONS",
]

INT_NA = np.iinfo(np.int64).min  # "absent" marker of optional integer / date-time columns
ID_SLOTS = 97  # ids are  base + tick * ID_SLOTS + slot(corporation): unique across corporations
DAY = 86400

etag_of = md.etag_of

# --- real EVE type ids (so the data looks right to anyone who knows the game) -------------------

#: ship type ids: Rifter, Merlin, Heron, Venture, Catalyst, Thrasher, Caracal, Vexor, Thorax, Stabber,
#: Drake, Hurricane, Ferox, Brutix, Raven, Megathron, Apocalypse, Tempest, Retriever, Procurer,
#: Covetor, Hulk, Orca, Badger, Tayra, Tengu, Loki, Sabre, Ishtar, Capsule
SHIP_TYPES: tuple[int, ...] = (
    587, 603, 605, 32880, 16240, 16242, 621, 626, 627, 622,
    24698, 24702, 16227, 16229, 638, 641, 642, 639, 17478, 17480,
    17476, 22544, 28606, 648, 649, 29984, 29990, 22456, 12005, 670,
)
#: ores: Veldspar, Scordite, Pyroxeres, Plagioclase, Omber, Kernite, Jaspet, Hemorphite, Hedbergite,
#: and moon ores (Bitumens, Coesite, Sylvite, Zeolites, Cobaltite, Euxenite, Titanite, Scheelite)
ORE_TYPES: tuple[int, ...] = (1230, 1228, 1224, 18, 1227, 20, 1226, 1231, 21, 45492, 45493, 45491, 45490, 45494, 45495, 45496, 45497)
#: Upwell structures: Astrahus, Fortizar, Raitaru, Azbel, Athanor, Tatara
UPWELL_TYPES: tuple[int, ...] = (35832, 35833, 35825, 35826, 35835, 35836)
REFINERY_TYPES: tuple[int, ...] = (35835, 35836)
#: Small / Medium / Large Audit Log Secure Container
CONTAINER_TYPES: tuple[int, ...] = (17363, 17364, 17365)
#: Nitrogen / Hydrogen / Helium / Oxygen fuel blocks
FUEL_BLOCK_TYPES: tuple[int, ...] = (4051, 4246, 4247, 4312)
#: Standup Manufacturing Plant I, Research Lab I, Reprocessing Facility I, Market Hub I, Moon Drill I
SERVICE_MODULE_TYPES: tuple[int, ...] = (35878, 35891, 35899, 35892, 45009)
#: NPC factions (Guristas, Serpentis, Angel Cartel, Blood Raiders, Sansha's Nation)
NPC_FACTIONS: tuple[int, ...] = (500010, 500020, 500011, 500012, 500019)
#: NPC corporations of those pirates (Guristas, Serpentis Corporation, Archangels, Blood Raiders, True Creations)
NPC_CORPORATIONS: tuple[int, ...] = (1000127, 1000135, 1000124, 1000134, 1000162)


def corp_rng(*key: int) -> np.random.Generator:
    """A generator seeded by a tuple of integers (order matters)."""
    words: list[int] = []
    for k in key:
        k = int(k) % (1 << 64)
        words += [k & 0xFFFFFFFF, k >> 32]
    return np.random.default_rng(words)


def corp_slot(corporation_id: int) -> int:
    return int(corporation_id) % ID_SLOTS


def alloc_ids(times: np.ndarray, *, base: int, origin: int, ticks_per_second: float, slot: int, floor_tick: int = 0) -> np.ndarray:
    """Strictly increasing ids for records sorted by time: ``base + tick * ID_SLOTS + slot``."""
    times = np.asarray(times, dtype=np.int64)
    ticks = np.floor((times - origin) * ticks_per_second).astype(np.int64)
    ticks = np.maximum(ticks, floor_tick)
    i = np.arange(ticks.shape[0], dtype=np.int64)
    ticks = np.maximum.accumulate(ticks - i) + i if ticks.shape[0] else ticks
    return base + ticks * ID_SLOTS + slot


def tick_of(id_: int, base: int) -> int:
    return (int(id_) - base) // ID_SLOTS


def format_dt(epoch: np.ndarray) -> list[str]:
    return md.format_datetimes(np.asarray(epoch, dtype=np.int64))


def format_dates(epoch: np.ndarray) -> list[str]:
    return [s[:10] for s in md.format_datetimes(np.asarray(epoch, dtype=np.int64))]


def day_start(epoch: np.ndarray | int) -> np.ndarray | int:
    return epoch - np.mod(epoch, DAY) if isinstance(epoch, np.ndarray) else int(epoch) - int(epoch) % DAY


def epoch_of(value: datetime | int) -> int:
    return int(value.timestamp()) if isinstance(value, datetime) else int(value)


# --------------------------------------------------------------------------------------
# Column store -> pages / DataFrame
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One response field.  ``kind``: int | float | bool | dt | date | enum | str.

    Storage: int/dt/date -> int64 (epoch seconds for dt/date; :data:`INT_NA` = absent),
    float -> float64 (NaN = absent), bool -> int8 (-1 = absent), enum -> int16 code into
    ``values`` (-1 = absent), str -> object (None = absent).
    """

    name: str
    kind: str
    optional: bool = False
    values: tuple[str, ...] = ()


def _missing(f: Field, col: np.ndarray) -> np.ndarray | None:
    if not f.optional:
        return None
    if f.kind in ("int", "dt", "date"):
        m = col == INT_NA
    elif f.kind == "float":
        m = np.isnan(col)
    elif f.kind in ("bool", "enum"):
        m = col < 0
    else:
        m = np.array([v is None for v in col], dtype=bool)
    return m if m.any() else None


def _py_column(f: Field, col: np.ndarray) -> list:
    miss = _missing(f, col)
    if f.kind in ("int",):
        out = col.tolist()
    elif f.kind == "float":
        out = col.tolist()
    elif f.kind == "bool":
        out = (col > 0).tolist()
    elif f.kind == "dt":
        out = format_dt(np.where(col == INT_NA, 0, col))
    elif f.kind == "date":
        out = format_dates(np.where(col == INT_NA, 0, col))
    elif f.kind == "enum":
        vals = np.asarray(f.values, dtype=object)
        out = vals[np.where(col < 0, 0, col)].tolist()
    else:
        out = list(col)
    if miss is not None:
        for i in np.flatnonzero(miss).tolist():
            out[i] = None
    return out


@dataclass(frozen=True)
class TableView:
    """Rows of one route (one corporation, one parameter set) in serving order."""

    fields: tuple[Field, ...]
    columns: dict[str, np.ndarray]
    generation: int = 0
    data_time: int = 0
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        if not self.fields:
            return 0
        return int(self.columns[self.fields[0].name].shape[0])

    def take(self, index: np.ndarray | slice) -> "TableView":
        return TableView(self.fields, {k: v[index] for k, v in self.columns.items()}, self.generation, self.data_time)

    def _py(self) -> list[list]:
        hit = self._cache.get("py")
        if hit is None:
            hit = [_py_column(f, self.columns[f.name]) for f in self.fields]
            self._cache["py"] = hit
        return hit

    def rows(self, start: int = 0, stop: int | None = None) -> list[dict]:
        cols = [c[start:stop] for c in self._py()]
        keys = [f.name for f in self.fields]
        if any(f.optional for f in self.fields) and any(None in c for c, f in zip(cols, self.fields) if f.optional):
            return [{k: v for k, v in zip(keys, row) if v is not None} for row in zip(*cols)]
        return [dict(zip(keys, row)) for row in zip(*cols)]

    def render_pages(self, page_size: int) -> list[bytes]:
        n = len(self)
        if n == 0:
            return [b"[]"]
        ps = max(int(page_size), 1)
        dumps = orjson.dumps
        pages = [dumps(self.rows(i, i + ps)) for i in range(0, n, ps)]
        self._cache.pop("py", None)
        return pages

    def to_frame(self) -> pd.DataFrame:
        data: dict[str, Any] = {}
        for f in self.fields:
            col = self.columns[f.name]
            miss = _missing(f, col)
            if f.kind == "int":
                s = pd.Series(col.astype(np.int64))
                if f.optional:
                    s = s.astype("Int64")
                    if miss is not None:
                        s[miss] = pd.NA
            elif f.kind == "float":
                s = pd.Series(col.astype(np.float64))
            elif f.kind == "bool":
                s = pd.Series(col > 0)
                if f.optional:
                    s = s.astype("boolean")
                    if miss is not None:
                        s[miss] = pd.NA
            elif f.kind == "dt":
                s = pd.Series(pd.to_datetime(np.where(col == INT_NA, 0, col), unit="s", utc=True))
                if miss is not None:
                    s[miss] = pd.NaT
            elif f.kind == "date":
                s = pd.Series(pd.to_datetime(np.where(col == INT_NA, 0, col), unit="s", utc=True).date, dtype=object)
                if miss is not None:
                    s[miss] = None
            elif f.kind == "enum":
                vals = np.asarray(f.values, dtype=object)
                s = pd.Series(vals[np.where(col < 0, 0, col)], dtype=object)
                if miss is not None:
                    s[miss] = None
            else:
                s = pd.Series(list(col), dtype=object)
            data[f.name] = s.reset_index(drop=True)
        return pd.DataFrame(data, columns=[f.name for f in self.fields])


@dataclass(frozen=True)
class IdList:
    """A bare JSON array of int64 (``/corporations/{id}/members``)."""

    ids: np.ndarray
    generation: int = 0
    data_time: int = 0

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def render_pages(self, page_size: int = 0) -> list[bytes]:
        return [orjson.dumps(self.ids.tolist())]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"character_id": self.ids.astype(np.int64)})


def concat_columns(parts: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    parts = [p for p in parts if p]
    if not parts:
        return {}
    keys = list(parts[0])
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def take_columns(cols: dict[str, np.ndarray], index: np.ndarray | slice) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in cols.items()}


def as_date(epoch: int) -> date:
    return datetime.fromtimestamp(int(epoch), tz=timezone.utc).date()
