"""benchmarks/early_elimination.py measures a route of issue #14 on the shipped model; its accounting is checked
here: keeping every candidate must keep every elite and cost the full rollout's work, and keeping a quarter
must cost less."""
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import early_elimination  # noqa: E402

from jepa_world import evaluation as ev  # noqa: E402


def test_early_elimination_accounting_on_the_shipped_model():
    world_model = ev.load_world_model(str(ROOT / "checkpoints" / "reach-default"), "reach")
    planner_cfg = yaml.safe_load((ROOT / "conf" / "planner" / "cem_fast.yaml").read_text())
    rows = {row.keep: row for row in early_elimination.measure(world_model, planner_cfg, pairs=2, horizons=[3],
                                                               keeps=[1.0, 0.25])}
    assert rows[1.0].elite_recall == 1.0 and rows[1.0].best_kept == 1.0
    assert abs(rows[1.0].work - 1.0) < 1e-9
    # All 64 candidates to step 1, then 16 on: between a third and the whole of a 3-step rollout's work.
    assert 1 / 3 < rows[0.25].work < 0.8
    assert 0.0 <= rows[0.25].elite_recall <= 1.0 and 0.0 <= rows[0.25].best_kept <= 1.0
