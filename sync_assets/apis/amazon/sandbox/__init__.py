"""Offline SP-API + LWA simulator over real HTTP: the sandbox for demos, tests and benchmarks.

>>> from sync_assets.apis.amazon.sandbox import AmazonSandbox, serve_in_thread
>>> sb = AmazonSandbox(scale="tiny")
>>> with serve_in_thread(sb) as base_url:
...     ...  # POST f"{base_url}/auth/o2/token", then SP-API paths with x-amz-access-token

The data: :attr:`AmazonSandbox.world` (:class:`~.world.World`); the rules of each part: the
docstrings of :mod:`.lwa`, :mod:`.limits`, :mod:`.operations`, :mod:`.reports` and :mod:`.static`.
"""

from typing import Any

from ...sandbox_serving import serve_in_thread
from .app import ADMIN_ROUTES, DYNAMIC_ROUTES
from .limits import RATE_TABLE, STATIC_PLAN, Plan
from .lwa import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from .reports import LEDGER, REIMBURSEMENTS, REPORT_TYPES
from .sandbox import AmazonSandbox, SandboxConfig
from .seed import DEFAULT_SELLERS, SCALES, SellerSpec, build_world
from .static import NO_MATCH
from .world import LEDGER_COLUMNS, REIMBURSEMENT_COLUMNS, Claim, SellerData, Sku, World



def run(*args: Any, **kwargs: Any) -> None:
    """:func:`.server.run`, imported on use (``python -m ...server`` then runs without a warning)."""
    from .server import run as serve

    serve(*args, **kwargs)


def main(argv: list[str] | None = None) -> None:
    from .server import main as cli

    cli(argv)


__all__ = [
    "ADMIN_ROUTES",
    "AmazonSandbox",
    "Claim",
    "DEFAULT_SELLERS",
    "DYNAMIC_ROUTES",
    "LEDGER",
    "LEDGER_COLUMNS",
    "NO_MATCH",
    "Plan",
    "RATE_TABLE",
    "REIMBURSEMENTS",
    "REIMBURSEMENT_COLUMNS",
    "REPORT_TYPES",
    "SANDBOX_CLIENT_ID",
    "SANDBOX_CLIENT_SECRET",
    "SCALES",
    "STATIC_PLAN",
    "SandboxConfig",
    "SellerData",
    "SellerSpec",
    "Sku",
    "World",
    "build_world",
    "main",
    "run",
    "serve_in_thread",
]
