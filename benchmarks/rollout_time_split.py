"""Where the compiled fp32 rollout's time goes at issue #14's configuration, without a profiler.

    python benchmarks/rollout_time_split.py [--rollouts 10] [--threads 2]

The 6 x 192 V-JEPA 2-AC-layout predictor (16 frame tokens + action and state tokens per step), 300
samples, horizon 2, one context frame, ``Dynamics.compile_rollout()``. Every matrix product inductor hands to
the BLAS (``extern_kernels.mm``/``bmm``, a private torch API; with the weights folded in, the linears are
oneDNN's and MKL's packed ops) is timed on its own, and so is every fused
elementwise kernel inductor generated (the ``cpp_fused_*`` functions of its output modules, also private):
layer norms, RoPE and the cache writes, softmax, bias + GELU, residual adds. What is left of the rollout's
wall time is Python: the rollout's eager code, dynamo's guards, the launcher. Each rollout alternates with
a 2048^2 fp32 product, so the peak is measured under the same load.

The kernels can only be timed from Python, so the split runs the folded graph with inductor's Python
launcher; the library's launcher is C++ (``FrozenWeightsCompile.inductor_settings``). A twin with the
library's launcher is timed in the same rounds, and the Python launcher's cost is printed beside.

Why not torch.profiler: its own allocations make glibc shrink and regrow the heap, so the 3 MB MLP
hidden buffer is page-faulted inside the first MLP product: under the profiler that product ran at
110-130 GFLOP/s, 190 without it (docs/speed.md, "2026-12-06, third session").
"""
from __future__ import annotations

import argparse
import collections
import copy
import re
import statistics
import time

import torch
from torch._inductor.codecache import PyCodeCache
from torch._inductor.select_algorithm import extern_kernels

from compare_anchors import (  # noqa: E402  (sibling benchmark script)
    OFFICIAL_ACTION_DIM, OFFICIAL_GRID, PEAK_SIZE, WIDTH, official_dynamics, official_layout_predictor)
from planning import count_flops  # noqa: E402  (sibling benchmark script)

from jepa_world.frozen_compile import FrozenWeightsCompile


SAMPLES, HORIZON = 300, 2


def timed(fn, record, is_on):
    """``fn`` that, while ``is_on()``, passes its wall seconds and positional arguments to ``record``."""
    def run(*args, **kwargs):
        if not is_on():
            return fn(*args, **kwargs)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        record(time.perf_counter() - start, *args)
        return result
    return run


def fused_kernels():
    """(module, name) of every ``cpp_fused_*`` kernel of the loaded inductor output modules."""
    for module in list(PyCodeCache.modules):
        for name in dir(module):
            if name.startswith("cpp_fused_"):
                yield module, name


class ProductTimer:
    """Wraps ``extern_kernels.mm`` and ``bmm``, and SDPA's CPU flash kernel (which inductor calls as an ATen op
    where attention keeps it: one thread): wall seconds and FLOPs per (op, shapes) while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.totals: dict[tuple, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])  # key -> [s, flop]
        for name in ("mm", "bmm"):
            setattr(extern_kernels, name, timed(getattr(extern_kernels, name), self._record_product(name), lambda: self.on))

    def time_ops(self) -> None:
        """Wrap the flash kernel and the packed linears of a graph with folded weights too; only after compiling,
        since dynamo cannot trace through the wrappers (the generated code looks the ops up at call time)."""
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        flash.default = timed(flash.default, self._record_attention, lambda: self.on)
        for name, packet in (("oneDNN linear", torch.ops.mkldnn._linear_pointwise),
                             ("MKL packed linear", torch.ops.mkl._mkl_linear)):
            packet.default = self._timed_linear(name, packet.default)

    def _timed_linear(self, name: str, op):
        """``op`` timed while ``on``, its FLOPs from its input (M, K) and output (M, N): a packed weight's
        shape is its storage layout's, not (N, K)."""
        def run(x, *args):
            if not self.on:
                return op(x, *args)
            start = time.perf_counter()
            out = op(x, *args)
            total = self.totals[(name, tuple(x.shape), tuple(out.shape))]
            total[0] += time.perf_counter() - start
            total[1] += 2 * x.shape[0] * x.shape[1] * out.shape[-1]
            return out
        return run

    def _record_product(self, name):
        def record(seconds, a, b):
            total = self.totals[(name, tuple(a.shape), tuple(b.shape))]
            total[0] += seconds
            total[1] += 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.dim() == 3 else 1)
        return record

    def _record_attention(self, seconds, q, k, *_):  # q (B, H, Nq, hd), k (B, H, Nk, hd)
        total = self.totals[("sdpa", tuple(q.shape), tuple(k.shape))]
        total[0] += seconds
        total[1] += 4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]


class FusedKernelTimer:
    """Wraps every ``fused_kernels()`` kernel: wall seconds and calls per kernel name while ``on``. Install after
    compiling: the generated ``call`` looks them up as module globals."""

    def __init__(self) -> None:
        self.on = False
        self.totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])  # name -> [s, calls]
        for module, name in fused_kernels():
            setattr(module, name, timed(getattr(module, name), self._record(self.short_name(name)), lambda: self.on))

    @staticmethod
    def short_name(kernel: str) -> str:
        """``cpp_fused__softmax__unsafe_view_add_..._2`` -> the ops it fuses, without views and its index:
        one row per kind of kernel, summed over the graphs of both steps."""
        ops = re.sub(r"_\d+$", "", kernel.removeprefix("cpp_fused_")).replace("native_layer_norm", "layer-norm")
        views = {"unsafe", "view", "permute", "unsqueeze", "expand", "slice", "select", "unbind", "clone", ""}
        return "+".join(op for op in ops.split("_") if op not in views) or "copy"

    def _record(self, name):
        def record(seconds, *_):
            total = self.totals[name]
            total[0] += seconds
            total[1] += 1
        return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timer = ProductTimer()  # before compiling: the generated code looks the products up at call time
    torch.manual_seed(0)
    predictor = official_layout_predictor().eval().requires_grad_(False)
    dynamics = official_dynamics(predictor)
    library = copy.deepcopy(dynamics)  # the same weights, the library's C++ launcher
    z0, state0 = torch.randn(1, 1, OFFICIAL_GRID**2, WIDTH), torch.randn(1, 1, OFFICIAL_ACTION_DIM)
    actions = torch.randn(SAMPLES, HORIZON, OFFICIAL_ACTION_DIM) * 0.05
    a, b = torch.randn(PEAK_SIZE, PEAK_SIZE), torch.randn(PEAK_SIZE, PEAK_SIZE)
    with torch.no_grad():
        flop = count_flops(lambda: dynamics.rollout(z0, state0, actions))
        dynamics.compile_rollout()
        dynamics._folded_rollout.inductor_settings = {**FrozenWeightsCompile.inductor_settings, "cpp_wrapper": False}
        library.compile_rollout()
        for _ in range(3):
            dynamics.rollout(z0, state0, actions)
            library.rollout(z0, state0, actions)
        kernels = FusedKernelTimer()
        timer.time_ops()
        peaks, rollout_s, library_s = [], 0.0, 0.0
        for _ in range(args.rollouts):
            start = time.perf_counter()
            a @ b
            peaks.append(2 * PEAK_SIZE**3 / (time.perf_counter() - start) / 1e9)
            timer.on = kernels.on = True
            start = time.perf_counter()
            dynamics.rollout(z0, state0, actions)
            rollout_s += time.perf_counter() - start
            timer.on = kernels.on = False
            start = time.perf_counter()
            library.rollout(z0, state0, actions)
            library_s += time.perf_counter() - start
    peak = statistics.median(peaks)
    product_s = sum(s for s, _ in timer.totals.values())
    product_flop = sum(f for _, f in timer.totals.values())
    rate = args.rollouts * flop / rollout_s / 1e9
    library_rate = args.rollouts * flop / library_s / 1e9
    print(f"{args.threads} thread(s), {args.rollouts} rollouts of {SAMPLES} samples x horizon {HORIZON}; "
          f"peak probe (2048^2 fp32, wall) {peak:.0f} GFLOP/s")
    print(f"rollout: {1e3 * rollout_s / args.rollouts:.0f} ms, {rate:.0f} GFLOP/s = {100 * rate / peak:.0f}% of the probe; "
          f"matrix products {100 * product_s / rollout_s:.0f}% of its time at {product_flop / product_s / 1e9:.0f} "
          f"GFLOP/s ({100 * product_flop / product_s / 1e9 / peak:.0f}% of the probe), "
          f"{100 * product_flop / (args.rollouts * flop):.0f}% of its FLOPs")
    kernel_s = sum(s for s, _ in kernels.totals.values())
    print(f"the library's rollout (C++ launcher): {1e3 * library_s / args.rollouts:.0f} ms, "
          f"{100 * library_rate / peak:.0f}% of the probe; the timed one with the Python launcher takes "
          f"{rollout_s / library_s:.3f}x its time")
    print(f"inductor's fused kernels {100 * kernel_s / rollout_s:.0f}% of its time; the rest, Python (eager code, guards, launcher), "
          f"{100 * (1 - (product_s + kernel_s) / rollout_s):.0f}%")
    print("| product | shapes (operands; linears: input and output) | % of rollout time | GFLOP/s | % of probe |\n"
          "|---|---|---|---|---|")
    for (name, a_shape, b_shape), (seconds, flops) in sorted(timer.totals.items(), key=lambda kv: -kv[1][0])[:10]:
        print(f"| {name} | {a_shape} x {b_shape} | {100 * seconds / rollout_s:.1f}% | {flops / seconds / 1e9:.0f} | "
              f"{100 * flops / seconds / 1e9 / peak:.0f}% |")
    print("| fused kernel (ops) | % of rollout time | us per call | calls per rollout |\n|---|---|---|---|")
    for name, (seconds, calls) in sorted(kernels.totals.items(), key=lambda kv: -kv[1][0])[:10]:
        print(f"| {name} | {100 * seconds / rollout_s:.1f}% | {1e6 * seconds / calls:.0f} | {calls // args.rollouts} |")


if __name__ == "__main__":
    main()
