"""EVE Online ESI datasets. Routes, fields and cache times follow CCP's OpenAPI spec
(compatibility date 2026-08-18)."""

from __future__ import annotations

from datetime import time

from ...core.catalog import register
from ...core.datasets import Auth, Column, ColumnType, Dataset, Downtime, Partitioning, Slices, WriteMode
from ...core.paging import X_PAGES, FromId

# Daily downtime at 11:00 UTC (ESI.md §6): scheduled work skips it instead of failing.
ESI_DOWNTIME = Downtime(start_utc=time(11, 0), minutes=15)

I, F, B, S, T = ColumnType.INT64, ColumnType.FLOAT64, ColumnType.BOOL, ColumnType.STRING, ColumnType.TIMESTAMP

TRADE_HUB_REGIONS: dict[str, str] = {
    "10000002": "The Forge (Jita)",
    "10000043": "Domain (Amarr)",
    "10000032": "Sinq Laison (Dodixie)",
    "10000030": "Heimatar (Rens)",
    "10000042": "Metropolis (Hek)",
}

MARKET_ORDERS = Dataset(
    api="esi",
    name="market_orders",
    route="/markets/{region_id}/orders",
    description=(
        "Every open buy and sell order in a region (public ESI, no login needed). "
        "One partition per trade-hub region; the table mirrors ESI's latest complete snapshot."
    ),
    query={"order_type": "all"},
    paginator=X_PAGES,
    partitioning=Partitioning(
        path_param="region_id",
        column=Column("region_id", I, description="Region the order book belongs to"),
        keys=tuple(TRADE_HUB_REGIONS),
        labels=TRADE_HUB_REGIONS,
    ),
    columns=(
        Column("order_id", I),
        Column("type_id", I),
        Column("is_buy_order", B),
        Column("price", F),
        Column("volume_remain", I),
        Column("volume_total", I),
        Column("min_volume", I),
        Column("range", S, description="station, region, solarsystem or a jump count"),
        Column("location_id", I),
        Column("system_id", I),
        Column("issued", T),
        Column("duration", I, description="Days the order stays open"),
    ),
    primary_key=("region_id", "order_id"),
    cache_seconds=300,
    write_mode=WriteMode.MIRROR,
    rate_limit_group="market-order",
    group="esi_public",
)

MARKET_PRICES = Dataset(
    api="esi",
    name="market_prices",
    route="/markets/prices",
    description="CCP's average and adjusted price for every traded type (public ESI).",
    columns=(
        Column("type_id", I),
        Column("average_price", F, required=False),
        Column("adjusted_price", F, required=False),
    ),
    primary_key=("type_id",),
    cache_seconds=3600,
    write_mode=WriteMode.MIRROR,
    group="esi_public",
)

ESI_PUBLIC_DATASETS: tuple[Dataset, ...] = (MARKET_ORDERS, MARKET_PRICES)


# --- Corporation datasets: EVE SSO tokens, one dynamic partition per corporation -------------

D, J = ColumnType.DATE, ColumnType.JSON
CORPORATIONS = Partitioning(
    path_param="corporation_id",
    column=Column("corporation_id", I, description="Corporation the data belongs to"),
    dynamic="esi_corporations",
)
WALLET_DIVISIONS = Slices(columns=(Column("division", I, description="Wallet division 1-7"),), values=tuple((d,) for d in range(1, 8)))
ACCOUNTING = ("Accountant", "Junior_Accountant")


def _corporation(name: str, **fields) -> Dataset:
    return Dataset(api="esi", name=name, partitioning=CORPORATIONS, group="esi_corporation", **fields)


def _member_rows(character_ids: list[int]) -> list[dict]:
    return [{"character_id": character_id} for character_id in character_ids]


def _killmail_row(killmail: dict) -> list[dict]:
    """One row per killmail: the victim flattened, attackers and dropped items kept whole (JSONB)."""
    victim = killmail["victim"]
    position = victim.get("position") or {}
    return [
        {
            "killmail_id": killmail["killmail_id"],
            "killmail_time": killmail["killmail_time"],
            "solar_system_id": killmail["solar_system_id"],
            "moon_id": killmail.get("moon_id"),
            "war_id": killmail.get("war_id"),
            **{f"victim_{k}": victim.get(k) for k in ("character_id", "corporation_id", "alliance_id", "faction_id", "ship_type_id", "damage_taken")},
            "victim_position_x": position.get("x"),
            "victim_position_y": position.get("y"),
            "victim_position_z": position.get("z"),
            "victim_items": victim.get("items"),
            "attackers": killmail["attackers"],
        }
    ]


CORPORATION_MEMBERS = _corporation(
    "corporation_members",
    route="/corporations/{corporation_id}/members",
    description="Characters in the corporation (any member's token will do).",
    transform=_member_rows,
    columns=(Column("character_id", I, source="[]", description="The route returns a bare array of ids"),),
    primary_key=("corporation_id", "character_id"),
    cache_seconds=3600,
    auth=Auth("esi-corporations.read_corporation_membership.v1"),
    rate_limit_group="corp-member",
)

MEMBER_TRACKING = _corporation(
    "member_tracking",
    route="/corporations/{corporation_id}/membertracking",
    description="Logon/logoff times, location and ship of every member.",
    columns=(
        Column("character_id", I),
        Column("base_id", I, required=False),
        Column("location_id", I, required=False),
        Column("ship_type_id", I, required=False),
        Column("start_date", T, required=False),
        Column("logon_date", T, required=False),
        Column("logoff_date", T, required=False),
    ),
    primary_key=("corporation_id", "character_id"),
    cache_seconds=3600,
    auth=Auth("esi-corporations.track_members.v1", ("Director",)),
    rate_limit_group="corp-member",
)

CORPORATION_ASSETS = _corporation(
    "corporation_assets",
    route="/corporations/{corporation_id}/assets",
    description="Every item the corporation owns; location_id may be another item (containers, ships).",
    paginator=X_PAGES,
    columns=(
        Column("item_id", I),
        Column("type_id", I),
        Column("quantity", I),
        Column("location_id", I),
        Column("location_type", S),
        Column("location_flag", S),
        Column("is_singleton", B),
        Column("is_blueprint_copy", B, required=False),
    ),
    primary_key=("corporation_id", "item_id"),
    cache_seconds=3600,
    auth=Auth("esi-assets.read_corporation_assets.v1", ("Director",)),
    rate_limit_group="corp-asset",
)

INDUSTRY_JOBS = _corporation(
    "industry_jobs",
    route="/corporations/{corporation_id}/industry/jobs",
    description="Manufacturing, research and reaction jobs, completed ones included; finished jobs stay.",
    query={"include_completed": "true"},
    paginator=X_PAGES,
    write_mode=WriteMode.UPSERT,
    columns=(
        Column("job_id", I),
        Column("activity_id", I),
        Column("status", S),
        Column("installer_id", I),
        Column("facility_id", I),
        Column("location_id", I),
        Column("blueprint_id", I),
        Column("blueprint_type_id", I),
        Column("blueprint_location_id", I),
        Column("output_location_id", I),
        Column("product_type_id", I, required=False),
        Column("runs", I),
        Column("licensed_runs", I, required=False),
        Column("successful_runs", I, required=False),
        Column("probability", F, required=False),
        Column("cost", F, required=False),
        Column("duration", I),
        Column("start_date", T),
        Column("end_date", T),
        Column("pause_date", T, required=False),
        Column("completed_date", T, required=False),
        Column("completed_character_id", I, required=False),
    ),
    primary_key=("corporation_id", "job_id"),
    cache_seconds=300,
    auth=Auth("esi-industry.read_corporation_jobs.v1", ("Factory_Manager",)),
    rate_limit_group="corp-industry",
)

_ORDER_COLUMNS = (
    Column("order_id", I),
    Column("type_id", I),
    Column("region_id", I),
    Column("location_id", I),
    Column("is_buy_order", B, required=False),
    Column("price", F),
    Column("escrow", F, required=False),
    Column("volume_total", I),
    Column("volume_remain", I),
    Column("min_volume", I, required=False),
    Column("range", S),
    Column("issued", T),
    Column("duration", I),
    Column("wallet_division", I),
)
_ORDERS_AUTH = Auth("esi-markets.read_corporation_orders.v1", ("Accountant", "Trader"))

CORPORATION_ORDERS = _corporation(
    "corporation_orders",
    route="/corporations/{corporation_id}/orders",
    description="The corporation's open market orders (mirror: filled or cancelled orders leave this table).",
    paginator=X_PAGES,
    columns=(*_ORDER_COLUMNS, Column("issued_by", I)),
    primary_key=("corporation_id", "order_id"),
    cache_seconds=1200,
    auth=_ORDERS_AUTH,
)

CORPORATION_ORDER_HISTORY = _corporation(
    "corporation_order_history",
    route="/corporations/{corporation_id}/orders/history",
    description="Closed orders of the last 90 days (expired, cancelled, filled); kept after ESI forgets them.",
    paginator=X_PAGES,
    write_mode=WriteMode.UPSERT,
    columns=(*_ORDER_COLUMNS, Column("issued_by", I, required=False), Column("state", S)),
    primary_key=("corporation_id", "order_id"),
    cache_seconds=3600,
    auth=_ORDERS_AUTH,
)

WALLET_JOURNAL = _corporation(
    "wallet_journal",
    route="/corporations/{corporation_id}/wallets/{division}/journal",
    description="Wallet journal of divisions 1-7 (ESI keeps 30 days; this table keeps everything).",
    paginator=X_PAGES,
    slices=WALLET_DIVISIONS,
    write_mode=WriteMode.UPSERT,
    columns=(
        Column("id", I),
        Column("date", T),
        Column("ref_type", S),
        Column("description", S),
        Column("amount", F, required=False),
        Column("balance", F, required=False),
        Column("tax", F, required=False),
        Column("tax_receiver_id", I, required=False),
        Column("first_party_id", I, required=False),
        Column("second_party_id", I, required=False),
        Column("context_id", I, required=False),
        Column("context_id_type", S, required=False),
        Column("reason", S, required=False),
    ),
    primary_key=("corporation_id", "division", "id"),
    cache_seconds=3600,
    auth=Auth("esi-wallet.read_corporation_wallets.v1", ACCOUNTING),
    rate_limit_group="corp-wallet",
)

WALLET_TRANSACTIONS = _corporation(
    "wallet_transactions",
    route="/corporations/{corporation_id}/wallets/{division}/transactions",
    description="Market transactions of divisions 1-7, walked with from_id back to the newest stored one.",
    paginator=FromId("transaction_id"),
    slices=WALLET_DIVISIONS,
    write_mode=WriteMode.UPSERT,
    columns=(
        Column("transaction_id", I),
        Column("date", T),
        Column("type_id", I),
        Column("quantity", I),
        Column("unit_price", F),
        Column("is_buy", B),
        Column("client_id", I),
        Column("location_id", I),
        Column("journal_ref_id", I),
    ),
    primary_key=("corporation_id", "division", "transaction_id"),
    cache_seconds=3600,
    auth=Auth("esi-wallet.read_corporation_wallets.v1", ACCOUNTING),
    rate_limit_group="corp-wallet",
)

_MINING_AUTH = Auth("esi-industry.read_corporation_mining.v1", ("Accountant",))

MINING_OBSERVERS = _corporation(
    "mining_observers",
    route="/corporation/{corporation_id}/mining/observers",
    description="Structures (moon drills) that record who mined what; lists the ledgers to fetch.",
    paginator=X_PAGES,
    columns=(Column("observer_id", I), Column("observer_type", S), Column("last_updated", D)),
    primary_key=("corporation_id", "observer_id"),
    cache_seconds=3600,
    auth=_MINING_AUTH,
    rate_limit_group="corp-industry",
)

MINING_LEDGER = _corporation(
    "mining_ledger",
    route="/corporation/{corporation_id}/mining/observers/{observer_id}",
    description="Ore mined at each observer, per character, type and day.",
    paginator=X_PAGES,
    slices=Slices(columns=(Column("observer_id", I),), source="esi.mining_observers"),
    write_mode=WriteMode.UPSERT,
    columns=(
        Column("character_id", I),
        Column("recorded_corporation_id", I),
        Column("type_id", I),
        Column("last_updated", D),
        Column("quantity", I),
    ),
    primary_key=("corporation_id", "observer_id", "character_id", "recorded_corporation_id", "type_id", "last_updated"),
    cache_seconds=3600,
    auth=_MINING_AUTH,
    rate_limit_group="corp-industry",
)

CORPORATION_KILLMAIL_IDS = _corporation(
    "corporation_killmail_ids",
    route="/corporations/{corporation_id}/killmails/recent",
    description="Ids and hashes of the corporation's killmails of the last 90 days (kept after that).",
    paginator=X_PAGES,
    write_mode=WriteMode.UPSERT,
    columns=(Column("killmail_id", I), Column("killmail_hash", S)),
    primary_key=("corporation_id", "killmail_id"),
    cache_seconds=300,
    auth=Auth("esi-killmails.read_corporation_killmails.v1", ("Director",)),
    rate_limit_group="corp-killmail",
)

CORPORATION_KILLMAILS = _corporation(
    "corporation_killmails",
    route="/killmails/{killmail_id}/{killmail_hash}",
    description=(
        "Killmail details (public route). Killmails never change, so each is fetched once; "
        "attackers and the victim's items are kept whole as JSONB."
    ),
    slices=Slices(
        columns=(Column("killmail_id", I), Column("killmail_hash", S)), source="esi.corporation_killmail_ids", only_new=True
    ),
    write_mode=WriteMode.UPSERT,
    transform=_killmail_row,
    columns=(
        Column("killmail_id", I),
        Column("killmail_time", T),
        Column("solar_system_id", I),
        Column("moon_id", I, required=False),
        Column("war_id", I, required=False),
        Column("victim_character_id", I, required=False, source="victim.character_id"),
        Column("victim_corporation_id", I, required=False, source="victim.corporation_id"),
        Column("victim_alliance_id", I, required=False, source="victim.alliance_id"),
        Column("victim_faction_id", I, required=False, source="victim.faction_id"),
        Column("victim_ship_type_id", I, source="victim.ship_type_id"),
        Column("victim_damage_taken", I, source="victim.damage_taken"),
        Column("victim_position_x", F, required=False, source="victim.position.x"),
        Column("victim_position_y", F, required=False, source="victim.position.y"),
        Column("victim_position_z", F, required=False, source="victim.position.z"),
        Column("victim_items", J, required=False, source="victim.items", description="victim.items as returned (nested items included)"),
        Column("attackers", J, description="attackers as returned"),
    ),
    primary_key=("corporation_id", "killmail_id"),
    cache_seconds=300,  # details never change: refreshed at the cadence of the killmail list
    rate_limit_group="killmail",
)

CONTAINER_LOGS = _corporation(
    "container_logs",
    route="/corporations/{corporation_id}/containers/logs",
    description="Audit log of secure containers (ESI keeps 7 days; this table keeps everything).",
    paginator=X_PAGES,
    write_mode=WriteMode.UPSERT,
    columns=(
        Column("container_id", I),
        Column("logged_at", T),
        Column("character_id", I),
        Column("action", S),
        Column("container_type_id", I),
        Column("location_id", I),
        Column("location_flag", S),
        Column("type_id", I, required=False),
        Column("quantity", I, required=False),
        Column("password_type", S, required=False),
        Column("old_config_bitmask", I, required=False),
        Column("new_config_bitmask", I, required=False),
    ),
    # No natural id: the tuple that identifies an event (ESI.md §8.1).
    primary_key=("corporation_id", "container_id", "logged_at", "character_id", "action"),
    cache_seconds=600,
    auth=Auth("esi-corporations.read_container_logs.v1", ("Director",)),
    rate_limit_group="corp-structure",
)

ESI_CORPORATION_DATASETS: tuple[Dataset, ...] = (
    CORPORATION_MEMBERS,
    MEMBER_TRACKING,
    CORPORATION_ASSETS,
    INDUSTRY_JOBS,
    CORPORATION_ORDERS,
    CORPORATION_ORDER_HISTORY,
    WALLET_JOURNAL,
    WALLET_TRANSACTIONS,
    MINING_OBSERVERS,
    MINING_LEDGER,
    CORPORATION_KILLMAIL_IDS,
    CORPORATION_KILLMAILS,
    CONTAINER_LOGS,
)

ESI_DATASETS: tuple[Dataset, ...] = ESI_PUBLIC_DATASETS + ESI_CORPORATION_DATASETS

register(ESI_DATASETS)
