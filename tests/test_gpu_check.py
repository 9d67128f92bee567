"""benchmarks/gpu_check.py is the one script run when a GPU is lent, with minutes to spare: its CPU smoke mode runs
every check at toy sizes, so a broken import or a renamed API shows here rather than on the lent machine."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_every_check_on_cpu(tmp_path):
    out = tmp_path / "report" / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # conftest sets MUJOCO_GL
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--smoke", "--out", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    # fp32 on the same device must agree with itself exactly; the training steps and planning must produce rates
    assert report["fp32_encode_rel_err"] == 0 and report["fp32_rollout_rel_err"] == 0
    assert report["pretrain"]["ms_per_step"] > 0 and 0 < report["pretrain"]["mfu"]
    assert report["end_to_end"]["ms_per_step"] > 0 and 0 < report["end_to_end"]["mfu"]
    assert report["plan_ms_per_action"] > 0
