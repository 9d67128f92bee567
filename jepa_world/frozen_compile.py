"""torch.compile with a module's weights folded into the graph as constants, compiled afresh when they change.

    rollout = FrozenWeightsCompile(dynamics._cached_rollout, dynamics, dynamic_batch=(0, 1, 2, 3))
    with torch.inference_mode():
        z = rollout(z0, state0, actions, context_actions)   # weights folded in, batch symbolic

Why fold the weights: inductor's ``freezing`` turns them into graph constants, so on CPU it packs every
fp32 linear's weight once, at compile time, instead of handing the plain weight to each product. With the
batch symbolic it packs for oneDNN's product (MKL's packed form needs a fixed batch). On issue #14's
300-sample rollout on an AMD EPYC this runs 1.09x faster on one thread and 1.16x on two, exact to 4e-6
against eager (docs/speed.md, "fourteenth session").

Code traced into the folded graph can ask ``weights_folded()``: inductor fuses a packed product's bias and a
following GELU into oneDNN's call only when the bias stays in the ``linear`` (``layers.Mlp``), which pays with
AVX-512 code only (``gelu_in_folded_product()``; with AVX2 code the MLP computes its GELU with a rational erf),
and the attention keeps queries and keys in a channel order whose reordered projection is computed once
(``ac_predictor.half_split_decoding``). The graph's
launcher is C++ (inductor's ``cpp_wrapper``), not Python: 1.015-1.033x on two threads and 1.025x on one at
issue #14's configuration, for about 12 s more compile ("fifteenth session").
"""
from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch._inductor import config as inductor_config
from torch._inductor.cpu_vec_isa import pick_vec_isa

from jepa_world.compile_cache import compile_keyed_to_isa

_folding = False  # True while a FrozenWeightsCompile graph is traced or run; dynamo guards on it
_gelu_post_op = False  # set with _folding: whether oneDNN's product should take an MLP's bias and GELU


def weights_folded() -> bool:
    """Whether the code calling this is traced into (or run by) a ``FrozenWeightsCompile`` graph, whose weights
    are folded in when grad is off. Dynamo reads it as a constant and guards on it, so each graph keeps the
    choice it was traced with."""
    return _folding


def gelu_in_folded_product() -> bool:
    """Whether an MLP's first product, in a graph that folds the weights, takes its bias and GELU as oneDNN
    post-ops. Only where inductor writes AVX-512 code: 1.04x there at issue #14's configuration (AMD EPYC),
    while with AVX2 code (``ATEN_CPU_CAPABILITY=avx2``, same CPU) oneDNN's erf GELU ran slower than the GELU
    inductor fuses itself, 0.95-0.98x (docs/speed.md, "sixteenth session"), and the MLP's rational erf
    (``layers.gelu_rational_erf``) faster, 1.02-1.03x ("seventeenth session"). Read while tracing, like
    ``weights_folded``."""
    return _gelu_post_op


class FrozenWeightsCompile:
    """``torch.compile(method)`` whose calls without grad fold ``module``'s parameters and buffers into the graph.

    Dimension 0 of the arguments at ``dynamic_batch`` (tensors or None) is symbolic from the first call, so
    one graph serves every sample count. Folded weights would go stale when the module's weights change in
    place (an optimiser step, ``load_state_dict``) or are replaced: every call without grad compares each
    weight's identity and version counter with those compiled in, and on any change compiles a fresh copy
    of ``method``. With grad enabled inductor folds nothing, and the weights stay graph inputs.
    """

    # inductor's settings while compiling and running; ``cpp_wrapper`` launches the kernels from C++
    inductor_settings = {"freezing": True, "cpp_wrapper": True}

    def __init__(self, method: types.MethodType, module: nn.Module, dynamic_batch: tuple[int, ...]):
        self.method = method
        self.module = module
        self.dynamic_batch = dynamic_batch
        self._compiled: Callable[..., Tensor] | None = None
        self._weights: list[tuple[dict[str, Tensor | None], str, Tensor]] = []  # (owner's slots, name, tensor)
        self._versions: tuple[int, ...] = ()

    def __call__(self, *args: Tensor | None) -> Tensor:
        if self._compiled is None or (not torch.is_grad_enabled() and self._weights_changed()):
            self._compiled = compile_keyed_to_isa(_fresh_copy(self.method))
            self._weights = [
                (slots, name, tensor)
                for owner in self.module.modules()
                for slots in (owner._parameters, owner._buffers)
                for name, tensor in slots.items()
                if tensor is not None
            ]
            self._versions = self._weight_versions()
        for index in self.dynamic_batch:
            if args[index] is not None:
                torch._dynamo.maybe_mark_dynamic(args[index], 0)
        global _folding, _gelu_post_op
        _folding, _gelu_post_op = True, "avx512" in str(pick_vec_isa())
        try:
            with inductor_config.patch(self.inductor_settings):
                return self._compiled(*args)
        finally:
            _folding = _gelu_post_op = False

    def _weight_versions(self) -> tuple[int, ...]:
        return tuple(tensor._version for _, _, tensor in self._weights)

    def _weights_changed(self) -> bool:
        replaced = any(slots.get(name) is not tensor for slots, name, tensor in self._weights)
        return replaced or self._weight_versions() != self._versions


def _fresh_copy(method: types.MethodType) -> types.MethodType:
    """``method`` over a copy of its code object. Dynamo keeps its compiled graphs and their guards on the code
    object, and its guards do not read folded weights' values: a graph frozen from the old weights would
    pass them. A copy starts with no graphs, and no other instance's compiles count against its limit."""
    function = method.__func__
    copy = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)
    return types.MethodType(copy, method.__self__)
