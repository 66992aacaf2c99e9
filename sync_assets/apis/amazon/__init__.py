"""Amazon Selling Partner API: spec, LWA auth, datasets and sandbox (the sandbox is not imported
from here)."""

from .datasets import AMAZON_DATASETS, SELLERS_PARTITIONS
from .resource import AmazonResource
from .spec import AMAZON, DEFAULT_SPAPI_URL

__all__ = ["AMAZON", "AMAZON_DATASETS", "DEFAULT_SPAPI_URL", "SELLERS_PARTITIONS", "AmazonResource"]
