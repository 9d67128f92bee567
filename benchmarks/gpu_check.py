"""One short script for a lent GPU (about 5 minutes): correctness against the CPU, bf16, the SDPA
flash path, training throughput with MFU, and the shipped model's planning time per action.

    MUJOCO_GL=egl python benchmarks/gpu_check.py [--device cuda] [--size small] [--out outputs/gpu_check.json]
    python benchmarks/gpu_check.py --device cpu --smoke      # the same checks at toy sizes (plumbing)

Prints a table and writes the figures as JSON:
  * peak: measured dense matmul TFLOP/s (fp32, and bf16 on CUDA): MFU is against these, not a datasheet;
  * fp32 device vs CPU: max relative error of the shipped world model's encode and KV-cached rollout;
  * bf16 autocast vs fp32 on the device: relative error of the same outputs;
  * SDPA flash: whether scaled_dot_product_attention runs when restricted to the flash kernel;
  * pretrain step: benchmarks/pretrain_throughput.py's V-JEPA 2 step (two 3-D multi-block masks,
    EMA target) of a --size ViT on 16x224x224 clips, bf16 autocast: ms/step, TFLOP/s counted by
    FlopCounterMode, MFU;
  * end-to-end post-train step: encoder + projector + predictor with the rollout loss: ms/step, MFU;
  * planning: ms per MPCAgent.act on the real reach env with the shipped model and cem_fast.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from planning import count_flops, planner_config  # noqa: E402  (sibling benchmark scripts)
from pretrain_throughput import BenchConfig, PretrainStep, register_cpu_attention_flops  # noqa: E402

import envs  # noqa: E402
from jepa_world.models.vit import build_encoder  # noqa: E402
from jepa_world.training.posttrain import PosttrainObjective  # noqa: E402
from jepa_world.latent_encoder import LatentConfig  # noqa: E402
from jepa_world.world_model import WorldModel  # noqa: E402
from planners import make_planner  # noqa: E402
from planners.agent import MPCAgent  # noqa: E402

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "reach-default"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, device, 5) / 1e12


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm().clamp_min(1e-12)).item()


def check_numerics(device: torch.device, report: dict) -> None:
    cpu = WorldModel.from_pretrained(SHIPPED).eval()
    dev = WorldModel.from_pretrained(SHIPPED, map_location=device).eval()
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=gen)
    state_dim, action_dim = cpu.predictor.config.state_dim, cpu.predictor.config.action_dim
    states = torch.randn(64, state_dim, generator=gen) if state_dim else None
    actions = 0.05 * torch.randn(64, 3, action_dim, generator=gen)

    def outputs(model, where, autocast=False):
        with torch.no_grad(), torch.autocast(where.type, dtype=torch.bfloat16, enabled=autocast):
            z = model.encode(frames.to(where))
            z0 = z[:1].expand(64, -1, -1)
            s0 = None if states is None else states.to(where)
            return z, model.rollout(z0, s0, actions.to(where))

    z_cpu, r_cpu = outputs(cpu, torch.device("cpu"))
    z_dev, r_dev = outputs(dev, device)
    report["fp32_encode_rel_err"], report["fp32_rollout_rel_err"] = relative(z_dev, z_cpu), relative(r_dev, r_cpu)
    if device.type == "cuda":
        z_bf, r_bf = outputs(dev, device, autocast=True)
        report["bf16_encode_rel_err"], report["bf16_rollout_rel_err"] = relative(z_bf, z_dev), relative(r_bf, r_dev)


def check_flash(device: torch.device, report: dict) -> None:
    if device.type != "cuda":
        report["sdpa_flash"] = "n/a (not CUDA)"
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(2, 6, 1024, 64, device=device, dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, q, q)
        report["sdpa_flash"] = "taken"
    except RuntimeError as err:  # the flash kernel refuses this device/dtype/shape
        report["sdpa_flash"] = f"not available: {str(err).splitlines()[0][:120]}"


def pretrain_step(device: torch.device, bench: BenchConfig, report: dict, peak: float) -> None:
    """benchmarks/pretrain_throughput.py's real V-JEPA 2 step (masks, EMA), bf16 autocast on CUDA."""
    step = PretrainStep(bench, device=device, autocast=device.type == "cuda")
    masks = step.masks()
    seconds = timed(lambda: step(masks), device, 3)
    flops = count_flops(lambda: step(masks))
    report["pretrain"] = {"size": bench.size, "batch": bench.batch_size,
                          "clip": f"{bench.num_frames}x{bench.img_size}x{bench.img_size}", "ms_per_step": 1e3 * seconds,
                          "tflops": flops / seconds / 1e12, "mfu": flops / seconds / 1e12 / peak}


def end_to_end_step(device: torch.device, batch: int, report: dict, peak: float) -> None:
    torch.manual_seed(0)
    encoder = build_encoder("micro", img_size=64, patch_size=8)
    config = LatentConfig(latent="global", normalize_latents=False, trainable_encoder=True)
    world_model = WorldModel.create(encoder, 3, 0, config, img_size=64, size="micro", predict_residual=True).to(device)
    objective = PosttrainObjective(world_model, rollout_steps=2, loss="mse")
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3)
    frames = torch.randint(0, 256, (batch, 4, 3, 64, 64), dtype=torch.uint8, device=device)
    actions = 0.05 * torch.randn(batch, 3, 3, device=device)

    def step():
        loss = objective(frames, actions, None)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = timed(step, device, 3)
    flops = count_flops(step)
    report["end_to_end"] = {"batch": batch, "ms_per_step": 1e3 * seconds, "tflops": flops / seconds / 1e12,
                            "mfu": flops / seconds / 1e12 / peak}


def planning(device: torch.device, steps: int, report: dict) -> None:
    model = WorldModel.from_pretrained(SHIPPED, map_location=device).eval()
    env = envs.make("reach")
    agent = MPCAgent(model, make_planner("cem", **planner_config("cem_fast", {})), horizon=1,
                     action_low=env.action_space.low, action_high=env.action_space.high)
    obs, _ = env.reset(seed=3)
    agent.reset(env.unwrapped.goal_image())
    for _ in range(steps):
        obs, *_ = env.step(agent.act(obs))
    env.close()
    report["plan_ms_per_action"] = float(np.median(agent.stats.plan_ms[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default="small", help="ViT size of the pretraining step")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: check the script itself on a CPU")
    parser.add_argument("--out", default="outputs/gpu_check.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__}
    n = 512 if args.smoke else 4096
    report["peak_fp32_tflops"] = matmul_peak(device, torch.float32, n)
    peak = report["peak_fp32_tflops"]
    if device.type == "cuda":
        report["peak_bf16_tflops"] = peak = matmul_peak(device, torch.bfloat16, n)
    check_numerics(device, report)
    check_flash(device, report)
    register_cpu_attention_flops()  # FlopCounterMode counts the CUDA attention kernels already
    if args.smoke:
        pretrain_step(device, BenchConfig("micro", 32, 8, 2, 96, 2, 4, num_frames=4), report, peak)
        end_to_end_step(device, 4, report, peak)
        planning(device, 3, report)
    else:
        pretrain_step(device, BenchConfig(args.size, 224, 16, 16, 384, 12, 12), report, peak)
        end_to_end_step(device, 256, report, peak)
        planning(device, 20, report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| check | value |\n|---|---|")
    for key, value in report.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.3g}"
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
