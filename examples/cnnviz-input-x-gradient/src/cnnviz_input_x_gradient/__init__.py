"""Input x gradient attribution as a cnnviz plugin (a worked third-party example).

cnnviz finds the plugin through the entry point in ``pyproject.toml``; nothing
needs importing by hand.
"""

from .input_x_gradient import InputXGradient, InputXGradientParams

__version__ = "0.1.0"
__all__ = ["InputXGradient", "InputXGradientParams"]
