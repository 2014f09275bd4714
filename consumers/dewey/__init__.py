"""`kgb consume dewey`: each KGB conversation forwarded to Dewey's MCP tools, exactly once."""

from consumers.dewey.consumer import run
from consumers.dewey.settings import DeweySettings

__all__ = ["DeweySettings", "run"]
