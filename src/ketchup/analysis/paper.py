"""paper_comparison.csv: our main-table numbers beside the paper's (docs/math.md, 'What the paper reports').

The paper's numbers live in ``paper_numbers.csv`` beside this module: the seq2seq setting (``t5``:
Flan-T5-XL teacher, T5-base student) and the decoder-only setting (``qwen``: Qwen1.5-4B ->
Qwen1.5-0.5B). A config is compared with the setting of its architecture (seq2seq -> t5, decoder
-> qwen), for every paper row whose task is in the config, and for every student size of the config
(the teacher row once per task). So the table exists for any config, the default's synthetic tasks
included; the ``comparable`` column says whether a row is a like-for-like reproduction:

    comparable = the task is loaded from the hub (not synthetic / local)
                 and the teacher's model is the paper's (by name, e.g. google/flan-t5-xl)
                 and, except for the teacher row, the student's model is the paper's (t5-base / Qwen1.5-0.5B)
                 and the config has the method (every paper row is one of this pipeline's methods).

``note`` says why a row is not comparable. ``difference`` is ours minus the paper's (same scale:
ROUGE-1 F1 x100, BLEU, accuracy %); ``ours_*`` are empty where we have no such run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ketchup.analysis.common import METHOD_ORDER

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.csv")
SETTINGS = {"seq2seq": "t5", "decoder": "qwen"}
COLUMNS = ["setting", "task", "metric", "method", "student", "our_k", "paper_k", "seeds", "ours_mean", "ours_std",
           "paper", "difference", "comparable", "note"]


def paper_numbers(path: str | Path = PAPER_NUMBERS) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"k": "Int64"})


def _same_model(ours: dict[str, Any] | None, paper_name: str) -> bool:
    name = (ours or {}).get("name_or_path")
    if not name:
        return False
    return str(name).rstrip("/").split("/")[-1].lower() == paper_name.rstrip("/").split("/")[-1].lower()


def comparison(main_csv: str, spec: dict[str, Any], numbers: pd.DataFrame | None = None) -> pd.DataFrame:
    """``spec``: architecture, tasks {task: {source, ...}}, students {size: model spec}, teacher (model spec)."""
    main = pd.read_csv(main_csv)
    numbers = paper_numbers() if numbers is None else numbers
    setting = SETTINGS[spec["architecture"]]
    rows = []
    for _, p in numbers[(numbers.setting == setting) & numbers.task.isin(list(spec["tasks"]))].iterrows():
        task = spec["tasks"][p["task"]]
        students = ["teacher"] if p["method"] == "teacher" else list(spec["students"])
        for student in students:
            notes = []
            if task.get("source") != "hub":
                notes.append(f"{task.get('source')} task data")
            if not _same_model(spec.get("teacher"), p["teacher_model"]):
                notes.append(f"teacher is not {p['teacher_model']}")
            if student != "teacher" and not _same_model(spec["students"][student], p["student_model"]):
                notes.append(f"student is not {p['student_model']}")
            mine = main[(main.task == p["task"]) & (main.metric == p["metric"]) & (main.method == p["method"])
                        & (main.student == student)]
            if mine.empty:
                notes.append("not a method of this pipeline" if p["method"] not in METHOD_ORDER
                             else "no such run in this config")
            ours = mine.iloc[0] if len(mine) else None
            our_mean = float(ours["mean"]) if ours is not None else float("nan")
            rows.append({
                "setting": setting, "task": p["task"], "metric": p["metric"], "method": p["method"],
                "student": student,
                "our_k": ours["k"] if ours is not None and pd.notna(ours["k"]) else pd.NA,
                "paper_k": p["k"], "seeds": int(ours["seeds"]) if ours is not None else 0,
                "ours_mean": our_mean, "ours_std": float(ours["std"]) if ours is not None else float("nan"),
                "paper": float(p["value"]), "difference": round(our_mean - float(p["value"]), 4),
                "comparable": not notes, "note": "; ".join(notes),
            })
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("our_k", "paper_k"):
        frame[col] = frame[col].astype("Int64")
    return frame
