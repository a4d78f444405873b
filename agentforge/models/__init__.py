"""Plain nn.Modules: the Cognate model and its parts. Nothing here knows of Hydra, W&B or files."""
from agentforge.models.cognate import CognateConfig, CognateModel, CognateOutput

__all__ = ["CognateConfig", "CognateModel", "CognateOutput"]
