"""Deterministic, realistic and fast market data for the offline ESI sandbox.

Everything here is pure: the same inputs (seed, region, generation) always give the
same arrays and therefore the same JSON bytes.  Data is held column-wise in numpy
arrays; JSON is produced once per snapshot with orjson.

Shapes follow the official ESI OpenAPI spec (compat 2026-08-18):

* ``GET /markets/{region_id}/orders`` -> ``MarketsRegionIdOrdersGet_inner`` (:data:`ORDER_FIELDS`)
* ``GET /markets/prices``             -> ``MarketsPricesGet_inner`` (:data:`PRICE_FIELDS`)
* ``GET /status``                     -> ``Status`` (``vip`` omitted while the cluster is open, as ESI does)

Generations: generation 0 is generated from scratch; generation ``g + 1`` is derived
from generation ``g`` (about 10 % of the orders change price or volume_remain, about 5 %
vanish, about 5 % new orders appear with new, larger order ids).  Orders are always
sorted by ``order_id``, so vanishing orders shift later orders to earlier pages, exactly
what makes a page walk across a refresh produce gaps and duplicates on the real API.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping

import numpy as np
import orjson
import pandas as pd

__all__ = [
    "ORDER_FIELDS",
    "PRICE_FIELDS",
    "STATUS_FIELDS",
    "RANGE_VALUES",
    "DEFAULT_REGIONS",
    "DEFAULT_REGION_PAGES",
    "SMALL_REGION_PAGES",
    "DEFAULT_DATA_EPOCH",
    "ORDERS_DATA_STEP_SECONDS",
    "PRICES_DATA_STEP_SECONDS",
    "SERVER_VERSION",
    "RegionInfo",
    "Universe",
    "OrderBook",
    "PriceTable",
    "region_info",
    "initial_order_count",
    "generate_orders",
    "evolve_orders",
    "render_order_pages",
    "render_order_rows",
    "generate_prices",
    "evolve_prices",
    "render_prices",
    "status_payload",
    "format_datetimes",
    "etag_of",
]

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

#: Fields of one market order, in the spec's (alphabetical) order; all are required.
ORDER_FIELDS: tuple[str, ...] = (
    "duration",
    "is_buy_order",
    "issued",
    "location_id",
    "min_volume",
    "order_id",
    "price",
    "range",
    "system_id",
    "type_id",
    "volume_remain",
    "volume_total",
)

#: Fields of one market price row (``average_price`` is omitted on ~3 % of rows).
PRICE_FIELDS: tuple[str, ...] = ("adjusted_price", "average_price", "type_id")

#: Fields sent by ``/status`` while the cluster is open (``vip`` only appears in VIP mode).
STATUS_FIELDS: tuple[str, ...] = ("players", "server_version", "start_time")

#: The spec's enum for ``range`` (index = the code stored in :class:`OrderBook`).
RANGE_VALUES: tuple[str, ...] = (
    "station",
    "region",
    "solarsystem",
    "1",
    "2",
    "3",
    "4",
    "5",
    "10",
    "20",
    "30",
    "40",
)
_RANGE_REGION = RANGE_VALUES.index("region")
_BUY_RANGE_P = np.array([0.42, 0.18, 0.10, 0.05, 0.03, 0.03, 0.02, 0.06, 0.05, 0.03, 0.02, 0.01])

_SELL_DURATIONS = np.array([90, 30, 14, 7, 3, 1], dtype=np.int64)
_SELL_DURATION_P = np.array([0.62, 0.20, 0.07, 0.05, 0.03, 0.03])
_BUY_DURATIONS = np.array([90, 30, 14, 7, 3, 1, 365], dtype=np.int64)
_BUY_DURATION_P = np.array([0.45, 0.16, 0.06, 0.05, 0.04, 0.04, 0.20])

#: Fixed reference time of generation 0 (data is independent of the wall clock).
DEFAULT_DATA_EPOCH = datetime(2026, 11, 20, 12, 0, 0, tzinfo=timezone.utc)
#: How far "game time" advances per orders / prices generation (= ESI cache times).
ORDERS_DATA_STEP_SECONDS = 300
PRICES_DATA_STEP_SECONDS = 3600
SERVER_VERSION = "3027895"

_ORDER_ID_BASE = 6_900_000_000
_ORDER_ID_SLOTS = 128  # ids are  BASE + tick * SLOTS + (region_id % SLOTS): unique across regions
_ORDER_TICKS_PER_SECOND = 0.3
_ORDER_ID_TIME_ORIGIN = int(datetime(2026, 8, 1, tzinfo=timezone.utc).timestamp())


@dataclass(frozen=True)
class _Hub:
    name: str
    system_id: int
    station_id: int
    extra_structures: tuple[tuple[int, int], ...] = ()  # (structure_id, system_id)


#: Known trade hubs: region_id -> hub (real ids).
_HUBS: dict[int, _Hub] = {
    10000002: _Hub("The Forge", 30000142, 60003760, ((1028858195912, 30000144),)),  # Jita 4-4, Perimeter TTT
    10000043: _Hub("Domain", 30002187, 60008494),  # Amarr VIII (Oris)
    10000032: _Hub("Sinq Laison", 30002659, 60011866),  # Dodixie IX - Moon 20
    10000030: _Hub("Heimatar", 30002510, 60004588),  # Rens VI - Moon 8
    10000042: _Hub("Metropolis", 30002053, 60005686),  # Hek VIII - Moon 12
}
_ALL_HUB_SYSTEMS = {h.system_id for h in _HUBS.values()} | {
    s for h in _HUBS.values() for _, s in h.extra_structures
}
_ALL_HUB_STATIONS = {h.station_id for h in _HUBS.values()}

#: region_id -> display name for the default regions.
DEFAULT_REGIONS: dict[int, str] = {rid: hub.name for rid, hub in _HUBS.items()}
#: Pages per region of the default (full-size) sandbox.
DEFAULT_REGION_PAGES: dict[int, int] = {
    10000002: 300,
    10000043: 60,
    10000032: 30,
    10000030: 20,
    10000042: 15,
}
#: A ~10x smaller variant for quick demos.
SMALL_REGION_PAGES: dict[int, int] = {
    10000002: 30,
    10000043: 6,
    10000032: 3,
    10000030: 2,
    10000042: 2,
}


def _rng(*key: int) -> np.random.Generator:
    words: list[int] = []
    for k in key:
        k = int(k) % (1 << 64)
        words += [k & 0xFFFFFFFF, k >> 32]
    return np.random.default_rng(words)


def etag_of(body: bytes) -> str:
    """Strong, quoted SHA-224 ETag (ESI's observed shape: ``"<56 hex>"``)."""
    return '"' + hashlib.sha224(body).hexdigest() + '"'


# --------------------------------------------------------------------------------------
# Date formatting (vectorized)
# --------------------------------------------------------------------------------------


def format_datetimes(epoch_seconds: np.ndarray) -> list[str]:
    """Format UTC epoch seconds as ``YYYY-MM-DDTHH:MM:SSZ`` strings, vectorized.

    About 10x faster than ``datetime.strftime`` per row; used for ``issued``.
    """
    s = np.asarray(epoch_seconds, dtype=np.int64)
    n = s.shape[0]
    if n == 0:
        return []
    days, secs = np.divmod(s, 86400)
    hh, rem = np.divmod(secs, 3600)
    mi, ss = np.divmod(rem, 60)
    # civil_from_days (Howard Hinnant), vectorized
    z = days + 719468
    era = np.floor_divide(z, 146097)
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = np.where(mp < 10, mp + 3, mp - 9)
    y = y + (m <= 2)

    out = np.empty((n, 20), dtype=np.uint32)
    zero = ord("0")
    out[:, 0] = zero + y // 1000
    out[:, 1] = zero + (y // 100) % 10
    out[:, 2] = zero + (y // 10) % 10
    out[:, 3] = zero + y % 10
    out[:, 4] = ord("-")
    out[:, 5] = zero + m // 10
    out[:, 6] = zero + m % 10
    out[:, 7] = ord("-")
    out[:, 8] = zero + d // 10
    out[:, 9] = zero + d % 10
    out[:, 10] = ord("T")
    out[:, 11] = zero + hh // 10
    out[:, 12] = zero + hh % 10
    out[:, 13] = ord(":")
    out[:, 14] = zero + mi // 10
    out[:, 15] = zero + mi % 10
    out[:, 16] = ord(":")
    out[:, 17] = zero + ss // 10
    out[:, 18] = zero + ss % 10
    out[:, 19] = ord("Z")
    return out.view("<U20").reshape(n).tolist()


# --------------------------------------------------------------------------------------
# Universe: item types and their reference prices
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Universe:
    """Item types known to the market (shared by all regions and by /markets/prices)."""

    seed: int
    type_ids: np.ndarray  # int64, sorted, unique
    base_price: np.ndarray  # float64 reference ISK price per type
    order_weight: np.ndarray  # float64, sums to 1: how often a type appears in orders
    has_average: np.ndarray  # bool: False on ~3% of types (no average_price in /markets/prices)

    @classmethod
    def build(cls, seed: int = 0, n_types: int = 15_000) -> "Universe":
        rng = _rng(seed, 0x5EED, 1)
        n_types = int(n_types)
        type_ids = np.sort(rng.choice(np.arange(18, 90_000, dtype=np.int64), size=n_types, replace=False))
        base_price = np.exp(rng.normal(np.log(150_000.0), 3.0, n_types))
        base_price = np.clip(base_price, 0.5, 5e10)
        # Zipf-like popularity over a random ranking; ~15% of types are (almost) never traded.
        ranks = rng.permutation(n_types).astype(np.float64)
        weight = 1.0 / (ranks + 25.0) ** 1.05
        weight[rng.random(n_types) < 0.15] *= 1e-3
        weight /= weight.sum()
        has_average = rng.random(n_types) >= 0.03
        return cls(seed, type_ids, base_price, weight, has_average)


# --------------------------------------------------------------------------------------
# Regions: systems and market locations
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionInfo:
    region_id: int
    name: str
    hub_system_id: int
    hub_station_id: int
    location_ids: np.ndarray  # int64: NPC stations (60xxxxxx) and player structures (1.0e12+)
    location_system_ids: np.ndarray  # int64: system of each location
    location_weights: np.ndarray  # float64, sums to 1


def region_info(region_id: int, seed: int = 0) -> RegionInfo:
    """Deterministic geography of a region (hub + ~40 systems, stations, a few structures).

    Station/system ids are partitioned by region so they never collide across regions.
    """
    region_id = int(region_id)
    rng = _rng(seed, region_id, 0x6E0)
    idx = (region_id - 10_000_000) % 70
    hub = _HUBS.get(region_id)
    if hub is None:
        sys_base = 30_000_000 + idx * 70 + 1
        hub_system = sys_base + int(rng.integers(0, 70))
        while hub_system in _ALL_HUB_SYSTEMS:
            hub_system += 1
        st_base = 60_000_000 + idx * 200 + 4
        hub_station = st_base + int(rng.integers(0, 200))
        while hub_station in _ALL_HUB_STATIONS:
            hub_station += 1
        hub = _Hub(f"Region {region_id}", hub_system, hub_station)
    sys_base = 30_000_000 + idx * 70 + 1
    candidates = [s for s in range(sys_base, sys_base + 70) if s not in _ALL_HUB_SYSTEMS and s != hub.system_id]
    others = rng.choice(np.array(candidates, dtype=np.int64), size=min(39, len(candidates)), replace=False)
    systems = np.concatenate([[hub.system_id], np.sort(others)]).astype(np.int64)

    st_base = 60_000_000 + idx * 200 + 4
    st_candidates = np.array(
        [s for s in range(st_base, st_base + 200) if s not in _ALL_HUB_STATIONS and s != hub.station_id],
        dtype=np.int64,
    )
    per_system = rng.integers(1, 5, size=len(systems))  # 1..4 NPC stations per system
    per_system[0] = max(per_system[0] - 1, 1)  # the hub system: hub station + others
    n_st = min(int(per_system.sum()), len(st_candidates))
    stations = np.sort(rng.choice(st_candidates, size=n_st, replace=False))
    st_systems = np.repeat(systems, per_system)[:n_st]

    n_struct = int(rng.integers(2, 7))
    struct_ids = 1_020_000_000_000 + idx * 1_000_000_000 + np.sort(
        rng.choice(999_000_000, size=n_struct, replace=False)
    ).astype(np.int64)
    struct_systems = rng.choice(systems[:10], size=n_struct)
    if hub.extra_structures:
        struct_ids = np.concatenate([[s for s, _ in hub.extra_structures], struct_ids]).astype(np.int64)
        struct_systems = np.concatenate([[y for _, y in hub.extra_structures], struct_systems]).astype(np.int64)

    location_ids = np.concatenate([[hub.station_id], stations, struct_ids]).astype(np.int64)
    location_systems = np.concatenate([[hub.system_id], st_systems, struct_systems]).astype(np.int64)
    w_st = 1.0 / (np.arange(len(stations)) + 3.0) ** 1.2
    w_st = rng.permutation(w_st)
    w_st *= 0.43 / w_st.sum()
    w_struct = rng.random(len(struct_ids)) + 0.2
    if hub.extra_structures:
        w_struct[0] += 3.0
    w_struct *= 0.12 / w_struct.sum()
    weights = np.concatenate([[0.45], w_st, w_struct])
    weights /= weights.sum()
    return RegionInfo(
        region_id, hub.name, hub.system_id, hub.station_id, location_ids, location_systems, weights
    )


# --------------------------------------------------------------------------------------
# Market orders
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderBook:
    """All orders of one region at one generation, column-wise (sorted by order_id).

    ``issued`` holds UTC epoch seconds; ``range`` holds indexes into :data:`RANGE_VALUES`.
    Treat the arrays as read-only.
    """

    region_id: int
    generation: int
    data_time: int  # "game time" of this generation (epoch seconds)
    target_size: int
    columns: Mapping[str, np.ndarray]
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return int(self.columns["order_id"].shape[0])

    def to_frame(self) -> pd.DataFrame:
        c = self.columns
        return pd.DataFrame(
            {
                "duration": c["duration"].astype(np.int64),
                "is_buy_order": c["is_buy_order"].astype(bool),
                "issued": pd.to_datetime(c["issued"], unit="s", utc=True),
                "location_id": c["location_id"].astype(np.int64),
                "min_volume": c["min_volume"].astype(np.int64),
                "order_id": c["order_id"].astype(np.int64),
                "price": c["price"].astype(np.float64),
                "range": pd.Series(np.asarray(RANGE_VALUES, dtype=object)[c["range"]], dtype="str"),
                "system_id": c["system_id"].astype(np.int64),
                "type_id": c["type_id"].astype(np.int64),
                "volume_remain": c["volume_remain"].astype(np.int64),
                "volume_total": c["volume_total"].astype(np.int64),
            },
            columns=list(ORDER_FIELDS),
        )


def initial_order_count(region_id: int, pages: int, orders_per_page: int, seed: int = 0) -> int:
    """Orders in generation 0: ``pages - 1`` full pages plus a partial last page."""
    pages = max(int(pages), 1)
    rng = _rng(seed, int(region_id), 0xC0)
    last = max(1, int(round(orders_per_page * rng.uniform(0.3, 0.95))))
    return (pages - 1) * int(orders_per_page) + min(last, int(orders_per_page))


def _order_ids_for(issued_sorted: np.ndarray, region_id: int, floor_tick: int) -> np.ndarray:
    """Strictly increasing order ids for orders sorted by issue time."""
    ticks = np.floor((issued_sorted - _ORDER_ID_TIME_ORIGIN) * _ORDER_TICKS_PER_SECOND).astype(np.int64)
    ticks = np.maximum(ticks, floor_tick)
    i = np.arange(ticks.shape[0], dtype=np.int64)
    ticks = np.maximum.accumulate(ticks - i) + i  # make strictly increasing
    return _ORDER_ID_BASE + ticks * _ORDER_ID_SLOTS + (int(region_id) % _ORDER_ID_SLOTS)


def _tick_of(order_id: int) -> int:
    return (int(order_id) - _ORDER_ID_BASE) // _ORDER_ID_SLOTS


def _sample_orders(
    rng: np.random.Generator,
    n: int,
    universe: Universe,
    region: RegionInfo,
    issued_lo: np.ndarray | int,
    issued_hi: int,
    fresh: bool,
) -> dict[str, np.ndarray]:
    """Sample ``n`` orders (unsorted, without ids)."""
    is_buy = rng.random(n) < 0.42
    t_idx = rng.choice(universe.type_ids.shape[0], size=n, p=universe.order_weight)
    loc_idx = rng.choice(region.location_ids.shape[0], size=n, p=region.location_weights)
    duration = np.where(
        is_buy,
        rng.choice(_BUY_DURATIONS, size=n, p=_BUY_DURATION_P),
        rng.choice(_SELL_DURATIONS, size=n, p=_SELL_DURATION_P),
    )
    rng_code = np.where(
        is_buy,
        rng.choice(len(RANGE_VALUES), size=n, p=_BUY_RANGE_P),
        _RANGE_REGION,
    ).astype(np.int8)
    base = universe.base_price[t_idx]
    factor = np.where(is_buy, np.exp(rng.normal(-0.12, 0.2, n)), np.exp(rng.normal(0.04, 0.1, n)))
    price = np.maximum(np.round(base * factor, 2), 0.01)
    typical = np.clip(3e7 / base, 1.0, 5e7)
    volume_total = np.maximum(np.rint(np.exp(rng.normal(np.log(typical), 1.2))), 1).astype(np.int64)
    untouched = rng.random(n) < (0.6 if fresh else 0.35)
    filled_frac = rng.uniform(0.02, 1.0, n)
    volume_remain = np.where(
        untouched, volume_total, np.maximum(np.ceil(volume_total * filled_frac), 1).astype(np.int64)
    )
    volume_remain = np.minimum(volume_remain, volume_total).astype(np.int64)
    bulk = is_buy & (rng.random(n) < 0.08)
    min_volume = np.where(
        bulk, np.maximum(volume_total // rng.integers(2, 11, n), 1), 1
    ).astype(np.int64)
    if fresh:
        issued = rng.integers(issued_lo, issued_hi, size=n, endpoint=True)
    else:
        max_age = np.minimum(duration, 120) * 86400
        issued = issued_hi - (rng.random(n) * max_age).astype(np.int64)
    return {
        "duration": duration.astype(np.int64),
        "is_buy_order": is_buy,
        "issued": issued.astype(np.int64),
        "location_id": region.location_ids[loc_idx],
        "min_volume": min_volume,
        "price": price,
        "range": rng_code,
        "system_id": region.location_system_ids[loc_idx],
        "type_id": universe.type_ids[t_idx],
        "volume_remain": volume_remain,
        "volume_total": volume_total,
    }


def _data_time(epoch: datetime | int, generation: int, step: int) -> int:
    base = int(epoch.timestamp()) if isinstance(epoch, datetime) else int(epoch)
    return base + int(generation) * int(step)


def generate_orders(
    universe: Universe,
    region: RegionInfo,
    n_orders: int,
    *,
    seed: int = 0,
    data_epoch: datetime | int = DEFAULT_DATA_EPOCH,
) -> OrderBook:
    """Generation 0 of a region's order book."""
    n = int(n_orders)
    rng = _rng(seed, region.region_id, 0, 0xB00C)
    now = _data_time(data_epoch, 0, ORDERS_DATA_STEP_SECONDS)
    cols = _sample_orders(rng, n, universe, region, 0, now, fresh=False)
    order = np.argsort(cols["issued"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    cols["order_id"] = _order_ids_for(cols["issued"], region.region_id, 0)
    return OrderBook(region.region_id, 0, now, n, cols)


def evolve_orders(
    book: OrderBook,
    universe: Universe,
    region: RegionInfo,
    *,
    seed: int = 0,
    data_epoch: datetime | int = DEFAULT_DATA_EPOCH,
    change_frac: float = 0.10,
    vanish_frac: float = 0.05,
    new_frac: float = 0.05,
) -> OrderBook:
    """Derive the next generation: ~10% change, ~5% vanish, ~5% new (deterministic)."""
    g = book.generation + 1
    rng = _rng(seed, region.region_id, g, 0xE7)
    prev_time = book.data_time
    now = _data_time(data_epoch, g, ORDERS_DATA_STEP_SECONDS)
    c = book.columns
    n = len(book)

    vanish_p = vanish_frac * rng.uniform(0.8, 1.2)
    keep = rng.random(n) >= vanish_p
    keep &= c["issued"] + c["duration"] * 86400 > now  # expired orders leave the book
    cols = {k: v[keep].copy() for k, v in c.items()}
    m = int(keep.sum())

    changed = rng.random(m) < change_frac
    kind = rng.random(m)
    reprice = changed & (kind < 0.55)
    fill = changed & (kind >= 0.35)  # the overlap both reprices and fills
    if reprice.any():
        k = int(reprice.sum())
        newp = cols["price"][reprice] * np.exp(rng.normal(0.0, 0.03, k))
        cols["price"][reprice] = np.maximum(np.round(newp, 2), 0.01)
        # modifying an order resets its issue date (as in the game)
        cols["issued"][reprice] = rng.integers(prev_time + 1, now, size=k, endpoint=True)
    if fill.any():
        vr = cols["volume_remain"][fill]
        take = np.ceil(vr * rng.uniform(0.05, 0.9, vr.shape[0])).astype(np.int64)
        cols["volume_remain"][fill] = np.maximum(vr - take, 1)

    # new orders: ~5%, pulled back towards the target size so X-Pages wanders but stays put
    n_new = int(round(n * new_frac * rng.uniform(0.8, 1.2) + 0.5 * (book.target_size - n)))
    n_new = max(n_new, 0)
    if n_new:
        new = _sample_orders(rng, n_new, universe, region, prev_time + 1, now, fresh=True)
        order = np.argsort(new["issued"], kind="stable")
        new = {k: v[order] for k, v in new.items()}
        floor_tick = _tick_of(int(c["order_id"].max())) + 1 if n else 0
        new["order_id"] = _order_ids_for(new["issued"], region.region_id, floor_tick)
        cols = {k: np.concatenate([cols[k], new[k]]) for k in c}
    return OrderBook(region.region_id, g, now, book.target_size, cols)


def _column_lists(book: OrderBook, index: np.ndarray | slice | None) -> list[list]:
    c = book.columns
    if index is None:
        index = slice(None)
    ranges = RANGE_VALUES
    return [
        c["duration"][index].tolist(),
        c["is_buy_order"][index].tolist(),
        format_datetimes(c["issued"][index]),
        c["location_id"][index].tolist(),
        c["min_volume"][index].tolist(),
        c["order_id"][index].tolist(),
        c["price"][index].tolist(),
        [ranges[i] for i in c["range"][index].tolist()],
        c["system_id"][index].tolist(),
        c["type_id"][index].tolist(),
        c["volume_remain"][index].tolist(),
        c["volume_total"][index].tolist(),
    ]


def _rows(cols: list[list], start: int = 0, stop: int | None = None) -> list[dict]:
    # A dict literal in a comprehension is ~2x faster than dict(zip(keys, row)).
    return [
        {
            "duration": a,
            "is_buy_order": b,
            "issued": d,
            "location_id": e,
            "min_volume": f,
            "order_id": g,
            "price": h,
            "range": i,
            "system_id": j,
            "type_id": k,
            "volume_remain": l_,
            "volume_total": m_,
        }
        for a, b, d, e, f, g, h, i, j, k, l_, m_ in zip(*(col[start:stop] for col in cols))
    ]


def render_order_rows(book: OrderBook, index: np.ndarray | slice | None = None) -> list[dict]:
    """Rows (spec dicts) for a subset of the book (all rows if ``index`` is None)."""
    return _rows(_column_lists(book, index))


def render_order_pages(book: OrderBook, orders_per_page: int = 1000) -> list[bytes]:
    """JSON body of every page (at least one page; an empty book gives ``[b"[]"]``).

    Columns are converted to Python lists once; dicts are built and dumped page by
    page so they die young (building 300k dicts at once makes the cyclic GC crawl).
    """
    n = len(book)
    opp = max(int(orders_per_page), 1)
    if n == 0:
        return [b"[]"]
    cols = _column_lists(book, None)
    dumps = orjson.dumps
    return [dumps(_rows(cols, i, i + opp)) for i in range(0, n, opp)]


# --------------------------------------------------------------------------------------
# Market prices
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriceTable:
    generation: int
    type_ids: np.ndarray  # int64 sorted
    adjusted_price: np.ndarray  # float64
    average_price: np.ndarray  # float64 (NaN where has_average is False)
    has_average: np.ndarray  # bool

    def __len__(self) -> int:
        return int(self.type_ids.shape[0])

    def to_frame(self) -> pd.DataFrame:
        avg = np.where(self.has_average, self.average_price, np.nan)
        return pd.DataFrame(
            {
                "adjusted_price": self.adjusted_price.astype(np.float64),
                "average_price": avg.astype(np.float64),
                "type_id": self.type_ids.astype(np.int64),
            },
            columns=list(PRICE_FIELDS),
        )


def generate_prices(universe: Universe, *, seed: int = 0) -> PriceTable:
    rng = _rng(seed, 0x9121CE, 0)
    n = universe.type_ids.shape[0]
    avg = np.maximum(np.round(universe.base_price * np.exp(rng.normal(0.0, 0.05, n)), 2), 0.01)
    adj = np.maximum(np.round(avg * np.exp(rng.normal(0.0, 0.08, n)), 2), 0.01)
    return PriceTable(0, universe.type_ids, adj, np.where(universe.has_average, avg, np.nan), universe.has_average)


def evolve_prices(table: PriceTable, *, seed: int = 0, change_frac: float = 0.25) -> PriceTable:
    g = table.generation + 1
    rng = _rng(seed, 0x9121CE, g)
    n = len(table)
    ch = rng.random(n) < change_frac
    avg = table.average_price.copy()
    adj = table.adjusted_price.copy()
    k = int(ch.sum())
    avg[ch] = np.maximum(np.round(avg[ch] * np.exp(rng.normal(0.0, 0.02, k)), 2), 0.01)
    adj[ch] = np.maximum(np.round(adj[ch] * np.exp(rng.normal(0.0, 0.02, k)), 2), 0.01)
    return PriceTable(g, table.type_ids, adj, avg, table.has_average)


def render_prices(table: PriceTable) -> bytes:
    adj = table.adjusted_price.tolist()
    avg = table.average_price.tolist()
    has = table.has_average.tolist()
    tids = table.type_ids.tolist()
    rows = [
        {"adjusted_price": a, "average_price": v, "type_id": t} if h else {"adjusted_price": a, "type_id": t}
        for a, v, h, t in zip(adj, avg, has, tids)
    ]
    return orjson.dumps(rows)


# --------------------------------------------------------------------------------------
# /status
# --------------------------------------------------------------------------------------


def status_payload(
    generation: int, *, seed: int = 0, data_epoch: datetime | int = DEFAULT_DATA_EPOCH
) -> dict:
    """``{"players", "server_version", "start_time"}`` (cluster open: no ``vip``)."""
    base = _data_time(data_epoch, 0, 1)
    day_start = base - base % 86400
    rng0 = _rng(seed, 0x57A7, 0)
    start = day_start + 11 * 3600 + int(rng0.integers(90, 900))
    if start > base:
        start -= 86400
    rng = _rng(seed, 0x57A7, int(generation) + 1)
    players = int(22_000 + 6_000 * np.sin(generation / 40.0) + rng.integers(-800, 800))
    return {
        "players": players,
        "server_version": SERVER_VERSION,
        "start_time": format_datetimes(np.array([start]))[0],
    }
