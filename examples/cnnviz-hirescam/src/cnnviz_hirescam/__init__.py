"""HiResCAM as a cnnviz plugin (a worked third-party example built on
``cnnviz_core.toolkit``).

cnnviz finds the plugin through the entry point in ``pyproject.toml``; nothing
needs importing by hand.
"""

from .hirescam import HiResCAM

__version__ = "0.1.0"
__all__ = ["HiResCAM"]
