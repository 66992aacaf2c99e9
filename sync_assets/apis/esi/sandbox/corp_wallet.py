"""Corporation wallet journal (30 days, X-Pages) and transactions (a year, ``from_id`` walk), per division.

Market transactions and their journal entries agree: a transaction's ``journal_ref_id`` is the
``id`` of its ``market_transaction`` journal entry (whose ``context_id`` is the transaction id), as
long as that entry is still inside the journal's 30-day window.  Ids grow with time; balances are
a running sum per division.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from .corp_common import INT_NA, Field, TableView, alloc_ids, concat_columns, corp_rng, take_columns, tick_of
from .corp_profile import DIVISION_SHARE, CorpProfile
from .market_data import Universe

__all__ = ["JOURNAL_FIELDS", "TRANSACTION_FIELDS", "REF_TYPES", "CONTEXT_ID_TYPES", "WalletState", "TRANSACTIONS_PER_RESPONSE"]

DAY = 86400
WALLET_STEP = 3600
JOURNAL_DAYS = 30
TRANSACTION_DAYS = 365
TRANSACTIONS_PER_RESPONSE = 2500
JOURNAL_ID_BASE = 20_000_000_000
TRANSACTION_ID_BASE = 6_000_000_000
_JOURNAL_TICKS = 0.5
_TX_TICKS = 0.05
_ID_ORIGIN = 1_735_689_600  # 2025-01-01

CONTEXT_ID_TYPES: tuple[str, ...] = (
    "structure_id", "station_id", "market_transaction_id", "character_id", "corporation_id", "alliance_id",
    "eve_system", "industry_job_id", "contract_id", "planet_id", "system_id", "type_id",
)
_CTX = {n: i for i, n in enumerate(CONTEXT_ID_TYPES)}
CONCORD, SCC = 1_000_125, 1_000_132

#: ref_type -> (weight among non-market entries, sign (+1 income / -1 cost), median |amount|, context type or None)
_REF = {
    "market_escrow": (0.09, -1, 4e6, None),
    "brokers_fee": (0.14, -1, 6e4, None),
    "transaction_tax": (0.12, -1, 9e4, None),
    "bounty_prizes": (0.22, 1, 2.5e5, "system_id"),
    "ess_escrow_transfer": (0.04, 1, 1.2e6, "system_id"),
    "agent_mission_reward_corporation_tax": (0.06, 1, 8e4, None),
    "player_donation": (0.05, 1, 5e7, None),
    "corporation_account_withdrawal": (0.04, -1, 8e7, None),
    "industry_job_tax": (0.08, -1, 2e5, "industry_job_id"),
    "manufacturing": (0.06, -1, 1.5e6, "industry_job_id"),
    "reprocessing_tax": (0.03, -1, 3e4, "structure_id"),
    "planetary_export_tax": (0.03, -1, 4e5, "planet_id"),
    "contract_price": (0.03, 1, 6e7, "contract_id"),
    "office_rental_fee": (0.01, -1, 1.2e7, "station_id"),
}
REF_TYPES: tuple[str, ...] = ("market_transaction", *_REF)
_R_MARKET = 0
_REF_P = np.array([v[0] for v in _REF.values()])
_REF_P = _REF_P / _REF_P.sum()
_REF_SIGN = np.array([0] + [v[1] for v in _REF.values()], dtype=np.float64)
_REF_MED = np.array([1.0] + [v[2] for v in _REF.values()])
_REF_CTX = np.array([_CTX["market_transaction_id"]] + [(_CTX[v[3]] if v[3] else -1) for v in _REF.values()], dtype=np.int16)
_DESCRIPTIONS = {
    "market_transaction": "Market: {a} bought stuff from {b}",
    "market_escrow": "Market escrow release",
    "brokers_fee": "Market order commission authorized by: {m}",
    "transaction_tax": "Market transaction tax",
    "bounty_prizes": "{m} got bounty prizes for killing pirates in {ctx}",
    "ess_escrow_transfer": "ESS escrow payout to {m} in {ctx}",
    "agent_mission_reward_corporation_tax": "Mission reward corporation tax from {m}",
    "player_donation": "{m} deposited cash into {b}'s account",
    "corporation_account_withdrawal": "{m} transferred cash from {a}'s corporate account",
    "industry_job_tax": "Industry job tax for job {ctx}",
    "manufacturing": "Manufacturing job {ctx} installation",
    "reprocessing_tax": "Reprocessing tax at {ctx}",
    "planetary_export_tax": "Planetary export tax for planet {ctx}",
    "contract_price": "Contract {ctx} price",
    "office_rental_fee": "Office rental fee at {ctx}",
}
_REASONS = ("", "srp", "buyback", "fuel", "moon tax", "ops payout")

JOURNAL_FIELDS: tuple[Field, ...] = (
    Field("amount", "float", optional=True),
    Field("balance", "float", optional=True),
    Field("context_id", "int", optional=True),
    Field("context_id_type", "enum", optional=True, values=CONTEXT_ID_TYPES),
    Field("date", "dt"),
    Field("description", "str"),
    Field("first_party_id", "int", optional=True),
    Field("id", "int"),
    Field("reason", "str", optional=True),
    Field("ref_type", "enum", values=REF_TYPES),
    Field("second_party_id", "int", optional=True),
    Field("tax", "float", optional=True),
    Field("tax_receiver_id", "int", optional=True),
)
TRANSACTION_FIELDS: tuple[Field, ...] = (
    Field("client_id", "int"),
    Field("date", "dt"),
    Field("is_buy", "bool"),
    Field("journal_ref_id", "int"),
    Field("location_id", "int"),
    Field("quantity", "int"),
    Field("transaction_id", "int"),
    Field("type_id", "int"),
    Field("unit_price", "float"),
)


def _clients(rng: np.random.Generator, n: int) -> np.ndarray:
    old = rng.random(n) < 0.45
    return np.where(old, rng.integers(90_000_000, 98_000_000, n), rng.integers(2_112_000_000, 2_125_000_000, n)).astype(np.int64)


def _transactions(rng: np.random.Generator, p: CorpProfile, universe: Universe, division: int, times: np.ndarray) -> dict:
    n = times.shape[0]
    is_buy = rng.random(n) < 0.45
    reg_i = rng.integers(0, len(p.trade_regions), n)
    loc = np.empty(n, dtype=np.int64)
    for j, reg in enumerate(p.trade_regions):
        m = reg_i == j
        loc[m] = reg.location_ids[rng.choice(reg.location_ids.shape[0], size=int(m.sum()), p=reg.location_weights)]
    t_idx = rng.choice(universe.type_ids.shape[0], size=n, p=universe.order_weight)
    base = universe.base_price[t_idx]
    price = np.maximum(np.round(base * np.exp(rng.normal(0.0, 0.08, n)), 2), 0.01)
    qty = np.maximum(np.rint(np.exp(rng.normal(np.log(np.clip(2e7 / base, 1, 1e6)), 1.0))), 1).astype(np.int64)
    return {
        "division": np.full(n, division, dtype=np.int64),
        "client_id": _clients(rng, n),
        "date": times.astype(np.int64),
        "is_buy": is_buy.astype(np.int8),
        "journal_ref_id": np.zeros(n, dtype=np.int64),
        "location_id": loc,
        "quantity": qty,
        "transaction_id": np.zeros(n, dtype=np.int64),
        "type_id": universe.type_ids[t_idx].astype(np.int64),
        "unit_price": price.astype(np.float64),
    }


def _other_entries(rng: np.random.Generator, p: CorpProfile, division: int, times: np.ndarray) -> dict:
    n = times.shape[0]
    ref = (rng.choice(len(_REF), size=n, p=_REF_P) + 1).astype(np.int16)
    amount = np.round(_REF_SIGN[ref] * np.exp(rng.normal(np.log(_REF_MED[ref]), 0.8)), 2)
    ctx_t = _REF_CTX[ref]
    member = p.roster[rng.integers(0, p.roster.shape[0], n)]
    ctx = np.full(n, INT_NA, dtype=np.int64)
    for code, gen in (
        (_CTX["system_id"], lambda k: p.systems[rng.integers(0, p.systems.shape[0], k)]),
        (_CTX["industry_job_id"], lambda k: 520_000_000 + rng.integers(0, 20_000_000, k)),
        (_CTX["structure_id"], lambda k: p.structure_ids[rng.integers(0, p.structure_ids.shape[0], k)]),
        (_CTX["planet_id"], lambda k: 40_000_000 + rng.integers(0, 400_000, k)),
        (_CTX["contract_id"], lambda k: 190_000_000 + rng.integers(0, 30_000_000, k)),
        (_CTX["station_id"], lambda k: p.office_locations[rng.integers(0, p.office_locations.shape[0], k)]),
    ):
        m = ctx_t == code
        if m.any():
            ctx[m] = gen(int(m.sum()))
    corp = p.corporation_id
    name = np.asarray(REF_TYPES, dtype=object)[ref]
    first = np.where(np.isin(name, ["bounty_prizes", "ess_escrow_transfer", "agent_mission_reward_corporation_tax"]), CONCORD, np.where(name == "player_donation", member, corp))
    second = np.where(np.isin(name, ["transaction_tax", "brokers_fee", "reprocessing_tax", "office_rental_fee"]), SCC, np.where(name == "player_donation", corp, member))
    has_tax = name == "bounty_prizes"
    desc = np.array(
        [_DESCRIPTIONS[nm].format(a=a, b=b, m=mm, ctx=cx) for nm, a, b, mm, cx in zip(name.tolist(), first.tolist(), second.tolist(), member.tolist(), ctx.tolist())],
        dtype=object,
    )
    reason_i = rng.integers(0, len(_REASONS), n)
    reason = np.array([(_REASONS[i] if nm in ("player_donation", "corporation_account_withdrawal") else None) for nm, i in zip(name.tolist(), reason_i.tolist())], dtype=object)
    return {
        "division": np.full(n, division, dtype=np.int64),
        "amount": amount.astype(np.float64),
        "balance": np.zeros(n, dtype=np.float64),
        "context_id": ctx,
        "context_id_type": np.where(ctx == INT_NA, -1, ctx_t).astype(np.int16),
        "date": times.astype(np.int64),
        "description": desc,
        "first_party_id": first.astype(np.int64),
        "id": np.zeros(n, dtype=np.int64),
        "reason": reason,
        "ref_type": ref,
        "second_party_id": second.astype(np.int64),
        "tax": np.where(has_tax, np.round(np.abs(amount) * 0.1, 2), np.nan),
        "tax_receiver_id": np.where(has_tax, corp, INT_NA).astype(np.int64),
    }


def _market_entries(p: CorpProfile, tx: dict) -> dict:
    n = tx["date"].shape[0]
    buy = tx["is_buy"] > 0
    corp = p.corporation_id
    buyer = np.where(buy, corp, tx["client_id"])
    seller = np.where(buy, tx["client_id"], corp)
    desc = np.array([_DESCRIPTIONS["market_transaction"].format(a=a, b=b) for a, b in zip(buyer.tolist(), seller.tolist())], dtype=object)
    return {
        "division": tx["division"].copy(),
        "amount": np.round(np.where(buy, -1.0, 1.0) * tx["quantity"] * tx["unit_price"], 2),
        "balance": np.zeros(n, dtype=np.float64),
        "context_id": tx["transaction_id"].copy(),
        "context_id_type": np.full(n, _CTX["market_transaction_id"], dtype=np.int16),
        "date": tx["date"].copy(),
        "description": desc,
        "first_party_id": buyer.astype(np.int64),
        "id": tx["journal_ref_id"].copy(),
        "reason": np.full(n, None, dtype=object),
        "ref_type": np.full(n, _R_MARKET, dtype=np.int16),
        "second_party_id": seller.astype(np.int64),
        "tax": np.full(n, np.nan),
        "tax_receiver_id": np.full(n, INT_NA, dtype=np.int64),
    }


@dataclass(frozen=True)
class WalletState:
    generation: int
    data_time: int
    journal: dict  # all divisions, chronological (id ascending)
    transactions: dict  # all divisions, chronological (transaction_id ascending)
    last_journal_id: int
    last_transaction_id: int

    def __len__(self) -> int:
        return int(self.journal["id"].shape[0])

    def journal_view(self, division: int) -> TableView:
        m = np.flatnonzero(self.journal["division"] == int(division))[::-1]  # newest first
        return TableView(JOURNAL_FIELDS, {f.name: self.journal[f.name][m] for f in JOURNAL_FIELDS}, self.generation, self.data_time)

    def transactions_view(self, division: int) -> "TransactionsView":
        m = np.flatnonzero(self.transactions["division"] == int(division))[::-1]  # newest first
        return TransactionsView(TRANSACTION_FIELDS, {f.name: self.transactions[f.name][m] for f in TRANSACTION_FIELDS}, self.generation, self.data_time)

    @staticmethod
    def initial(p: CorpProfile, universe: Universe) -> "WalletState":
        rng = corp_rng(p.seed, p.corporation_id, 0, 0x3A11E7)
        now = p.epoch
        txs, others = [], []
        for d, share in enumerate(DIVISION_SHARE, start=1):
            if share <= 0:
                continue
            n_tx = int(rng.poisson(p.size.transactions_per_year * share))
            txs.append(_transactions(rng, p, universe, d, np.sort(now - rng.integers(0, TRANSACTION_DAYS * DAY, n_tx))))
            n_j = int(rng.poisson(p.size.journal_per_day * share * JOURNAL_DAYS))
            others.append(_other_entries(rng, p, d, np.sort(now - rng.integers(0, JOURNAL_DAYS * DAY, n_j))))
        state = WalletState(0, now, {}, {}, 0, 0)
        starts = {d: float(np.round(rng.uniform(2e8, 4e10) * share, 2)) for d, share in enumerate(DIVISION_SHARE, start=1)}
        return state._append(p, concat_columns(txs), concat_columns(others), now, starts, 0)

    def evolve(self, p: CorpProfile, universe: Universe) -> "WalletState":
        g = self.generation + 1
        rng = corp_rng(p.seed, p.corporation_id, g, 0x3A11E7)
        prev, now = self.data_time, p.epoch + g * WALLET_STEP
        txs, others = [], []
        for d, share in enumerate(DIVISION_SHARE, start=1):
            if share <= 0:
                continue
            at_least = 1 if d == 1 else 0
            n_tx = max(int(rng.poisson(p.size.transactions_per_year * share * WALLET_STEP / (TRANSACTION_DAYS * DAY))), at_least if p.size.transactions_per_year else 0)
            txs.append(_transactions(rng, p, universe, d, np.sort(prev + 1 + rng.integers(0, WALLET_STEP, n_tx))))
            n_j = max(int(rng.poisson(p.size.journal_per_day * share * WALLET_STEP / DAY)), at_least if p.size.journal_per_day else 0)
            others.append(_other_entries(rng, p, d, np.sort(prev + 1 + rng.integers(0, WALLET_STEP, n_j))))
        j = take_columns(self.journal, self.journal["date"] >= now - JOURNAL_DAYS * DAY)
        t = take_columns(self.transactions, self.transactions["date"] >= now - TRANSACTION_DAYS * DAY)
        base = WalletState(g, now, j, t, self.last_journal_id, self.last_transaction_id)
        starts = {}
        for d in range(1, 8):
            m = np.flatnonzero(self.journal["division"] == d)
            starts[d] = float(self.journal["balance"][m[-1]]) if m.shape[0] else 0.0
        return base._append(p, concat_columns(txs), concat_columns(others), now, starts, g)

    def _append(self, p: CorpProfile, tx: dict, other: dict, now: int, start_balance: dict, generation: int) -> "WalletState":
        """Allocate ids for new transactions and journal entries (chronological), compute balances."""
        if tx:
            order = np.argsort(tx["date"], kind="stable")
            tx = take_columns(tx, order)
            floor = tick_of(self.last_transaction_id, TRANSACTION_ID_BASE) + 1 if self.last_transaction_id else 0
            tx["transaction_id"] = alloc_ids(tx["date"], base=TRANSACTION_ID_BASE, origin=_ID_ORIGIN, ticks_per_second=_TX_TICKS, slot=p.slot, floor_tick=floor)
        # journal events: every new transaction (for its journal_ref_id) + the other entries
        n_tx = tx["date"].shape[0] if tx else 0
        ev_time = np.concatenate([tx["date"] if tx else np.zeros(0, np.int64), other["date"] if other else np.zeros(0, np.int64)])
        order = np.argsort(ev_time, kind="stable")
        floor = tick_of(self.last_journal_id, JOURNAL_ID_BASE) + 1 if self.last_journal_id else 0
        ids = np.empty_like(ev_time)
        ids[order] = alloc_ids(ev_time[order], base=JOURNAL_ID_BASE, origin=_ID_ORIGIN, ticks_per_second=_JOURNAL_TICKS, slot=p.slot, floor_tick=floor)
        parts = [self.journal] if self.journal else []
        if tx:
            tx["journal_ref_id"] = ids[:n_tx]
            in_window = tx["date"] >= now - JOURNAL_DAYS * DAY
            parts.append(_market_entries(p, take_columns(tx, in_window)))
        if other:
            other["id"] = ids[n_tx:]
            parts.append(other)
        j = concat_columns(parts)
        if j:
            order = np.argsort(j["id"], kind="stable")
            j = take_columns(j, order)
            new = j["balance"] == 0.0
            if self.journal:
                new = ~np.isin(j["id"], self.journal["id"])
            for d in range(1, 8):
                m = np.flatnonzero((j["division"] == d) & new)
                if m.shape[0]:
                    bal = start_balance.get(d, 0.0) + np.cumsum(j["amount"][m])
                    low = float(bal.min())
                    if generation == 0 and low < 0:  # a corporation does not start in debt
                        bal -= low - 1e7
                    j["balance"][m] = np.round(bal, 2)
        transactions = concat_columns([self.transactions, tx] if self.transactions else [tx]) if tx else self.transactions
        last_j = int(ids.max()) if ids.shape[0] else self.last_journal_id
        last_t = int(tx["transaction_id"].max()) if tx and n_tx else self.last_transaction_id
        return WalletState(generation, now, j, transactions, max(last_j, self.last_journal_id), max(last_t, self.last_transaction_id))


@dataclass(frozen=True)
class TransactionsView(TableView):
    """Transactions of one division, newest first, answering ``from_id`` queries."""

    def from_id(self, from_id: int | None, limit: int = TRANSACTIONS_PER_RESPONSE) -> "TableView":
        ids = self.columns["transaction_id"]  # descending
        if from_id is None:
            start = 0
        else:
            # first index whose id <= from_id (ids are descending)
            start = int(np.searchsorted(-ids, -int(from_id), side="left"))
        return self.take(slice(start, start + int(limit)))

    def body(self, from_id: int | None, limit: int = TRANSACTIONS_PER_RESPONSE) -> bytes:
        v = self.from_id(from_id, limit)
        return orjson.dumps(v.rows())
