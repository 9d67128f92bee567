"""The benchmark scripts' own logic: the round robin that compare_anchors times the anchors with, and the
accounting of early_elimination's route measurement on the shipped model."""
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_anchors  # noqa: E402
import early_elimination  # noqa: E402

from jepa_world import evaluation as ev  # noqa: E402


def test_round_robin_reverses_every_other_round_and_takes_medians():
    """A fn's place in a round moved its time by 2-6% (docs/planning.md), so every other round runs in reverse."""
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = compare_anchors.round_robin(fns, repeats=4)
    warm_up = ["a", "b", "c"]
    assert calls == warm_up + ["a", "b", "c", "c", "b", "a", "a", "b", "c", "c", "b", "a"]
    assert set(times) == set("abc") and all(wall >= 0 and cpu >= 0 for wall, cpu in times.values())


def test_early_elimination_accounting_on_the_shipped_model():
    """Keeping every candidate keeps every elite at exactly the full rollout's work; keeping a quarter costs less."""
    world_model = ev.load_world_model(str(ROOT / "checkpoints" / "reach-default"), "reach")
    planner_cfg = yaml.safe_load((ROOT / "conf" / "planner" / "cem_fast.yaml").read_text())
    rows = {row.keep: row for row in early_elimination.measure(world_model, planner_cfg, pairs=2, horizons=[3],
                                                               keeps=[1.0, 0.25])}
    assert rows[1.0].elite_recall == 1.0 and rows[1.0].best_kept == 1.0
    assert abs(rows[1.0].work - 1.0) < 1e-9
    # All 64 candidates to step 1, then 16 on: between a third and the whole of a 3-step rollout's work.
    assert 1 / 3 < rows[0.25].work < 0.8
    assert 0.0 <= rows[0.25].elite_recall <= 1.0 and 0.0 <= rows[0.25].best_kept <= 1.0
