"""scripts/plan.py and scripts/evaluate.py on the real reach env with a small random world model."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from PIL import Image

import envs
from jepa_world import evaluation as ev
from jepa_world.models.vit import build_encoder
from jepa_world.dynamics import DynamicsConfig
from jepa_world.latent_encoder import LatentConfig
from jepa_world.world_model import WorldModel

ROOT = Path(__file__).resolve().parent.parent
# threads=1: on a shared 2-core box a 2-thread torch pool mostly spins (measured ~10x slower per call).
FAST = ["max_steps=3", "horizon=2", "planner.samples=16", "planner.elites=4", "planner.iterations=2", "fps=4", "threads=1"]


@pytest.fixture(autouse=True)
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    encoder = build_encoder("tiny", img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    wm = WorldModel.create(encoder, action_dim=3, state_dim=9,
                           latent_config=LatentConfig(latent_pool=2),
                           dynamics_config=DynamicsConfig(integrated_state_dims=(0, 1, 2)),
                           dim=32, depth=1, num_heads=2)
    return wm.save_pretrained(tmp_path_factory.mktemp("wm"))


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config(name, overrides):
    from omegaconf import OmegaConf

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose(name, overrides=ev.route_model_override(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def reach_goal_image(seed=3):
    env = envs.make("reach")
    env.reset(seed=0, options={"goal_seed": seed})
    image = env.unwrapped.goal_image()
    env.close()
    return image


def test_plan_cli_writes_result_video_and_plot(model_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "scripts/plan.py", "env=reach", f"model={model_dir}", "goal=seed:3", f"output_dir={out}",
         "planner=mppi", "planner.samples=24", *FAST[:2], "planner.elites=4", "planner.iterations=2", "threads=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = [line for line in proc.stdout.splitlines() if line.strip() and not line.startswith("[")]  # not logs
    assert len(summary) == 1 and "success=" in summary[0] and "final_distance=" in summary[0]
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 3 and len(result["plan_ms"]) == 3 and len(result["energies"]) == 3
    assert isinstance(result["success"], bool)  # a seed goal has a simulator state, so success is known
    assert result["final_distance"] > 0
    assert result["settings"]["planner"]["name"] == "mppi" and result["settings"]["planner"]["samples"] == 24
    video = decord.VideoReader(str(out / "episode.mp4"))
    assert len(video) == 4  # one frame per step plus the final observation
    frame = video[0].asnumpy()
    assert frame.shape[1] == 2 * frame.shape[0] - 2 * ev.STRIP_HEIGHT or frame.shape[1] == 512
    assert (out / "energy.png").stat().st_size > 1000
    strip = np.asarray(Image.open(out / "strip.png"))  # all 4 frames (fewer than 6 panels), 4 px gaps
    assert strip.shape == (frame.shape[0], 4 * frame.shape[1] + 3 * 4, 3)


def test_plan_with_goal_image_file_resizes_with_warning_and_reports_unknown_success(model_dir, tmp_path, caplog):
    goal = Image.fromarray(reach_goal_image()).resize((80, 80))
    goal.save(tmp_path / "goal.png")
    cfg = config("plan", ["env=reach", f"model={model_dir}", f"goal={tmp_path / 'goal.png'}",
                          f"output_dir={tmp_path / 'out'}", "video=false", *FAST])
    payload = load_script("plan").plan_episode(cfg)
    assert any("goal.png is 80x80; resizing to the env's 64x64" in r.getMessage() for r in caplog.records)
    assert payload["success"] is None and payload["final_distance"] is None  # image-only goal: never guessed
    assert payload["steps"] == 3


def test_plan_bad_goal_and_model_inputs(model_dir, tmp_path):
    plan = load_script("plan")
    base = ["env=reach", f"model={model_dir}", f"output_dir={tmp_path / 'out'}", *FAST]
    with pytest.raises(FileNotFoundError, match=r"goal file .*missing.png does not exist"):
        plan.plan_episode(config("plan", [*base, f"goal={tmp_path / 'missing.png'}"]))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"text.png is not an image Pillow can read"):
        plan.plan_episode(config("plan", [*base, f"goal={tmp_path / 'text.png'}"]))
    Image.fromarray(np.full((64, 64, 4), 128, np.uint8)).save(tmp_path / "rgba.png")  # half-transparent
    with pytest.raises(ValueError, match=r"rgba.png has transparent pixels"):
        plan.plan_episode(config("plan", [*base, f"goal={tmp_path / 'rgba.png'}"]))
    Image.fromarray(np.full((64, 64, 2), 128, np.uint8), mode="LA").save(tmp_path / "la.png")  # 2 channels
    with pytest.raises(ValueError, match=r"la.png has transparent pixels"):
        plan.plan_episode(config("plan", [*base, f"goal={tmp_path / 'la.png'}"]))
    with pytest.raises(ValueError, match=r"goal spec 'seed:x': expected seed:N"):
        plan.plan_episode(config("plan", [*base, "goal=seed:x"]))
    with pytest.raises(FileNotFoundError, match=r"no world model at model=.*nowhere.*scripts/posttrain.py"):
        plan.plan_episode(config("plan", [*base, f"model={tmp_path / 'nowhere'}"]))
    with pytest.raises(MissingConfigException, match="planner/foo"):
        config("plan", [*base, "planner=foo"])
    with pytest.raises(ValueError, match=r"unknown cem planner setting\(s\) \['smaples'\]"):
        plan.plan_episode(config("plan", [*base, "+planner.smaples=3"]))


def test_plan_with_saved_goal_state_judges_success(model_dir, tmp_path):
    from envs.goals import save_goal

    env = envs.make("reach")
    state = env.unwrapped.set_goal(seed=5)
    sidecar = save_goal(tmp_path / "goal.png", env.unwrapped.goal_image(), state, env="reach")
    env.close()
    cfg = config("plan", ["env=reach", f"model={model_dir}", f"goal={sidecar}", f"output_dir={tmp_path / 'out'}",
                          "video=false", *FAST])
    payload = load_script("plan").plan_episode(cfg)
    assert isinstance(payload["success"], bool) and payload["final_distance"] > 0


def test_proprio_term_from_scripts_uses_goal_proprio_and_rejects_image_goals(model_dir, tmp_path):
    plan = load_script("plan")
    base = ["env=reach", f"model={model_dir}", f"output_dir={tmp_path / 'out'}", "video=false", *FAST,
            "objective.proprio_weight=0.5"]
    payload = plan.plan_episode(config("plan", [*base, "goal=seed:2"]))
    assert payload["steps"] == 3 and payload["settings"]["objective"]["proprio_weight"] == 0.5
    Image.fromarray(reach_goal_image()).save(tmp_path / "goal.png")
    with pytest.raises(ValueError, match="proprio_weight > 0 needs a goal with a known state"):
        plan.plan_episode(config("plan", [*base, f"goal={tmp_path / 'goal.png'}"]))


def test_missing_default_model_explains_how_to_train(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config("plan", ["env=reach", f"output_dir={tmp_path}"])
    if ev.REPO_ROOT.joinpath(cfg["model_dir"], "config.json").exists():
        pytest.skip("the default model has shipped")
    with pytest.raises(FileNotFoundError, match=r"checkpoints/reach-default.*train one with .*collect.py.*posttrain.py"):
        load_script("plan").plan_episode(cfg)


def test_evaluate_batched_matches_sequential_and_writes_lerobot_report(model_dir, tmp_path):
    evaluate = load_script("evaluate").evaluate
    common = ["env=reach", f"model={model_dir}", "episodes=3", "seed=1000", *FAST]
    batched = evaluate(config("evaluate", [*common, "num_envs=3", "max_videos=2", f"output_dir={tmp_path / 'b'}"]))
    info = json.loads((tmp_path / "b" / "eval_info.json").read_text())
    assert info == json.loads(json.dumps(batched))
    per_episode = info["per_episode"]
    assert [e["episode_ix"] for e in per_episode] == [0, 1, 2]
    assert [e["seed"] for e in per_episode] == [1000, 1001, 1002]
    for episode in per_episode:
        assert {"success", "final_distance", "steps", "plan_ms_median"} <= set(episode)
        assert episode["steps"] == 3  # the step budget ends every episode
    agg = info["aggregated"]
    assert agg["n_episodes"] == 3 and 0 <= agg["pc_success"] <= 100 and agg["eval_s"] > 0
    low, high = agg["pc_success_ci95"]
    assert 0 <= low <= agg["pc_success"] <= high <= 100 and high - low > 30  # 3 episodes pin little
    assert len(info["video_paths"]) == 2 and all(Path(p).is_file() for p in info["video_paths"])
    assert (tmp_path / "b" / "evaluation.png").stat().st_size > 10_000

    sequential = evaluate(config("evaluate", [*common, "num_envs=1", "max_videos=0", f"output_dir={tmp_path / 's'}"]))
    for b, s in zip(batched["per_episode"], sequential["per_episode"]):
        assert b["final_distance"] == pytest.approx(s["final_distance"], abs=1e-4)


def test_evaluate_rejects_zero_episodes_and_zero_step_budget(model_dir, tmp_path):
    evaluate = load_script("evaluate").evaluate
    base = ["env=reach", f"model={model_dir}", f"output_dir={tmp_path}"]
    with pytest.raises(ValueError, match="episodes must be >= 1, got 0"):
        evaluate(config("evaluate", [*base, "episodes=0"]))
    with pytest.raises(ValueError, match="step budget.*must be >= 1, got 0"):
        evaluate(config("evaluate", [*base, "max_steps=0"]))


def test_reference_policies_run_under_the_evaluation_protocol(tmp_path):
    evaluate = load_script("evaluate").evaluate
    common = ["env=reach", "episodes=3", "seed=1000", "num_envs=3", "max_videos=0"]
    expert = evaluate(config("evaluate", [*common, "policy=expert", f"output_dir={tmp_path / 'expert'}"]))
    random = evaluate(config("evaluate", [*common, "policy=random", f"output_dir={tmp_path / 'random'}"]))
    assert expert["aggregated"]["pc_success"] == 100.0 and expert["settings"]["policy"] == "expert"
    assert random["aggregated"]["avg_final_distance"] > 5 * expert["aggregated"]["avg_final_distance"]
    assert [e["seed"] for e in random["per_episode"]] == [1000, 1001, 1002]
    again = evaluate(config("evaluate", [*common, "policy=random", f"output_dir={tmp_path / 'again'}"]))
    distances = lambda info: [e["final_distance"] for e in info["per_episode"]]  # noqa: E731
    assert distances(again) == distances(random)  # seeded per episode
    with pytest.raises(ValueError, match=r"baseline policy 'greedy': expected one of \('expert', 'random'\)"):
        evaluate(config("evaluate", [*common, "policy=greedy", f"output_dir={tmp_path / 'bad'}"]))


def test_evaluation_plot_colours_episodes_by_outcome_and_skips_unjudged_runs(tmp_path):
    from PIL import Image

    def episode(ix, success, distances):
        return ev.EpisodeResult(episode_ix=ix, seed=ix, success=success, final_distance=distances[-1],
                                steps=len(distances), distances=distances)

    results = [episode(0, True, [0.4, 0.2, 0.01]), episode(1, False, [0.4, 0.3, 0.2])]
    out = ev.plot_evaluation(tmp_path / "evaluation.png", {"anywhere": results}, success_threshold=0.05)
    pixels = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3).astype(int)
    green = ((pixels[:, 1] > 100) & (pixels[:, 0] < 80) & (pixels[:, 2] < 80)).sum()
    red = ((pixels[:, 0] > 180) & (pixels[:, 1] < 80) & (pixels[:, 2] < 80)).sum()
    assert green > 100 and red > 100  # one success and one miss, both drawn
    unjudged = [ev.EpisodeResult(episode_ix=0, seed=0, success=None, final_distance=None, steps=2,
                                 distances=[float("nan")] * 2)]
    assert ev.plot_evaluation(tmp_path / "none.png", {"anywhere": unjudged}) is None and not (tmp_path / "none.png").exists()


def test_scripts_write_only_under_their_output_dir(model_dir, tmp_path):
    """Hydra's .hydra/ and log go under output_dir (plan, evaluate) or nowhere (make_goal, which
    writes only `out`); nothing lands in the working directory or the repo's outputs/."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}

    def run(script, *args):
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]

    repo_outputs = set((ROOT / "outputs").glob("*/*")) if (ROOT / "outputs").is_dir() else set()
    run("make_goal.py", "env=reach", "seed=3", "out=goal.png")
    assert sorted(p.name for p in cwd.iterdir()) == ["goal.json", "goal.png"]
    run("plan.py", "env=reach", f"model={model_dir}", "goal=goal.png", *FAST, f"output_dir={tmp_path / 'plan'}")
    run("evaluate.py", "env=reach", f"model={model_dir}", "episodes=1", "protocols=[anywhere]", "max_videos=0",
        *FAST, f"output_dir={tmp_path / 'eval'}")
    assert sorted(p.name for p in cwd.iterdir()) == ["goal.json", "goal.png"]
    for out, log in ((tmp_path / "plan", "plan.log"), (tmp_path / "eval", "evaluate.log")):
        assert (out / ".hydra" / "config.yaml").is_file() and (out / log).is_file()
    now = set((ROOT / "outputs").glob("*/*")) if (ROOT / "outputs").is_dir() else set()
    assert now == repo_outputs


def test_success_interval_is_the_wilson_interval():
    low, high = ev.success_interval(46, 50)  # 92%: the interval the docs quote
    assert round(low, 1) == 81.2 and round(high, 1) == 96.8
    assert ev.success_interval(50, 50)[1] == 100.0 and round(ev.success_interval(50, 50)[0], 1) == 92.9
    assert ev.success_interval(0, 10)[0] == 0.0
    with pytest.raises(ValueError, match="11/10"):
        ev.success_interval(11, 10)
