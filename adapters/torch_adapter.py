"""PyTorch adapter: timm models by name (``timm:resnet18``) and any nn.Module.
It answers the contract's model questions from the module itself
(:mod:`cnnviz_adapters.torch_model`)."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from cnnviz_core.adapter import ModelAdapter
from cnnviz_core.capabilities import Capability
from cnnviz_core.config import PreprocessConfig
from cnnviz_core.errors import InputError, LayerNotFoundError, ModelLoadError
from cnnviz_core.model_facts import CamHead, ForwardRunner, ReceptiveField, WeightLayer
from cnnviz_core.model_probes import read_only
from cnnviz_core.toolkit.hooks import capture_outputs, eval_mode, forward_hooks

from . import geometry

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch
    from torch import nn

TIMM_PREFIX = "timm:"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


class TorchAdapter(ModelAdapter):
    kind = "torch"
    capabilities = frozenset({Capability.FORWARD, Capability.GRADIENTS, Capability.ACTIVATIONS, Capability.WEIGHTS})

    def __init__(
        self,
        module: nn.Module,
        name: str | None = None,
        config: PreprocessConfig | None = None,
        labels: Sequence[str] | None = None,
    ):
        from torch import nn

        if not isinstance(module, nn.Module):
            raise ModelLoadError(f"expected a torch.nn.Module, got {type(module).__name__}")
        self.module = module  # before the base __init__, which sets device through the property below
        super().__init__(name or type(module).__name__, config or PreprocessConfig(), labels)
        self.input_size_known = config is not None
        self._num_classes: int | None = None
        self._default_layer: str | None = None

    @property
    def device(self) -> str:
        """Where the module's tensors are now, read from the module itself: a
        user who moves the module after wrapping it must not get a stale answer
        (a run restores the model to this device afterwards)."""
        tensor = next(itertools.chain(self.module.parameters(), self.module.buffers()), None)
        return str(tensor.device) if tensor is not None else self._device

    @device.setter
    def device(self, value: str) -> None:
        self._device = value  # used only by a module without parameters or buffers

    # -- loading -----------------------------------------------------------
    @classmethod
    def can_load(cls, spec: Any) -> bool:
        if isinstance(spec, str):
            return spec.startswith(TIMM_PREFIX)
        nn = sys.modules.get("torch.nn")  # an nn.Module exists only once torch is imported: asking imports nothing
        return nn is not None and isinstance(spec, nn.Module)

    @classmethod
    def load(cls, spec: Any, **options) -> "TorchAdapter":
        from torch import nn

        weights = options.pop("weights", None)
        device = options.pop("device", None)
        labels = options.pop("labels", None)
        name = options.pop("name", None)
        config_options = {k: options.pop(k) for k in ("input_size", "mean", "std", "interpolation") if k in options}
        num_classes = options.pop("num_classes", None)
        output = options.pop("output", None)  # the entry holding the logits of a tuple or dict output
        if options:
            raise InputError(f"unknown model option(s): {', '.join(sorted(options))}")
        if isinstance(spec, nn.Module):
            module, base_config = spec, PreprocessConfig()
            name = name or type(spec).__name__
        else:
            module, base_config = _create_timm(spec[len(TIMM_PREFIX):], num_classes)
            name = name or spec
            if labels is None and _output_classes(module) == 1000:
                labels = imagenet_labels()
        if weights is not None:
            load_weights(module, weights)
        elif not isinstance(spec, nn.Module):  # timm never downloads: without weights the model is untrained
            _warn_random_weights(spec)
        if output is not None:
            from .torch_model.output_select import SelectedOutput

            module = SelectedOutput(module, output)
        try:
            config = PreprocessConfig(**{**base_config.to_dict(), **config_options})
        except ValueError as error:
            raise InputError(f"bad preprocessing option: {error}") from None
        from .torch_model.input_channels import fitted

        adapter = cls(fitted(module, config, name), name, config, labels)
        # a bare module's 224 x 224 is a default for resizing pixels, not a size it requires
        adapter.input_size_known = not isinstance(spec, nn.Module) or "input_size" in config_options
        if "input_size" in config_options:
            from .torch_model.input_size import check_input_size

            check_input_size(adapter)
        if device is not None:
            adapter.to(device)
        return adapter

    # -- description -------------------------------------------------------
    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._num_classes = _output_classes(self.module) or int(self.logits(self._dummy()).shape[1])
        return self._num_classes

    def layers(self) -> list[str]:
        return [name for name, _ in self.module.named_modules() if name]

    def get_layer(self, name: str) -> nn.Module:
        modules = dict(self.module.named_modules())
        if not name or name not in modules:
            raise LayerNotFoundError(name, self.layers())
        return modules[name]

    def default_layer(self) -> str:
        """The last module, in execution order, whose output is a feature map
        with more than one spatial position."""
        import torch

        if self._default_layer is None:
            from .torch_model import tokens

            self._default_layer = tokens.token_model(self).default_layer  # a transformer's late token layer
        if self._default_layer is None:
            finished: list[str] = []

            def make_hook(name):
                def hook(_module, _inputs, output):
                    if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1:
                        finished.append(name)

                return hook

            modules = {n: m for n, m in self.module.named_modules() if n}
            with forward_hooks(modules, make_hook), self.session(), torch.inference_mode():
                self.module(self.tensor(self._dummy()))
            if not finished:
                raise LayerNotFoundError("<a spatial feature layer>", self.layers())
            self._default_layer = finished[-1]
        return self._default_layer

    def layer_shapes(self, names: list[str]) -> dict[str, tuple[int, ...]]:
        """Each named layer's output shape for one input (batch dimension 1)."""
        import torch

        modules = {name: self.get_layer(name) for name in names}
        with capture_outputs(modules) as outputs, self.session(), torch.inference_mode():
            self.module(self.tensor(self._dummy()))
        shapes = {name: tuple(outputs[name].shape) for name in names if isinstance(outputs.get(name), torch.Tensor)}
        return {name: self._as_map_shape(name, shape) for name, shape in shapes.items()}  # token layers as maps

    def weights(self) -> dict[str, np.ndarray]:
        """The parameters by name, read-only (views on the CPU: writing to them
        would change the model)."""
        return {name: read_only(p.detach().cpu().numpy()) for name, p in self.module.named_parameters()}

    def weights_digest(self) -> str:
        """SHA-256 of the module's class, printed architecture and state dict
        (parameters and buffers: names, dtypes, shapes and bytes); remembered
        per module until one of its tensors changes in place or is replaced."""
        from .torch_model.digest import module_digest  # torch_model's modules import torch: loaded on first question

        return module_digest(self.module)

    def weight_layers(self) -> list[WeightLayer]:
        from .torch_model import weight_layers

        return weight_layers.weight_layers(self.module)

    @contextlib.contextmanager
    def with_weights(self, overrides: Mapping[str, np.ndarray]) -> Iterator["TorchAdapter"]:
        from .torch_model import weight_swap

        with weight_swap.swapped_weights(self, overrides):
            yield self

    # -- model questions -----------------------------------------------------
    def stage_outputs(self) -> list[str]:
        from .torch_model import stages

        return self._remembered("stages", lambda: stages.stage_outputs(self))

    def feature_layout(self, layer: str):
        from .torch_model import tokens

        return tokens.token_model(self).layouts.get(layer)

    def fixed_input_size(self) -> tuple[int, int] | None:
        from .torch_model import tokens

        return tuple(self.config.input_size) if tokens.strict_input_size(self.module) else None

    def _as_map_shape(self, layer: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        layout = self.feature_layout(layer)
        return layout.map_shape(shape) if layout is not None else shape

    def classifier_input_layer(self) -> str | None:
        from .torch_model import classifier_input

        return classifier_input.classifier_input_layer(self)

    def cam_head(self) -> CamHead:
        from .torch_model import cam_head

        return cam_head.cam_head(self)

    def receptive_field(self, layer: str, verify: bool = True) -> ReceptiveField:
        from .torch_model import receptive_field

        if self.feature_layout(layer) is not None:  # token layers: attention mixes every patch, measured not traced
            return receptive_field.measured_field(self, layer)
        traced = receptive_field.layer_field(self, layer)
        return geometry.receptive_field(self, layer, traced, lambda: receptive_field.measured_field(self, layer), verify)

    def forward_runners(self) -> dict[str, Callable[[], ForwardRunner]]:
        from .torch_model import runners

        return runners.forward_runners(self)

    # -- running -----------------------------------------------------------
    def to(self, device: str) -> "TorchAdapter":
        import torch

        self.module.to(torch.device(device))
        self._device = device
        return self

    def tensor(self, inputs: np.ndarray) -> torch.Tensor:
        """The batch on the model's device, channels-last: convolutions pick
        their faster NHWC kernels from the input's layout (measured 1.6x on
        EfficientNet-Lite0 on a CPU) while the model itself stays unchanged."""
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).to(self.device)
        return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        import torch

        with self.session(), torch.inference_mode():
            return _logits_tensor(self.module(self.tensor(inputs)), self.name).float().cpu().numpy()

    def logits_and_activations(self, inputs: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits and the named modules' outputs from one forward pass. Each
        output is copied when its module returns, so an in-place op later in
        the forward (``ReLU(inplace=True)``) does not change what is returned."""
        import torch

        modules = {name: self.get_layer(name) for name in names}
        with capture_outputs(modules, protect=True) as captured, self.session(), torch.inference_mode():
            logits = _logits_tensor(self.module(self.tensor(inputs)), self.name)
        arrays = {}
        for name in modules:
            output = captured.get(name)
            if not isinstance(output, torch.Tensor):
                what = "did not run in the forward pass" if name not in captured else f"returns {type(output).__name__}, not a tensor"
                raise InputError(f"layer {name!r} {what}")
            layout = self.feature_layout(name)  # token and channels-last layers as (B, C, h, w) maps
            arrays[name] = (layout.to_map(output) if layout is not None else output).float().cpu().numpy()
        return logits.float().cpu().numpy(), arrays

    @contextlib.contextmanager
    def session(self):
        with eval_mode(self.module):
            yield self

    def _dummy(self) -> np.ndarray:
        return np.zeros((1, 3, *self.config.input_size), dtype=np.float32)


def _create_timm(name: str, num_classes: int | None) -> tuple[nn.Module, PreprocessConfig]:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8]
        hint = f" Similar: {', '.join(close)}." if close else ""
        raise ModelLoadError(f"timm has no model {name!r}.{hint}")
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    module = timm.create_model(name, pretrained=False, **kwargs)  # never downloads
    module.eval()
    return module, PreprocessConfig.from_timm(module.pretrained_cfg)


def _logits_tensor(outputs, name: str):
    """The model's output when it is one tensor; an InputError listing the
    entries of a tuple or dict output (choose one with output=)."""
    import torch

    if isinstance(outputs, torch.Tensor):
        return outputs
    from .torch_model.output_select import unselected

    raise unselected(outputs, repr(name))


def _output_classes(module: nn.Module) -> int | None:
    value = getattr(module, "num_classes", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def _warn_random_weights(spec: str) -> None:
    import warnings

    from cnnviz_core.errors import MethodWarning

    warnings.warn(f"{spec} has random weights (timm models are built here without downloading): its outputs mean "
                  "nothing until you give its trained state dict with --weights FILE (load_model(..., weights=FILE)); "
                  "the built-in efficientnet_lite0 comes with ImageNet weights", MethodWarning, stacklevel=4)


def load_weights(module: nn.Module, path: str | os.PathLike) -> None:
    """Load a state dict (.pth/.pt/.bin with weights_only=True, or .safetensors)."""
    import torch

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"weights file {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelLoadError(f"cannot read weights {path}: {type(error).__name__}: {error}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelLoadError(f"weights {path} hold a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise ModelLoadError(f"weights {path} do not fit the model: {' '.join(first[:3])[:400]}") from None


def imagenet_labels() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(1000))
