"""MPCAgent: bounds, time budget, warm start, batching, replanning cadence and bad input."""
import types

import numpy as np
import pytest
import torch
from torch import nn

from planners import make_planner
from planners.agent import MPCAgent
from planners.objectives import ObjectiveConfig, build_cost_fn
from jepa_world.models.vit import build_encoder
from jepa_world.dynamics import DynamicsConfig
from jepa_world.latent_encoder import LatentConfig
from jepa_world.world_model import WorldModel

SIZE = 16

pytestmark = pytest.mark.usefixtures("one_thread")


def render_point(xy: np.ndarray) -> np.ndarray:
    """A Gaussian blob at xy in [-1, 1]^2 on a (SIZE, SIZE, 3) uint8 image."""
    coords = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1
    blob = np.exp(-((coords[None, :] - xy[0]) ** 2 + (coords[:, None] - xy[1]) ** 2) / (2 * 0.15 ** 2))
    return np.repeat((blob * 255).astype(np.uint8)[..., None], 3, axis=2)


class PointWorldModel(nn.Module):
    """A smooth, exactly known world: the latent is the blob's position, actions move it.

    encode reads the position back from pixels (brightness centroid); rollout integrates
    actions. With a FakeClock, each rollout advances it by ``rollout_s``: a slow model for budget tests.
    """

    def __init__(self, clock=None, rollout_s: float = 0.0):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))
        self.clock, self.rollout_s = clock, rollout_s
        self.predictor = types.SimpleNamespace(config=types.SimpleNamespace(state_dim=2))  # it takes (x, y) states
        coords = (torch.arange(SIZE) + 0.5) / SIZE * 2 - 1
        self.register_buffer("coords", coords)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        w = frames[:, 0].float()  # (B, H, W)
        w = w / w.sum(dim=(1, 2), keepdim=True)
        x = (w.sum(1) * self.coords).sum(-1)
        y = (w.sum(2) * self.coords).sum(-1)
        return torch.stack([x, y], -1)[:, None, :]  # (B, N=1, D=2)

    def rollout(self, z0, state0, actions, use_kv_cache=True):
        if self.clock is not None:
            self.clock.advance(self.rollout_s)
        return z0[:, None] + self.gain * actions.cumsum(1)[:, :, None, :]  # (S, H, 1, 2)


def point_obs(xy):
    return {"pixels": render_point(np.asarray(xy)), "state": np.asarray(xy, dtype=np.float32)}


OBJECTIVE = ObjectiveConfig(metric="l2", layer_norm=False)
LOW, HIGH = np.array([-0.2, -0.1], np.float32), np.array([0.2, 0.3], np.float32)


def make_agent(model=None, planner="cem", **kwargs):
    planner_cfg = kwargs.pop("planner_cfg", dict(samples=64, elites=8, iterations=8))
    return MPCAgent(model or PointWorldModel(), make_planner(planner, **planner_cfg), action_low=LOW, action_high=HIGH,
                    **{"horizon": 3, "objective": OBJECTIVE, **kwargs})


@pytest.mark.parametrize("planner", ["cem", "mppi", "adam"])
def test_agent_reaches_goal_and_stays_in_bounds(planner):
    cfg = dict(samples=64, elites=8, iterations=8) if planner != "adam" else dict(samples=4, iterations=20, lr=0.2)
    agent = make_agent(planner=planner, planner_cfg=cfg)
    goal, xy = np.array([0.5, 0.6]), np.array([-0.4, -0.3])
    agent.reset(render_point(goal))
    start = np.linalg.norm(goal - xy)
    for _ in range(12):
        action = agent.act(point_obs(xy))
        assert action.shape == (2,) and np.isfinite(action).all()
        assert (action >= LOW - 1e-7).all() and (action <= HIGH + 1e-7).all()
        xy = xy + action
    assert np.linalg.norm(goal - xy) < 0.15 * start
    assert agent.last_plan.shape == (1, 3, 2)
    assert agent.last_energies.shape[0] == 1 and len(agent.plan_ms) == 12


def tiny_world_model():
    encoder = build_encoder("tiny", img_size=SIZE, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    return WorldModel.create(encoder, action_dim=2, state_dim=2, dynamics_config=DynamicsConfig(integrated_state_dims=(0, 1)),
                             dim=32, depth=1, num_heads=2).eval()


@pytest.mark.parametrize("planner,cfg", [("mppi", dict(samples=32, elites=4, iterations=3)),
                                         ("adam", dict(samples=4, iterations=6, lr=0.2))])
@pytest.mark.parametrize("context_frames", [1, 2])
def test_agent_with_real_world_model(planner, cfg, context_frames):
    wm = tiny_world_model()
    agent = MPCAgent(wm, make_planner(planner, **cfg), horizon=2, action_low=LOW, action_high=HIGH,
                     context_frames=context_frames)
    agent.reset(render_point(np.array([0.3, 0.3])))
    rng = np.random.default_rng(0)
    for _ in range(3):
        action = agent.act(point_obs(rng.uniform(-0.8, 0.8, 2)))
        assert (action >= LOW).all() and (action <= HIGH).all()
    assert np.isfinite(agent.stats.energies[-1]).all()
    assert all(p.grad is None for p in wm.parameters())
    if planner == "adam":  # gradients flowed through the world model and moved the plan
        assert agent.last_result.mean_costs[0, -1] < agent.last_result.mean_costs[0, 0]


def test_sampling_planners_plan_in_inference_mode_and_the_model_still_trains():
    """The agent runs CEM/MPPI in inference mode; the RoPE tables the ViT and predictor cache meanwhile must
    still serve a training step (an inference tensor cannot be saved for backward)."""
    encoder = build_encoder("tiny", img_size=SIZE, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    wm = WorldModel.create(encoder, action_dim=2, state_dim=2, latent_config=LatentConfig(trainable_encoder=True),
                           dim=32, depth=1, num_heads=2).eval()
    agent = MPCAgent(wm, make_planner("cem", samples=16, elites=4, iterations=2), horizon=2, action_low=LOW,
                     action_high=HIGH)
    agent.reset(render_point(np.array([0.3, 0.3])))
    agent.act(point_obs(np.array([0.0, 0.0])))
    assert agent.last_plan.is_inference() and not torch.is_inference_mode_enabled()
    wm.train()
    path = np.stack([render_point(np.array([0.2 * t, 0.0])) for t in range(3)])
    z = wm.embed(torch.from_numpy(path))[None]  # (1, 3, N, D), graph kept through the ViT
    actions, states = torch.full((1, 2, 2), 0.2), torch.zeros(1, 2, 2)
    loss = (wm.predict(z[:, :-1], actions, states) - z[:, 1:].detach()).pow(2).mean()
    loss.backward()
    assert wm.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert wm.predictor.predictor_blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_multi_frame_context_feeds_history_and_executed_actions():
    wm = tiny_world_model()
    calls = []
    rollout = wm.rollout

    def recording_rollout(z0, state0, actions, context_actions=None, **kwargs):
        calls.append((z0.shape, None if context_actions is None else context_actions.clone()))
        return rollout(z0, state0, actions, context_actions=context_actions, **kwargs)

    wm.rollout = recording_rollout
    agent = MPCAgent(wm, make_planner("cem", samples=8, elites=2, iterations=1), horizon=2, context_frames=3,
                     action_low=LOW, action_high=HIGH)
    agent.reset(render_point(np.array([0.3, 0.3])))
    executed = []
    for step in range(4):
        calls.clear()
        executed.append(agent.act(point_obs([0.1 * step - 0.2, 0.0])))
        frames = min(step + 1, 3)
        shape, context_actions = calls[0]
        if frames > 1:  # batch-1 shared context of the last `frames` frames and the actions between them
            assert shape[:2] == (1, frames)
            np.testing.assert_allclose(context_actions[0].numpy(), np.stack(executed[-frames:-1]), atol=1e-6)
        else:
            assert len(shape) == 3 and shape[0] == 1 and context_actions is None


def test_time_budget_is_used_and_not_exceeded_on_a_slow_model(fake_clock):
    budget, rollout_s = 0.4, 1 / 32
    agent = make_agent(PointWorldModel(fake_clock, rollout_s), planner_cfg=dict(samples=32, elites=4, iterations=10_000), time_budget_s=budget)
    agent.reset(render_point(np.array([0.5, 0.5])))
    for _ in range(3):
        start = fake_clock()
        agent.act(point_obs([0.0, 0.0]))
        elapsed = fake_clock() - start
        assert budget - rollout_s <= elapsed <= budget, elapsed  # it used the budget, and stayed within it
        assert agent.last_result.iterations == 12  # 12/32 s done; a 13th would end at 13/32 s > 0.4 s


def iterations_to_reach(costs: torch.Tensor, tol: float) -> int:
    reached = (costs.cummin(dim=-1).values <= tol).nonzero()
    return int(reached[0, -1]) + 1 if len(reached) else costs.shape[-1] + 1


def test_warm_start_reduces_iterations_needed():
    # Scoring every frame gives a unique optimal trajectory, so later plans overlap the
    # shifted earlier one; both agents see the same observations.
    objective = ObjectiveConfig(metric="l2", layer_norm=False, frames="all")
    needed = {True: 0, False: 0}
    for seed in range(3):
        agents = {warm: make_agent(planner_cfg=dict(samples=32, elites=6, iterations=12), horizon=4,
                                   warm_start=warm, objective=objective, seed=seed) for warm in needed}
        for agent in agents.values():
            agent.reset(render_point(np.array([0.5, 0.6])))
        pos = np.array([-0.1, -0.05])
        for step in range(5):
            action = agents[True].act(point_obs(pos))
            agents[False].act(point_obs(pos))
            pos = pos + action
            if step:  # the first call has nothing to warm-start from
                for warm, agent in agents.items():
                    needed[warm] += iterations_to_reach(agent.last_result.costs[0], tol=2e-3)
    assert needed[True] < 0.7 * needed[False], needed


def test_batched_envs_match_separate_agents():
    goals = [np.array([0.5, 0.1]), np.array([-0.3, 0.6])]
    starts = [np.array([0.0, 0.0]), np.array([0.2, -0.4])]
    batched = make_agent()
    batched.reset(np.stack([render_point(g) for g in goals]), seeds=[5, 9])
    actions = batched.act_batch([point_obs(s) for s in starts])
    for e, seed in enumerate([5, 9]):
        single = make_agent(seed=seed)
        single.reset(render_point(goals[e]))
        np.testing.assert_allclose(actions[e], single.act(point_obs(starts[e])), atol=1e-5)


def test_replan_every_executes_plan_then_replans():
    agent = make_agent(horizon=4, replan_every=2)
    agent.reset(render_point(np.array([0.5, 0.5])))
    first = agent.act(point_obs([0, 0]))
    plan = agent.last_plan.clone()
    second = agent.act(point_obs([0.1, 0.1]))
    np.testing.assert_allclose(first, plan[0, 0].numpy())
    np.testing.assert_allclose(second, plan[0, 1].numpy())
    agent.act(point_obs([0.2, 0.2]))
    assert len(agent.plan_ms) == 2


def test_prediction_feedback_removes_a_persistent_prediction_error():
    """The world drifts by DRIFT each step, which the model does not predict: plain MPC stops about DRIFT
    short (it plans to land on the goal and drifts past it), the offset-free agent learns the drift from
    observed latents and lands on the goal."""
    drift, goal = np.array([0.08, 0.0]), np.array([0.3, 0.2])

    def final_error(feedback: float) -> tuple[float, MPCAgent]:
        agent = make_agent(horizon=1, prediction_feedback=feedback)
        agent.reset(render_point(goal))
        xy = np.array([-0.2, -0.1])
        for _ in range(15):
            xy = xy + agent.act(point_obs(xy)) + drift
        return float(np.linalg.norm(xy - goal)), agent

    plain, _ = final_error(0.0)
    corrected, agent = final_error(1.0)
    assert plain > 0.6 * np.linalg.norm(drift), plain
    assert corrected < 0.25 * plain, (corrected, plain)
    offset = agent.latent_offset[0, 0].numpy()  # (D=2): the estimated error is the drift, in latent units
    assert np.linalg.norm(offset - drift) < 0.03, offset
    agent.reset(render_point(goal))  # a new episode starts without an error estimate
    assert agent.latent_offset is None


def test_proprio_term_pulls_toward_goal_state():
    model = PointWorldModel()
    z = model.encode(torch.as_tensor(render_point(np.zeros(2)))[None].permute(0, 3, 1, 2))
    cfg = ObjectiveConfig(metric="l2", layer_norm=False, proprio_weight=1.0)

    class WithStates(PointWorldModel):
        def next_states(self, states, actions):
            return states + actions

    cost_fn = build_cost_fn(WithStates(), z, torch.zeros(1, 2), z, cfg, goal_state=torch.tensor([[0.3, 0.0]]))
    actions = torch.zeros(1, 2, 1, 2)
    actions[0, 1, 0, 0] = 0.3  # reaches the goal state but moves the latent away
    costs = cost_fn(actions)[0]
    torch.testing.assert_close(costs, torch.tensor([0.09, 0.045]))


def test_energy_landscape_minimum_at_the_recorded_action(tmp_path):
    from jepa_world.energy_landscape import compute_landscape, plot_landscape

    start, action = np.array([-0.2, 0.1]), np.array([0.15, -0.05])
    frames = torch.as_tensor(np.stack([render_point(start), render_point(start + action)])).permute(0, 3, 1, 2)
    landscape = compute_landscape(PointWorldModel(), frames, torch.as_tensor(action[None], dtype=torch.float32),
                                  torch.as_tensor(np.stack([start, start + action]), dtype=torch.float32),
                                  radius=0.1, points=21, objective=OBJECTIVE)
    assert landscape.energies.shape == (21, 21)
    assert landscape.argmin_error < 0.015  # within one grid cell (0.01 spacing) of the recorded action
    assert landscape.true_energy <= np.median(landscape.energies)
    path = plot_landscape(landscape, tmp_path / "landscape.png")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match=r"dims must be two different action dims in \[0, 2\), got \(0, 0\)"):
        compute_landscape(PointWorldModel(), frames, torch.zeros(1, 2), None, dims=(0, 0))


def test_bad_observations_and_settings_raise_clear_errors():
    agent = make_agent()
    with pytest.raises(RuntimeError, match=r"call reset\(goal_image\)"):
        agent.act(point_obs([0, 0]))
    with pytest.raises(ValueError, match="goal image 0 is blank"):
        agent.reset(np.zeros((SIZE, SIZE, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\).*got shape \(16, 16, 4\)"):
        agent.reset(np.zeros((SIZE, SIZE, 4), np.uint8))
    agent.reset(render_point(np.array([0.5, 0.5])))
    for pixels in (np.full((SIZE, SIZE, 3), np.nan, np.float32),  # float frames are ambiguous: refused, not guessed
                   render_point(np.zeros(2)).astype(np.float32) / 255, render_point(np.zeros(2)).astype(np.int64)):
        with pytest.raises(ValueError, match=rf"observation must be uint8 RGB in \[0, 255\], got dtype {pixels.dtype}"):
            agent.act({"pixels": pixels, "state": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match=r"goal image must be uint8 RGB.*got dtype float64"):
        agent.reset(render_point(np.array([0.5, 0.5])) / 255.0)
    with pytest.raises(ValueError, match="observation 0 is blank"):
        agent.act({"pixels": np.full((SIZE, SIZE, 3), 255, np.uint8), "state": np.zeros(2)})
    with pytest.raises(ValueError, match="state contains NaN"):
        agent.act({"pixels": render_point(np.zeros(2)), "state": np.array([np.nan, 0.0])})
    for state in (np.zeros(3), np.zeros(1), np.zeros((2, 1))):
        with pytest.raises(ValueError, match=r"'state' must be a vector of length 2 .*state_dim"):
            agent.act({"pixels": render_point(np.zeros(2)), "state": state})
    with pytest.raises(ValueError, match=r"got 2 observations for an agent reset with 1 goals"):
        agent.act_batch([point_obs([0, 0])] * 2)
    with pytest.raises(ValueError, match=r"replan_every must be in \[1, horizon=3\], got 4"):
        make_agent(replan_every=4)
    with pytest.raises(ValueError, match="context_frames must be >= 1, got 0"):
        make_agent(context_frames=0)
    for gain in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"prediction_feedback must be a gain in \[0, 1\]"):
            make_agent(prediction_feedback=gain)
    z = torch.zeros(1, 1, 2)
    with pytest.raises(ValueError, match=r"latent_offset must be \(E, N, D\) = \(1, 1, 2\), got \(1, 2\)"):
        build_cost_fn(PointWorldModel(), z, torch.zeros(1, 2), z, OBJECTIVE, latent_offset=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="needs action_low and action_high"):
        MPCAgent(PointWorldModel(), make_planner("cem"))
    with pytest.raises(ValueError, match="unknown objective metric 'l3'"):
        make_agent(objective=ObjectiveConfig(metric="l3"))
