"""Corporation industry jobs, market orders (open + 90-day history) and mining observers/ledgers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .corp_common import (
    INT_NA,
    ORE_TYPES,
    Field,
    TableView,
    alloc_ids,
    concat_columns,
    corp_rng,
    day_start,
    take_columns,
    tick_of,
)
from .corp_profile import CorpProfile
from .market_data import RANGE_VALUES, Universe

__all__ = [
    "JOB_FIELDS",
    "JOB_STATUSES",
    "CORP_ORDER_FIELDS",
    "CORP_ORDER_HISTORY_FIELDS",
    "OBSERVER_FIELDS",
    "LEDGER_FIELDS",
    "IndustryState",
    "OrdersState",
    "MiningState",
]

DAY = 86400
INDUSTRY_STEP = 300
ORDERS_STEP = 1200
MINING_STEP = 3600

# ---------------------------------------------------------------------------- industry jobs

JOB_STATUSES: tuple[str, ...] = ("active", "cancelled", "delivered", "paused", "ready", "reverted")
S_ACTIVE, S_CANCELLED, S_DELIVERED, S_PAUSED, S_READY, S_REVERTED = range(6)
_OPEN = (S_ACTIVE, S_PAUSED, S_READY)
#: activity_id -> (share, median duration seconds)
_ACTIVITIES = {1: (0.45, 6 * 3600), 3: (0.08, 12 * 3600), 4: (0.1, 12 * 3600), 5: (0.15, 8 * 3600), 8: (0.17, 4 * 3600), 11: (0.05, 24 * 3600)}
_ACT_IDS = np.array(list(_ACTIVITIES), dtype=np.int64)
_ACT_P = np.array([v[0] for v in _ACTIVITIES.values()])
_ACT_P = _ACT_P / _ACT_P.sum()
_ACT_MED = np.array([v[1] for v in _ACTIVITIES.values()], dtype=np.float64)
JOB_ID_BASE = 520_000_000
_JOB_TICKS = 1 / 60
_ID_ORIGIN = 1_735_689_600  # 2025-01-01: origin of the time-based id ticks

JOB_FIELDS: tuple[Field, ...] = (
    Field("activity_id", "int"),
    Field("blueprint_id", "int"),
    Field("blueprint_location_id", "int"),
    Field("blueprint_type_id", "int"),
    Field("completed_character_id", "int", optional=True),
    Field("completed_date", "dt", optional=True),
    Field("cost", "float", optional=True),
    Field("duration", "int"),
    Field("end_date", "dt"),
    Field("facility_id", "int"),
    Field("installer_id", "int"),
    Field("job_id", "int"),
    Field("licensed_runs", "int", optional=True),
    Field("location_id", "int"),
    Field("output_location_id", "int"),
    Field("pause_date", "dt", optional=True),
    Field("probability", "float", optional=True),
    Field("product_type_id", "int", optional=True),
    Field("runs", "int"),
    Field("start_date", "dt"),
    Field("status", "enum", values=JOB_STATUSES),
    Field("successful_runs", "int", optional=True),
)


def _job_rows(rng: np.random.Generator, p: CorpProfile, universe: Universe, start: np.ndarray, end_before: int | None) -> dict:
    """Jobs started at ``start``; ``end_before`` forces completed jobs (end <= end_before)."""
    n = start.shape[0]
    act_i = rng.choice(len(_ACT_IDS), size=n, p=_ACT_P)
    act = _ACT_IDS[act_i]
    duration = np.maximum(np.rint(np.exp(rng.normal(np.log(_ACT_MED[act_i]), 0.9))), 60).astype(np.int64)
    duration = np.minimum(duration, 30 * DAY)
    if end_before is not None:
        start = np.minimum(start, end_before - duration)
    # facilities: the corp's structures (reactions only in refineries) or its office stations
    refineries = p.refinery_ids
    structures = p.structure_ids
    in_struct = rng.random(n) < 0.6
    fac = np.where(in_struct, structures[rng.integers(0, structures.shape[0], n)], p.office_locations[rng.integers(0, p.office_locations.shape[0], n)])
    if refineries.shape[0]:
        fac = np.where(act == 11, refineries[rng.integers(0, refineries.shape[0], n)], fac)
    office = p.office_ids[rng.integers(0, p.office_ids.shape[0], n)]
    bp_type = universe.type_ids[rng.integers(0, universe.type_ids.shape[0], n)]
    product = np.where(np.isin(act, [3, 4]), INT_NA, np.where(act == 5, bp_type, universe.type_ids[rng.integers(0, universe.type_ids.shape[0], n)]))
    runs = np.where(
        act == 1, np.maximum(np.rint(np.exp(rng.normal(2.5, 1.2, n))), 1), np.where(np.isin(act, [3, 4]), rng.integers(1, 11, n), rng.integers(1, 21, n))
    ).astype(np.int64)
    licensed = np.where(act == 5, rng.integers(1, 101, n), np.where(act == 8, rng.integers(1, 11, n), INT_NA)).astype(np.int64)
    prob = np.where(act == 8, np.round(rng.uniform(0.25, 0.6, n), 4), np.nan)
    base = universe.base_price[np.searchsorted(universe.type_ids, bp_type)]
    cost = np.round(np.minimum(runs * base * rng.uniform(0.005, 0.05, n), 5e10) + 100.0, 2)
    cost = np.where(rng.random(n) < 0.97, cost, np.nan)
    installers = p.roster[rng.integers(0, p.roster.shape[0], n)]
    bp_ids = p.item_id(rng.integers(100_000_000, 450_000_000, n))
    return {
        "activity_id": act.astype(np.int64),
        "blueprint_id": bp_ids.astype(np.int64),
        "blueprint_location_id": office.astype(np.int64),
        "blueprint_type_id": bp_type.astype(np.int64),
        "completed_character_id": np.full(n, INT_NA, dtype=np.int64),
        "completed_date": np.full(n, INT_NA, dtype=np.int64),
        "cost": cost.astype(np.float64),
        "duration": duration,
        "end_date": (start + duration).astype(np.int64),
        "facility_id": fac.astype(np.int64),
        "installer_id": installers.astype(np.int64),
        "licensed_runs": licensed,
        "location_id": fac.astype(np.int64),
        "output_location_id": np.where(rng.random(n) < 0.9, office, fac).astype(np.int64),
        "pause_date": np.full(n, INT_NA, dtype=np.int64),
        "probability": prob.astype(np.float64),
        "product_type_id": product.astype(np.int64),
        "runs": runs,
        "start_date": start.astype(np.int64),
        "status": np.full(n, S_ACTIVE, dtype=np.int16),
        "successful_runs": np.full(n, INT_NA, dtype=np.int64),
    }


def _complete(rng: np.random.Generator, p: CorpProfile, c: dict, idx: np.ndarray, when: np.ndarray) -> None:
    """Deliver jobs ``idx`` at ``when`` (in place)."""
    k = idx.shape[0]
    if not k:
        return
    c["status"][idx] = S_DELIVERED
    c["completed_date"][idx] = when
    c["completed_character_id"][idx] = np.where(rng.random(k) < 0.8, c["installer_id"][idx], p.roster[rng.integers(0, p.roster.shape[0], k)])
    inv = c["activity_id"][idx] == 8
    prob = np.nan_to_num(c["probability"][idx])
    c["successful_runs"][idx] = np.where(inv, rng.binomial(c["runs"][idx], prob), c["runs"][idx])


@dataclass(frozen=True)
class IndustryState:
    generation: int
    data_time: int
    cols: dict

    def __len__(self) -> int:
        return int(self.cols["job_id"].shape[0])

    def view(self, include_completed: bool) -> TableView:
        c = self.cols
        if not include_completed:
            c = take_columns(c, np.isin(c["status"], _OPEN))
        return TableView(JOB_FIELDS, c, self.generation, self.data_time)

    @staticmethod
    def initial(p: CorpProfile, universe: Universe) -> "IndustryState":
        rng = corp_rng(p.seed, p.corporation_id, 0, 0x10B5)
        now = p.epoch
        n_open, n_done = int(p.size.jobs_open), int(p.size.jobs_completed)
        # open: running now (started within their duration), ~15% ready, ~4% paused
        o = _job_rows(rng, p, universe, np.full(n_open, now, dtype=np.int64), None)
        frac = rng.random(n_open)
        ready = frac < 0.15
        o["start_date"] = np.where(ready, now - o["duration"] - rng.integers(60, 2 * DAY, n_open), now - (o["duration"] * rng.random(n_open)).astype(np.int64) - 1)
        o["end_date"] = o["start_date"] + o["duration"]
        o["status"] = np.where(ready, S_READY, S_ACTIVE).astype(np.int16)
        paused = (~ready) & (rng.random(n_open) < 0.04)
        o["status"][paused] = S_PAUSED
        o["pause_date"][paused] = o["start_date"][paused] + ((now - o["start_date"][paused]) * rng.random(int(paused.sum()))).astype(np.int64)
        # completed in the past 90 days
        d = _job_rows(rng, p, universe, now - rng.integers(DAY, 90 * DAY, n_done), now - 3600)
        u = rng.random(n_done)
        deliver = np.flatnonzero(u < 0.93)
        when = np.minimum(d["end_date"][deliver] + rng.integers(60, 2 * DAY, deliver.shape[0]), now - 60)
        _complete(rng, p, d, deliver, when)
        cancel = np.flatnonzero(u >= 0.93)
        d["status"][cancel] = np.where(rng.random(cancel.shape[0]) < 0.08, S_REVERTED, S_CANCELLED)
        d["completed_date"][cancel] = d["start_date"][cancel] + ((d["end_date"][cancel] - d["start_date"][cancel]) * rng.random(cancel.shape[0])).astype(np.int64)
        d["completed_character_id"][cancel] = d["installer_id"][cancel]
        c = concat_columns([o, d])
        order = np.argsort(c["start_date"], kind="stable")
        c = take_columns(c, order)
        c["job_id"] = alloc_ids(c["start_date"], base=JOB_ID_BASE, origin=_ID_ORIGIN, ticks_per_second=_JOB_TICKS, slot=p.slot)
        return IndustryState(0, now, _fields_order(c))

    def evolve(self, p: CorpProfile, universe: Universe) -> "IndustryState":
        g = self.generation + 1
        rng = corp_rng(p.seed, p.corporation_id, g, 0x10B5)
        prev, now = self.data_time, p.epoch + g * INDUSTRY_STEP
        c = {k: v.copy() for k, v in self.cols.items()}
        st = c["status"]
        n = st.shape[0]
        changed = 0
        # paused jobs resume (end moves by the paused time); a few active ones pause or get cancelled
        resume = np.flatnonzero((st == S_PAUSED) & (rng.random(n) < 0.1))
        if resume.shape[0]:
            c["end_date"][resume] += now - c["pause_date"][resume]
            c["pause_date"][resume] = INT_NA
            st[resume] = S_ACTIVE
        u = rng.random(n)
        pause = np.flatnonzero((st == S_ACTIVE) & (u < 0.002))
        st[pause] = S_PAUSED
        c["pause_date"][pause] = now - rng.integers(0, INDUSTRY_STEP, pause.shape[0])
        cancel = np.flatnonzero((st == S_ACTIVE) & (u >= 0.002) & (u < 0.004))
        st[cancel] = S_CANCELLED
        c["completed_date"][cancel] = now - rng.integers(0, INDUSTRY_STEP, cancel.shape[0])
        c["completed_character_id"][cancel] = c["installer_id"][cancel]
        # delivery of ready jobs, then active jobs whose time is up become ready
        deliver = np.flatnonzero((st == S_READY) & (rng.random(n) < 0.25))
        _complete(rng, p, c, deliver, np.minimum(now, np.maximum(c["end_date"][deliver], prev + 1) + rng.integers(0, INDUSTRY_STEP, deliver.shape[0])))
        done = np.flatnonzero((st == S_ACTIVE) & (c["end_date"] <= now))
        st[done] = S_READY
        changed = resume.shape[0] + pause.shape[0] + cancel.shape[0] + deliver.shape[0] + done.shape[0]
        if not changed:  # every refresh changes something
            ready = np.flatnonzero(st == S_READY)
            active = np.flatnonzero(st == S_ACTIVE)
            if ready.shape[0]:
                _complete(rng, p, c, ready[:1], np.array([now], dtype=np.int64))
            elif active.shape[0]:
                i = active[np.argmin(c["end_date"][active])]
                c["end_date"][i] = min(int(c["end_date"][i]), now)
                c["duration"][i] = c["end_date"][i] - c["start_date"][i]
                st[i] = S_READY
        # drop jobs completed more than 90 days ago
        keep = (np.isin(st, _OPEN)) | (c["completed_date"] >= now - 90 * DAY) | (c["completed_date"] == INT_NA) & (c["end_date"] >= now - 90 * DAY)
        c = take_columns(c, keep)
        n_open = int(np.isin(c["status"], _OPEN).sum())
        n_new = max(int(rng.poisson(max(p.size.jobs_open, 1) * INDUSTRY_STEP / (8 * 3600))), 1 if p.size.jobs_open else 0)
        n_new += max(int(p.size.jobs_open) - n_open, 0) // 10
        if n_new:
            starts = np.sort(prev + 1 + rng.integers(0, INDUSTRY_STEP, n_new)).astype(np.int64)
            new = _job_rows(rng, p, universe, starts, None)
            floor = tick_of(int(c["job_id"].max()), JOB_ID_BASE) + 1 if c["job_id"].shape[0] else 0
            new["job_id"] = alloc_ids(starts, base=JOB_ID_BASE, origin=_ID_ORIGIN, ticks_per_second=_JOB_TICKS, slot=p.slot, floor_tick=floor)
            ended = new["end_date"] <= now
            new["status"][ended] = S_READY
            c = concat_columns([c, _fields_order(new)])
        return IndustryState(g, now, c)


def _fields_order(c: dict) -> dict:
    return {f.name: c[f.name] for f in JOB_FIELDS}


# ---------------------------------------------------------------------------- corporation orders

ORDER_STATES: tuple[str, ...] = ("cancelled", "expired")
_SELL_DURATIONS = np.array([90, 30, 14, 7, 3], dtype=np.int64)
_BUY_DURATIONS = np.array([90, 30, 14, 7, 3, 1], dtype=np.int64)
_R_STATION, _R_REGION = RANGE_VALUES.index("station"), RANGE_VALUES.index("region")
ORDER_ID_BASE = 6_900_000_000
_ORDER_TICKS = 0.05

CORP_ORDER_FIELDS: tuple[Field, ...] = (
    Field("duration", "int"),
    Field("escrow", "float", optional=True),
    Field("is_buy_order", "bool", optional=True),
    Field("issued", "dt"),
    Field("issued_by", "int"),
    Field("location_id", "int"),
    Field("min_volume", "int", optional=True),
    Field("order_id", "int"),
    Field("price", "float"),
    Field("range", "enum", values=RANGE_VALUES),
    Field("region_id", "int"),
    Field("type_id", "int"),
    Field("volume_remain", "int"),
    Field("volume_total", "int"),
    Field("wallet_division", "int"),
)
CORP_ORDER_HISTORY_FIELDS: tuple[Field, ...] = (
    Field("duration", "int"),
    Field("escrow", "float", optional=True),
    Field("is_buy_order", "bool", optional=True),
    Field("issued", "dt"),
    Field("issued_by", "int", optional=True),
    Field("location_id", "int"),
    Field("min_volume", "int", optional=True),
    Field("order_id", "int"),
    Field("price", "float"),
    Field("range", "enum", values=RANGE_VALUES),
    Field("region_id", "int"),
    Field("state", "enum", values=ORDER_STATES),
    Field("type_id", "int"),
    Field("volume_remain", "int"),
    Field("volume_total", "int"),
    Field("wallet_division", "int"),
)


def _order_rows(rng: np.random.Generator, p: CorpProfile, universe: Universe, issued: np.ndarray) -> dict:
    n = issued.shape[0]
    is_buy = rng.random(n) < 0.35
    ri = rng.integers(0, len(p.trade_regions), n)
    region_ids = np.array([r.region_id for r in p.trade_regions], dtype=np.int64)[ri]
    loc = np.empty(n, dtype=np.int64)
    for j, reg in enumerate(p.trade_regions):
        m = ri == j
        loc[m] = reg.location_ids[rng.choice(reg.location_ids.shape[0], size=int(m.sum()), p=reg.location_weights)]
    t_idx = rng.choice(universe.type_ids.shape[0], size=n, p=universe.order_weight)
    base = universe.base_price[t_idx]
    price = np.maximum(np.round(base * np.where(is_buy, np.exp(rng.normal(-0.1, 0.15, n)), np.exp(rng.normal(0.05, 0.1, n))), 2), 0.01)
    total = np.maximum(np.rint(np.exp(rng.normal(np.log(np.clip(3e8 / base, 1, 1e7)), 1.0))), 1).astype(np.int64)
    remain = np.where(rng.random(n) < 0.5, total, np.maximum(np.ceil(total * rng.uniform(0.05, 1.0, n)), 1)).astype(np.int64)
    remain = np.minimum(remain, total)
    duration = np.where(is_buy, rng.choice(_BUY_DURATIONS, size=n), rng.choice(_SELL_DURATIONS, size=n)).astype(np.int64)
    rng_code = np.where(is_buy, rng.choice([_R_STATION, _R_REGION, RANGE_VALUES.index("solarsystem"), RANGE_VALUES.index("5")], size=n), _R_REGION).astype(np.int16)
    traders = p.roster[rng.integers(0, min(p.roster.shape[0], max(p.founders * 3, 1)), n)]
    division = rng.choice(np.array([1, 2, 3], dtype=np.int64), size=n, p=[0.7, 0.2, 0.1])
    return {
        "duration": duration,
        "escrow": np.where(is_buy, np.round(price * remain * rng.uniform(0.1, 1.0, n), 2), np.nan),
        "is_buy_order": np.where(is_buy, 1, -1).astype(np.int8),  # omitted for sell orders, like ESI
        "issued": issued.astype(np.int64),
        "issued_by": traders.astype(np.int64),
        "location_id": loc,
        "min_volume": np.where(is_buy, 1, INT_NA).astype(np.int64),
        "order_id": np.zeros(n, dtype=np.int64),
        "price": price.astype(np.float64),
        "range": rng_code,
        "region_id": region_ids,
        "type_id": universe.type_ids[t_idx].astype(np.int64),
        "volume_remain": remain,
        "volume_total": total,
        "wallet_division": division,
    }


@dataclass(frozen=True)
class OrdersState:
    generation: int
    data_time: int
    open: dict
    history: dict  # + "state" and "closed_at" (not rendered)

    def __len__(self) -> int:
        return int(self.open["order_id"].shape[0])

    def open_view(self) -> TableView:
        return TableView(CORP_ORDER_FIELDS, self.open, self.generation, self.data_time)

    def history_view(self) -> TableView:
        return TableView(CORP_ORDER_HISTORY_FIELDS, self.history, self.generation, self.data_time)

    @staticmethod
    def initial(p: CorpProfile, universe: Universe) -> "OrdersState":
        rng = corp_rng(p.seed, p.corporation_id, 0, 0x0D3E)
        now = p.epoch
        n_open, n_hist = int(p.size.orders_open), int(p.size.orders_history)
        o = _order_rows(rng, p, universe, np.zeros(n_open, dtype=np.int64))
        o["issued"] = now - (rng.random(n_open) * np.minimum(o["duration"], 90) * DAY).astype(np.int64) - 1
        h = _order_rows(rng, p, universe, np.zeros(n_hist, dtype=np.int64))
        closed = now - rng.integers(60, 90 * DAY, n_hist)
        u = rng.random(n_hist)
        state = np.where(u < 0.2, 0, 1).astype(np.int16)  # 20% cancelled, else expired
        filled = (u >= 0.2) & (u < 0.75)
        by_time = u >= 0.75
        h["issued"] = np.where(by_time, closed - h["duration"] * DAY, closed - (rng.random(n_hist) * h["duration"] * DAY).astype(np.int64))
        h["volume_remain"] = np.where(filled, 0, h["volume_remain"])
        h["escrow"] = np.where(np.isnan(h["escrow"]), np.nan, np.where(filled, 0.0, h["escrow"]))
        h["issued_by"] = np.where(rng.random(n_hist) < 0.97, h["issued_by"], INT_NA)
        h["state"] = state
        h["closed_at"] = closed.astype(np.int64)
        # ids: time-based over both sets
        all_issued = np.concatenate([o["issued"], h["issued"]])
        order = np.argsort(all_issued, kind="stable")
        ids = np.empty_like(all_issued)
        ids[order] = _order_ids(all_issued[order], p, 0)
        o["order_id"], h["order_id"] = ids[:n_open], ids[n_open:]
        return OrdersState(0, now, _sorted(o, CORP_ORDER_FIELDS), _sorted(h, CORP_ORDER_HISTORY_FIELDS, extra=("closed_at",)))

    def evolve(self, p: CorpProfile, universe: Universe) -> "OrdersState":
        g = self.generation + 1
        rng = corp_rng(p.seed, p.corporation_id, g, 0x0D3E)
        prev, now = self.data_time, p.epoch + g * ORDERS_STEP
        o = {k: v.copy() for k, v in self.open.items()}
        n = o["order_id"].shape[0]
        u = rng.random(n)
        partial = (u < 0.08) & (o["volume_remain"] > 1)
        if partial.any():
            vr = o["volume_remain"][partial]
            o["volume_remain"][partial] = np.maximum(vr - np.ceil(vr * rng.uniform(0.05, 0.8, vr.shape[0])).astype(np.int64), 1)
            buy = partial & (o["is_buy_order"] > 0)
            o["escrow"][buy] = np.round(o["price"][buy] * o["volume_remain"][buy] * rng.uniform(0.1, 1.0, int(buy.sum())), 2)
        filled = (u >= 0.08) & (u < 0.11)
        if n and not filled.any():
            filled[int(rng.integers(0, n))] = True  # every refresh fills at least one order
        cancelled = (u >= 0.11) & (u < 0.12) & ~filled
        expired = (o["issued"] + o["duration"] * DAY <= now) & ~filled & ~cancelled
        closing = filled | cancelled | expired
        h_new = take_columns(o, closing)
        k = int(closing.sum())
        h_new["state"] = np.where(cancelled[closing], 0, 1).astype(np.int16)
        h_new["closed_at"] = np.where(expired[closing], h_new["issued"] + h_new["duration"] * DAY, now - rng.integers(0, ORDERS_STEP, k)).astype(np.int64)
        h_new["closed_at"] = np.minimum(h_new["closed_at"], now)
        f = filled[closing]
        h_new["volume_remain"] = np.where(f, 0, h_new["volume_remain"])
        h_new["escrow"] = np.where(np.isnan(h_new["escrow"]), np.nan, np.where(f, 0.0, h_new["escrow"]))
        o = take_columns(o, ~closing)
        hist = {kk: v for kk, v in self.history.items()}
        hist = concat_columns([take_columns(hist, hist["closed_at"] >= now - 90 * DAY), {kk: h_new[kk] for kk in hist}])
        n_new = max(int(rng.poisson(max(k, 1) * 1.0 + max(p.size.orders_open - o["order_id"].shape[0], 0) * 0.2)), 1) if p.size.orders_open else 0
        if n_new:
            issued = np.sort(prev + 1 + rng.integers(0, ORDERS_STEP, n_new)).astype(np.int64)
            new = _order_rows(rng, p, universe, issued)
            top = int(max(o["order_id"].max() if o["order_id"].shape[0] else 0, hist["order_id"].max() if hist["order_id"].shape[0] else 0))
            new["order_id"] = _order_ids(issued, p, _order_tick(top) + 1 if top else 0)
            o = concat_columns([o, new])
        return OrdersState(g, now, _sorted(o, CORP_ORDER_FIELDS), _sorted(hist, CORP_ORDER_HISTORY_FIELDS, extra=("closed_at",)))


def _order_ids(issued_sorted: np.ndarray, p: CorpProfile, floor_tick: int) -> np.ndarray:
    return alloc_ids(issued_sorted, base=ORDER_ID_BASE, origin=_ID_ORIGIN, ticks_per_second=_ORDER_TICKS, slot=p.slot, floor_tick=floor_tick)


def _order_tick(order_id: int) -> int:
    return tick_of(order_id, ORDER_ID_BASE)


def _sorted(c: dict, fields: tuple[Field, ...], extra: tuple[str, ...] = ()) -> dict:
    order = np.argsort(c["order_id"], kind="stable")
    return {k: c[k][order] for k in [f.name for f in fields] + list(extra)}


# ---------------------------------------------------------------------------- mining

OBSERVER_FIELDS: tuple[Field, ...] = (
    Field("last_updated", "date"),
    Field("observer_id", "int"),
    Field("observer_type", "enum", values=("structure",)),
)
LEDGER_FIELDS: tuple[Field, ...] = (
    Field("character_id", "int"),
    Field("last_updated", "date"),
    Field("quantity", "int"),
    Field("recorded_corporation_id", "int"),
    Field("type_id", "int"),
)


def _ledger_day(rng: np.random.Generator, p: CorpProfile, observer: int, day: int, n_rows: int, fraction: float) -> dict:
    """Rows of one observer for one day: distinct (miner, ore) pairs."""
    if n_rows <= 0:
        return {}
    pool_own = p.roster
    miners_n = max(1, n_rows // 2)
    own_n = int(round(miners_n * 0.85))
    own = pool_own[rng.choice(pool_own.shape[0], size=min(own_n, pool_own.shape[0]), replace=False)]
    ai = rng.choice(p.allied_miners.shape[0], size=min(miners_n - own.shape[0], p.allied_miners.shape[0]), replace=False)
    miners = np.concatenate([own, p.allied_miners[ai]])
    corp = np.concatenate([np.full(own.shape[0], p.corporation_id, dtype=np.int64), p.allied_miner_corp[ai]])
    ores_per = rng.integers(1, 4, miners.shape[0])
    char = np.repeat(miners, ores_per)
    rcorp = np.repeat(corp, ores_per)
    ores = np.array(ORE_TYPES, dtype=np.int64)
    t = np.concatenate([rng.choice(ores, size=k, replace=False) for k in ores_per.tolist()]) if miners.shape[0] else np.zeros(0, np.int64)
    m = char.shape[0]
    qty = np.maximum(np.rint(np.exp(rng.normal(np.log(6000), 1.1, m)) * fraction), 1).astype(np.int64)
    return {
        "observer_id": np.full(m, observer, dtype=np.int64),
        "character_id": char.astype(np.int64),
        "last_updated": np.full(m, day, dtype=np.int64),
        "quantity": qty,
        "recorded_corporation_id": rcorp.astype(np.int64),
        "type_id": t.astype(np.int64),
    }


@dataclass(frozen=True)
class MiningState:
    generation: int
    data_time: int
    observers: np.ndarray  # observer ids
    cols: dict  # ledger rows of all observers

    def __len__(self) -> int:
        return int(self.cols["character_id"].shape[0]) if self.cols else 0

    def observers_view(self) -> TableView:
        last = []
        for o in self.observers.tolist():
            m = self.cols["observer_id"] == o if self.cols else np.zeros(0, bool)
            last.append(int(self.cols["last_updated"][m].max()) if m.any() else int(day_start(self.data_time)))
        cols = {
            "last_updated": np.array(last, dtype=np.int64),
            "observer_id": self.observers.astype(np.int64),
            "observer_type": np.zeros(self.observers.shape[0], dtype=np.int16),
        }
        return TableView(OBSERVER_FIELDS, cols, self.generation, self.data_time)

    def ledger_view(self, observer_id: int) -> TableView:
        c = self.cols
        m = c["observer_id"] == int(observer_id)
        sub = take_columns(c, m)
        order = np.lexsort((sub["type_id"], sub["recorded_corporation_id"], sub["character_id"], sub["last_updated"]))
        return TableView(LEDGER_FIELDS, {f.name: sub[f.name][order] for f in LEDGER_FIELDS}, self.generation, self.data_time)

    @staticmethod
    def initial(p: CorpProfile) -> "MiningState":
        rng = corp_rng(p.seed, p.corporation_id, 0, 0x3141E)
        now = p.epoch
        observers = np.sort(p.refinery_ids[: max(int(p.size.observers), 0)])
        today = int(day_start(now))
        parts = []
        for o in observers.tolist():
            for d in range(30, -1, -1):
                day = today - d * DAY
                frac = (now - today) / DAY if d == 0 else 1.0
                n = int(rng.poisson(p.size.ledger_rows_per_day * (max(frac, 0.05) if d == 0 else 1.0)))
                parts.append(_ledger_day(rng, p, o, day, n, 1.0 if d else max(frac, 0.05)))
        cols = concat_columns(parts) or _empty_ledger()
        return MiningState(0, now, observers, cols)

    def evolve(self, p: CorpProfile) -> "MiningState":
        g = self.generation + 1
        rng = corp_rng(p.seed, p.corporation_id, g, 0x3141E)
        now = p.epoch + g * MINING_STEP
        today = int(day_start(now))
        c = {k: v.copy() for k, v in self.cols.items()}
        keep = c["last_updated"] >= today - 30 * DAY
        c = take_columns(c, keep)
        todays = np.flatnonzero(c["last_updated"] == today)
        grow = todays[rng.random(todays.shape[0]) < 0.3]
        c["quantity"][grow] += np.maximum(np.rint(np.exp(rng.normal(np.log(800), 1.0, grow.shape[0]))), 1).astype(np.int64)
        parts = [c]
        for o in self.observers.tolist():
            n = max(int(rng.poisson(p.size.ledger_rows_per_day * MINING_STEP / DAY)), 1 if p.size.ledger_rows_per_day else 0)
            new = _ledger_day(rng, p, o, today, n, MINING_STEP / DAY)
            if not new:
                continue
            # keep (observer, character, corp, type, day) unique: drop pairs that already exist today
            have = c["last_updated"] == today
            existing = set(zip(c["observer_id"][have].tolist(), c["character_id"][have].tolist(), c["recorded_corporation_id"][have].tolist(), c["type_id"][have].tolist()))
            fresh = np.array([(o, a, b, t) not in existing for a, b, t in zip(new["character_id"].tolist(), new["recorded_corporation_id"].tolist(), new["type_id"].tolist())], dtype=bool)
            parts.append(take_columns(new, fresh))
        cols = concat_columns(parts) or _empty_ledger()
        return MiningState(g, now, self.observers, cols)


def _empty_ledger() -> dict:
    z = np.zeros(0, dtype=np.int64)
    return {"observer_id": z, "character_id": z, "last_updated": z, "quantity": z, "recorded_corporation_id": z, "type_id": z}

