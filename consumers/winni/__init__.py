"""`kgb consume winni`: exchange events from Kafka into PostgreSQL tables (schema ``kgb``)."""

from consumers.winni.consumer import STAGES, Stage, run
from consumers.winni.settings import WinniSettings

__all__ = ["STAGES", "Stage", "WinniSettings", "run"]
