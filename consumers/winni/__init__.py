"""`kgb consume winni`: exchange events from Kafka into PostgreSQL tables (schema ``kgb``)."""

from consumers.winni.consumer import Stage, default_stages, run
from consumers.winni.settings import WinniSettings

__all__ = ["Stage", "WinniSettings", "default_stages", "run"]
