"""`kgb consume metrics`: token usage and cost by model, session, conversation kind and day."""

from consumers.metrics.consumer import run
from consumers.metrics.settings import MetricsSettings

__all__ = ["MetricsSettings", "run"]
