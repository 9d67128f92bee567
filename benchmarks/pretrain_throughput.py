"""Pretraining throughput against this machine's measured matmul peak.

    python benchmarks/pretrain_throughput.py                   # tiny-64 and small-64 on 1 and 2 threads
    python benchmarks/pretrain_throughput.py --configs tiny-224 small-224 --threads 2

A step is the real V-JEPA 2 step from ``jepa_world.training.pretrain``: target-encoder forward on
the full clip, online encoder on each context mask (two 3-D multi-block masks), predictor on the
targets, L1 loss, backward, AdamW and the EMA update. FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` (CPU flash attention registered below, since torch
does not count it), and compared with the best 2048x2048 fp32 matmul on the same threads.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from torch.utils import flop_counter

from jepa_world.masks import build_mask_generators
from jepa_world.models.predictor import MaskedPredictor, PredictorConfig
from jepa_world.models.vit import ViTConfig, VisionTransformer
from jepa_world.training.pretrain import JEPA, embed_targets


@dataclass(frozen=True)
class BenchConfig:
    size: str
    img_size: int
    patch_size: int
    batch_size: int
    predictor_dim: int
    predictor_depth: int
    predictor_heads: int
    num_frames: int = 16


CONFIGS: dict[str, BenchConfig] = {
    "tiny-64": BenchConfig("tiny", 64, 8, 4, 192, 6, 6),
    "small-64": BenchConfig("small", 64, 8, 4, 384, 12, 12),
    "tiny-224": BenchConfig("tiny", 224, 16, 1, 192, 6, 6),
    "small-224": BenchConfig("small", 224, 16, 1, 384, 12, 12),
}


def register_cpu_attention_flops() -> None:
    """FlopCounterMode knows the CUDA attention kernels only; count the CPU flash kernel too."""
    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


class PretrainStep:
    """One real V-JEPA 2 step on ``device``; ``autocast`` runs the forward passes in bf16 (CUDA)."""

    def __init__(self, bench: BenchConfig, seed: int = 0, device: torch.device | str = "cpu", autocast: bool = False):
        torch.manual_seed(seed)
        self.device, self.autocast = torch.device(device), autocast
        enc_cfg = ViTConfig(size=bench.size, img_size=bench.img_size, patch_size=bench.patch_size,
                            num_frames=bench.num_frames)
        self.generators = build_mask_generators("vjepa2")
        encoder = VisionTransformer(enc_cfg)
        predictor = MaskedPredictor(PredictorConfig(
            encoder_dim=enc_cfg.embed_dim, dim=bench.predictor_dim, depth=bench.predictor_depth,
            num_heads=bench.predictor_heads, num_mask_tokens=len(self.generators)))
        self.jepa = JEPA(encoder, predictor).to(self.device)
        self.target = VisionTransformer(enc_cfg).requires_grad_(False)
        self.target.load_state_dict(encoder.state_dict())
        self.target.to(self.device)
        self.optimizer = torch.optim.AdamW(self.jepa.parameters(), lr=1e-4, weight_decay=0.04)
        self.clips = torch.randn(bench.batch_size, 3, bench.num_frames, bench.img_size, bench.img_size, device=self.device)
        self.grid = encoder.grid_shape(self.clips.shape)
        self.generator = torch.Generator().manual_seed(seed)
        self.params = sum(p.numel() for p in self.jepa.parameters())
        self.num_tokens = self.grid[0] * self.grid[1] * self.grid[2]

    def masks(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [gen(self.clips.shape[0], self.grid, self.generator) for gen in self.generators]

    def __call__(self, masks) -> float:
        masks = [(context.to(self.device), target.to(self.device)) for context, target in masks]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            targets = embed_targets(self.target, self.clips)  # (B, N, D)
            loss = self.jepa(self.clips, masks, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.target.parameters()), list(self.jepa.encoder.parameters()), 1 - 0.99925)
        return loss.detach()


def run(names: list[str], steps: int, warmup: int) -> list[dict]:
    register_cpu_attention_flops()
    rows = []
    for name in names:
        step = PretrainStep(CONFIGS[name])
        masks = [step.masks() for _ in range(warmup + steps + 1)]  # drawn outside the timed region
        with flop_counter.FlopCounterMode(display=False) as counter:
            step(masks[0])
        flops = counter.get_total_flops()
        for i in range(warmup):
            step(masks[1 + i])
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(steps):
            step(masks[1 + warmup + i])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        seconds = wall / steps
        context = [m[0].shape[1] for m in masks[0]]
        rows.append(dict(config=name, params_m=step.params / 1e6, tokens=step.num_tokens, context=context,
                         batch=step.clips.shape[0], step_s=seconds, clips_s=step.clips.shape[0] / seconds,
                         gflop=flops / 1e9, gflops=flops / 1e9 / seconds, cpu_per_wall=cpu / wall))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny-64", "small-64"], choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=2, help="timed steps per config")
    parser.add_argument("--warmup", type=int, default=0, help="extra untimed steps (the FLOP-counted step already warms up)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch thread counts to compare (OpenMP sync costs explode on an oversubscribed box)")
    args = parser.parse_args()

    header = (f"{'config':<10} {'threads':>7} {'params':>7} {'tokens':>6} {'ctx/mask':>9} {'batch':>5} {'step s':>7} "
              f"{'clips/s':>8} {'GFLOP':>7} {'GFLOP/s':>8} {'peak':>6} {'% peak':>7} {'cpu/wall':>8}")
    lines = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        peak_before = matmul_peak_gflops()
        rows = run(args.configs, args.steps, args.warmup)
        peak = max(peak_before, matmul_peak_gflops())  # the machine is shared: bracket the runs, keep the best
        for r in rows:
            lines.append(
                f"{r['config']:<10} {threads:>7} {r['params_m']:>6.1f}M {r['tokens']:>6} "
                f"{'/'.join(map(str, r['context'])):>9} {r['batch']:>5} {r['step_s']:>7.2f} {r['clips_s']:>8.2f} "
                f"{r['gflop']:>7.1f} {r['gflops']:>8.1f} {peak:>6.0f} {100 * r['gflops'] / peak:>6.1f}% "
                f"{r['cpu_per_wall']:>8.2f}"
            )
    print("peak = best fp32 2048x2048 matmul GFLOP/s on the same threads, measured before and after the configs")
    print(header)
    print("-" * len(header))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
