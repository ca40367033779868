"""The error the application raises for a bad configuration."""

from hydra.errors import CompactHydraException

__all__ = ["ConfigError"]


class ConfigError(CompactHydraException):
    """A bad configuration value. Hydra prints its message in one line, without a traceback."""
