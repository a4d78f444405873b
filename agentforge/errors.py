"""The errors a user can fix: each becomes one line on stderr and a non-zero exit, never a traceback."""


class AgentForgeError(Exception):
    """Base of the errors reported as one line naming what is wrong and what to do."""


class ConfigError(AgentForgeError):
    """A configuration value is missing, of the wrong type, or impossible."""


class NonFiniteError(AgentForgeError):
    """A loss or gradient became NaN/Inf."""


def _hardware_choice() -> str | None:
    """The ``hardware=`` group of this Hydra run (None outside one)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("hardware")
    except (ImportError, ValueError, AttributeError):
        return None


def no_gpu_error(choice: str | None = None) -> ConfigError:
    """``hardware.accelerator=gpu`` with no GPU visible. Under a group whose own accelerator is not gpu (cpu, auto,
    ddp) the gpu came from a ``hardware.accelerator`` override, which is what to drop; ``choice``: the group (default:
    this Hydra run's)."""
    choice = choice or _hardware_choice()
    if choice in ("cpu", "auto", "ddp"):
        return ConfigError(f"hardware.accelerator=gpu overrides hardware={choice}'s accelerator, but no GPU is visible; "
                           f"drop the hardware.accelerator override (or use hardware=gpu on a machine with a GPU)")
    return ConfigError("hardware.accelerator=gpu but no GPU is visible; use hardware=cpu or hardware=auto")
