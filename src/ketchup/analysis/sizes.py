"""student_size.csv: every method's primary metric against the student's parameter count.

Parameter counts are read from the saved model directories without loading the weights: the tensor
shapes in the safetensors headers (``model.safetensors``, or the shards listed in
``model.safetensors.index.json``). ``save_pretrained`` stores tied weights (T5's shared embedding and
LM head) once, so the count equals ``sum(p.numel() for p in model.parameters())``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ketchup.analysis.common import primary_metric

COLUMNS = ["task", "metric", "student", "params", "method", "seeds", "mean", "std"]


def count_parameters(model_dir: str | Path) -> int:
    from safetensors import safe_open

    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    total = 0
    for name in files:
        with safe_open(str(model_dir / name), framework="np") as handle:
            for key in handle.keys():
                total += math.prod(handle.get_slice(key).get_shape())
    return int(total)


def size_table(main_csv: str, models: dict[tuple[str, str], str], teachers: dict[str, str] | None = None,
               info: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """``models``: (task, student) -> a model directory of that size; ``teachers``: task -> teacher dir;
    ``info``: each task's primary metric (common.task_info)."""
    main = pd.read_csv(main_csv)
    params = {key: count_parameters(path) for key, path in models.items()}
    teacher_params = {task: count_parameters(path) for task, path in (teachers or {}).items()}
    rows = []
    for _, r in main.iterrows():
        if r["metric"] != primary_metric(r["task"], info):
            continue
        if r["method"] == "teacher":
            n = teacher_params.get(r["task"])
        else:
            n = params.get((r["task"], r["student"]))
            if n is None:
                continue
        rows.append({"task": r["task"], "metric": r["metric"], "student": r["student"],
                     "params": pd.NA if n is None else int(n), "method": r["method"], "seeds": int(r["seeds"]),
                     "mean": r["mean"], "std": r["std"]})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["params"] = frame["params"].astype("Int64")
    return frame.sort_values(["task", "method", "params"]).reset_index(drop=True)
