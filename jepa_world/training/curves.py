"""Training curves: one or more runs' ``metrics.jsonl`` drawn as a PNG of panels.

Every training script (pretraining, post-training, the language head) refreshes
``<output_dir>/curves.png`` whenever it writes a checkpoint, so a run can be watched by
opening one image, and a run stopped by a non-finite loss keeps the curves up to its last
good checkpoint. ``scripts/plot_curves.py`` overlays several runs (a sweep, or a resumed run
against an uninterrupted one).

Panels are picked from the keys a run logs (see ``PANELS``); a key no panel claims is not
drawn. Records with a string ``kind`` (the language head trains facts round robin) get one
line per kind.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from jepa_world.jsonl import read_jsonl

CURVES_FILE = "curves.png"


@dataclass(frozen=True)
class Panel:
    title: str
    claims: Callable[[str], bool]
    log_scale: bool = False
    reference: float | None = None  # a horizontal guide line (1.0 = as good as copying the last frame)


PANELS: tuple[Panel, ...] = (
    Panel("training loss", lambda k: k == "loss" or k.startswith("loss_"), log_scale=True),
    Panel("held-out latent L1", lambda k: k.startswith(("val_l1", "copy_last_l1")), log_scale=True),
    Panel("predictor / copy-last (held-out)", lambda k: k.startswith("ratio_"), reference=1.0),
    Panel("state readout error (m)", lambda k: k.startswith("readout_err")),
    Panel("plannability: rank correlation (held-out)", lambda k: k.startswith("plan_spearman_")),
    Panel("embedding effective rank (held-out)", lambda k: k == "effective_rank"),
    Panel("embedding std (held-out)", lambda k: k == "embedding_std", log_scale=True),
    Panel("accuracy", lambda k: k.endswith("accuracy")),
    Panel("gradient norm", lambda k: k == "grad_norm", log_scale=True),
    Panel("learning rate", lambda k: k == "lr"),
    Panel("EMA momentum (target encoder)", lambda k: k == "ema_momentum"),
    Panel("throughput (per s)", lambda k: k.endswith("_per_s")),
)

# (metric, kind) -> (steps, values)
Series = dict[tuple[str, str | None], tuple[list[int], list[float]]]


def read_records(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a metrics.jsonl file; a malformed line is an error naming file and line,
    except a last line cut short by a killed writer, which is dropped with a warning."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path} (a training run writes <output_dir>/metrics.jsonl)")
    records = []
    for line_no, record in read_jsonl(path, torn_tail_ok=True):
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}:{line_no}: expected a JSON object with an integer 'step', got {json.dumps(record)[:80]}")
        records.append(record)
    return records


def collect_series(records: list[dict]) -> Series:
    """Finite numeric values per (metric, kind), in step order; non-finite values are dropped."""
    series: Series = {}
    for record in records:
        kind = record.get("kind") if isinstance(record.get("kind"), str) else None
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            steps, values = series.setdefault((key, kind), ([], []))
            steps.append(record["step"])
            values.append(float(value))
    return series


def panels_for(metric_names: set[str]) -> list[tuple[Panel, list[str]]]:
    """The panels that have something to draw, each with the metrics it claims (sorted)."""
    chosen = []
    for panel in PANELS:
        claimed = sorted(name for name in metric_names if panel.claims(name))
        if claimed:
            chosen.append((panel, claimed))
    return chosen


def plot_training_curves(runs: Mapping[str, str | os.PathLike], out_path: str | os.PathLike) -> Path:
    """Draw the runs' metrics (label -> metrics.jsonl) into one PNG, written atomically."""
    if not runs:
        raise ValueError("plot_training_curves needs at least one run")
    run_series = {label: collect_series(read_records(path)) for label, path in runs.items()}
    for label, series in run_series.items():
        if not series:
            raise ValueError(f"{runs[label]} has no numeric metrics to plot")
    names = {name for series in run_series.values() for name, _ in series}
    panels = panels_for(names)
    if not panels:
        raise ValueError(f"none of the logged metrics {sorted(names)} belongs to a curve panel ({[p.title for p in PANELS]})")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jepa_world.atomic_files import save_figure

    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.2 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ("-", "--", ":", "-.")
    for ax, (panel, claimed) in zip(axes.flat, panels):
        drawn: list[float] = []
        for run_index, (label, series) in enumerate(run_series.items()):
            for (name, kind), (steps, values) in sorted(series.items(), key=lambda item: (item[0][0], item[0][1] or "")):
                if name not in claimed:
                    continue
                legend = name if kind is None else f"{name} [{kind}]"
                if len(runs) > 1:  # colour = run, line style = metric
                    colour, style = colours[run_index % len(colours)], styles[claimed.index(name) % len(styles)]
                    legend = f"{label}: {legend}"
                else:
                    colour, style = colours[len(ax.lines) % len(colours)], "-"
                ax.plot(steps, values, style, color=colour, label=legend, linewidth=1.2)
                drawn.extend(values)
        if panel.log_scale and min(drawn) > 0:
            ax.set_yscale("log")
        if panel.reference is not None:
            ax.axhline(panel.reference, color="grey", linewidth=0.8, linestyle="--")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, out_path, dpi=90)


def refresh_run_curves(output_dir: str | os.PathLike) -> Path | None:
    """Redraw ``<output_dir>/curves.png`` from its metrics.jsonl; None while nothing is logged yet."""
    output_dir = Path(output_dir)
    metrics = output_dir / "metrics.jsonl"
    if not metrics.is_file() or not collect_series(read_records(metrics)):
        return None
    return plot_training_curves({output_dir.name: metrics}, output_dir / CURVES_FILE)
