"""Planning speed against the anchors, in one process: the official V-JEPA 2-AC CEM path and
stable-worldmodel 0.1.1's CEM solver, each against our CEM + KV-cached rollout at its own configuration.

    python benchmarks/compare_anchors.py --vjepa2 outputs/anchors/vjepa2 \
        --swm-site outputs/anchors/swm-venv/lib/python3.11/site-packages [--repeats 4] [--threads 1]

Anchors (local copies, never installed into the project's environment):
  * ``--vjepa2 PATH``: a checkout of facebookresearch/vjepa2. Its ``src.models.ac_predictor`` and
    ``notebooks/utils`` (the AC predictor and ``cem`` planner its robot notebook calls) are imported
    from there; it needs scipy and timm, which the project's environment has.
  * ``--swm-site PATH``: the site-packages of a venv holding ``stable-worldmodel==0.1.1`` (``pip install
    "torch==2.14.1" "stable-worldmodel==0.1.1" opencv-python-headless imageio`` there: it imports the last
    two without declaring them). It is appended to sys.path, so the project's own
    torch and packages still win; ``stable_worldmodel`` and its dependencies come from there.
An anchor that cannot be imported is reported with the exact module that failed; the rest still runs.

Configurations:
  * official vs ours (the issue's): a 2.75M-parameter predictor (6 x 192, 6 heads), 16 tokens per
    frame, 300 samples x 10 iterations, 10 elites, horizon 2, one context frame. The official predictor's
    random weights are loaded into ours (strictly, through ``load_official_state_dict``); the script
    checks that both give the same prediction and count the same FLOPs per predictor call.
  * stable-worldmodel vs ours (its own): 300 samples x 30 iterations, 30 elites, horizon 5, one latent
    token per frame (192-d), actions of 2 dims in blocks of 5. Its LeWM predictor (AdaLN-conditioned,
    history 3, no KV cache) and ours are built at equal depth, width, heads and MLP width (6 x 192,
    6 heads, MLP 768); the architectures differ, so parameters and FLOPs per call are printed beside.
    Ours runs in both action layouts: "ours" with V-JEPA 2-AC's action token (2 tokens per step) and
    "ours additive" with the action embedding added to the frame token (``conditioning="additive"``,
    1 token per step like stable-worldmodel's).
Ours is timed eager, with ``Dynamics.compile_rollout()`` (torch.compile of the KV-cached rollout), and
compiled under ``ACPredictor.autocast_decoding(torch.bfloat16)`` (not exact; fast where the CPU has
AMX); rollout-only rows add sample chunks (``rollout_chunk``) and eager bf16. ``--bf16 auto`` (the default)
drops the bf16 rows on a CPU with neither AVX512-BF16 nor AMX, where a bf16 product runs about 12x slower than
fp32 and those rows alone would take most of the run.

Times are process CPU time per planning call (x threads = what an unstarved process would take),
medians over ``--repeats`` calls taken round-robin so that load changes hit every path alike; wall
times are shown beside (cpu/wall well below the thread count means the process was starved).
Each round robin also times a 2048^2 fp32 matmul (the peak probe): "% of probe" relates a row to the
peak measured under that row's own load; "% of start peak" to the one printed at the start.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib
import io
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

from planning import count_flops, matmul_peak_gflops  # noqa: E402  (sibling benchmark script)

from jepa_world.dynamics import Dynamics, DynamicsConfig
from jepa_world.models.ac_predictor import (ACPredictor, ACPredictorConfig, cpu_multiplies_bf16,
                                           load_official_state_dict)
from planners import make_planner
from planners.objectives import ObjectiveConfig, build_cost_fn

ROOT = Path(__file__).resolve().parent.parent
WIDTH, DEPTH, HEADS = 192, 6, 6  # the 2.75M predictor ("tiny")
# The official configuration: 64 px / 16 px patches -> 16 tokens per frame; 7-D actions and poses.
OFFICIAL_GRID, OFFICIAL_PATCH, OFFICIAL_ACTION_DIM = 4, 16, 7


class AnchorUnavailable(RuntimeError):
    """An anchor's code could not be imported or built; the message says which module and why."""


PEAK_SIZE, PEAK_PRODUCTS = 2048, 3  # one probe call: three 2048^2 fp32 products (about 0.3 CPU-s)
PEAK_PROBE = f"fp32 matmul {PEAK_SIZE}^2 (peak probe)"


@dataclass
class Row:
    path: str
    cpu_s: float
    wall_s: float
    gflop: float  # per planning call
    params_m: float
    peak_gflops: float  # the fp32 matmul rate measured in this row's own round robin


def with_peak_probe(fns: dict[str, Callable[[], object]]) -> dict[str, Callable[[], object]]:
    """``fns`` plus a 2048^2 fp32 matmul, so that every round robin measures the peak under its own load: on
    this shared host the peak alone swings 1.7-1.9x between runs (docs/speed.md), and a peak measured
    minutes before a row says little about the cores that row ran on."""
    a, b = torch.randn(PEAK_SIZE, PEAK_SIZE), torch.randn(PEAK_SIZE, PEAK_SIZE)
    return {PEAK_PROBE: lambda: [a @ b for _ in range(PEAK_PRODUCTS)], **fns}


def probed_peak(times: dict[str, tuple[float, float]], threads: int) -> float:
    """GFLOP/s of the peak probe in a ``round_robin`` of ``with_peak_probe`` fns (CPU time x threads)."""
    return PEAK_PRODUCTS * 2 * PEAK_SIZE**3 / 1e9 / (times[PEAK_PROBE][1] / threads)


def import_from(root: Path, module: str, first: bool = True) -> object:
    """Import ``module`` with ``root`` on sys.path (first, or last so the project's packages win);
    AnchorUnavailable names the module that failed. ``root`` stays on the path for the anchor's lazy imports."""
    if not root.is_dir():
        raise AnchorUnavailable(f"{root} is not a directory (needed for {module})")
    if str(root) not in sys.path and first:
        sys.path.insert(0, str(root))
    elif str(root) not in sys.path:
        sys.path.append(str(root))
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise AnchorUnavailable(f"import {module} from {root} failed: {type(error).__name__}: {error}") from error


def round_robin(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """(median wall s, median CPU s) per call of each fn, after one warm-up each (compiles happen there);
    the repeats alternate between fns so that a change of load on the shared box hits all of them, and every
    other round runs them in reverse: a fn's place in the round changed its time by 2-6% (docs/speed.md,
    "third session"), and an even ``repeats`` gives every fn each place equally often."""
    for fn in fns.values():
        fn()
    walls: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            fn = fns[name]
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    return {name: (statistics.median(walls[name]), statistics.median(cpus[name])) for name in fns}


def parameters_m(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def fast_copy(dynamics: Dynamics, compiled: bool, low_precision: bool) -> Dynamics:
    """A copy of ``dynamics`` whose cached rollout runs through torch.compile and/or bf16 autocast."""
    fast = copy.deepcopy(dynamics)
    if compiled:
        fast.compile_rollout()
    if low_precision:
        fast.predictor.autocast_decoding(torch.bfloat16)
    return fast


def anchor_rows(anchor: str, plan_anchor: Callable[[], None], anchor_params_m: float, models: dict[str, Dynamics],
                plan_with: Callable[[Dynamics], Callable[[], None]], repeats: int, bf16: bool) -> list[Row]:
    """Rows for one planning call of the anchor and, for each of our ``{name: model}``, of that model eager,
    compiled, and (with ``bf16``) compiled under bf16 autocast, all timed round-robin; ``plan_with(model)`` is
    our planning call on that model."""
    routes: dict[str, tuple[str, Dynamics]] = {}  # row -> (our model's name, the model timed)
    for name, dynamics in models.items():
        routes[f"{name} eager"] = (name, dynamics)
        routes[f"{name} compiled"] = (name, fast_copy(dynamics, True, False))
        if bf16:
            routes[f"{name} compiled, bf16 autocast"] = (name, fast_copy(dynamics, True, True))
    fns = {anchor: plan_anchor, **{row: plan_with(model) for row, (_, model) in routes.items()}}
    times = round_robin(with_peak_probe(fns), repeats)
    peak = probed_peak(times, torch.get_num_threads())
    with torch.no_grad():  # our routes do the same arithmetic; the counter sees only eager fp32 ops
        flops = {name: count_flops(plan_with(dynamics)) for name, dynamics in models.items()}
        anchor_flops = count_flops(plan_anchor)
    rows = [Row(anchor, times[anchor][1], times[anchor][0], anchor_flops / 1e9, anchor_params_m, peak)]
    rows += [Row(row, times[row][1], times[row][0], flops[name] / 1e9, parameters_m(models[name].predictor), peak)
             for row, (name, _) in routes.items()]
    return rows


# --------------------------------------------------------------------------- official V-JEPA 2-AC


def official_layout_predictor() -> ACPredictor:
    """Ours in the official predictor's layout and size (one token each for action and pose, 6 extrinsics)."""
    action_dim = OFFICIAL_ACTION_DIM
    return ACPredictor(ACPredictorConfig(encoder_dim=WIDTH, action_dim=action_dim, state_dim=action_dim,
                                         grid_hw=(OFFICIAL_GRID, OFFICIAL_GRID), dim=WIDTH, depth=DEPTH,
                                         num_heads=HEADS, extrinsics_dim=action_dim - 1))


def official_dynamics(predictor: ACPredictor) -> Dynamics:
    """The predictor as V-JEPA 2-AC rolls it out: every action dim integrates into the pose."""
    return Dynamics(predictor, DynamicsConfig(integrated_state_dims=tuple(range(OFFICIAL_ACTION_DIM))))


def official_vs_ours(vjepa2: Path, repeats: int, samples: int, iterations: int, horizon: int,
                     bf16: bool) -> tuple[list[Row], str]:
    """Rows for the official CEM path, ours eager and ours compiled, and a line on weight/FLOP equality."""
    ac_module = import_from(vjepa2, "src.models.ac_predictor")
    wrapper_module = import_from(vjepa2, "notebooks.utils.world_model_wrapper")
    # Its cem logs the mean and std at INFO on every iteration; silenced, which only saves it time.
    logging.getLogger("notebooks.utils.mpc_utils").setLevel(logging.WARNING)
    grid, patch, action_dim = OFFICIAL_GRID, OFFICIAL_PATCH, OFFICIAL_ACTION_DIM
    official = ac_module.vit_ac_predictor(
        img_size=(grid * patch, grid * patch), patch_size=patch, num_frames=2 * (horizon + 1), tubelet_size=2,
        embed_dim=WIDTH, predictor_embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, action_embed_dim=action_dim,
        use_extrinsics=False, use_rope=True,
    ).eval().requires_grad_(False)
    ours = official_layout_predictor()
    load_official_state_dict(ours, official.state_dict(), "official random predictor")
    ours = ours.eval().requires_grad_(False)

    tokens = grid * grid
    z = torch.randn(samples, 2, tokens, WIDTH)
    moves, poses = torch.randn(samples, 2, action_dim) * 0.05, torch.randn(samples, 2, action_dim)
    with torch.no_grad():
        official_out = official(z.flatten(1, 2), moves, poses).unflatten(1, (2, tokens))
        difference = (official_out - ours(z, moves, poses)).abs().max().item()
        official_flops = count_flops(lambda: official(z.flatten(1, 2), moves, poses))
        our_flops = count_flops(lambda: ours(z, moves, poses))
    check = (f"equal weights: max |official - ours| prediction = {difference:.1e}; FLOPs per predictor call "
             f"(batch {samples}, 2 steps): official {official_flops / 1e9:.2f} G, ours {our_flops / 1e9:.2f} G")

    z0, z_goal = torch.randn(1, 1, tokens, WIDTH), torch.randn(1, 1, tokens, WIDTH)
    pose0 = torch.randn(1, 1, action_dim)
    mpc_args = {"rollout": horizon, "samples": samples, "topk": 10, "cem_steps": iterations, "momentum_mean": 0.15,
                "momentum_std": 0.15, "maxnorm": 0.05, "verbose": False}
    anchor = wrapper_module.WorldModel(encoder=None, predictor=official, tokens_per_frame=tokens, transform=None,
                                       mpc_args=mpc_args, device="cpu")

    # Ours at the official's budget and box: xyz moves within +-maxnorm, no rotation, gripper +-0.75.
    dynamics = official_dynamics(ours)
    planner = make_planner("cem", samples=samples, elites=10, iterations=iterations, momentum_mean=0.15,
                           momentum_std=0.15)
    high = np.array([0.05, 0.05, 0.05, 0.0, 0.0, 0.0, 0.75], dtype=np.float32)

    def plan_official() -> None:
        with torch.no_grad():
            anchor.infer_next_action(z0, pose0, z_goal)

    def plan_ours(model: Dynamics) -> Callable[[], None]:
        def run() -> None:
            cost_fn = build_cost_fn(model, z0[:, 0], pose0[:, 0], z_goal[:, 0], ObjectiveConfig(metric="l1"))
            planner.plan(cost_fn, 1, horizon, -high, high, generator=torch.Generator().manual_seed(0))
        return run

    rows = anchor_rows("official V-JEPA 2-AC CEM", plan_official, parameters_m(official), {"ours": dynamics}, plan_ours,
                       repeats, bf16)
    rows += rollout_routes(dynamics, z0, pose0, torch.zeros(samples, horizon, action_dim), iterations, repeats, bf16)
    return rows, check


def rollout_routes(dynamics: Dynamics, z0: Tensor, state0: Tensor, actions: Tensor, iterations: int,
                   repeats: int, bf16: bool) -> list[Row]:
    """Our rollout alone by route, scaled to a planning call (x iterations): eager or compiled, fp32 or
    (with ``bf16``) bf16 autocast (not exact), and fp32 in sample chunks of 100 (``rollout_chunk``)."""
    def chunked(model: Dynamics) -> Dynamics:
        twin = copy.copy(model)  # shares the predictor (and its compiled rollout); only the chunking differs
        twin.config = dataclasses.replace(model.config, rollout_chunk=100)
        return twin

    compiled = fast_copy(dynamics, True, False)
    routes = {"eager": dynamics, "eager, chunks of 100": chunked(dynamics), "compiled": compiled,
              "compiled, chunks of 100": chunked(compiled)}
    if bf16:
        routes |= {"eager, bf16 autocast": fast_copy(dynamics, False, True),
                   "compiled, bf16 autocast": fast_copy(dynamics, True, True)}
    fns = {name: (lambda m=model: m.rollout(z0, state0, actions)) for name, model in routes.items()}
    with torch.no_grad():
        flops = count_flops(lambda: dynamics.rollout(z0, state0, actions))
        times = round_robin(with_peak_probe(fns), repeats)
    peak = probed_peak(times, torch.get_num_threads())
    return [Row(f"ours rollout only, {name} (x{iterations})", times[name][1] * iterations,
                times[name][0] * iterations, flops * iterations / 1e9, parameters_m(dynamics.predictor), peak)
            for name in fns]


# --------------------------------------------------------------------------- stable-worldmodel


def swm_vs_ours(site: Path, repeats: int, samples: int, iterations: int, horizon: int, bf16: bool) -> list[Row]:
    cem_module = import_from(site, "stable_worldmodel.solver.cem", first=False)
    lewm_module = import_from(site, "stable_worldmodel.wm.lewm.lewm", first=False)
    parts = import_from(site, "stable_worldmodel.wm.lewm.module", first=False)
    spaces = import_from(site, "gymnasium.spaces", first=False)
    env_action_dim, action_block, history = 2, 5, 3
    action_dim = env_action_dim * action_block
    head_dim, mlp = WIDTH // HEADS, 4 * WIDTH
    predictor = parts.Predictor(num_frames=history, depth=DEPTH, heads=HEADS, mlp_dim=mlp, input_dim=WIDTH,
                                hidden_dim=WIDTH, dim_head=head_dim)
    action_encoder = parts.Embedder(input_dim=action_dim, smoothed_dim=action_dim, emb_dim=WIDTH)
    lewm = lewm_module.LeWM(encoder=torch.nn.Identity(), predictor=predictor, action_encoder=action_encoder)
    lewm = lewm.eval().requires_grad_(False)
    solver = cem_module.CEMSolver(lewm, num_samples=samples, n_steps=iterations, topk=30, var_scale=1.0)
    solver.configure(action_space=spaces.Box(-1.0, 1.0, shape=(1, env_action_dim)), n_envs=1,
                     config=SimpleNamespace(horizon=horizon, action_block=action_block))
    z0, z_goal = torch.randn(1, 1, WIDTH), torch.randn(1, 1, WIDTH)
    # The solver encodes nothing when the embeddings are given; 'pixels' only tells it the history length.
    info = {"pixels": torch.zeros(1, 1), "goal": torch.zeros(1, 1), "emb": z0, "goal_emb": z_goal}

    # Ours in both action layouts: V-JEPA 2-AC's action token beside the frame token (2 tokens per step), and the
    # action embedding added to the frame token (1 token per step, as stable-worldmodel's predictor has).
    models = {}
    for name, conditioning in (("ours", "tokens"), ("ours additive", "additive")):
        torch.manual_seed(0)
        ours = ACPredictor(ACPredictorConfig(encoder_dim=WIDTH, action_dim=action_dim, grid_hw=(1, 1), dim=WIDTH,
                                             depth=DEPTH, num_heads=HEADS, conditioning=conditioning))
        models[name] = Dynamics(ours.eval().requires_grad_(False), DynamicsConfig(), normalize_outputs=False)
    # stable-worldmodel samples unbounded N(mean, 1) candidates and refits without momentum; a +-3 box
    # with init_std 1/3 of its half range gives the same spread and almost never clips.
    planner = make_planner("cem", samples=samples, elites=30, iterations=iterations, momentum_mean=0.0,
                           momentum_std=0.0, init_std=1 / 3)
    objective = ObjectiveConfig(metric="l2", layer_norm=False)

    def plan_swm() -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its solve time on every call
            solver.solve({key: value.clone() for key, value in info.items()})

    def plan_ours(model: Dynamics) -> Callable[[], None]:
        def run() -> None:
            cost_fn = build_cost_fn(model, z0, None, z_goal, objective)  # (E=1, N=1, D)
            planner.plan(cost_fn, 1, horizon, -3.0 * np.ones(action_dim), 3.0 * np.ones(action_dim),
                         generator=torch.Generator().manual_seed(0))
        return run

    return anchor_rows("stable-worldmodel CEMSolver + LeWM", plan_swm,
                       parameters_m(predictor) + parameters_m(action_encoder), models, plan_ours, repeats, bf16)


# --------------------------------------------------------------------------- report


def print_table(title: str, rows: list[Row], anchor: str | None, peak: float, threads: int) -> None:
    """``peak``: the fp32 rate measured at the start of the run; each row's own round robin measured another."""
    print(f"\n{title}\n")
    print("| path | predictor params | CPU ms per call | wall ms | cpu/wall | GFLOP per call | GFLOP/s | % of start "
          "peak | peak probe GFLOP/s | % of probe | anchor / this |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    reference = next((row.cpu_s for row in rows if row.path == anchor), None)
    for row in rows:
        rate = row.gflop / (row.cpu_s / threads)  # the rate an unstarved process would reach
        ratio = f"{reference / row.cpu_s:.2f}x" if reference is not None and "rollout only" not in row.path else ""
        print(f"| {row.path} | {row.params_m:.2f}M | {row.cpu_s * 1e3:.0f} | {row.wall_s * 1e3:.0f} | "
              f"{row.cpu_s / row.wall_s:.2f} | {row.gflop:.1f} | {rate:.0f} | {100 * rate / peak:.0f}% | "
              f"{row.peak_gflops:.0f} | {100 * rate / row.peak_gflops:.0f}% | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vjepa2", type=Path, default=ROOT / "outputs" / "anchors" / "vjepa2")
    parser.add_argument("--swm-site", type=Path,
                        default=ROOT / "outputs" / "anchors" / "swm-venv" / "lib" /
                        f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="time the bf16 autocast rows; auto: only on a CPU with AVX512-BF16 or AMX")
    args = parser.parse_args()
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and cpu_multiplies_bf16())
    torch.set_num_threads(args.threads)
    # Several compiled predictors (and chunk sizes) share _decode_steps' compile cache in this one
    # process; past dynamo's default 8 entries it would silently fall back to eager.
    torch._dynamo.config.recompile_limit = 64
    torch.manual_seed(0)
    peak = matmul_peak_gflops()
    bf16_peak = f"bf16 {matmul_peak_gflops(dtype=torch.bfloat16):.0f} GFLOP/s" if bf16 else "bf16 rows not timed"
    print(f"{args.threads} thread(s); matmul peak (2048^2, from CPU time, this process): fp32 {peak:.0f} GFLOP/s, "
          f"{bf16_peak}; % of peak below is of the fp32 peak")

    try:
        rows, check = official_vs_ours(args.vjepa2, args.repeats, samples=300, iterations=10, horizon=2, bf16=bf16)
        print(check)
    except AnchorUnavailable as error:
        print(f"official V-JEPA 2-AC path not timed: {error}")
    else:
        print_table("Official V-JEPA 2-AC CEM vs ours: 6 x 192 predictor, 16 tokens/frame, 300 samples x 10 "
                    "iterations, horizon 2", rows, "official V-JEPA 2-AC CEM", peak, args.threads)

    try:
        rows = swm_vs_ours(args.swm_site, args.repeats, samples=300, iterations=30, horizon=5, bf16=bf16)
    except AnchorUnavailable as error:
        print(f"stable-worldmodel CEM not timed: {error}")
    else:
        print_table("stable-worldmodel CEM vs ours: 6 x 192 predictors, 1 token/frame, 300 samples x 30 "
                    "iterations, horizon 5", rows, "stable-worldmodel CEMSolver + LeWM", peak, args.threads)


if __name__ == "__main__":
    main()
