"""IRIS CRM (Ireland Pay, and any tenant of IRIS CRM): spec, datasets and sandbox (the sandbox is
not imported from here)."""

from .datasets import IRIS_DATASETS
from .resource import IrisResource
from .spec import DEFAULT_IRIS_URL, IRIS

__all__ = ["DEFAULT_IRIS_URL", "IRIS", "IRIS_DATASETS", "IrisResource"]
