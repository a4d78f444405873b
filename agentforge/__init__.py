"""Agent Forge: a Hydra-driven pipeline that builds a small reasoning language model in four phases."""

__version__ = "0.1.0"
