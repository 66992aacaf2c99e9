"""The sync_assets code location: `defs/` loaded as `dg` loads it (one module per API plus the
shared platform). `build_definitions` wires given resources the same way (tests, scripts)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import dagster as dg

from .apis.esi import EsiResource
from .apis.esi.auth import EsiAuthResource
from .core.heap import freeze_at_exit
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


# Every process that loads the code location (each `dagster` command, run worker, code server) exits
# without the interpreter's final collections over Dagster's heap: 0.8 s of a 3 s no-op run.
freeze_at_exit()

# `defs/` loaded by dg's own loader, built at the defs folder rather than at the project's root
# (`dg.load_from_defs_folder`): the root adds the JSON schema of every installed component type,
# Dagster's own included, for the UI's component library, which every process that loads the code
# location (code server, each run, each `dagster` command) paid for with ~0.15 s of CPU, and each
# run again (an unchanged re-sync's in-process run: 0.43 s with it, 0.27 s without). The project
# declares its definitions in Python and has no YAML components to offer there.
with warnings.catch_warnings():  # the warnings load_from_defs_folder silences (the loader calls preview functions)
    for category in (dg.PreviewWarning, dg.BetaWarning, dg.SupersessionWarning, DeprecationWarning):
        warnings.simplefilter("ignore", category)
    defs = dg.ComponentTree.for_project(path_within_project=Path(__file__).parent).build_defs(Path("."))
