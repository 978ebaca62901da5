"""Figure of the LLM-judge table: mean score per criterion and method, with 95 % CI error bars.

One panel per (task, student): criteria on the x axis, one bar per method. Uses matplotlib's
object API with the Agg canvas (no pyplot, no global backend change, works headless).
"""

from __future__ import annotations

import csv
import math
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ketchup.analysis.figures import save


def _num(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def judge_figure(csv_path: str | os.PathLike, out_pdf: str | os.PathLike, out_png: str | os.PathLike) -> None:
    """Draw ``llm_judge.csv`` (from :func:`ketchup.judge.stages.judge_table`) to a PDF and a PNG."""
    with open(csv_path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        columns = reader.fieldnames or []
    criteria = [c[: -len("_mean")] for c in columns if c.endswith("_mean")]
    panels: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        panels.setdefault((r["task"], r["student"]), []).append(r)
    keys = sorted(panels)
    n = max(1, len(keys))
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(5.6 * ncols, 3.6 * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.suptitle("LLM-judge scores (mean over examples and seeds, 95% bootstrap CI)")
    if not keys or not criteria:
        ax = axes[0][0]
        ax.text(0.5, 0.5, "no LLM-judge results", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("criterion")
        ax.set_ylabel("judge score (1-10)")
        ax.set_title("LLM judge")
    methods_all = sorted({r["method"] for r in rows})
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods_all)}
    for k, key in enumerate(keys):
        ax = axes[k // ncols][k % ncols]
        prow = sorted(panels[key], key=lambda r: r["method"])
        nm = len(prow)
        width = 0.8 / max(1, nm)
        for i, r in enumerate(prow):
            xs, ys, lo, hi = [], [], [], []
            for j, c in enumerate(criteria):
                m = _num(r.get(f"{c}_mean"))
                l, h = _num(r.get(f"{c}_ci_low")), _num(r.get(f"{c}_ci_high"))
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(0.0 if math.isnan(m) else m)
                lo.append(0.0 if math.isnan(l) or math.isnan(m) else max(0.0, m - l))
                hi.append(0.0 if math.isnan(h) or math.isnan(m) else max(0.0, h - m))
            ax.bar(xs, ys, width=width * 0.95, yerr=[lo, hi], capsize=2, label=r["method"],
                   color=colors[r["method"]], error_kw={"elinewidth": 0.8})
        ax.set_xticks(range(len(criteria)))
        ax.set_xticklabels(criteria)
        ax.set_ylim(0, 10.5)
        ax.set_xlabel("criterion")
        ax.set_ylabel("judge score (1-10)")
        ax.set_title(f"{key[0]} / student {key[1]}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(title="method", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for k in range(len(keys), nrows * ncols):
        if k > 0:
            axes[k // ncols][k % ncols].set_visible(False)
    save(fig, out_pdf, out_png, tight=True)
