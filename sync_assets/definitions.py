"""The sync_assets code location: `defs/` loaded as `dg` loads it (one module per API plus the
shared platform). `build_definitions` wires given resources the same way (tests, scripts)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import dagster as dg

from .apis.esi import EsiResource
from .apis.esi.auth import EsiAuthResource
from .defs.esi import esi_api
from .orchestration import build
from .orchestration.apis import ApiDefinition
from .warehouse import PostgresWarehouse


def build_definitions(
    esi: EsiResource | None = None,
    warehouse: PostgresWarehouse | None = None,
    esi_auth: EsiAuthResource | None = None,
    apis: Sequence[ApiDefinition] | None = None,
) -> dg.Definitions:
    """Everything of the code location with the given resources. `apis`: the APIs to wire (default:
    ESI with the given resources)."""
    return build.build_definitions(list(apis) if apis is not None else [esi_api(esi, esi_auth)], warehouse)


defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
