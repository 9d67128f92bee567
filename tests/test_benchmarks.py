"""The benchmark scripts' own logic: the round robin that compare_anchors times the anchors with, the
accounting of early_elimination's route measurement on the shipped model, and rollout_time_split's timers."""
import sys
from pathlib import Path

import torch
import yaml
from torch._inductor.select_algorithm import extern_kernels

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_anchors  # noqa: E402
import early_elimination  # noqa: E402
import rollout_time_split  # noqa: E402

from jepa_world import evaluation as ev  # noqa: E402


def test_round_robin_reverses_every_other_round_and_takes_medians():
    """A fn's place in a round moved its time by 2-6% (docs/speed.md), so every other round runs in reverse."""
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


def test_rollout_time_split_times_the_products_and_fused_kernels_of_a_compiled_graph(monkeypatch):
    """The split's timers see a compiled graph's matrix product (with its FLOPs) and its fused kernel."""
    monkeypatch.setattr(extern_kernels, "mm", extern_kernels.mm)  # restored after the test
    monkeypatch.setattr(extern_kernels, "bmm", extern_kernels.bmm)
    products = rollout_time_split.ProductTimer()
    x, w = torch.randn(96, 64), torch.randn(64, 80)
    graph = torch.compile(lambda x, w: torch.relu(x @ w + 1.0) * 2.0)
    expected = graph(x, w)
    for module, name in rollout_time_split.fused_kernels():
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    kernels = rollout_time_split.FusedKernelTimer()
    products.on = kernels.on = True
    out = graph(x, w)
    products.on = kernels.on = False
    assert torch.equal(out, expected)
    assert list(products.totals) == [("mm", (96, 64), (64, 80))]
    assert products.totals[("mm", (96, 64), (64, 80))][1] == 2 * 96 * 64 * 80
    assert [calls for _, calls in kernels.totals.values()] == [1] and "relu" in next(iter(kernels.totals))


def test_fused_kernel_names_keep_the_ops_and_drop_views_and_index():
    name = rollout_time_split.FusedKernelTimer.short_name
    assert name("cpp_fused__unsafe_view_add_native_layer_norm_view_4") == "add+layer-norm"
    assert name("cpp_fused__unsafe_view_add_gelu_12") == "add+gelu"
    assert name("cpp_fused_clone_transpose_view_3") == "transpose"
