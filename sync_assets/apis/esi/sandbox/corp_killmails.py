"""Corporation killmails: the ``killmails/recent`` list (90 days) and the public, immutable details
(``/killmails/{killmail_id}/{killmail_hash}``), generated on demand from (seed, corporation, id)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .corp_common import (
    NPC_CORPORATIONS,
    NPC_FACTIONS,
    SHIP_TYPES,
    Field,
    TableView,
    alloc_ids,
    concat_columns,
    corp_rng,
    format_dt,
    take_columns,
    tick_of,
)
from .corp_profile import CorpProfile
from .market_data import Universe

__all__ = ["KILLMAIL_RECENT_FIELDS", "KillmailsState", "killmail_detail", "killmail_hash"]

DAY = 86400
KILLMAILS_STEP = 300
KILLMAIL_DAYS = 90
KILLMAIL_ID_BASE = 125_000_000
_KM_TICKS = 1 / 60
_ID_ORIGIN = 1_735_689_600  # 2025-01-01
CAPSULE = 670

KILLMAIL_RECENT_FIELDS: tuple[Field, ...] = (Field("killmail_hash", "str"), Field("killmail_id", "int"))

# inventory flags (integers in killmails): low 11-18, mid 19-26, high 27-34, rigs 92-94, cargo 5, drone bay 87
_FIT_FLAGS = np.array(list(range(11, 19)) + list(range(19, 27)) + list(range(27, 35)) + [92, 93, 94], dtype=np.int64)
_CARGO, _DRONES = 5, 87


def killmail_hash(seed: int, corporation_id: int, killmail_id: int) -> str:
    return hashlib.sha1(f"killmail:{seed}:{corporation_id}:{killmail_id}".encode()).hexdigest()


@dataclass(frozen=True)
class KillmailsState:
    generation: int
    data_time: int
    cols: dict  # killmail_id, killmail_time, killmail_hash, corp_is_victim  (id ascending)

    def __len__(self) -> int:
        return int(self.cols["killmail_id"].shape[0])

    def recent_view(self) -> TableView:
        c = self.cols
        order = np.arange(c["killmail_id"].shape[0])[::-1]  # newest first
        return TableView(KILLMAIL_RECENT_FIELDS, {"killmail_hash": c["killmail_hash"][order], "killmail_id": c["killmail_id"][order]}, self.generation, self.data_time)

    @staticmethod
    def initial(p: CorpProfile) -> "KillmailsState":
        rng = corp_rng(p.seed, p.corporation_id, 0, 0x4B11)
        now = p.epoch
        n = int(rng.poisson(p.size.killmails)) if p.size.killmails else 0
        times = np.sort(now - rng.integers(0, KILLMAIL_DAYS * DAY, n)).astype(np.int64)
        return KillmailsState(0, now, _rows(rng, p, times, 0))

    def evolve(self, p: CorpProfile) -> "KillmailsState":
        g = self.generation + 1
        rng = corp_rng(p.seed, p.corporation_id, g, 0x4B11)
        prev, now = self.data_time, p.epoch + g * KILLMAILS_STEP
        c = take_columns(self.cols, self.cols["killmail_time"] >= now - KILLMAIL_DAYS * DAY)
        n = max(int(rng.poisson(p.size.killmails * KILLMAILS_STEP / (KILLMAIL_DAYS * DAY))), 1 if p.size.killmails else 0)
        times = np.sort(prev + 1 + rng.integers(0, KILLMAILS_STEP, n)).astype(np.int64)
        top = int(self.cols["killmail_id"].max()) if len(self) else 0
        new = _rows(rng, p, times, tick_of(top, KILLMAIL_ID_BASE) + 1 if top else 0)
        return KillmailsState(g, now, concat_columns([c, new]))


def _rows(rng: np.random.Generator, p: CorpProfile, times: np.ndarray, floor_tick: int) -> dict:
    n = times.shape[0]
    ids = alloc_ids(times, base=KILLMAIL_ID_BASE, origin=_ID_ORIGIN, ticks_per_second=_KM_TICKS, slot=p.slot, floor_tick=floor_tick)
    return {
        "killmail_id": ids.astype(np.int64),
        "killmail_time": times.astype(np.int64),
        "killmail_hash": np.array([killmail_hash(p.seed, p.corporation_id, i) for i in ids.tolist()], dtype=object),
        "corp_is_victim": (rng.random(n) < 0.35).astype(np.int8),
    }


def _pilot(rng: np.random.Generator) -> int:
    return int(rng.integers(90_000_000, 98_000_000)) if rng.random() < 0.45 else int(rng.integers(2_112_000_000, 2_125_000_000))


def _item(rng: np.random.Generator, universe: Universe, flag: int, nested: bool) -> dict:
    t = int(universe.type_ids[rng.choice(universe.type_ids.shape[0], p=universe.order_weight)])
    q = int(max(1, round(float(np.exp(rng.normal(1.0, 1.5)))))) if flag in (_CARGO, _DRONES) or nested else 1
    item: dict = {"flag": 0 if nested else int(flag), "item_type_id": t}
    if rng.random() < 0.5:
        item["quantity_destroyed"] = q
    else:
        item["quantity_dropped"] = q
    item["singleton"] = 0
    return item


def killmail_detail(p: CorpProfile, universe: Universe, killmail_id: int, killmail_time: int, corp_is_victim: bool) -> dict:
    """The killmail as ``GET /killmails/{id}/{hash}`` returns it (keys in spec order)."""
    rng = corp_rng(p.seed, p.corporation_id, int(killmail_id), 0xDEAD)
    corp = p.corporation_id
    system = int(p.systems[rng.integers(0, p.systems.shape[0])]) if rng.random() < 0.85 else int(rng.integers(30_000_001, 30_005_000))
    n_att = int(min(1 + rng.geometric(0.35) - 1, 40))
    attackers: list[dict] = []
    for i in range(n_att):
        a: dict = {}
        npc = rng.random() < (0.1 if corp_is_victim else 0.05) and not (not corp_is_victim and i == 0)
        if npc:
            f = int(rng.integers(0, len(NPC_FACTIONS)))
            a["corporation_id"] = NPC_CORPORATIONS[f]
            a["damage_done"] = 0
            a["faction_id"] = NPC_FACTIONS[f]
            a["final_blow"] = False
            a["security_status"] = 0.0
            a["ship_type_id"] = int(SHIP_TYPES[int(rng.integers(0, len(SHIP_TYPES) - 1))])
        else:
            ours = (not corp_is_victim) and (i == 0 or rng.random() < 0.6)
            if ours:
                if p.alliance_id is not None:
                    a["alliance_id"] = p.alliance_id
                a["character_id"] = int(p.roster[rng.integers(0, p.roster.shape[0])])
                a["corporation_id"] = corp
            else:
                if rng.random() < 0.6:
                    a["alliance_id"] = int(99_000_000 + rng.integers(0, 999_999))
                a["character_id"] = _pilot(rng)
                a["corporation_id"] = int(98_000_000 + rng.integers(0, 999_999))
            a["damage_done"] = 0
            a["final_blow"] = False
            a["security_status"] = float(np.round(rng.uniform(-10.0, 5.0), 1))
            if rng.random() < 0.95:
                a["ship_type_id"] = int(SHIP_TYPES[int(rng.integers(0, len(SHIP_TYPES) - 1))])
        if rng.random() < 0.9:
            a["weapon_type_id"] = int(universe.type_ids[rng.integers(0, universe.type_ids.shape[0])])
        attackers.append(a)
    damage = np.maximum(np.rint(np.exp(rng.normal(np.log(1500), 1.2, n_att))), 1).astype(np.int64).tolist()
    for a, d in zip(attackers, damage):
        a["damage_done"] = int(d)
    attackers[int(rng.integers(0, n_att))]["final_blow"] = True
    # victim
    v: dict = {}
    ship = int(SHIP_TYPES[int(rng.integers(0, len(SHIP_TYPES)))])
    if corp_is_victim:
        if p.alliance_id is not None:
            v["alliance_id"] = p.alliance_id
        v["character_id"] = int(p.roster[rng.integers(0, p.roster.shape[0])])
        v["corporation_id"] = corp
    else:
        if rng.random() < 0.6:
            v["alliance_id"] = int(99_000_000 + rng.integers(0, 999_999))
        v["character_id"] = _pilot(rng)
        v["corporation_id"] = int(98_000_000 + rng.integers(0, 999_999))
    v["damage_taken"] = int(sum(damage))
    if ship != CAPSULE:
        items = [_item(rng, universe, int(f), False) for f in rng.choice(_FIT_FLAGS, size=int(rng.integers(3, 14)), replace=False).tolist()]
        for _ in range(int(rng.integers(0, 4))):
            items.append(_item(rng, universe, _CARGO, False))
        if rng.random() < 0.15:  # a cargo container with things inside
            box = {"flag": _CARGO, "item_type_id": 3467, "items": [_item(rng, universe, _CARGO, True) for _ in range(int(rng.integers(1, 5)))]}
            box["quantity_destroyed" if rng.random() < 0.5 else "quantity_dropped"] = 1
            box["singleton"] = 0
            items.append(box)
        v["items"] = items
    if rng.random() < 0.9:
        v["position"] = {k: float(np.round(rng.normal(0, 3e11), 4)) for k in ("x", "y", "z")}
    v["ship_type_id"] = ship
    km: dict = {
        "attackers": attackers,
        "killmail_id": int(killmail_id),
        "killmail_time": format_dt(np.array([killmail_time]))[0],
    }
    if rng.random() < 0.03:
        km["moon_id"] = int(40_000_000 + rng.integers(0, 400_000))
    km["solar_system_id"] = system
    km["victim"] = v
    if rng.random() < 0.04:
        km["war_id"] = int(740_000 + rng.integers(0, 20_000))
    return km
