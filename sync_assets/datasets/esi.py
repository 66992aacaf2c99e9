"""EVE Online ESI datasets. Routes, fields and cache times follow CCP's OpenAPI spec
(compatibility date 2026-08-18)."""

from __future__ import annotations

from .base import Column, ColumnType, Dataset, Paging, Partitioning, WriteMode

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
    paging=Paging.X_PAGES,
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

ESI_DATASETS: tuple[Dataset, ...] = (MARKET_ORDERS, MARKET_PRICES)
