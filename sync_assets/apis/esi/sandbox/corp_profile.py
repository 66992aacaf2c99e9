"""Who a sandbox corporation is: its size, home region, offices, structures, containers and founding
members.  Every dataset of the corporation (:mod:`.corporation`) is generated from its profile, so
item ids, character ids and locations agree across routes (an observer is one of the
corporation's Athanors, a container log names one of its containers, an order's ``issued_by`` is a
member ...).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any, Mapping

import numpy as np

from . import market_data as md
from .corp_common import CONTAINER_TYPES, ID_SLOTS, REFINERY_TYPES, UPWELL_TYPES, corp_rng, corp_slot, epoch_of

__all__ = ["CorpSize", "SIZES", "CorpProfile", "build_profile", "resolve_size", "DIVISION_SHARE", "ITEM_ID_BASE"]

DAY = 86400
ITEM_ID_BASE = 1_000_000_000_000
#: share of the wallet activity per division 1..7 (divisions 6 and 7 stay empty)
DIVISION_SHARE: tuple[float, ...] = (0.62, 0.2, 0.1, 0.05, 0.03, 0.0, 0.0)


@dataclass(frozen=True)
class CorpSize:
    """Volumes of one corporation (generation 0; later generations stay around these)."""

    members: int = 300
    assets: int = 50_000  # rows of /assets (1000 per page -> ~50 pages)
    jobs_open: int = 400  # active/paused/ready industry jobs
    jobs_completed: int = 2_600  # delivered/cancelled/reverted jobs of the past 90 days
    orders_open: int = 1_200
    orders_history: int = 4_500  # closed orders of the past 90 days
    journal_per_day: int = 250  # non-market journal entries per day, all divisions (30 days are served)
    transactions_per_year: int = 14_000  # all divisions; a year is served (from_id walk)
    observers: int = 3  # mining observers (Athanors/Tataras)
    ledger_rows_per_day: int = 50  # per observer (30 days are served)
    killmails: int = 1_500  # in the past 90 days
    container_logs_per_day: int = 180  # 7 days are served

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


SIZES: dict[str, CorpSize] = {
    "small": CorpSize(
        members=40, assets=2_500, jobs_open=40, jobs_completed=260, orders_open=120, orders_history=450,
        journal_per_day=40, transactions_per_year=6_000, observers=1, ledger_rows_per_day=15, killmails=120,
        container_logs_per_day=20,
    ),
    "default": CorpSize(),
    "large": CorpSize(
        members=3_000, assets=200_000, jobs_open=1_500, jobs_completed=10_000, orders_open=5_000,
        orders_history=20_000, journal_per_day=1_000, transactions_per_year=60_000, observers=8,
        ledger_rows_per_day=120, killmails=6_000, container_logs_per_day=600,
    ),
}


def resolve_size(size: str | CorpSize | Mapping[str, Any] | None) -> CorpSize:
    """``"small"|"default"|"large"``, a :class:`CorpSize`, or a dict of overrides (optionally with
    ``"base": "small"|...``) on top of the default size."""
    if size is None:
        return SIZES["default"]
    if isinstance(size, CorpSize):
        return size
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown corporation size {size!r}; expected one of {sorted(SIZES)} or a dict")
        return SIZES[size]
    d = dict(size)
    base = resolve_size(d.pop("base", "default"))
    known = set(base.as_dict())
    bad = set(d) - known
    if bad:
        raise ValueError(f"unknown corporation size field(s) {sorted(bad)}; known: {sorted(known)}")
    vals = {k: int(v) for k, v in d.items()}
    if any(v < 0 for v in vals.values()):
        raise ValueError("corporation sizes must be >= 0")
    return replace(base, **vals)


@dataclass(frozen=True)
class CorpProfile:
    corporation_id: int
    size: CorpSize
    seed: int
    slot: int
    epoch: int  # data time of generation 0 (epoch seconds)
    alliance_id: int | None
    region: md.RegionInfo  # home region: stations/structures/systems
    trade_regions: tuple[md.RegionInfo, ...]
    systems: np.ndarray  # solar systems of the home region
    # founding members first (never leave); member ids are unique per corporation
    roster: np.ndarray
    roster_start: np.ndarray  # epoch seconds the member joined
    founders: int
    # offices: item ids, their station/structure, and location_type code (0 station, 1 item)
    office_ids: np.ndarray
    office_locations: np.ndarray
    office_in_structure: np.ndarray
    # corporation-owned Upwell structures (in space)
    structure_ids: np.ndarray
    structure_types: np.ndarray
    structure_systems: np.ndarray
    # audit log containers sitting in offices
    container_ids: np.ndarray
    container_types: np.ndarray
    container_office: np.ndarray  # index into office_ids
    container_flag: np.ndarray  # CorpSAG division 1..7
    # other corporations of the alliance (mining ledger "recorded_corporation_id") and their miners
    allied_corporations: np.ndarray
    allied_miners: np.ndarray
    allied_miner_corp: np.ndarray

    @property
    def refinery_ids(self) -> np.ndarray:
        return self.structure_ids[np.isin(self.structure_types, REFINERY_TYPES)]

    def item_id(self, k: np.ndarray | int) -> np.ndarray | int:
        return ITEM_ID_BASE + np.asarray(k, dtype=np.int64) * ID_SLOTS + self.slot


def _character_ids(rng: np.random.Generator, n: int, exclude: set[int] | None = None) -> np.ndarray:
    """Realistic character ids: ~45% old (90M-98M), the rest new (2.112e9-2.125e9)."""
    old = rng.random(n) < 0.45
    ids = np.where(
        old,
        rng.integers(90_000_000, 98_000_000, n),
        rng.integers(2_112_000_000, 2_125_000_000, n),
    ).astype(np.int64)
    ids = np.unique(ids)
    if exclude:
        ids = ids[~np.isin(ids, np.fromiter(exclude, dtype=np.int64))]
    while ids.shape[0] < n:  # (practically never) top up after collisions
        extra = rng.integers(2_112_000_000, 2_125_000_000, n - ids.shape[0]).astype(np.int64)
        ids = np.unique(np.concatenate([ids, extra]))
    return rng.permutation(ids)[:n]


def build_profile(corporation_id: int, size: CorpSize, *, seed: int = 0, data_epoch: datetime | int = md.DEFAULT_DATA_EPOCH) -> CorpProfile:
    corporation_id = int(corporation_id)
    rng = corp_rng(seed, corporation_id, 0xC0A9)
    epoch = epoch_of(data_epoch)
    slot = corp_slot(corporation_id)
    regions = list(md.DEFAULT_REGIONS)
    home_id = int(regions[int(rng.integers(0, len(regions)))])
    region = md.region_info(home_id, seed)
    trade = [region] if home_id == 10000002 else [region, md.region_info(10000002, seed)]
    systems = np.unique(region.location_system_ids)
    alliance_id = int(99_000_000 + rng.integers(0, 999_999)) if rng.random() < 0.7 else None

    # members: founders first, then the rest; start dates over the past ~6 years
    n = max(int(size.members), 1)
    roster = _character_ids(rng, n)
    founders = max(5, n // 20) if n >= 5 else n
    start = np.sort(epoch - (rng.random(n) * 6 * 365 * DAY).astype(np.int64))
    # item ids of the profile's items: k in [1e5, 1e8)  (stacks use larger k)
    n_off = int(np.clip(size.assets // 6000, 2, 12)) if size.assets >= 50 else 1
    n_struct = int(np.clip(size.observers + 1 + size.assets // 40_000, 1, 16))
    n_cont = int(np.clip(size.assets // 400, 1, 400))
    ks = np.sort(100_000 + rng.choice(100_000_000 - 100_000, size=n_off + n_struct + n_cont, replace=False).astype(np.int64))
    ks = rng.permutation(ks)
    k_off, k_struct, k_cont = ks[:n_off], ks[n_off : n_off + n_struct], ks[n_off + n_struct :]
    office_ids = ITEM_ID_BASE + np.sort(k_off) * ID_SLOTS + slot
    # offices: NPC stations of the home region (mostly) or market structures of the region
    locs = region.location_ids
    is_struct_loc = locs >= 1_000_000_000_000
    station_pool = locs[~is_struct_loc]
    struct_pool = locs[is_struct_loc]
    in_struct = (rng.random(n_off) < 0.25) & (struct_pool.shape[0] > 0)
    office_locations = np.where(
        in_struct,
        struct_pool[rng.integers(0, max(struct_pool.shape[0], 1), n_off)] if struct_pool.shape[0] else 0,
        station_pool[rng.integers(0, station_pool.shape[0], n_off)],
    ).astype(np.int64)
    office_locations[0] = region.hub_station_id  # every corp has an office at the hub
    in_struct[0] = False
    # structures: at least `observers` refineries, the rest mixed
    n_ref = min(max(int(size.observers), 0), n_struct)
    s_types = np.concatenate(
        [
            rng.choice(np.array(REFINERY_TYPES), size=n_ref),
            rng.choice(np.array([t for t in UPWELL_TYPES if t not in REFINERY_TYPES]), size=n_struct - n_ref),
        ]
    ).astype(np.int64)
    structure_ids = ITEM_ID_BASE + np.sort(k_struct) * ID_SLOTS + slot
    structure_systems = rng.choice(systems, size=n_struct).astype(np.int64)
    container_ids = ITEM_ID_BASE + np.sort(k_cont) * ID_SLOTS + slot
    container_types = rng.choice(np.array(CONTAINER_TYPES), size=n_cont).astype(np.int64)
    container_office = rng.integers(0, n_off, n_cont).astype(np.int64)
    container_flag = rng.integers(1, 8, n_cont).astype(np.int64)

    n_allied = int(rng.integers(2, 6))
    allied = np.unique(98_000_000 + rng.integers(100_000, 999_999, n_allied)).astype(np.int64)
    allied = allied[allied != corporation_id]
    n_am = max(4, n // 5)
    allied_miners = _character_ids(rng, n_am, set(roster.tolist()))
    allied_miner_corp = allied[rng.integers(0, allied.shape[0], n_am)]
    return CorpProfile(
        corporation_id=corporation_id,
        size=size,
        seed=int(seed),
        slot=slot,
        epoch=epoch,
        alliance_id=alliance_id,
        region=region,
        trade_regions=tuple(trade),
        systems=systems,
        roster=roster,
        roster_start=start,
        founders=founders,
        office_ids=office_ids,
        office_locations=office_locations,
        office_in_structure=in_struct.astype(bool),
        structure_ids=structure_ids,
        structure_types=s_types,
        structure_systems=structure_systems,
        container_ids=container_ids,
        container_types=container_types,
        container_office=container_office,
        container_flag=container_flag,
        allied_corporations=allied,
        allied_miners=allied_miners,
        allied_miner_corp=allied_miner_corp,
    )


_FIRST = ("Ara", "Bel", "Cor", "Dra", "Eli", "Fen", "Gar", "Hal", "Iva", "Jor", "Kae", "Lor", "Mir", "Nox", "Ori", "Pax", "Qui", "Ryn", "Sol", "Tav", "Uli", "Vex", "Wyn", "Xan", "Yra", "Zed")
_LAST = ("ana", "ek", "ion", "ar", "us", "ith", "en", "ora", "ax", "is", "ul", "et")


def character_name(character_id: int) -> str:
    r = corp_rng(int(character_id), 0x4E4D)
    a, b, c, d = (int(x) for x in r.integers(0, 1000, 4))
    return f"{_FIRST[a % 26]}{_LAST[b % 12]} {_FIRST[c % 26]}{_LAST[d % 12]}"
