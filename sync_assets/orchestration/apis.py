"""One API wired into Dagster: its spec, its datasets and the resources they need."""

from __future__ import annotations

import os

from dataclasses import dataclass
from typing import Any, Sequence

import dagster as dg

from ..core.datasets import Dataset
from ..fetch.resource import ApiResource
from ..fetch.spec import ApiSpec


@dataclass(frozen=True)
class ApiDefinition:
    spec: ApiSpec
    datasets: Sequence[Dataset]
    resource: ApiResource  # bound under the spec's name
    credentials: Any = None  # per-partition credentials (a resource with credential_for), under spec.credentials_resource
    sensors: Sequence[dg.SensorDefinition] = ()  # the API's own (ESI: corporations appear as partitions)

    def __post_init__(self) -> None:
        if type(self.resource).spec is not self.spec:
            raise ValueError(f"the resource for {self.spec.name} is built on another spec ({type(self.resource).spec.name})")
        wrong = [d.key for d in self.datasets if d.api != self.spec.name]
        if wrong:
            raise ValueError(f"datasets {wrong} do not belong to the {self.spec.name} API")
        if any(d.auth for d in self.datasets) and (self.spec.credentials_resource is None or self.credentials is None):
            raise ValueError(f"{self.spec.title}: datasets declare auth but no credentials resource is given")

    def resources(self) -> dict[str, Any]:
        bound: dict[str, Any] = {self.spec.name: self.resource}
        if self.spec.credentials_resource and self.credentials is not None:
            bound[self.spec.credentials_resource] = self.credentials
        return bound


APIS_ENV = "SYNC_ASSETS_APIS"


def enabled(spec: ApiSpec, env: dict[str, str] | None = None) -> bool:
    """Whether the code location loads an API: named in SYNC_ASSETS_APIS (comma-separated) when that is
    set, else when its key (or `configured_by` variable) is set; an API with neither, ESI, is always there."""
    env = dict(os.environ) if env is None else env
    if chosen := env.get(APIS_ENV, "").strip():
        return spec.name in {name.strip() for name in chosen.split(",")}
    switch = spec.api_key.env if spec.api_key is not None else spec.configured_by
    return switch is None or bool(env.get(switch))
