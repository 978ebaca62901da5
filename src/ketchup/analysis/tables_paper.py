"""The main table in the paper's layout: results/tables/main.md and results/tables/main.tex.

Rows are methods (teacher and prompted student first, then the paper's order), columns are tasks
(each task's primary metric, ``primary_metric`` of its definition), grouped by student size.
Cells are ``mean ± std`` over seeds (sample std; the mean alone with one seed), two decimals. In
every column the best *student* (the teacher is a reference, not a contender) is bold, ties at the
shown precision included. Both files come from results/tables/main.csv and nothing else.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ketchup.analysis.common import METHOD_NAMES, METRIC_NAMES, method_rank, primary_metric, task_title

DECIMALS = 2


def _fmt(value: float) -> str:
    return f"{value:.{DECIMALS}f}"


def table_cells(main: pd.DataFrame, tasks: list[str] | None = None, students: list[str] | None = None,
                info: dict[str, dict[str, Any]] | None = None):
    """(methods, columns, cells, best): cells[(method, student, task)] = (mean, std, seeds); ``info``:
    each task's primary metric and title (common.task_info)."""
    primary = main[main.apply(lambda r: r["metric"] == primary_metric(r["task"], info), axis=1)]
    tasks = [t for t in (tasks or sorted(primary.task.unique())) if t in set(primary.task)]
    student_rows = primary[primary.method != "teacher"]
    students = [s for s in (students or sorted(student_rows.student.unique())) if s in set(student_rows.student)]
    methods = sorted(primary.method.unique(), key=method_rank)
    cells = {}
    for _, r in primary.iterrows():
        for student in (students if r["method"] == "teacher" else [r["student"]]):
            cells[(r["method"], student, r["task"])] = (float(r["mean"]), float(r["std"]), int(r["seeds"]))
    columns = [(s, t) for s in students for t in tasks]
    best = {}
    for s, t in columns:
        vals = [round(cells[(m, s, t)][0], DECIMALS) for m in methods if m != "teacher" and (m, s, t) in cells]
        best[(s, t)] = max(vals) if vals else None
    return methods, columns, cells, best


def _ks(main: pd.DataFrame, tasks: list[str], info) -> str:
    rows = main[main.method == "ketchup"].dropna(subset=["k"])
    ks = {t: int(rows[rows.task == t]["k"].iloc[0]) for t in tasks if (rows.task == t).any()}
    return ", ".join(f"{task_title(t, info)} {k}" for t, k in ks.items())


def _caption(main: pd.DataFrame, tasks: list[str], info) -> str:
    metrics = ", ".join(f"{task_title(t, info)} {METRIC_NAMES.get(primary_metric(t, info))}" for t in tasks)
    seeds = sorted(set(int(s) for s in main["seeds"]))
    seeds_text = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    text = (f"Primary metric per task ({metrics}); mean ± sample std over {seeds_text} seed(s) (mean only with one "
            f"seed). Best student per column in bold (teacher excluded).")
    ks = _ks(main, tasks, info)
    return text + (f" KETCHUP uses each task's K: {ks}." if ks else "")


def _cell(cells, best, method, student, task, bold, pm: str) -> str:
    if (method, student, task) not in cells:
        return "–" if pm == "±" else "--"
    mean, std, _ = cells[(method, student, task)]
    text = _fmt(mean) if math.isnan(std) else f"{_fmt(mean)} {pm} {_fmt(std)}"
    is_best = method != "teacher" and best[(student, task)] is not None and round(mean, DECIMALS) == best[(student, task)]
    return bold(text) if is_best else text


def markdown(main: pd.DataFrame, tasks: list[str] | None = None, students: list[str] | None = None,
             info: dict[str, dict[str, Any]] | None = None) -> str:
    methods, columns, cells, best = table_cells(main, tasks, students, info)
    tasks_ = list(dict.fromkeys(t for _, t in columns))
    students_ = list(dict.fromkeys(s for s, _ in columns))
    lines = ["# Main results", "", _caption(main, tasks_, info), ""]
    for student in students_:
        lines += [f"## Student: {student}", "",
                  "| Method | " + " | ".join(f"{task_title(t, info)} ({METRIC_NAMES.get(primary_metric(t, info))})"
                                          for t in tasks_) + " |",
                  "|---|" + "---:|" * len(tasks_)]
        for m in methods:
            row = [_cell(cells, best, m, student, t, lambda x: f"**{x}**", "±") for t in tasks_]
            lines.append(f"| {METHOD_NAMES.get(m, m)} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(a, b)
    return text


def latex(main: pd.DataFrame, tasks: list[str] | None = None, students: list[str] | None = None,
          info: dict[str, dict[str, Any]] | None = None) -> str:
    methods, columns, cells, best = table_cells(main, tasks, students, info)
    tasks_ = list(dict.fromkeys(t for _, t in columns))
    students_ = list(dict.fromkeys(s for s, _ in columns))
    n = len(tasks_)
    spec = "l" + " ".join("r" * n for _ in students_)
    out = ["% Generated by `python -m ketchup.analysis main-tables` from results/tables/main.csv.",
           "% Needs \\usepackage{booktabs}.", r"\begin{table}[t]", r"\centering", r"\small",
           rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if len(students_) > 1:
        out.append(" & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_tex_escape(s)}}}" for s in students_) + r" \\")
        out.append(" ".join(rf"\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(students_))))
    header = [f"{_tex_escape(task_title(t, info))} ({METRIC_NAMES.get(primary_metric(t, info))})" for t in tasks_]
    out.append("Method & " + " & ".join(header * len(students_)) + r" \\")
    out.append(r"\midrule")
    for i, m in enumerate(methods):
        row = [_cell(cells, best, m, s, t, lambda x: rf"\textbf{{{x}}}", r"$\pm$") for s in students_ for t in tasks_]
        out.append(f"{_tex_escape(METHOD_NAMES.get(m, m))} & " + " & ".join(row) + r" \\")
        if m in ("teacher", "prompted") and i + 1 < len(methods) and methods[i + 1] not in ("teacher", "prompted"):
            out.append(r"\midrule")
    caption = _tex_escape(_caption(main, tasks_, info)).replace("±", r"$\pm$")
    out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\label{tab:main}", r"\end{table}", ""]
    return "\n".join(out)
