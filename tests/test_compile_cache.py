"""Compiled graphs cached under one CPU vector ISA are never served under another (jepa_world.compile_cache)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jepa_world.compile_cache import caches_keyed_to_isa, isa_cache_tag

# A compiled rollout against eager in a fresh process; ATEN_CPU_CAPABILITY picks the vector ISA inductor writes for.
ROLLOUT_ERROR = """
import torch
from jepa_world.dynamics import Dynamics, DynamicsConfig
from jepa_world.models.ac_predictor import ACPredictor, ACPredictorConfig
torch.manual_seed(0)
predictor = ACPredictor(ACPredictorConfig(encoder_dim=32, action_dim=3, state_dim=4, grid_hw=(2, 2), dim=32,
                                          depth=2, num_heads=2))
dynamics = Dynamics(predictor, DynamicsConfig(integrated_state_dims=(0, 1, 2))).eval().requires_grad_(False)
z0, state0, actions = torch.randn(1, 1, 4, 32), torch.randn(1, 1, 4), torch.randn(6, 2, 3)
with torch.no_grad():
    eager = dynamics.rollout(z0, state0, actions)
    dynamics.compile_rollout()
    print((dynamics.rollout(z0, state0, actions) - eager).abs().max().item())
"""


def test_isa_cache_tag_keeps_the_process_tag_and_names_the_isa() -> None:
    with torch.compiler.config.patch(cache_key_tag="my-run"):
        tag = isa_cache_tag()
        assert tag.startswith("my-run|cpu-vec-isa=")
        with caches_keyed_to_isa():
            assert torch.compiler.config.cache_key_tag == tag
        assert torch.compiler.config.cache_key_tag == "my-run"


@pytest.mark.slow
def test_a_graph_cached_with_vectors_is_not_served_to_a_process_without(tmp_path: Path) -> None:
    """Before the ISA joined the cache key, the second process loaded the first one's AVX-512 (or AVX2) graph and
    failed to build its C++ without vector types; with AVX2 after AVX-512 the rollout came back NaN."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1"}
    errors = []
    for capability in ("", "default"):  # this CPU's best ISA, then none: "default" is ATen's scalar code
        result = subprocess.run([sys.executable, "-c", ROLLOUT_ERROR], env={**env, "ATEN_CPU_CAPABILITY": capability},
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        errors.append(float(result.stdout.split()[-1]))
    assert max(errors) < 1e-5, errors
