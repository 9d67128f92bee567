"""Training curves: panel selection, series extraction, the PNG, overlays, the CLI and bad input."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jepa_world.training.curves import (
    collect_series,
    panels_for,
    plot_training_curves,
    read_records,
    refresh_run_curves,
)

ROOT = Path(__file__).resolve().parents[1]


def write_metrics(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def pretrain_like(scale: float = 1.0) -> list[dict]:
    return [{"step": s, "loss": scale / s, "lr": 1e-3, "ema_momentum": 0.996, "clips_per_s": 30.0, "epoch": 0}
            for s in range(1, 21)]


def test_series_keep_step_order_drop_non_finite_and_split_by_kind():
    records = [{"step": 1, "kind": "arm", "loss": 2.0, "accuracy": 0.5},
               {"step": 2, "kind": "motion", "loss": 3.0, "accuracy": 0.25},
               {"step": 3, "kind": "arm", "loss": float("nan"), "accuracy": 0.75},
               {"step": 4, "kind": "arm", "loss": 1.0, "flag": True, "note": "text"}]
    series = collect_series(records)
    assert series[("loss", "arm")] == ([1, 4], [2.0, 1.0])  # the NaN at step 3 is dropped
    assert series[("loss", "motion")] == ([2], [3.0])
    assert series[("accuracy", "arm")] == ([1, 3], [0.5, 0.75])
    assert ("flag", "arm") not in series and ("note", "arm") not in series and ("step", "arm") not in series


def test_panels_are_chosen_from_the_logged_keys():
    names = {"loss", "loss_teacher", "loss_rollout", "val_l1_h1", "copy_last_l1_h1", "ratio_h1", "lr",
             "windows_per_s", "readout_err_median", "epoch", "step_time_s"}
    chosen = {panel.title: claimed for panel, claimed in panels_for(names)}
    assert chosen["training loss"] == ["loss", "loss_rollout", "loss_teacher"]
    assert chosen["held-out latent L1"] == ["copy_last_l1_h1", "val_l1_h1"]
    assert chosen["predictor / copy-last (held-out)"] == ["ratio_h1"]
    assert chosen["throughput (per s)"] == ["windows_per_s"]
    assert "accuracy" not in chosen and "gradient norm" not in chosen  # nothing logged for them
    assert all("epoch" not in claimed and "step_time_s" not in claimed for claimed in chosen.values())


def test_plot_writes_a_png_whose_panels_show_the_data(tmp_path):
    quiet = write_metrics(tmp_path / "a" / "metrics.jsonl", pretrain_like())
    out = plot_training_curves({"a": quiet}, tmp_path / "curves.png")
    image = np.asarray(Image.open(out).convert("L"))
    assert image.shape[0] > 200 and image.shape[1] > 400
    assert image.std() > 10  # lines, ticks and titles, not a blank canvas
    assert not list(tmp_path.glob(".curves*"))  # the atomic temp file is gone


def test_overlay_of_two_runs_differs_from_either_alone(tmp_path):
    a = write_metrics(tmp_path / "a" / "metrics.jsonl", pretrain_like(1.0))
    b = write_metrics(tmp_path / "b" / "metrics.jsonl", pretrain_like(5.0))
    alone = np.asarray(Image.open(plot_training_curves({"a": a}, tmp_path / "a.png")).convert("L"), dtype=float)
    both = np.asarray(Image.open(plot_training_curves({"a": a, "b": b}, tmp_path / "ab.png")).convert("L"), dtype=float)
    assert alone.shape == both.shape and np.abs(alone - both).mean() > 0.5


def test_refresh_skips_a_run_that_has_not_logged_yet(tmp_path):
    assert refresh_run_curves(tmp_path) is None  # no metrics.jsonl
    (tmp_path / "metrics.jsonl").write_text("")
    assert refresh_run_curves(tmp_path) is None
    write_metrics(tmp_path / "metrics.jsonl", pretrain_like())
    assert refresh_run_curves(tmp_path) == tmp_path / "curves.png"


def test_bad_metrics_files_name_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics file at .*missing.jsonl"):
        read_records(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": \n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        read_records(broken)
    stepless = write_metrics(tmp_path / "stepless.jsonl", [{"loss": 1.0}])
    with pytest.raises(ValueError, match=r"stepless.jsonl:1: expected a JSON object with an integer 'step'"):
        read_records(stepless)
    unplottable = write_metrics(tmp_path / "odd.jsonl", [{"step": 1, "epoch": 0, "custom": math.pi}])
    with pytest.raises(ValueError, match=r"none of the logged metrics \['custom', 'epoch'\]"):
        plot_training_curves({"odd": unplottable}, tmp_path / "odd.png")


def test_cli_overlays_runs_and_requires_out_for_several(tmp_path):
    for name, scale in (("a", 1.0), ("b", 2.0)):
        write_metrics(tmp_path / name / "metrics.jsonl", pretrain_like(scale))
    script = [sys.executable, str(ROOT / "scripts" / "plot_curves.py")]
    runs = f"runs=[{tmp_path / 'a'},{tmp_path / 'b'}]"
    done = subprocess.run([*script, runs, f"out={tmp_path / 'ab.png'}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "ab.png").is_file() and "wrote" in done.stdout
    refused = subprocess.run([*script, runs], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "out=... is required when overlaying 2 runs" in refused.stderr
    single = subprocess.run([*script, f"runs={tmp_path / 'a'}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert single.returncode == 0 and (tmp_path / "a" / "curves.png").is_file()
