"""Corporation members, member tracking, assets and container (audit log) logs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .corp_common import (
    FUEL_BLOCK_TYPES,
    INT_NA,
    SERVICE_MODULE_TYPES,
    SHIP_TYPES,
    Field,
    IdList,
    TableView,
    concat_columns,
    corp_rng,
    take_columns,
)
from .corp_profile import ITEM_ID_BASE, CorpProfile
from .market_data import Universe

__all__ = [
    "LOCATION_FLAGS",
    "LOCATION_TYPES",
    "ASSET_FIELDS",
    "MEMBERTRACKING_FIELDS",
    "CONTAINER_LOG_FIELDS",
    "CONTAINER_ACTIONS",
    "MembersState",
    "AssetsState",
    "ContainerLogState",
]

DAY = 86400
MEMBERS_STEP = 3600
ASSETS_STEP = 3600
CONTAINER_LOGS_STEP = 600

#: The subset of the spec's 125 ``location_flag`` values the sandbox uses (codes index this tuple).
LOCATION_FLAGS: tuple[str, ...] = (
    "OfficeFolder", "CorpSAG1", "CorpSAG2", "CorpSAG3", "CorpSAG4", "CorpSAG5", "CorpSAG6", "CorpSAG7",
    "AutoFit", "StructureFuel", "ServiceSlot0", "ServiceSlot1", "ServiceSlot2", "Locked", "Unlocked",
    "HiSlot0", "HiSlot1", "HiSlot2", "HiSlot3", "MedSlot0", "MedSlot1", "MedSlot2", "LoSlot0", "LoSlot1",
    "LoSlot2", "RigSlot0", "RigSlot1", "Cargo", "DroneBay", "CorpDeliveries",
)
_F = {name: i for i, name in enumerate(LOCATION_FLAGS)}
_SAG = np.array([_F[f"CorpSAG{i}"] for i in range(1, 8)], dtype=np.int16)
_FIT_FLAGS = np.array([_F[f] for f in LOCATION_FLAGS[15:27]], dtype=np.int16)
LOCATION_TYPES: tuple[str, ...] = ("station", "solar_system", "item", "other")
_LT_STATION, _LT_SYSTEM, _LT_ITEM = 0, 1, 2

# row kinds (not rendered)
K_OFFICE, K_STRUCTURE, K_FUEL, K_SERVICE, K_CONTAINER, K_SHIP, K_MODULE, K_STACK, K_BLUEPRINT = range(9)
_MOVABLE = (K_STACK, K_BLUEPRINT)

ASSET_FIELDS: tuple[Field, ...] = (
    Field("is_blueprint_copy", "bool", optional=True),
    Field("is_singleton", "bool"),
    Field("item_id", "int"),
    Field("location_flag", "enum", values=LOCATION_FLAGS),
    Field("location_id", "int"),
    Field("location_type", "enum", values=LOCATION_TYPES),
    Field("quantity", "int"),
    Field("type_id", "int"),
)

MEMBERTRACKING_FIELDS: tuple[Field, ...] = (
    Field("base_id", "int", optional=True),
    Field("character_id", "int"),
    Field("location_id", "int", optional=True),
    Field("logoff_date", "dt", optional=True),
    Field("logon_date", "dt", optional=True),
    Field("ship_type_id", "int", optional=True),
    Field("start_date", "dt", optional=True),
)

CONTAINER_ACTIONS: tuple[str, ...] = (
    "add", "assemble", "configure", "enter_password", "lock", "move", "repackage", "set_name", "set_password", "unlock",
)
_ACTION_P = np.array([0.34, 0.01, 0.05, 0.08, 0.08, 0.3, 0.005, 0.015, 0.03, 0.09])
_ACTION_P = _ACTION_P / _ACTION_P.sum()
PASSWORD_TYPES: tuple[str, ...] = ("config", "general")

CONTAINER_LOG_FIELDS: tuple[Field, ...] = (
    Field("action", "enum", values=CONTAINER_ACTIONS),
    Field("character_id", "int"),
    Field("container_id", "int"),
    Field("container_type_id", "int"),
    Field("location_flag", "enum", values=LOCATION_FLAGS),
    Field("location_id", "int"),
    Field("logged_at", "dt"),
    Field("new_config_bitmask", "int", optional=True),
    Field("old_config_bitmask", "int", optional=True),
    Field("password_type", "enum", optional=True, values=PASSWORD_TYPES),
    Field("quantity", "int", optional=True),
    Field("type_id", "int", optional=True),
)


# --------------------------------------------------------------------------------------
# Members + member tracking
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MembersState:
    generation: int
    data_time: int
    cols: dict  # character_id, base_id, location_id, logoff_date, logon_date, ship_type_id, start_date

    def __len__(self) -> int:
        return int(self.cols["character_id"].shape[0])

    @staticmethod
    def initial(p: CorpProfile) -> "MembersState":
        rng = corp_rng(p.seed, p.corporation_id, 0, 0x3E3B)
        now = p.epoch
        ids = p.roster
        return MembersState(0, now, _tracking_rows(rng, p, ids, p.roster_start, now))

    def evolve(self, p: CorpProfile) -> "MembersState":
        g = self.generation + 1
        now = p.epoch + g * MEMBERS_STEP
        rng = corp_rng(p.seed, p.corporation_id, g, 0x3E3B)
        c = {k: v.copy() for k, v in self.cols.items()}
        n = c["character_id"].shape[0]
        founders = set(p.roster[: p.founders].tolist())
        is_founder = np.isin(c["character_id"], np.fromiter(founders, dtype=np.int64))
        leave = (rng.random(n) < 0.004) & ~is_founder
        c = take_columns(c, ~leave)
        n = c["character_id"].shape[0]
        # activity: some members log on/off, move around, change ships
        act = rng.random(n) < 0.15
        k = int(act.sum())
        if k:
            logon = now - rng.integers(0, MEMBERS_STEP, k)
            online = rng.random(k) < 0.3
            c["logon_date"][act] = logon
            c["logoff_date"][act] = np.where(online, INT_NA, np.minimum(logon + rng.integers(600, 5 * 3600, k), now))
            c["location_id"][act] = _locations(rng, p, k)
            c["ship_type_id"][act] = np.array(SHIP_TYPES, dtype=np.int64)[rng.integers(0, len(SHIP_TYPES), k)]
        n_join = int(rng.poisson(max(len(self) * 0.003, 0.3)))
        if n_join:
            taken = set(c["character_id"].tolist()) | set(p.roster.tolist())
            r2 = corp_rng(p.seed, p.corporation_id, g, 0x10111)
            new_ids = r2.integers(2_125_000_000, 2_129_000_000, n_join * 2).astype(np.int64)
            new_ids = np.array([i for i in dict.fromkeys(new_ids.tolist()) if i not in taken][:n_join], dtype=np.int64)
            if new_ids.shape[0]:
                starts = now - r2.integers(0, MEMBERS_STEP, new_ids.shape[0])
                c = concat_columns([c, _tracking_rows(r2, p, new_ids, starts, now)])
        return MembersState(g, now, c)

    def members_view(self, extra_ids: list[int] = (), drop_ids: list[int] = ()) -> IdList:
        ids = set(self.cols["character_id"].tolist()) | set(extra_ids)
        ids -= set(drop_ids)
        return IdList(np.array(sorted(ids), dtype=np.int64), self.generation, self.data_time)

    def tracking_view(self, p: CorpProfile, extra_ids: list[int] = (), drop_ids: list[int] = ()) -> TableView:
        c = self.cols
        keep = ~np.isin(c["character_id"], np.asarray(list(drop_ids), dtype=np.int64))
        c = take_columns(c, keep)
        extra = [i for i in extra_ids if i not in set(c["character_id"].tolist())]
        if extra:
            rng = corp_rng(p.seed, p.corporation_id, 0x5E1F, len(extra))
            ids = np.asarray(extra, dtype=np.int64)
            c = concat_columns([c, _tracking_rows(rng, p, ids, np.full(ids.shape[0], p.epoch - 30 * DAY), self.data_time)])
        order = np.argsort(c["character_id"], kind="stable")
        return TableView(MEMBERTRACKING_FIELDS, take_columns(c, order), self.generation, self.data_time)


def _locations(rng: np.random.Generator, p: CorpProfile, n: int) -> np.ndarray:
    """Where members are: stations/structures (docked) or solar systems (in space)."""
    docked = rng.random(n) < 0.7
    locs = p.region.location_ids[rng.integers(0, p.region.location_ids.shape[0], n)]
    systems = p.systems[rng.integers(0, p.systems.shape[0], n)]
    return np.where(docked, locs, systems).astype(np.int64)


def _tracking_rows(rng: np.random.Generator, p: CorpProfile, ids: np.ndarray, starts: np.ndarray, now: int) -> dict:
    n = ids.shape[0]
    tracked = rng.random(n) >= 0.03  # a few members never show up in tracking details
    logon = now - (rng.exponential(3 * DAY, n)).astype(np.int64)
    logon = np.maximum(logon, starts)
    online = rng.random(n) < 0.1
    logoff = np.where(online, INT_NA, np.minimum(logon + rng.integers(600, 6 * 3600, n), now))
    base_present = rng.random(n) < 0.6
    bases = p.region.location_ids[rng.integers(0, p.region.location_ids.shape[0], n)]
    bases = np.where(bases >= 1_000_000_000_000, p.region.hub_station_id, bases)  # bases are NPC stations
    return {
        "character_id": ids.astype(np.int64),
        "base_id": np.where(base_present & tracked, bases, INT_NA).astype(np.int64),
        "location_id": np.where(tracked, _locations(rng, p, n), INT_NA).astype(np.int64),
        "logoff_date": np.where(tracked, logoff, INT_NA).astype(np.int64),
        "logon_date": np.where(tracked, logon, INT_NA).astype(np.int64),
        "ship_type_id": np.where(tracked, np.array(SHIP_TYPES, dtype=np.int64)[rng.integers(0, len(SHIP_TYPES), n)], INT_NA).astype(np.int64),
        "start_date": np.where(rng.random(n) < 0.995, starts, INT_NA).astype(np.int64),
    }


# --------------------------------------------------------------------------------------
# Assets
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssetsState:
    """All asset rows (sorted by item_id); ``kind`` says what a row is (office, ship, stack ...)."""

    generation: int
    data_time: int
    cols: dict  # item_id, type_id, location_id, location_type, location_flag, quantity, is_singleton, is_blueprint_copy, kind

    def __len__(self) -> int:
        return int(self.cols["item_id"].shape[0])

    def view(self) -> TableView:
        return TableView(ASSET_FIELDS, self.cols, self.generation, self.data_time)

    @staticmethod
    def initial(p: CorpProfile, universe: Universe) -> "AssetsState":
        rng = corp_rng(p.seed, p.corporation_id, 0, 0xA55E7)
        target = int(p.size.assets)
        parts: list[dict] = []

        def rows(item_id, type_id, loc, lt, flag, qty, single, bpc, kind) -> dict:
            n = len(item_id)
            full = lambda v, dt=np.int64: np.broadcast_to(np.asarray(v, dtype=dt), (n,)).copy()  # noqa: E731
            return {
                "item_id": np.asarray(item_id, dtype=np.int64),
                "type_id": full(type_id),
                "location_id": full(loc),
                "location_type": full(lt, np.int16),
                "location_flag": full(flag, np.int16),
                "quantity": full(qty),
                "is_singleton": full(single, np.int8),
                "is_blueprint_copy": full(bpc, np.int8),
                "kind": full(kind, np.int8),
            }

        n_off = p.office_ids.shape[0]
        parts.append(rows(p.office_ids, 27, p.office_locations, np.where(p.office_in_structure, _LT_ITEM, _LT_STATION), _F["OfficeFolder"], 1, 1, -1, K_OFFICE))
        n_st = p.structure_ids.shape[0]
        parts.append(rows(p.structure_ids, p.structure_types, p.structure_systems, _LT_SYSTEM, _F["AutoFit"], 1, 1, -1, K_STRUCTURE))
        parts.append(rows(p.container_ids, p.container_types, p.office_ids[p.container_office], _LT_ITEM, _SAG[p.container_flag - 1], 1, 1, -1, K_CONTAINER))

        used = len(p.office_ids) + n_st + len(p.container_ids)
        n_services = n_st * 2
        n_ships = max(int(target * 0.012), 1 if target > 200 else 0)
        mods_per_ship = 8
        n_rest = max(target - used - n_st - n_services - n_ships * (1 + mods_per_ship), 0)
        n_new_ids = n_st + n_services + n_ships * (1 + mods_per_ship) + n_rest
        ks = np.sort(100_000_000 + rng.choice(350_000_000, size=n_new_ids, replace=False).astype(np.int64))
        ids = p.item_id(rng.permutation(ks))
        pos = 0

        def take(n: int) -> np.ndarray:
            nonlocal pos
            out = ids[pos : pos + n]
            pos += n
            return out

        # fuel bay + service modules of each structure
        parts.append(rows(take(n_st), np.array(FUEL_BLOCK_TYPES)[rng.integers(0, 4, n_st)], p.structure_ids, _LT_ITEM, _F["StructureFuel"], rng.integers(2_000, 60_000, n_st), 0, -1, K_FUEL))
        svc_parent = np.repeat(p.structure_ids, 2)
        parts.append(rows(take(n_services), np.array(SERVICE_MODULE_TYPES)[rng.integers(0, len(SERVICE_MODULE_TYPES), n_services)], svc_parent, _LT_ITEM, np.tile([_F["ServiceSlot0"], _F["ServiceSlot1"]], n_st), 1, 1, -1, K_SERVICE))
        # assembled ships in corp hangars, with fitted modules
        ship_ids = take(n_ships)
        ship_types = np.array(SHIP_TYPES[:-1], dtype=np.int64)[rng.integers(0, len(SHIP_TYPES) - 1, n_ships)]
        parts.append(rows(ship_ids, ship_types, p.office_ids[rng.integers(0, n_off, n_ships)], _LT_ITEM, _SAG[rng.integers(0, 7, n_ships)], 1, 1, -1, K_SHIP))
        n_mod = n_ships * mods_per_ship
        if n_mod:
            mod_types = universe.type_ids[rng.choice(universe.type_ids.shape[0], size=n_mod, p=universe.order_weight)]
            parts.append(rows(take(n_mod), mod_types, np.repeat(ship_ids, mods_per_ship), _LT_ITEM, np.tile(_FIT_FLAGS[:mods_per_ship], n_ships), 1, 1, -1, K_MODULE))
        # everything else: stacks (and blueprints) in offices, containers and ship cargo holds
        parts.append(_stacks(rng, p, universe, take(n_rest), ship_ids))
        cols = concat_columns(parts)
        order = np.argsort(cols["item_id"], kind="stable")
        return AssetsState(0, p.epoch, take_columns(cols, order))

    def evolve(self, p: CorpProfile, universe: Universe) -> "AssetsState":
        g = self.generation + 1
        rng = corp_rng(p.seed, p.corporation_id, g, 0xA55E7)
        c = {k: v.copy() for k, v in self.cols.items()}
        n = c["item_id"].shape[0]
        movable = np.isin(c["kind"], _MOVABLE)
        idx = np.flatnonzero(movable)
        if idx.shape[0] == 0:
            return AssetsState(g, p.epoch + g * ASSETS_STEP, c)
        m = idx.shape[0]
        u = rng.random(m)
        vanish = idx[u < 0.015]
        move = idx[(u >= 0.015) & (u < 0.03)]
        requantity = idx[(u >= 0.03) & (u < 0.05) & (c["is_singleton"][idx] == 0)]
        if vanish.shape[0] == 0:
            vanish = idx[[int(rng.integers(0, m))]]
            move = move[move != vanish[0]]
        if move.shape[0] == 0 and m > 1:
            cand = idx[idx != vanish[0]] if vanish.shape[0] == 1 else idx
            move = cand[[int(rng.integers(0, cand.shape[0]))]]
        if move.shape[0]:
            loc, lt, flag = _stack_places(rng, p, move.shape[0], ship_ids=c["item_id"][c["kind"] == K_SHIP])
            c["location_id"][move], c["location_type"][move], c["location_flag"][move] = loc, lt, flag
        if requantity.shape[0]:
            q = c["quantity"][requantity]
            c["quantity"][requantity] = np.maximum(np.rint(q * np.exp(rng.normal(0, 0.6, q.shape[0]))), 1).astype(np.int64)
        keep = np.ones(n, dtype=bool)
        keep[vanish] = False
        c = take_columns(c, keep)
        n_new = max(int(rng.poisson(m * 0.015)), 1)
        top_k = (int(c["item_id"].max()) - ITEM_ID_BASE) // 97 if c["item_id"].shape[0] else 450_000_000
        ks = top_k + 1 + np.sort(1 + rng.choice(50 * n_new + 1, size=n_new, replace=False).astype(np.int64))
        new = _stacks(rng, p, universe, p.item_id(ks), c["item_id"][c["kind"] == K_SHIP])
        c = concat_columns([c, new])
        return AssetsState(g, p.epoch + g * ASSETS_STEP, c)


def _stack_places(rng: np.random.Generator, p: CorpProfile, n: int, ship_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    where = rng.random(n)
    in_cont = where < 0.12
    in_ship = (where >= 0.12) & (where < 0.15) & (ship_ids.shape[0] > 0)
    office = p.office_ids[rng.integers(0, p.office_ids.shape[0], n)]
    cont_i = rng.integers(0, p.container_ids.shape[0], n)
    ship = ship_ids[rng.integers(0, max(ship_ids.shape[0], 1), n)] if ship_ids.shape[0] else office
    loc = np.where(in_cont, p.container_ids[cont_i], np.where(in_ship, ship, office)).astype(np.int64)
    flag = np.where(
        in_cont,
        np.where(rng.random(n) < 0.7, _F["Locked"], _F["Unlocked"]),
        np.where(in_ship, _F["Cargo"], _SAG[rng.integers(0, 7, n)]),
    ).astype(np.int16)
    deliveries = (~in_cont) & (~in_ship) & (rng.random(n) < 0.01)
    flag[deliveries] = _F["CorpDeliveries"]
    return loc, np.full(n, _LT_ITEM, dtype=np.int16), flag


def _stacks(rng: np.random.Generator, p: CorpProfile, universe: Universe, item_ids: np.ndarray, ship_ids: np.ndarray) -> dict:
    n = item_ids.shape[0]
    t = universe.type_ids[rng.choice(universe.type_ids.shape[0], size=n, p=universe.order_weight)]
    loc, lt, flag = _stack_places(rng, p, n, ship_ids)
    blueprint = rng.random(n) < 0.06
    bpc = blueprint & (rng.random(n) < 0.7)
    single = blueprint | (rng.random(n) < 0.05)
    qty = np.where(single, 1, np.maximum(np.rint(np.exp(rng.normal(np.log(150), 2.0, n))), 1)).astype(np.int64)
    return {
        "item_id": item_ids.astype(np.int64),
        "type_id": t.astype(np.int64),
        "location_id": loc,
        "location_type": lt,
        "location_flag": flag,
        "quantity": qty,
        "is_singleton": single.astype(np.int8),
        "is_blueprint_copy": np.where(bpc, 1, -1).astype(np.int8),
        "kind": np.where(blueprint, K_BLUEPRINT, K_STACK).astype(np.int8),
    }


# --------------------------------------------------------------------------------------
# Container logs (7 days)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerLogState:
    generation: int
    data_time: int
    cols: dict

    def __len__(self) -> int:
        return int(self.cols["logged_at"].shape[0])

    def view(self) -> TableView:
        c = self.cols
        order = np.lexsort((c["container_id"], -c["logged_at"]))  # newest first
        return TableView(CONTAINER_LOG_FIELDS, take_columns(c, order), self.generation, self.data_time)

    @staticmethod
    def initial(p: CorpProfile, universe: Universe) -> "ContainerLogState":
        rng = corp_rng(p.seed, p.corporation_id, 0, 0xC0917)
        now = p.epoch
        n = int(rng.poisson(p.size.container_logs_per_day * 7))
        times = now - rng.integers(0, 7 * DAY, n)
        return ContainerLogState(0, now, _log_rows(rng, p, universe, times))

    def evolve(self, p: CorpProfile, universe: Universe) -> "ContainerLogState":
        g = self.generation + 1
        rng = corp_rng(p.seed, p.corporation_id, g, 0xC0917)
        now = p.epoch + g * CONTAINER_LOGS_STEP
        keep = self.cols["logged_at"] >= now - 7 * DAY
        c = take_columns(self.cols, keep)
        n = max(int(rng.poisson(p.size.container_logs_per_day * CONTAINER_LOGS_STEP / DAY)), 1 if p.size.container_logs_per_day else 0)
        times = self.data_time + 1 + rng.integers(0, CONTAINER_LOGS_STEP, n)
        return ContainerLogState(g, now, concat_columns([c, _log_rows(rng, p, universe, times)]))


def _log_rows(rng: np.random.Generator, p: CorpProfile, universe: Universe, times: np.ndarray) -> dict:
    n = times.shape[0]
    action = rng.choice(len(CONTAINER_ACTIONS), size=n, p=_ACTION_P).astype(np.int16)
    ci = rng.integers(0, p.container_ids.shape[0], n)
    actors = p.roster[rng.integers(0, min(p.roster.shape[0], max(p.founders * 4, 1)), n)]
    has_item = np.isin(action, [CONTAINER_ACTIONS.index("add"), CONTAINER_ACTIONS.index("move")])
    has_cfg = action == CONTAINER_ACTIONS.index("configure")
    has_pw = np.isin(action, [CONTAINER_ACTIONS.index("set_password"), CONTAINER_ACTIONS.index("enter_password")])
    t = universe.type_ids[rng.choice(universe.type_ids.shape[0], size=n, p=universe.order_weight)]
    return {
        "action": action,
        "character_id": actors.astype(np.int64),
        "container_id": p.container_ids[ci],
        "container_type_id": p.container_types[ci],
        "location_flag": _SAG[p.container_flag[ci] - 1].astype(np.int16),
        "location_id": p.office_locations[p.container_office[ci]],
        "logged_at": times.astype(np.int64),
        "new_config_bitmask": np.where(has_cfg, rng.integers(0, 64, n), INT_NA).astype(np.int64),
        "old_config_bitmask": np.where(has_cfg, rng.integers(0, 64, n), INT_NA).astype(np.int64),
        "password_type": np.where(has_pw, rng.integers(0, 2, n), -1).astype(np.int16),
        "quantity": np.where(has_item, np.maximum(np.rint(np.exp(rng.normal(3, 1.5, n))), 1), INT_NA).astype(np.int64),
        "type_id": np.where(has_item, t, INT_NA).astype(np.int64),
    }
