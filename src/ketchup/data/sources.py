"""Produce ``results/data/{task}/{split}.jsonl`` from synthetic generators, the hub or local JSONL.

Whatever the source, every record is checked against the hub schema (records.check_record) and
every split's example ids are checked to be unique before anything is written, so a malformed
record or a repeated id stops the stage with its file and line and leaves no output behind.

Sizes (``tasks.<task>.n_train`` / ``n_dev`` / ``n_test``): a number takes the first that many
records of a hub or local split and is an error when the split has fewer; ``all`` (or leaving the
key out) keeps the whole split. A split carved from train as a seeded slice (Europarl's dev and
test, GSM8K's dev, a local task without ``dev.jsonl``) needs a number, and must leave train records.
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
# Hub names and configs of the paper's datasets (docs/data.md, 'Record fields of each task'), and their split names.
HUB = {
    "xsum": ("EdinburghNLP/xsum", None, {"train": "train", "dev": "validation", "test": "test"}),
    "en_nl": ("Helsinki-NLP/europarl", "en-nl", None),  # train only: dev/test are seeded subsets
    "gsm8k": ("openai/gsm8k", "main", {"train": "train", "dev": None, "test": "test"}),
}
# Sizes of the splits carved from train when the config gives none (the paper configs set them).
HUB_CARVED = {"en_nl": {"dev": 1000, "test": 1000}, "gsm8k": {"dev": 500}}
LOCAL_CARVED = {"dev": 500}  # a local task without dev.jsonl
# Local split files; dev.jsonl may be left out (dev is then carved from train).
LOCAL_OPTIONAL = ("dev",)


def _sizes(spec: dict[str, Any]) -> dict[str, int | str | None]:
    return {split: spec.get(f"n_{split}") for split in SPLITS}


def _assign_ids(task: str, split: str, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r if "id" in r else {**r, "id": f"{task}-{split}-{i}"} for i, r in enumerate(recs)]


def _check_unique_ids(recs: list[dict[str, Any]], where: list[str]) -> None:
    """Raise DataError naming both places (``where[i]``) of the first id seen twice.

    Ids compare as strings, as ``records.to_example`` writes them (1 and "1" are the same id):
    corpus metrics count every row while per-example scores keep one per id.
    """
    first: dict[str, int] = {}
    for i, rec in enumerate(recs):
        ex_id = str(rec["id"])
        if ex_id in first:
            raise DataError(f"{where[i]}: duplicate example id {ex_id!r}, already used at {where[first[ex_id]]}")
        first[ex_id] = i


def _take(task: str, split: str, recs: list[dict[str, Any]], n: int | str | None, where: str) -> list[dict[str, Any]]:
    """The first ``n`` records; None or 'all' keeps every one; more than there are is an error."""
    if n is None or n == "all":
        return recs
    if n > len(recs):
        raise DataError(f"config key 'tasks.{task}.n_{split}': asks for {n} records but {where} has only "
                        f"{len(recs)}; lower it, or set it to 'all'")
    return recs[:n]


def _held_sizes(task: str, defaults: dict[str, int], sizes: dict[str, Any], pool: float, where: str) -> list[int]:
    """Sizes of the splits (``defaults``' keys) carved from a train pool of ``pool`` records.

    'all' cannot size a slice, and at least one record must stay for train.
    """
    out = []
    for split, default in defaults.items():
        n = sizes[split]
        if n == "all":
            raise DataError(f"config key 'tasks.{task}.n_{split}': 'all' is not possible here: {split} is a "
                            f"seeded slice of {where}; give a number")
        out.append(default if n is None else n)
    if sum(out) >= pool:
        keys = " + ".join(f"tasks.{task}.n_{s}" for s in defaults)
        raise DataError(f"config key '{keys}' = {sum(out)} (given or default) is carved from {where}, which has only "
                        f"{pool} records, leaving none for train; lower it")
    return out


def carve(pool: list[dict[str, Any]], n_held: list[int], seed: int) -> list[list[dict[str, Any]]]:
    """Seeded disjoint slices of ``pool`` of the given sizes, then the rest."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    bounds = [0]
    for n in n_held:
        bounds.append(bounds[-1] + n)
    parts = [order[a:b] for a, b in zip(bounds, bounds[1:])] + [order[bounds[-1]:]]
    return [[pool[i] for i in part] for part in parts]


def local_split_files(task: str, spec: dict[str, Any]) -> list[Path]:
    """The split files of a ``source: local`` task (the data rule's inputs), checked to exist.

    Raises DataError naming ``tasks.<task>.path`` and the path when the folder or a required split
    file is missing; relative paths are relative to the working directory (Snakemake's --directory).
    """
    directory = Path(spec["path"])
    if not directory.is_dir():
        raise DataError(f"config key 'tasks.{task}.path': {directory} is not a directory "
                        f"(it must hold train.jsonl, test.jsonl and optionally dev.jsonl)")
    files = []
    for split in SPLITS:
        path = directory / f"{split}.jsonl"
        if path.is_file():
            files.append(path)
        elif split not in LOCAL_OPTIONAL:
            raise DataError(f"config key 'tasks.{task}.path': {path} not found")
    return files


def load_local(task: str, directory: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Read ``{directory}/{split}.jsonl`` in the hub schema, checking every line and that ids are unique.

    A split missing from the result (dev, when there is no dev.jsonl) is left to the caller to carve.
    """
    out = {}
    for split in SPLITS:
        path = Path(directory) / f"{split}.jsonl"
        if split in LOCAL_OPTIONAL and not path.exists():
            continue
        numbered = numbered_jsonl(path)
        for lineno, rec in numbered:
            records.check_record(task, rec, f"{path}:{lineno}")
        recs = [rec for _, rec in numbered]
        if not recs:
            raise DataError(f"{path}: no records")
        out[split] = _assign_ids(task, split, recs)
        _check_unique_ids(out[split], [f"{path}:{lineno}" for lineno, _ in numbered])
    return out


def load_hub(task: str, spec: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Load the task's hub dataset with ``datasets``; carve missing dev/test splits from train, seeded."""
    default_name, default_config, split_names = HUB[task]
    name = spec.get("hub_name", default_name)
    config = spec.get("hub_config", default_config)
    sizes = _sizes(spec)
    train_where = f"hub:{name}[train]"
    _held_sizes(task, HUB_CARVED.get(task, {}), sizes, float("inf"), train_where)  # before the download

    import datasets  # heavy import, only on this path

    loaded = datasets.load_dataset(name, config)

    def usable(hub_split: str) -> list[dict[str, Any]]:
        recs = [dict(r) for r in loaded[hub_split]]
        kept = [r for r in recs if not records.has_empty_field(task, r)]
        if len(kept) < len(recs):
            log.warning("hub:%s[%s]: dropped %d of %d records with an empty field", name, hub_split,
                        len(recs) - len(kept), len(recs))
        return kept

    if split_names is None:  # europarl: one train split; fixed seeded dev/test subsets
        pool = usable("train")
        dev, test, train = carve(pool, _held_sizes(task, HUB_CARVED[task], sizes, len(pool), train_where), seed)
        out = {"train": train, "dev": dev, "test": test}
    else:
        out = {split: usable(hub_split) for split, hub_split in split_names.items() if hub_split is not None}
        if "dev" not in out:  # gsm8k has no validation split: a seeded slice of train
            pool = out["train"]
            out["dev"], out["train"] = carve(pool, _held_sizes(task, HUB_CARVED[task], sizes, len(pool), train_where),
                                             seed)
    for split, recs in out.items():
        where = [f"hub:{name}[{split}] record {i}" for i in range(len(recs))]
        for i, rec in enumerate(recs):
            records.check_record(task, rec, where[i])
        left = " (what is left after carving dev/test)" if split == "train" and task in HUB_CARVED else ""
        recs = _assign_ids(task, split, _take(task, split, recs, sizes[split], f"hub:{name}[{split}]{left}"))
        _check_unique_ids(recs, where)
        out[split] = recs
    return out


def build(task: str, spec: dict[str, Any], seed: int, out_dir: str | Path) -> None:
    """Write the three split files of ``task`` into ``out_dir``, all or nothing."""
    source = spec["source"]
    sizes = _sizes(spec)
    if source == "synthetic":
        for split, n in sizes.items():
            if n == "all":
                raise DataError(f"config key 'tasks.{task}.n_{split}': 'all' needs a hub or local source; "
                                f"synthetic data is generated to the size asked")
        splits = {s: synthetic.generate(task, s, sizes[s] or {"train": 2000}.get(s, 200), seed) for s in SPLITS}
        for split, recs in splits.items():
            where = [f"synthetic:{task}[{split}] record {i}" for i in range(len(recs))]
            for i, rec in enumerate(recs):
                records.check_record(task, rec, where[i])
            splits[split] = _assign_ids(task, split, recs)
            _check_unique_ids(splits[split], where)
    elif source == "local":
        directory = Path(spec["path"])
        splits = load_local(task, directory)
        if "dev" not in splits:  # no dev.jsonl: a seeded slice of train, as for GSM8K
            pool = splits["train"]
            held = _held_sizes(task, LOCAL_CARVED, sizes, len(pool), str(directory / "train.jsonl"))
            splits["dev"], splits["train"] = carve(pool, held, seed)
        for split in SPLITS:
            where = str(directory / f"{split}.jsonl")
            if split == "train" and not (directory / "dev.jsonl").exists():
                where += " (what is left after carving dev)"
            splits[split] = _take(task, split, splits[split], sizes[split], where)
    elif source == "hub":
        splits = load_hub(task, spec, seed)
    else:  # the schema rules this out; kept for direct callers
        raise DataError(f"tasks.{task}.source: unknown source {source!r}")
    # Only once every split has been checked is anything written.
    for split in SPLITS:
        write_jsonl(Path(out_dir) / f"{split}.jsonl", splits[split])


def examples(task: str, path: str | Path, prompt: str = "", calculator: bool = False) -> list[dict[str, str]]:
    """Read a split file and map each record to {id, source, target} (``calculator``: GSM8K targets
    keep their annotations, see records.to_example)."""
    numbered = numbered_jsonl(path)
    for lineno, rec in numbered:
        records.check_record(task, rec, f"{path}:{lineno}")
    return [records.to_example(task, rec, prompt, calculator) for _, rec in numbered]
