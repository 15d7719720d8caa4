"""User-facing configuration errors: raised at construction, caught once at the CLI boundary."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and what is allowed."""
