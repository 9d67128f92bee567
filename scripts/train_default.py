"""Reproduce the shipped default world model: collect -> pretrain -> post-train end to end ->
joint critic (that encoder trained on with the temporal-distance critic's loss, on a larger
collection) -> refine (the frozen stage on the resulting latent encoder, on a larger collection
still) -> evaluate.

    python scripts/train_default.py env=reach output_dir=outputs/reach-default ship=true

Every stage is the project's own command line, run as a subprocess with the overrides from
conf/train_default.yaml; its exact command, wall time and headline metrics go to
output_dir/recipe.json. A stage whose output is complete is skipped on a rerun, so an
interrupted recipe continues where it stopped. With ship=true the final world model
(model.safetensors + config.json, no optimizer state) is copied to ship_dir.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from jepa_world.model_format import CONFIG_FILE, MODEL_FILE, write_directory

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("train_default")


def run_stage(name: str, command: list[str], done_marker: Path, env: dict[str, str], record: dict,
              previous: dict) -> None:
    """Run one stage unless done_marker exists; record its command and wall time. A skipped stage keeps
    the wall time ``previous`` (the output_dir's earlier recipe.json) recorded for the same command."""
    record[name] = {"command": " ".join(command)}
    if done_marker.exists():
        log.info("stage %s: already complete (%s), skipping", name, done_marker)
        record[name]["skipped"] = True
        earlier = previous.get(name, {})
        if earlier.get("command") == record[name]["command"] and "wall_s" in earlier:
            record[name]["wall_s"] = earlier["wall_s"]
        return
    log.info("stage %s: %s", name, " ".join(command))
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env)
    record[name]["wall_s"] = round(time.perf_counter() - start, 1)
    if result.returncode != 0:
        raise SystemExit(f"stage {name} failed with exit code {result.returncode}: {' '.join(command)}")
    if not done_marker.exists():
        raise SystemExit(f"stage {name} exited 0 but did not write {done_marker}")
    log.info("stage %s: done in %.1fs", name, record[name]["wall_s"])


def read_previous_record(path: Path) -> dict:
    """The recipe.json an earlier run into this output_dir wrote ({} if none)."""
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path} is not valid JSON ({err}): move it away to rerun the recipe here") from err


def last_metrics(path: Path) -> dict:
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return json.loads(lines[-1]) if lines else {}


def ship(world_model_dir: Path, ship_dir: Path, provenance: dict) -> None:
    """Publish weights + config (not the optimizer state) and recipe.json as ship_dir, in one atomic swap."""
    def write(staging: Path) -> None:
        for name in (MODEL_FILE, CONFIG_FILE):
            shutil.copy2(world_model_dir / name, staging / name)
        (staging / "recipe.json").write_text(json.dumps(provenance, indent=2) + "\n")

    write_directory(ship_dir, write)
    log.info("shipped %s -> %s", world_model_dir, ship_dir)


@hydra.main(config_path="../conf", config_name="train_default", version_base=None)
def main(cfg: DictConfig) -> None:
    out = Path(cfg.output_dir).resolve()
    env_name = str(cfg.env.name)
    data_dir, pretrain_dir, posttrain_dir, joint_critic_dir, refine_dir, eval_dir = (
        out / s for s in ("data", "pretrain", "posttrain", "joint_critic", "refine", "evaluate"))
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
           "OMP_NUM_THREADS": str(cfg.threads), "MKL_NUM_THREADS": str(cfg.threads)}
    py = sys.executable
    record: dict = {"env": env_name, "output_dir": str(out)}
    previous = read_previous_record(out / "recipe.json")
    start = time.perf_counter()

    c = cfg.collect

    def collect_command(episodes: int, output_dir: Path) -> list[str]:
        return [py, "scripts/collect.py", f"env={env_name}", f"episodes={episodes}", f"seed={c.seed}",
                f"expert_ratio={c.expert_ratio}", f"workers={c.workers}", f"output_dir={output_dir}"]

    def collection(episodes: int | None) -> Path:
        """The dataset of ``episodes`` episodes (null: collect's), collected once by its own stage. Every
        collection has collect's seed, so the smaller ones are the first episodes of the larger ones."""
        if not episodes or episodes == c.episodes:
            return data_dir
        directory = out / f"data_{episodes}"
        run_stage(f"collect_{episodes}", collect_command(episodes, directory), directory / "meta" / "info.json",
                  env, record, previous)
        return directory

    run_stage("collect", collect_command(c.episodes, data_dir), data_dir / "meta" / "info.json", env, record, previous)
    run_stage("pretrain", [py, "scripts/pretrain.py", "data=trajectory", f"data.root={data_dir}",
                           *map(str, cfg.pretrain), f"output_dir={pretrain_dir}"],
              pretrain_dir / "checkpoints" / "last" / "model.safetensors", env, record, previous)
    run_stage("posttrain", [py, "scripts/posttrain.py", f"data={data_dir}",
                            f"encoder={pretrain_dir / 'checkpoints' / 'last'}", *map(str, cfg.posttrain),
                            f"output_dir={posttrain_dir}"],
              posttrain_dir / "checkpoints" / "last" / "model.safetensors", env, record, previous)
    model_dir = posttrain_dir / "checkpoints" / "last"
    if cfg.joint_critic:  # the end-to-end encoder trained on, the critic's loss shaping its latent
        run_stage("joint_critic", [py, "scripts/posttrain.py", f"data={collection(cfg.joint_critic_episodes)}",
                                   f"encoder={model_dir}", *map(str, cfg.posttrain), *map(str, cfg.joint_critic),
                                   f"output_dir={joint_critic_dir}"],
                  joint_critic_dir / "checkpoints" / "last" / "model.safetensors", env, record, previous)
        model_dir = joint_critic_dir / "checkpoints" / "last"
    if cfg.refine:  # the frozen stage: a new predictor (and the critic) on the end-to-end latent encoder
        run_stage("refine", [py, "scripts/posttrain.py", f"data={collection(cfg.refine_episodes)}",
                             f"encoder={model_dir}", *map(str, cfg.refine), f"output_dir={refine_dir}"],
                  refine_dir / "checkpoints" / "last" / "model.safetensors", env, record, previous)
        model_dir = refine_dir / "checkpoints" / "last"
    run_stage("evaluate", [py, "scripts/evaluate.py", f"env={env_name}", f"model={model_dir}",
                           *map(str, cfg.evaluate), f"output_dir={eval_dir}"],
              eval_dir / "eval_info.json", env, record, previous)

    record["pretrain"]["final"] = last_metrics(pretrain_dir / "metrics.jsonl")
    record["posttrain"]["final"] = last_metrics(posttrain_dir / "metrics.jsonl")
    for name, stage_dir in (("joint_critic", joint_critic_dir), ("refine", refine_dir)):
        if cfg[name]:
            record[name]["final"] = last_metrics(stage_dir / "metrics.jsonl")
    evaluation = json.loads((eval_dir / "eval_info.json").read_text())
    aggregated = evaluation.get("aggregated", {})
    record["evaluate"]["aggregated"] = aggregated
    record["evaluate"]["protocols"] = evaluation.get("protocols", {})
    record["run_wall_s"] = round(time.perf_counter() - start, 1)  # this invocation
    stages = {name: v for name, v in record.items() if isinstance(v, dict) and "command" in v}
    untimed = [name for name, v in stages.items() if "wall_s" not in v]
    if untimed:
        log.warning("stages %s were complete before this run and have no recorded wall time", untimed)
    record["total_wall_s"] = round(sum(v.get("wall_s", 0.0) for v in stages.values()), 1)  # every stage, over all runs
    record["config"] = OmegaConf.to_container(cfg, resolve=True)
    (out / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("recipe finished in %.1fs: %s", record["total_wall_s"], aggregated)
    if cfg.ship:
        ship(model_dir, ROOT / str(cfg.ship_dir), record)
    successes = {name: agg.get("pc_success") for name, agg in record["evaluate"]["protocols"].items()}
    print(f"{env_name} recipe: pc_success {successes or aggregated.get('pc_success')} in {record['total_wall_s']:.0f}s "
          f"-> {out / 'recipe.json'}")


if __name__ == "__main__":
    main()
