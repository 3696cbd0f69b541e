"""The error every layer raises for a bad value a user gave; defined at the bottom so that all can."""


class ConfigError(ValueError):
    """A config value, key, flag or input file is invalid; the message names it and what was expected."""
