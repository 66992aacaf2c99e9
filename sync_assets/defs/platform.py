"""The data database (env SYNC_ASSETS_DATABASE_URL), its IO manager, the failure sensor, maintenance."""

from sync_assets.orchestration.build import platform_definitions

defs = platform_definitions()
