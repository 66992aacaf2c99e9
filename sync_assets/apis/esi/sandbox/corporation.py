"""Deterministic, realistic data of sandbox corporations, for ESI's authenticated corporation routes.

One :class:`CorpWorld` per corporation holds a :class:`~.corp_profile.CorpProfile` (who the
corporation is) and one evolving state per *family* of routes:

=================  =========================================================  ===============
family             routes (kinds)                                             game time/gen
=================  =========================================================  ===============
members            ``members``, ``membertracking``                            3600 s
assets             ``assets``                                                 3600 s
industry           ``industry_jobs`` (include_completed true/false)           300 s
orders             ``corp_orders``, ``corp_orders_history``                   1200 s
wallet             ``wallet_journal``, ``wallet_transactions`` (divisions)    3600 s
mining             ``mining_observers``, ``mining_ledger`` (per observer)     3600 s
killmails          ``killmails_recent`` (+ public killmail details)           300 s
container_logs     ``container_logs``                                         600 s
=================  =========================================================  ===============

Generation ``g`` of a family is a pure function of (seed, corporation_id, g): generation 0 is
generated from the profile, generation ``g + 1`` is derived from ``g``.  The routes of a family
are views of the same state, so a refreshed open-orders list and a refreshed history agree
(a filled order leaves one and enters the other).

:data:`CORP_ROUTES` is the route table (paths, scopes, roles, cache ages, rate-limit groups and
page sizes exactly as in the official spec, compat 2026-08-18).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from . import market_data as md
from .corp_activity import IndustryState, MiningState, OrdersState
from .corp_assets import AssetsState, ContainerLogState, MembersState
from .corp_killmails import KillmailsState, killmail_detail
from .corp_profile import SIZES, CorpProfile, CorpSize, build_profile, character_name, resolve_size
from .corp_wallet import TRANSACTIONS_PER_RESPONSE, WalletState

__all__ = [
    "CorpRoute",
    "CORP_ROUTES",
    "CORP_ROUTE_KINDS",
    "ALL_CORP_SCOPES",
    "DIRECTOR_ROLES",
    "CORPORATION_ROLES",
    "DEFAULT_CORPORATIONS",
    "SIZES",
    "CorpSize",
    "CorpProfile",
    "CorpWorld",
    "CorpData",
    "resolve_size",
    "character_name",
    "TRANSACTIONS_PER_RESPONSE",
    "WALLET_DIVISIONS",
]


@dataclass(frozen=True)
class CorpRoute:
    kind: str  # the sandbox's name of the route (counters, refresh, cache_seconds knobs)
    path: str  # path in the official spec
    operation_id: str
    scope: str | None  # required scope (None: public)
    roles: tuple[str, ...]  # x-required-roles: any one of them
    cache_seconds: int  # x-cache-age
    rate_limit: tuple[str, int] | None  # (x-rate-limit group, max tokens per 15m)
    paged: bool  # X-Pages + ?page=
    page_size: int  # rows per page (per response for from_id routes)
    family: str | None


_W = "esi-wallet.read_corporation_wallets.v1"
_M = "esi-markets.read_corporation_orders.v1"
_I = "esi-industry.read_corporation_mining.v1"

CORP_ROUTES: dict[str, CorpRoute] = {
    r.kind: r
    for r in (
        CorpRoute("members", "/corporations/{corporation_id}/members", "GetCorporationsCorporationIdMembers",
                  "esi-corporations.read_corporation_membership.v1", (), 3600, ("corp-member", 300), False, 0, "members"),
        CorpRoute("membertracking", "/corporations/{corporation_id}/membertracking", "GetCorporationsCorporationIdMembertracking",
                  "esi-corporations.track_members.v1", ("Director",), 3600, ("corp-member", 300), False, 0, "members"),
        CorpRoute("assets", "/corporations/{corporation_id}/assets", "GetCorporationsCorporationIdAssets",
                  "esi-assets.read_corporation_assets.v1", ("Director",), 3600, ("corp-asset", 1800), True, 1000, "assets"),
        CorpRoute("industry_jobs", "/corporations/{corporation_id}/industry/jobs", "GetCorporationsCorporationIdIndustryJobs",
                  "esi-industry.read_corporation_jobs.v1", ("Factory_Manager",), 300, ("corp-industry", 600), True, 1000, "industry"),
        CorpRoute("corp_orders", "/corporations/{corporation_id}/orders", "GetCorporationsCorporationIdOrders",
                  _M, ("Accountant", "Trader"), 1200, None, True, 1000, "orders"),
        CorpRoute("corp_orders_history", "/corporations/{corporation_id}/orders/history", "GetCorporationsCorporationIdOrdersHistory",
                  _M, ("Accountant", "Trader"), 3600, None, True, 1000, "orders"),
        CorpRoute("wallet_journal", "/corporations/{corporation_id}/wallets/{division}/journal", "GetCorporationsCorporationIdWalletsDivisionJournal",
                  _W, ("Accountant", "Junior_Accountant"), 3600, ("corp-wallet", 300), True, 2500, "wallet"),
        CorpRoute("wallet_transactions", "/corporations/{corporation_id}/wallets/{division}/transactions", "GetCorporationsCorporationIdWalletsDivisionTransactions",
                  _W, ("Accountant", "Junior_Accountant"), 3600, ("corp-wallet", 300), False, TRANSACTIONS_PER_RESPONSE, "wallet"),
        CorpRoute("mining_observers", "/corporation/{corporation_id}/mining/observers", "GetCorporationCorporationIdMiningObservers",
                  _I, ("Accountant",), 3600, ("corp-industry", 600), True, 1000, "mining"),
        CorpRoute("mining_ledger", "/corporation/{corporation_id}/mining/observers/{observer_id}", "GetCorporationCorporationIdMiningObserversObserverId",
                  _I, ("Accountant",), 3600, ("corp-industry", 600), True, 1000, "mining"),
        CorpRoute("killmails_recent", "/corporations/{corporation_id}/killmails/recent", "GetCorporationsCorporationIdKillmailsRecent",
                  "esi-killmails.read_corporation_killmails.v1", ("Director",), 300, ("corp-killmail", 30), True, 1000, "killmails"),
        CorpRoute("killmail", "/killmails/{killmail_id}/{killmail_hash}", "GetKillmailsKillmailIdKillmailHash",
                  None, (), 2_592_000, ("killmail", 3600), False, 0, None),
        CorpRoute("container_logs", "/corporations/{corporation_id}/containers/logs", "GetCorporationsCorporationIdContainersLogs",
                  "esi-corporations.read_container_logs.v1", ("Director",), 600, ("corp-structure", 300), True, 1000, "container_logs"),
        CorpRoute("character_roles", "/characters/{character_id}/roles", "GetCharactersCharacterIdRoles",
                  "esi-characters.read_corporation_roles.v1", (), 3600, ("char-detail", 600), False, 0, None),
    )
}
CORP_ROUTE_KINDS: tuple[str, ...] = tuple(CORP_ROUTES)
#: every scope the corporation routes need (what :meth:`EsiSandbox.add_director` grants by default)
ALL_CORP_SCOPES: tuple[str, ...] = tuple(dict.fromkeys(r.scope for r in CORP_ROUTES.values() if r.scope))
#: roles of a director made by :meth:`EsiSandbox.add_director`: ESI does not let Director stand in
#: for every role (industry jobs need Factory_Manager even for directors, ESI.md §7.5)
DIRECTOR_ROLES: tuple[str, ...] = ("Director", "Accountant", "Factory_Manager", "Trader")
#: the spec's corporation role enum (54 values)
CORPORATION_ROLES: tuple[str, ...] = (
    *(f"Account_Take_{i}" for i in range(1, 8)), "Accountant", "Auditor", "Brand_Manager", "Communications_Officer",
    "Config_Equipment", "Config_Starbase_Equipment", *(f"Container_Take_{i}" for i in range(1, 8)), "Contract_Manager",
    "Deliveries_Container_Take", "Deliveries_Query", "Deliveries_Take", "Diplomat", "Director", "Factory_Manager",
    "Fitting_Manager", *(f"Hangar_Query_{i}" for i in range(1, 8)), *(f"Hangar_Take_{i}" for i in range(1, 8)),
    "Junior_Accountant", "Personnel_Manager", "Project_Manager", "Rent_Factory_Facility", "Rent_Office",
    "Rent_Research_Facility", "Security_Officer", "Skill_Plan_Manager", "Starbase_Defense_Operator",
    "Starbase_Fuel_Technician", "Station_Manager", "Trader",
)
#: two corporations, so tests and the demo have two partitions
DEFAULT_CORPORATIONS: dict[int, str] = {98000001: "default", 98000002: "default"}
WALLET_DIVISIONS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)


class CorpWorld:
    """All evolving data of one corporation (thread-safe)."""

    def __init__(self, profile: CorpProfile, universe: md.Universe) -> None:
        self.profile = profile
        self.universe = universe
        self._states: dict[str, Any] = {}
        self._locks = {f: threading.Lock() for f in _FAMILIES}

    @property
    def corporation_id(self) -> int:
        return self.profile.corporation_id

    def state(self, family: str) -> Any:
        st = self._states.get(family)
        if st is None:
            with self._locks[family]:
                st = self._states.get(family)
                if st is None:
                    st = _FAMILIES[family][0](self)
                    self._states[family] = st
        return st

    def has_state(self, family: str) -> bool:
        return family in self._states

    def advance(self, family: str, from_generation: int | None) -> Any:
        """Next generation of ``family`` if it is still at ``from_generation`` (else the current one)."""
        with self._locks[family]:
            st = self._states.get(family)
            if st is None:
                st = _FAMILIES[family][0](self)
            if from_generation is None or st.generation == from_generation:
                st = _FAMILIES[family][1](self, st)
            self._states[family] = st
            return st

    def view(self, kind: str, param: Any, state: Any, *, extra_members: list[int] = (), drop_members: list[int] = ()) -> Any:
        """The rows route ``kind`` serves for ``param`` from ``state`` (a TableView-like object)."""
        p = self.profile
        if kind == "members":
            return state.members_view(extra_members, drop_members)
        if kind == "membertracking":
            return state.tracking_view(p, extra_members, drop_members)
        if kind == "assets":
            return state.view()
        if kind == "industry_jobs":
            return state.view(bool(param))
        if kind == "corp_orders":
            return state.open_view()
        if kind == "corp_orders_history":
            return state.history_view()
        if kind == "wallet_journal":
            return state.journal_view(int(param))
        if kind == "wallet_transactions":
            return state.transactions_view(int(param))
        if kind == "mining_observers":
            return state.observers_view()
        if kind == "mining_ledger":
            return state.ledger_view(int(param))
        if kind == "killmails_recent":
            return state.recent_view()
        if kind == "container_logs":
            return state.view()
        raise KeyError(kind)

    def observer_ids(self) -> list[int]:
        return self.state("mining").observers.tolist()

    def killmail_detail(self, killmail_id: int, killmail_time: int, corp_is_victim: bool) -> dict:
        return killmail_detail(self.profile, self.universe, killmail_id, killmail_time, corp_is_victim)


_FAMILIES: dict[str, tuple[Callable[[CorpWorld], Any], Callable[[CorpWorld, Any], Any]]] = {
    "members": (lambda w: MembersState.initial(w.profile), lambda w, s: s.evolve(w.profile)),
    "assets": (lambda w: AssetsState.initial(w.profile, w.universe), lambda w, s: s.evolve(w.profile, w.universe)),
    "industry": (lambda w: IndustryState.initial(w.profile, w.universe), lambda w, s: s.evolve(w.profile, w.universe)),
    "orders": (lambda w: OrdersState.initial(w.profile, w.universe), lambda w, s: s.evolve(w.profile, w.universe)),
    "wallet": (lambda w: WalletState.initial(w.profile, w.universe), lambda w, s: s.evolve(w.profile, w.universe)),
    "mining": (lambda w: MiningState.initial(w.profile), lambda w, s: s.evolve(w.profile)),
    "killmails": (lambda w: KillmailsState.initial(w.profile), lambda w, s: s.evolve(w.profile)),
    "container_logs": (lambda w: ContainerLogState.initial(w.profile, w.universe), lambda w, s: s.evolve(w.profile, w.universe)),
}
FAMILIES: tuple[str, ...] = tuple(_FAMILIES)


def build_world(corporation_id: int, size: Any, *, seed: int, data_epoch: Any, universe: md.Universe) -> CorpWorld:
    return CorpWorld(build_profile(corporation_id, resolve_size(size), seed=seed, data_epoch=data_epoch), universe)


class CorpData:
    """What the sandbox currently serves for one corporation, as DataFrames (see
    :meth:`EsiSandbox.corp_data`).  Every attribute reads the *current snapshot* of its route
    (building it on first use), i.e. exactly the rows a client walking the route now would get."""

    def __init__(self, sandbox: Any, corporation_id: int) -> None:
        self._sb = sandbox
        self.corporation_id = int(corporation_id)

    def _frame(self, kind: str, **params: Any) -> pd.DataFrame:
        return self._sb.corp_snapshot(kind, self.corporation_id, **params)

    def _divisions(self, kind: str) -> pd.DataFrame:
        frames = []
        for d in WALLET_DIVISIONS:
            f = self._frame(kind, division=d)
            f.insert(0, "division", d)
            frames.append(f)
        return pd.concat(frames, ignore_index=True)

    @property
    def members(self) -> pd.DataFrame:
        """``character_id`` (int64), ascending."""
        return self._frame("members")

    @property
    def membertracking(self) -> pd.DataFrame:
        return self._frame("membertracking")

    @property
    def assets(self) -> pd.DataFrame:
        return self._frame("assets")

    @property
    def industry_jobs(self) -> pd.DataFrame:
        """All jobs (``include_completed=true``)."""
        return self._frame("industry_jobs", include_completed=True)

    @property
    def industry_jobs_open(self) -> pd.DataFrame:
        """``include_completed=false``: active, paused and ready jobs."""
        return self._frame("industry_jobs", include_completed=False)

    @property
    def orders(self) -> pd.DataFrame:
        return self._frame("corp_orders")

    @property
    def orders_history(self) -> pd.DataFrame:
        return self._frame("corp_orders_history")

    @property
    def journal(self) -> pd.DataFrame:
        """All 7 divisions (column ``division`` first), each newest first."""
        return self._divisions("wallet_journal")

    @property
    def transactions(self) -> pd.DataFrame:
        """All 7 divisions (column ``division`` first), each newest first (every row, not one response)."""
        return self._divisions("wallet_transactions")

    @property
    def mining_observers(self) -> pd.DataFrame:
        return self._frame("mining_observers")

    @property
    def mining_ledger(self) -> pd.DataFrame:
        """Ledgers of every observer (column ``observer_id`` first)."""
        frames = []
        for o in self.mining_observers["observer_id"].tolist():
            f = self._frame("mining_ledger", observer_id=o)
            f.insert(0, "observer_id", o)
            frames.append(f)
        if not frames:
            f = self._sb._empty_frame("mining_ledger")
            f.insert(0, "observer_id", pd.Series([], dtype="int64"))
            return f
        return pd.concat(frames, ignore_index=True)

    @property
    def killmails_recent(self) -> pd.DataFrame:
        return self._frame("killmails_recent")

    @property
    def killmails(self) -> list[dict]:
        """Details of every killmail in the current ``killmails/recent`` list (newest first)."""
        return [self._sb.killmail(k) for k in self.killmails_recent["killmail_id"].tolist()]

    @property
    def container_logs(self) -> pd.DataFrame:
        return self._frame("container_logs")
