"""The errors a user can fix: each becomes one line on stderr and a non-zero exit, never a traceback."""


class AgentForgeError(Exception):
    """Base of the errors reported as one line naming what is wrong and what to do."""


class ConfigError(AgentForgeError):
    """A configuration value is missing, of the wrong type, or impossible."""


class NonFiniteError(AgentForgeError):
    """A loss or gradient became NaN/Inf."""
