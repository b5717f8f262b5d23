"""Typed exceptions. Every error a user can cause is a CnnvizError whose message
says what went wrong and what to do; the CLI prints it on one line and exits 2."""

from __future__ import annotations


class CnnvizError(Exception):
    """Base of every error cnnviz raises on purpose."""


class InputError(CnnvizError, ValueError):
    """Bad input: an unreadable image, a wrong shape, an unknown option value."""


class ImageLoadError(InputError):
    """An image file that cannot be decoded (corrupt, truncated, too large)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        super().__init__(f"cannot read image {self.path}: {reason}")


class LayerNotFoundError(InputError, KeyError):
    """A layer name the model does not have."""

    def __init__(self, layer: str, available: list[str]):
        self.layer = layer
        close = [name for name in available if layer.lower() in name.lower()][:5]
        hint = f" Close matches: {', '.join(close)}." if close else ""
        super().__init__(
            f"model has no layer {layer!r}.{hint} "
            "List the layers with `cnnviz models --layers MODEL` or adapter.layers()."
        )

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class TargetError(InputError):
    """A target that cannot be resolved: class index out of range, unknown label."""


class ModelLoadError(CnnvizError):
    """A model spec that no adapter can load."""


class CapabilityError(CnnvizError):
    """A method asked of a model that lacks a capability it needs."""

    def __init__(self, method: str, model: str, missing, working: list[str]):
        self.method = method
        self.missing = sorted(missing)
        self.working = working
        alternatives = ", ".join(working) if working else "none"
        super().__init__(
            f"method {method!r} needs {', '.join(self.missing)}, which model {model!r} "
            f"does not provide; methods that run on it: {alternatives}"
        )


class MethodNotFoundError(CnnvizError, KeyError):
    def __str__(self) -> str:
        return self.args[0]


class PluginError(CnnvizError):
    """A plugin that breaks the registry's rules (duplicate name, bad contribution)."""


class MethodError(CnnvizError):
    """A method that cannot run on this model or these inputs (for example CAM on a
    model without a GAP + linear head). Names the method."""

    def __init__(self, method: str, message: str):
        self.method = method
        super().__init__(f"{method}: {message}")


class AdapterError(CnnvizError):
    """A question of the adapter contract (cnnviz_core.ModelAdapter) that this
    adapter cannot answer: it lacks the capability the question needs, or
    does not implement it. Names the adapter and the question."""

    def __init__(self, adapter: str, question: str, reason: str):
        self.adapter = adapter
        self.question = question
        super().__init__(f"adapter {adapter!r} cannot answer {question}: {reason}")


class OutOfMemoryError(CnnvizError, MemoryError):
    """Out of memory even at batch size 1."""


class MethodWarning(UserWarning):
    """A method ran, but not exactly as asked (for example guided backprop on a
    model with nonlinearities it cannot guide). The message says what happened."""
