"""The traced graph incremental occlusion runs on: torch.fx capture (with timm's
leaf modules, and any module that cannot be traced kept whole), what each node
is (windowed, pointwise or other), and a plain interpreter over it."""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from typing import Any, Iterator

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from cnnviz_core import MethodError
from cnnviz_plugins.attribution.occlusion.incremental.ops import WindowedOp, is_pointwise_node, windowed_op

METHOD = "occlusion"


# -- capture --------------------------------------------------------------------
def _timm_leaves() -> tuple[tuple[type, ...], tuple]:
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:  # pragma: no cover - timm is a dependency
        return (), ()
    return tuple(get_notrace_modules()), tuple(f for f in get_notrace_functions() if callable(f))


class _Tracer(fx.Tracer):
    """torch.nn layers and timm's registered layers stay whole; so does any other
    module whose own forward cannot be traced (data-dependent control flow), so
    that one such module costs incrementality from there on, not the whole trace."""

    def __init__(self, leaves: tuple[type, ...], functions: tuple, traceable: dict[int, bool]):
        super().__init__(autowrap_functions=functions)
        self.leaves, self.functions, self.traceable = leaves, functions, traceable

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, self.leaves) or super().is_leaf_module(module, qualified_name):
            return True
        key = id(module)
        if key not in self.traceable:
            try:
                with _attributes_kept(module):
                    _Tracer(self.leaves, self.functions, self.traceable).trace(module)
                self.traceable[key] = True
            except Exception:  # noqa: BLE001 - any failure means: keep it whole
                self.traceable[key] = False
        return not self.traceable[key]


@contextlib.contextmanager
def _attributes_kept(module: nn.Module, kept: dict | None = None) -> Iterator[None]:
    """fx stores tensor constants as new attributes of the traced root: take them
    off again (into ``kept``), so that the model is left as it was."""
    before = set(vars(module))
    try:
        yield
    finally:
        for name in set(vars(module)) - before:
            value = vars(module).pop(name)
            if kept is not None:
                kept[name] = value


def trace(module: nn.Module) -> tuple[fx.Graph, dict[str, Any]]:
    """The model's graph and the tensor constants fx found in it."""
    leaves, functions = _timm_leaves()
    constants: dict[str, Any] = {}
    try:
        with _attributes_kept(module, constants):
            graph = _Tracer(leaves, functions, {}).trace(module)
    except Exception as error:  # noqa: BLE001 - fx raises many kinds
        raise MethodError(
            METHOD,
            f"incremental occlusion cannot trace {type(module).__name__} with torch.fx "
            f"({type(error).__name__}: {error}); run plain occlusion instead",
        ) from error
    return graph, constants


# -- analysis ---------------------------------------------------------------------
@dataclasses.dataclass
class NodeInfo:
    kind: str  # input, constant, windowed, pointwise, other, output
    inputs: list[fx.Node]  # the input-dependent nodes among its arguments
    value_is_map: bool  # a (1, C, H, W) tensor
    shape: tuple[int, ...] | None
    flops: int = 0
    op: WindowedOp | None = None
    mutates: bool = False  # changes an argument in place

    @property
    def dependent(self) -> bool:
        return self.kind != "constant"


def _tensors(value) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def _is_map(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[0] == 1


class Graph:
    """A traced model: its nodes in order, what each is, and an interpreter."""

    def __init__(self, module: nn.Module, graph: fx.Graph, constants: dict[str, Any]):
        # the model itself only weakly: traced models are cached, and a cache must not keep a dropped model alive
        self._module = weakref.ref(module)
        self.nodes = list(graph.nodes)
        self.modules = {name: sub for name, sub in module.named_modules() if name}
        self.constants = constants
        self.info: dict[fx.Node, NodeInfo] = {}
        self.position = {node: i for i, node in enumerate(self.nodes)}
        self.safe = True  # False: an in-place op mutates a value read again later
        placeholders = [node for node in self.nodes if node.op == "placeholder"]
        self.input_node = placeholders[0]  # the image; further arguments keep their defaults
        if any(not node.args for node in placeholders[1:]):
            raise MethodError(METHOD, f"{type(module).__name__}.forward takes more than the image; incremental occlusion needs a one-input model")

    @property
    def module(self) -> nn.Module:
        module = self._module()
        if module is None:
            raise MethodError(METHOD, "the traced model has been garbage-collected; trace it again")
        return module

    # interpreter
    def fetch(self, target: str):
        if target in self.constants:
            return self.constants[target]
        value = self.module
        for part in target.split("."):
            value = getattr(value, part)
        return value

    def call(self, node: fx.Node, args: tuple, kwargs: dict):
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            return self.fetch(node.target)
        if node.op == "output":
            return args[0]
        if node.op == "placeholder":  # an optional argument: its default
            return node.args[0]
        raise AssertionError(node.op)

    def arguments(self, node: fx.Node, value_of) -> tuple[tuple, dict]:
        return fx.node.map_arg((node.args, node.kwargs), value_of)

    def run(self, x: torch.Tensor) -> dict[fx.Node, Any]:
        """Every node's value for input x. An in-place op works on a copy, so that
        each value stays as it was made (incremental runs read them); that gives
        the model's results because :meth:`analyze` marks graphs where it would
        not as unsafe."""
        values: dict[fx.Node, Any] = {}
        for node in self.nodes:
            if node is self.input_node:
                values[node] = x
                continue
            args, kwargs = self.arguments(node, values.__getitem__)
            if node in self.info and self.info[node].mutates:
                args, kwargs = fx.node.map_aggregate((args, kwargs), lambda v: v.clone() if isinstance(v, torch.Tensor) else v)
            values[node] = self.call(node, args, kwargs)
        return values

    def name(self, node: fx.Node) -> str:
        return node.target if node.op == "call_module" else node.name

    def output_node(self) -> fx.Node:
        return self.nodes[-1]

    # analysis
    def analyze(self, x: torch.Tensor) -> torch.Tensor:
        """Run the model once as it is written (in-place ops in place) on x,
        recording shapes, FLOPs, in-place writes and aliasing; then classify the
        nodes. Returns the output."""
        values: dict[fx.Node, Any] = {}
        storage: dict[fx.Node, int] = {}
        mutated: dict[fx.Node, list[fx.Node]] = {}
        with torch.no_grad():  # not inference mode: version counters tell in-place writes
            for node in self.nodes:
                if node is self.input_node:
                    values[node] = x
                    self._classify(node, values, 0, False)
                else:
                    args, kwargs = self.arguments(node, values.__getitem__)
                    sources = [a for a in node.all_input_nodes if isinstance(values[a], torch.Tensor)]
                    versions = [values[a]._version for a in sources]
                    with FlopCounterMode(display=False) as counter:
                        values[node] = self.call(node, args, kwargs)
                    written = [a for a, v in zip(sources, versions) if values[a]._version != v]
                    if written:
                        mutated[node] = written
                    flops = counter.get_total_flops()
                    self._classify(node, values, flops, bool(written))
                if isinstance(values[node], torch.Tensor):
                    storage[node] = values[node].untyped_storage().data_ptr()
        self.safe = self._copies_are_safe(mutated, storage)
        return values[self.output_node()]

    def _classify(self, node: fx.Node, values: dict, flops: int, mutates: bool) -> None:
        inputs = [a for a in node.all_input_nodes if self.info[a].dependent]
        value = values[node]
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
        info = NodeInfo("other", inputs, _is_map(value), shape, flops, mutates=mutates)
        if node is self.input_node:
            info.kind = "input"
        elif node.op == "output":
            info.kind = "output"
        elif not inputs:
            info.kind = "constant"
        elif info.value_is_map and all(self.info[a].value_is_map for a in inputs):
            out_hw = shape[-2:]
            if node.op == "call_module" and len(inputs) == 1 and node.args and node.args[0] is inputs[0] and len(node.all_input_nodes) == 1:
                op = windowed_op(self.modules[node.target], values[inputs[0]].shape, value.shape)
                if op is not None:
                    info.kind, info.op = "windowed", op
            if info.kind == "other" and is_pointwise_node(node, self.modules):
                aligned = all(self.info[a].shape[-2:] == out_hw for a in inputs)
                # constants must not vary over space (a crop would need their crop too)
                constants = [values[a] for a in node.all_input_nodes if a not in inputs]
                uniform = all(t.numel() == 1 or (t.dim() >= 2 and t.shape[-2:] == (1, 1)) for t in _tensors(constants))
                if aligned and uniform:
                    info.kind = "pointwise"
        self.info[node] = info

    def _copies_are_safe(self, mutated: dict[fx.Node, list[fx.Node]], storage: dict[fx.Node, int]) -> bool:
        """Running an in-place op on a copy changes nothing unless the written
        memory is read again after the op through a name made before it."""
        for op_node, written in mutated.items():
            at = self.position[op_node]
            for target in written:
                if not self.info[target].dependent:
                    return False  # writes a parameter or constant: state, not data
                aliases = [n for n, ptr in storage.items() if ptr == storage.get(target) and self.position[n] < at]
                if any(self.position[user] > at for alias in aliases for user in alias.users):
                    return False
        return True

    def downstream_of(self, start: fx.Node) -> set[fx.Node]:
        reached, stack = set(), [start]
        while stack:
            for user in stack.pop().users:
                if user not in reached:
                    reached.add(user)
                    stack.append(user)
        return reached
