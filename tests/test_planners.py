"""Planners on analytic objectives: optimum reached, bounds respected, seeding, batching."""
import math

import pytest
import torch

from planners import PLANNERS, CEMConfig, GradientConfig, MPPIConfig, make_planner
from planners.base import ActionBounds

H, A = 3, 2
LOW, HIGH = -torch.ones(A), torch.ones(A)

# Settings tuned for the analytic problems; tolerances are max |plan - optimum| per element.
PLANNER_SETUPS = {
    "cem": (dict(samples=200, elites=20, iterations=25), 0.02),
    "mppi": (dict(samples=256, elites=32, iterations=25, temperature=0.3), 0.05),
    "adam": (dict(samples=4, iterations=150, lr=0.05), 0.02),
}


def quadratic(targets: torch.Tensor):
    """Shifted quadratic; targets (E, H, A) -> cost_fn((E, S, H, A)) -> (E, S)."""
    return lambda actions: (actions - targets[:, None]).pow(2).sum(dim=(-2, -1))


def plan(name, cost_fn, num_envs, seed=0, max_norm=None, **kwargs):
    config, _ = PLANNER_SETUPS[name]
    planner = make_planner(name, **{**config, "max_norm": max_norm})
    return planner.plan(cost_fn, num_envs, H, LOW, HIGH, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("name", sorted(PLANNER_SETUPS))
def test_reaches_interior_optimum_of_shifted_quadratic(name):
    targets = torch.tensor([[0.3, -0.5], [0.1, 0.7], [-0.6, 0.2]]).expand(2, H, A).clone()
    targets[1] *= -1
    result = plan(name, quadratic(targets), 2)
    tol = PLANNER_SETUPS[name][1]
    assert (result.actions - targets).abs().max() < tol
    assert result.costs[:, -1].max() < result.costs[:, 0].min()  # it actually improved


@pytest.mark.parametrize("name", sorted(PLANNER_SETUPS))
def test_optimum_on_box_boundary(name):
    targets = torch.tensor([1.6, -2.5]).expand(1, H, A)  # outside the box: optimum is the clamp
    result = plan(name, quadratic(targets), 1)
    assert result.actions.min() >= -1 and result.actions.max() <= 1
    assert (result.actions - targets.clamp(-1, 1)).abs().max() < PLANNER_SETUPS[name][1]


@pytest.mark.parametrize("name", sorted(PLANNER_SETUPS))
def test_optimum_on_norm_ball_boundary(name):
    targets = torch.tensor([0.9, 0.9]).expand(1, H, A)
    result = plan(name, quadratic(targets), 1, max_norm=0.5)
    norms = result.actions.norm(dim=-1)
    assert norms.max() <= 0.5 + 1e-5
    optimum = targets / targets.norm(dim=-1, keepdim=True) * 0.5
    assert (result.actions - optimum).abs().max() < PLANNER_SETUPS[name][1]


@pytest.mark.parametrize("name", sorted(PLANNER_SETUPS))
def test_same_seed_same_plan_other_seed_other_plan(name):
    cost_fn = quadratic(torch.full((2, H, A), 0.25))
    short = dict(iterations=3)
    config = {**PLANNER_SETUPS[name][0], **short}
    first, second, other = (make_planner(name, **config).plan(cost_fn, 2, H, LOW, HIGH, generator=torch.Generator().manual_seed(s))
                            for s in (7, 7, 8))
    assert torch.equal(first.actions, second.actions)
    assert not torch.equal(first.actions, other.actions)


@pytest.mark.parametrize("name", sorted(PLANNER_SETUPS))
def test_batched_over_envs_equals_one_by_one(name):
    targets = torch.randn(3, H, A, generator=torch.Generator().manual_seed(0)).clamp(-0.9, 0.9)
    planner = make_planner(name, **{**PLANNER_SETUPS[name][0], "iterations": 5})
    seeds = [11, 12, 13]
    batched = planner.plan(quadratic(targets), 3, H, LOW, HIGH, generator=[torch.Generator().manual_seed(s) for s in seeds])
    for e, seed in enumerate(seeds):
        single = planner.plan(quadratic(targets[e:e + 1]), 1, H, LOW, HIGH, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(batched.actions[e], single.actions[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(batched.costs[e], single.costs[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PLANNER_SETUPS))
def test_candidate_zero_is_the_mean(name):
    init = torch.full((2, H, A), 0.4)
    seen = []

    def cost_fn(actions):
        seen.append(actions[:, 0].detach().clone())
        return actions.pow(2).sum(dim=(-2, -1))

    make_planner(name, **{**PLANNER_SETUPS[name][0], "iterations": 2}).plan(
        cost_fn, 2, H, LOW, HIGH, init_mean=init, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen[0], init)


def test_adam_really_steps():
    init = torch.full((1, H, A), 0.8)
    result = make_planner("adam", samples=1, iterations=20, lr=0.05).plan(
        quadratic(torch.zeros(1, H, A)), 1, H, LOW, HIGH, init_mean=init)
    assert not torch.allclose(result.mean, init)
    mean_costs = result.mean_costs[0]
    assert mean_costs[-1] < 0.5 * mean_costs[0]
    assert bool((mean_costs[1:] <= mean_costs[:-1] + 1e-6).float().mean() > 0.8)  # mostly monotone descent


def test_gradient_planner_leaves_model_parameter_grads_untouched():
    layer = torch.nn.Linear(A, 1)
    cost_fn = lambda actions: layer(actions).squeeze(-1).pow(2).sum(-1)  # noqa: E731
    make_planner("adam", samples=2, iterations=3).plan(cost_fn, 1, H, LOW, HIGH)
    assert layer.weight.grad is None


@pytest.mark.parametrize("name", ["cem", "mppi", "adam"])
def test_time_budget_stops_before_the_deadline_and_returns_best_so_far(name, fake_clock):
    iteration_s = 1 / 32  # exact in binary, so the expected iteration count is exact too

    def slow_cost(actions):
        fake_clock.advance(iteration_s)
        return actions.pow(2).sum(dim=(-2, -1))

    sizes = dict(samples=16, iterations=1000) | ({} if name == "adam" else dict(elites=4))
    result = make_planner(name, **sizes).plan(slow_cost, 1, H, LOW, HIGH, time_budget_s=0.25)
    # After k iterations it is k/32 s; a (k+1)-th as long as the last would end past 0.25 s once k = 8.
    assert result.iterations == 8
    assert result.elapsed_s == pytest.approx(0.25)
    assert result.best_cost[0] == result.costs[0].min()


def test_time_budget_accounts_for_an_iteration_slower_than_the_rest(fake_clock):
    durations = iter([0.01] * 5 + [0.1] + [0.01] * 100)

    def cost(actions):
        fake_clock.advance(next(durations))
        return actions.pow(2).sum(dim=(-2, -1))

    result = make_planner("cem", samples=16, elites=4, iterations=1000).plan(cost, 1, H, LOW, HIGH, time_budget_s=0.2)
    # At 0.15 s the last iteration took 0.1 s, so another is predicted to end at 0.25 s: stop at 6.
    assert result.iterations == 6 and result.elapsed_s <= 0.2


@pytest.mark.parametrize("name", ["cem", "mppi", "adam"])
def test_all_nan_costs_raise_naming_the_env_instead_of_returning_a_default_plan(name):
    def cost(a):  # env 1's world model is broken
        c = (a ** 2).sum((-1, -2))
        return torch.where(torch.arange(2)[:, None] == 1, float("nan"), c)

    settings = dict(samples=8, iterations=3, **({} if name == "adam" else {"elites": 2}))
    with pytest.raises(RuntimeError, match=r"no finite cost for env\(s\) \[1\]"):
        make_planner(name, **settings).plan(cost, 2, H, LOW, HIGH)


def test_some_nan_candidates_are_skipped():
    def cost(a):
        c = (a ** 2).sum((-1, -2))
        return torch.where(torch.arange(c.shape[1]) % 2 == 1, float("nan"), c)

    result = make_planner("cem", samples=8, elites=2, iterations=3).plan(cost, 1, H, LOW, HIGH)
    assert torch.isfinite(result.actions).all() and torch.isfinite(result.best_cost).all()


@pytest.mark.parametrize("name", ["cem", "mppi"])
@pytest.mark.parametrize("setting, message", [
    (dict(samples=1, elites=1), r"samples must be >= 2 .* got 1"),
    (dict(samples=10, elites=0), r"elites must be in \[1, samples=10\], got 0"),
    (dict(iterations=0), r"iterations must be >= 1, got 0"),
    (dict(momentum_mean=1.0), r"momentum_mean must be in \[0, 1\), got 1.0"),
    (dict(init_std=0.0), r"init_std must be > 0 and min_std >= 0, got init_std=0.0"),
])
def test_sampling_planner_settings_are_validated_with_the_bad_value(name, setting, message):
    with pytest.raises(ValueError, match=message):
        make_planner(name, **setting)


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match=r"unknown planner 'cme'.*\['adam', 'cem', 'mppi'\]"):
        make_planner("cme")
    with pytest.raises(ValueError, match=r"unknown cem planner setting\(s\) \['sample'\]"):
        make_planner("cem", sample=10)
    with pytest.raises(ValueError, match="elites must be in"):
        make_planner("cem", samples=10, elites=20)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        make_planner("mppi", temperature=0)
    planner = make_planner("cem", samples=8, elites=2, iterations=1)
    with pytest.raises(ValueError, match=r"cost_fn must return shape \(E, S\) = \(1, 8\), got \(8,\)"):
        planner.plan(lambda a: a.sum(dim=(0, 2, 3)), 1, H, LOW, HIGH)
    with pytest.raises(ValueError, match=r"init_mean must have shape"):
        planner.plan(quadratic(torch.zeros(1, H, A)), 1, H, LOW, HIGH, init_mean=torch.zeros(1, H + 1, A))
    with pytest.raises(ValueError, match="action_low must be <= action_high"):
        planner.plan(quadratic(torch.zeros(1, H, A)), 1, H, HIGH, LOW)
    with pytest.raises(ValueError, match="one generator or one per env"):
        planner.plan(quadratic(torch.zeros(2, H, A)), 2, H, LOW, HIGH, generator=[torch.Generator()] * 3)


def test_registry_and_configs_cover_all_planners():
    assert set(PLANNERS) == {"cem", "mppi", "adam"}
    assert isinstance(make_planner("cem").config, CEMConfig)
    assert isinstance(make_planner("mppi").config, MPPIConfig)
    assert isinstance(make_planner("adam").config, GradientConfig)
    bounds = ActionBounds(LOW, HIGH, max_norm=1.0)
    projected = bounds.project(torch.tensor([[3.0, 4.0]]))
    assert math.isclose(projected.norm().item(), 1.0, rel_tol=1e-6)
