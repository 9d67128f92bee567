"""End to end: collect reach data, post-train a small world model with the real scripts in the recipe's two
stages, then plan toward goal images with the evaluation script and map the energy landscape.

Torch runs on all cores: on a quiet 2-core machine (AMD EPYC, AVX2, 2026-12-07) the five stages took 242 s with
two threads against 327 s with one (both 90% near success, final prediction metrics within 1%).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CI_NEAR_SUCCESS_FLOOR = 70  # percent of the 10 near goals of seeds 1000-1009 (issue #12); measured 90 here (85 on 20)


def run_script(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_end_to_end_model_reaches_near_goals_on_its_own_latents(tmp_path):
    """Issue #12's CI-sized run of the recipe's two post-training stages with the real script:
    collect a small reach dataset; post-train end to end (encoder, projector and predictor); then
    the frozen stage on that latent encoder (a new predictor trained longer on cached latents, fed
    the observed proprio state, and the temporal-distance critic); plan on the latent + critic energy alone (no readout, no
    simulator state) toward 10 "near" goals. The end-to-end stage's latent encoder (ViT +
    projector) starts from the shipped model's (a world-model directory, one of the supported
    inits); predictors and critic start from scratch."""
    data, e2e, refined = tmp_path / "data", tmp_path / "e2e", tmp_path / "refined"
    run_script("scripts/collect.py", "env=reach", "episodes=150", f"output_dir={data}", "workers=2", "seed=0")
    common = ["loss=mse", "world_model.latent=global", "world_model.normalize_latents=false", "state_tokens=false",
              "predictor.size=micro", "predictor.predict_residual=true", "num_frames=4", "optim.lr=1e-3",
              "optim.decay_fraction=0.5", "optim.weight_decay=1e-3", "optim.final_weight_decay=1e-3", "log_every=100"]
    run_script("scripts/posttrain.py", f"data={data}", f"encoder={ROOT / 'checkpoints' / 'reach-default'}",
               "mode=end_to_end", *common, "batch_size=16", "max_steps=400", "eval_every=400", "save_every=400",
               f"output_dir={e2e}")
    run_script("scripts/posttrain.py", f"data={data}", f"encoder={e2e / 'checkpoints' / 'last'}", "mode=frozen",
               *[o for o in common if o != "state_tokens=false"], "state_tokens=true",
               "world_model.integrated_state_dims=[]", "world_model.state_update=hold", "batch_size=64", "max_steps=1500", "critic={}", "critic_steps=1000", "eval_every=1500",
               "save_every=1500", f"feature_cache_root={tmp_path / 'features'}", f"output_dir={refined}")
    first = [json.loads(line) for line in (e2e / "metrics.jsonl").read_text().splitlines()][-1]
    final = [json.loads(line) for line in (refined / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["step"] == 2500 and final["plan_spearman_critic_vs_steps"] > 0.2, final
    assert final["ratio_h1"] < first["ratio_h1"], (first, final)  # the longer frozen stage predicts better
    eval_dir = tmp_path / "eval"
    run_script("scripts/evaluate.py", "env=reach", "episodes=10", "seed=1000",
               f"model={refined / 'checkpoints' / 'last'}", "num_envs=10", "max_videos=0", "protocols=[near]",
               f"output_dir={eval_dir}")
    info = json.loads((eval_dir / "near" / "eval_info.json").read_text())
    assert info["settings"]["objective"]["readout_weight"] in (None, 0.0)
    assert info["aggregated"]["pc_success"] >= CI_NEAR_SUCCESS_FLOOR, info["aggregated"]

    landscape_png = tmp_path / "landscape.png"
    proc = run_script("scripts/energy_landscape.py", "--model", str(refined / "checkpoints" / "last"), "--data",
                      str(data), "--points", "7", "--out", str(landscape_png))
    assert "grid argmin" in proc.stdout and landscape_png.stat().st_size > 1000
