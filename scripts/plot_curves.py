"""Draw training curves (loss, held-out error, learning rate, throughput, ...) of one or more runs.

    python scripts/plot_curves.py runs=[outputs/pretrain/2026-11-27_10-00-00]
    python scripts/plot_curves.py runs=[outputs/sweep/0,outputs/sweep/1] out=outputs/sweep/curves.png

Training scripts already refresh ``<output_dir>/curves.png`` at every checkpoint; this overlays runs.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

from jepa_world.training.curves import CURVES_FILE, plot_training_curves


def metrics_file(run: str) -> Path:
    path = Path(run)
    return path / "metrics.jsonl" if path.is_dir() else path


@hydra.main(version_base="1.3", config_path="../conf", config_name="plot_curves")
def main(cfg: DictConfig) -> None:
    runs = [cfg.runs] if isinstance(cfg.runs, str) else cfg.runs
    if not isinstance(runs, (list, ListConfig)) or not runs:
        raise ValueError(f"runs must be a run directory or a non-empty list of them, got {cfg.runs!r}")
    files = [metrics_file(str(run)) for run in runs]
    labels = [file.parent.name for file in files]
    if len(set(labels)) < len(labels):  # two runs named alike (e.g. .../a/pretrain, .../b/pretrain)
        labels = [str(file.parent) for file in files]
    if cfg.out is None and len(files) > 1:
        raise ValueError(f"out=... is required when overlaying {len(files)} runs (got runs={list(runs)})")
    out = Path(cfg.out) if cfg.out is not None else files[0].parent / CURVES_FILE
    plot_training_curves(dict(zip(labels, files)), out)
    print(f"wrote {out} ({len(files)} run{'s' if len(files) > 1 else ''})")


if __name__ == "__main__":
    main()
