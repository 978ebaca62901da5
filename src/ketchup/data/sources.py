"""Produce ``results/data/{task}/{split}.jsonl`` from synthetic generators, the hub or local JSONL.

Whatever the source, every record is checked against the hub schema (records.check_record) before
anything is written, so a malformed record stops the stage with its file and line and leaves no
output behind.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from ketchup.data import records, synthetic
from ketchup.io import DataError, numbered_jsonl, write_jsonl

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")
# Hub names and configs of the paper's datasets (DESIGN.md section 4), and their split names.
HUB = {
    "xsum": ("EdinburghNLP/xsum", None, {"train": "train", "dev": "validation", "test": "test"}),
    "en_nl": ("Helsinki-NLP/europarl", "en-nl", None),  # train only: dev/test are seeded subsets
    "gsm8k": ("openai/gsm8k", "main", {"train": "train", "dev": None, "test": "test"}),
}


def _sizes(spec: dict[str, Any]) -> dict[str, int | None]:
    return {split: spec.get(f"n_{split}") for split in SPLITS}


def _assign_ids(task: str, split: str, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r if "id" in r else {**r, "id": f"{task}-{split}-{i}"} for i, r in enumerate(recs)]


def load_local(task: str, directory: str | Path, seed: int = 0, n_dev: int | None = None,
               dev_from_train: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Read ``{directory}/{split}.jsonl`` in the hub schema, checking every line. With
    ``dev_from_train`` (GSM8K as published has no dev file) dev is instead a seeded slice of ``n_dev``
    (default 500) train records, removed from train, as for the hub's GSM8K."""
    out = {}
    for split in SPLITS:
        path = Path(directory) / f"{split}.jsonl"
        if split == "dev" and dev_from_train:
            continue
        numbered = numbered_jsonl(path)
        for lineno, rec in numbered:
            records.check_record(task, rec, f"{path}:{lineno}")
        recs = [rec for _, rec in numbered]
        if not recs:
            raise DataError(f"{path}: no records")
        out[split] = _assign_ids(task, split, recs)
    if "dev" not in out:
        order = list(range(len(out["train"])))
        random.Random(seed).shuffle(order)
        held = set(order[: n_dev or 500])
        out["dev"] = [out["train"][i] for i in order[: n_dev or 500]]  # ids stay those of their train lines
        out["train"] = [r for i, r in enumerate(out["train"]) if i not in held]
    return out


def load_hub(task: str, spec: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Load the task's hub dataset with ``datasets``; carve missing dev/test splits from train, seeded."""
    import datasets  # heavy import, only on this path

    default_name, default_config, split_names = HUB[task]
    name = spec.get("hub_name", default_name)
    config = spec.get("hub_config", default_config)
    loaded = datasets.load_dataset(name, config)
    sizes = _sizes(spec)

    def usable(hub_split: str) -> list[dict[str, Any]]:
        recs = [dict(r) for r in loaded[hub_split]]
        kept = [r for r in recs if not records.has_empty_field(task, r)]
        if len(kept) < len(recs):
            log.warning("hub:%s[%s]: dropped %d of %d records with an empty field", name, hub_split,
                        len(recs) - len(kept), len(recs))
        return kept

    def carve(pool: list[dict[str, Any]], n_held: list[int]) -> list[list[dict[str, Any]]]:
        """Seeded disjoint slices of ``pool`` of the given sizes, then the rest."""
        order = list(range(len(pool)))
        random.Random(seed).shuffle(order)
        bounds = [0]
        for n in n_held:
            bounds.append(bounds[-1] + n)
        parts = [order[a:b] for a, b in zip(bounds, bounds[1:])] + [order[bounds[-1]:]]
        return [[pool[i] for i in part] for part in parts]

    if split_names is None:  # europarl: one train split; fixed seeded dev/test subsets
        dev, test, train = carve(usable("train"), [sizes["dev"] or 1000, sizes["test"] or 1000])
        out = {"train": train, "dev": dev, "test": test}
    else:
        out = {split: usable(hub_split) for split, hub_split in split_names.items() if hub_split is not None}
        if "dev" not in out:  # gsm8k has no validation split: a seeded slice of train
            out["dev"], out["train"] = carve(out["train"], [sizes["dev"] or 500])
    for split, recs in out.items():
        for i, rec in enumerate(recs):
            records.check_record(task, rec, f"hub:{name}[{split}] record {i}")
        if sizes[split]:
            out[split] = recs[: sizes[split]]
        out[split] = _assign_ids(task, split, out[split])
    return out


def build(task: str, spec: dict[str, Any], seed: int, out_dir: str | Path) -> None:
    """Write the three split files of ``task`` into ``out_dir``, all or nothing."""
    source = spec["source"]
    if source == "synthetic":
        sizes = _sizes(spec)
        splits = {s: synthetic.generate(task, s, sizes[s] or {"train": 2000}.get(s, 200), seed) for s in SPLITS}
        for split, recs in splits.items():
            for i, rec in enumerate(recs):
                records.check_record(task, rec, f"synthetic:{task}[{split}] record {i}")
            splits[split] = _assign_ids(task, split, recs)
    elif source == "local":
        splits = load_local(task, spec["path"], seed, spec.get("n_dev"), spec.get("dev_from_train", False))
        splits = {s: recs[: n] if (n := _sizes(spec)[s]) else recs for s, recs in splits.items()}
    elif source == "hub":
        splits = load_hub(task, spec, seed)
    else:  # the schema rules this out; kept for direct callers
        raise DataError(f"tasks.{task}.source: unknown source {source!r}")
    # Only once every split has been checked is anything written.
    for split in SPLITS:
        write_jsonl(Path(out_dir) / f"{split}.jsonl", splits[split])


def examples(task: str, path: str | Path, prompt: str = "") -> list[dict[str, str]]:
    """Read a split file and map each record to {id, source, target}."""
    numbered = numbered_jsonl(path)
    for lineno, rec in numbered:
        records.check_record(task, rec, f"{path}:{lineno}")
    return [records.to_example(task, rec, prompt) for _, rec in numbered]
