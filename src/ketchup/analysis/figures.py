"""Pure plotting functions: a tidy DataFrame in, a matplotlib Figure out (Agg canvas, no pyplot).

Every panel has a title, labelled axes with units and a legend; :func:`save` writes a Figure to PDF
and PNG atomically. The functions never read or write files, so tests call them directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ketchup.analysis.common import METHOD_NAMES, METRIC_AXIS, method_rank, task_title


def _figure(nrows: int, ncols: int, width: float = 4.6, height: float = 3.4, title: str = ""):
    fig = Figure(figsize=(width * ncols + 1.6, height * nrows + 0.7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(nrows, 1), max(ncols, 1), squeeze=False)
    if title:
        fig.suptitle(title)
    return fig, axes


def _empty(title: str, xlabel: str, ylabel: str, message: str) -> Figure:
    fig, axes = _figure(1, 1, title=title)
    ax = axes[0][0]
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def _task_label(task: str) -> str:
    return task_title(task)  # a preset's title, else the name


def _metric(sub: pd.DataFrame) -> str:
    """The panel's metric, as its table's rows name it (each task's primary)."""
    return str(sub["metric"].iloc[0]) if len(sub) else "metric"


def _millions(n) -> str:
    return f"{float(n) / 1e6:.3g}M"


def _err(std: pd.Series) -> np.ndarray | None:
    values = std.astype(float).to_numpy()
    return None if np.all(np.isnan(values)) else np.nan_to_num(values)


def save(fig: Figure, pdf: str | Path, png: str | Path, tight: bool = False) -> None:
    """Write ``fig`` to both files atomically; ``tight``: crop to what is drawn (a title wider than
    the axes stays whole)."""
    from ketchup.io import atomic_path

    for path, fmt in ((pdf, "pdf"), (png, "png")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight" if tight else None)


# ---------------------------------------------------------------------------------------------


def k_sweep_figure(frame: pd.DataFrame) -> Figure:
    """k_sweep.csv: metric against K per (student, task) panel, KL and LLMR as reference lines."""
    title = "KETCHUP: test metric against K (mean ± std over seeds)"
    if frame.empty:
        return _empty(title, "K (steps per return term)", "metric", "no K-sweep results")
    tasks, students = sorted(frame.task.unique()), sorted(frame.student.unique())
    fig, axes = _figure(len(students), len(tasks), title=title)
    for i, student in enumerate(students):
        for j, task in enumerate(tasks):
            ax = axes[i][j]
            sub = frame[(frame.task == task) & (frame.student == student)].sort_values("k")
            metric = _metric(sub)
            ax.set_title(f"{_task_label(task)} / student {student}")
            ax.set_xlabel("K (steps per return term, log scale)")
            ax.set_ylabel(METRIC_AXIS.get(metric, metric))
            if sub.empty:
                ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)
                continue
            ax.errorbar(sub.k, sub["mean"], yerr=_err(sub["std"]), marker="o", capsize=3, color="C3",
                        label="KETCHUP (K)")
            task_k = sub[sub.is_task_k.astype(bool)]
            if len(task_k):
                ax.plot(task_k.k, task_k["mean"], marker="*", markersize=14, linestyle="none", color="C3",
                        markeredgecolor="black", label="task's K (main table)")
            for ref, style, color in (("kl", "--", "C0"), ("llmr", ":", "C2")):
                level = sub[f"{ref}_mean"].dropna()
                if len(level):
                    ax.axhline(float(level.iloc[0]), linestyle=style, color=color, label=METHOD_NAMES[ref])
            _k_axis(ax, sub.k)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    return fig


def _k_axis(ax, ks) -> None:
    """K on a log-2 axis, ticked at exactly the K values present (1, 2, 4, 8, ...)."""
    ks = sorted(pd.unique(ks))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])


def grad_variance_figure(frame: pd.DataFrame) -> Figure:
    """grad_variance.csv: per task column, rows = tr Cov (CI), relative variance, mean gradient norm (CI)."""
    title = "Policy-gradient variance at the KL student (same rollouts for every K)"
    if frame.empty:
        return _empty(title, "K", "trace of covariance", "no gradient-variance results")
    tasks = sorted(frame.task.unique())
    fig, axes = _figure(3, len(tasks), height=3.0, title=title)
    rel = ("relative_ci_low", "relative_ci_high") if "relative_ci_low" in frame else (None, None)
    panels = [("trace_cov", "trace_ci_low", "trace_ci_high", "tr Cov(g) (squared gradient units)", True),
              ("relative_variance", *rel, "tr Cov(g) / mean ||g||^2 (fraction)", False),
              ("mean_grad_norm", "grad_norm_ci_low", "grad_norm_ci_high", "mean ||g|| (gradient units)", True)]
    for j, task in enumerate(tasks):
        sub = frame[frame.task == task]
        for i, (col, lo, hi, ylabel, logy) in enumerate(panels):
            ax = axes[i][j]
            for c, student in enumerate(sorted(sub.student.unique())):
                # Several seeds: points are seed means, bars the mean of the per-seed interval bounds.
                g = sub[sub.student == student].groupby("k").mean(numeric_only=True).reset_index()
                yerr = None
                if lo:
                    yerr = np.vstack([np.maximum(g[col] - g[lo], 0), np.maximum(g[hi] - g[col], 0)])
                seeds = sub[sub.student == student].seed.nunique()
                ax.errorbar(g.k, g[col], yerr=yerr, marker="o", capsize=3, color=f"C{c}",
                            label=f"student {student}" + (f" ({seeds} seeds)" if seeds > 1 else ""))
            _k_axis(ax, sub.k)
            if logy and (sub[col] > 0).all():
                ax.set_yscale("log")
            if col == "relative_variance":  # a fraction: show it on [0, 1] so small changes look small
                ax.set_ylim(0, max(1.0, float(np.nanmax(sub[rel[1]] if rel[1] else sub[col])) * 1.05))
            ax.set_xlabel("K (steps per return term, log scale)")
            ax.set_ylabel(ylabel)
            conf = int(round(100 * float(sub["confidence"].iloc[0]))) if "confidence" in sub else 95
            ax.set_title(f"{_task_label(task)}" + (f" ({conf}% bootstrap CI)" if lo else ""))
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    return fig


def student_size_figure(frame: pd.DataFrame) -> Figure:
    """student_size.csv: metric against student parameters per task, one line per method."""
    title = "Test metric against student size (mean ± std over seeds)"
    if frame.empty:
        return _empty(title, "student parameters (millions)", "metric", "no results")
    tasks = sorted(frame.task.unique())
    fig, axes = _figure(1, len(tasks), width=5.2, height=3.8, title=title)
    for j, task in enumerate(tasks):
        ax = axes[0][j]
        sub = frame[frame.task == task]
        metric = _metric(sub)
        students = sub[sub.method != "teacher"]
        for c, method in enumerate(sorted(students.method.unique(), key=method_rank)):
            g = students[students.method == method].sort_values("params")
            ax.errorbar(g.params.astype(float) / 1e6, g["mean"], yerr=_err(g["std"]), marker="o", capsize=3,
                        color=f"C{c % 10}", linestyle="-" if c < 10 else "--", label=METHOD_NAMES.get(method, method))
        teacher = sub[sub.method == "teacher"]
        if len(teacher):
            size = teacher.params.iloc[0]
            label = "Teacher" + (f" ({_millions(size)})" if pd.notna(size) else "")
            ax.axhline(float(teacher["mean"].iloc[0]), color="black", linestyle="--", label=label)
        ax.set_xscale("log")
        sizes = sorted(students.params.dropna().unique())
        ax.set_xticks([s / 1e6 for s in sizes])
        ax.set_xticklabels([f"{_millions(s)}\n({', '.join(sorted(students[students.params == s].student.unique()))})"
                            for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("student parameters (millions, log scale)")
        ax.set_ylabel(METRIC_AXIS.get(metric, metric))
        ax.set_title(_task_label(task))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def training_curves_figure(frame: pd.DataFrame, info: dict[str, dict] | None = None) -> Figure:
    """curves: per (task, student) column, dev metric (top) and training loss (bottom) against step."""
    title = "Training curves (seed mean): dev metric and training loss per method"
    if frame.empty:
        return _empty(title, "optimizer step", "value", "no training curves")
    pairs = sorted({(t, s) for t, s in zip(frame.task, frame.student)})
    fig, axes = _figure(2, len(pairs), height=3.2, title=title)
    methods = sorted(frame.method.unique(), key=method_rank)
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for j, (task, student) in enumerate(pairs):
        sub = frame[(frame.task == task) & (frame.student == student)]
        metric = (info or {}).get(task, {}).get("primary", "primary metric")  # info: common.task_info
        for i, (series, ylabel) in enumerate((("dev_metric", f"dev {METRIC_AXIS.get(metric, metric)}"),
                                              ("loss", "training loss (per target token)"))):
            ax = axes[i][j]
            for method in methods:
                g = sub[(sub.method == method) & (sub.series == series)].sort_values("step")
                if len(g):
                    ax.plot(g.step, g.value, marker="o" if series == "dev_metric" else None, markersize=3,
                            color=colors[method], label=METHOD_NAMES.get(method, method))
            if series == "loss":
                # Cross-entropy / divergence losses are positive, policy-gradient surrogates can be
                # negative and of another scale: a symmetric log axis shows both.
                ax.set_yscale("symlog", linthresh=1e-2)
            ax.set_xlabel("optimizer step (RL methods: steps after the KL init)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{_task_label(task)} / student {student}: {'dev metric' if i == 0 else 'loss'}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="x-small")
    return fig
