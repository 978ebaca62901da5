"""Produce ``results/data/{task}/{split}.jsonl`` from synthetic generators, the hub or local files
(JSONL, CSV or Parquet; ``tasks.<task>.format``).

Whatever the source, every record is checked for the fields its task reads (records.check_record) and
every split's example ids are checked to be unique before anything is written, so a malformed
record or a repeated id stops the stage with its file and line and leaves no output behind.

Sizes (``tasks.<task>.n_train`` / ``n_dev`` / ``n_test``): a number takes the first that many
records of a hub or local split and is an error when the split has fewer; ``all`` (or leaving the
key out) keeps the whole split. A split carved from train as a seeded slice (a hub split mapped to
null in ``hub_splits``, as Europarl's dev and test and GSM8K's dev; a local task without a dev file)
needs a number (or the task's ``hub_carved`` default), and must leave train records.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from ketchup import tasks
from ketchup.data import records, synthetic
from ketchup.io import DataError, numbered_jsonl, write_jsonl

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")
LOCAL_CARVED = {"dev": 500}  # a local task without a dev file
# Local split files; the dev file may be left out (dev is then carved from train).
LOCAL_OPTIONAL = ("dev",)
# Records the DAG build reads of each local split file to check the task's fields.
FIRST_RECORDS = 5


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
        if n is None and default is None:
            raise DataError(f"config key 'tasks.{task}.n_{split}': {split} is a seeded slice of {where}; give its "
                            f"size")
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
    directory, ext = Path(spec["path"]), spec.get("format", "jsonl")
    if not directory.is_dir():
        raise DataError(f"config key 'tasks.{task}.path': {directory} is not a directory "
                        f"(it must hold train.{ext}, test.{ext} and optionally dev.{ext})")
    files = []
    for split in SPLITS:
        path = directory / f"{split}.{ext}"
        if path.is_file():
            files.append(path)
        elif split not in LOCAL_OPTIONAL:
            raise DataError(f"config key 'tasks.{task}.path': {path} not found")
    return files


def numbered_records(path: str | Path, fmt: str, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(line, record) pairs of a local split file: JSONL (line number), CSV (the line a row ends on;
    the header is line 1; every value a string) or Parquet (row number, from 1). ``limit``: the first
    that many records only (what the DAG build checks)."""
    path = Path(path)
    if fmt == "jsonl":
        return numbered_jsonl(path)[:limit]
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if fmt == "csv":
        import csv

        out = []
        with path.open(newline="", encoding="utf-8-sig") as handle:  # a spreadsheet's byte-order mark is no column
            try:
                reader = csv.DictReader(handle)
                for row in reader:
                    if None in row or None in row.values():
                        raise DataError(f"{path}:{reader.line_num}: {len(reader.fieldnames)} columns in the header, "
                                        f"another number in this row")
                    out.append((reader.line_num, row))
                    if limit is not None and len(out) >= limit:
                        break
            except (UnicodeDecodeError, csv.Error) as exc:
                raise DataError(f"{path}: not a readable UTF-8 CSV file ({exc})") from exc
        return out
    import pyarrow.parquet as pq  # only for Parquet files

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several kinds for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    rows = table.slice(0, limit).to_pylist() if limit is not None else table.to_pylist()
    return [(i, row) for i, row in enumerate(rows, start=1)]


def check_local_fields(task: str, spec: dict[str, Any]) -> None:
    """Check the first records of each local split file for the fields the task reads (at DAG build),
    raising DataError naming the file, the line and the config key."""
    tdef = tasks.resolve(task, spec)
    for path in local_split_files(task, spec):
        for lineno, rec in numbered_records(path, tdef["format"], FIRST_RECORDS):
            records.check_record(tdef, rec, f"{path}:{lineno}")


def load_local(task: str | dict[str, Any], directory: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Read ``{directory}/{split}.{format}``, checking every record and that ids are unique.

    A split missing from the result (dev, when there is no dev file) is left to the caller to carve.
    """
    tdef = tasks.definition(task)
    name, fmt = tdef["name"], tdef["format"]
    out = {}
    for split in SPLITS:
        path = Path(directory) / f"{split}.{fmt}"
        if split in LOCAL_OPTIONAL and not path.exists():
            continue
        numbered = numbered_records(path, fmt)
        for lineno, rec in numbered:
            records.check_record(tdef, rec, f"{path}:{lineno}")
        recs = [rec for _, rec in numbered]
        if not recs:
            raise DataError(f"{path}: no records")
        out[split] = _assign_ids(name, split, recs)
        _check_unique_ids(out[split], [f"{path}:{lineno}" for lineno, _ in numbered])
    return out


def load_hub(task: str, spec: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Load the task's hub dataset with ``datasets``; carve the splits ``hub_splits`` maps to null
    from train, seeded."""
    tdef = tasks.resolve(task, spec)
    if "hub_name" not in tdef:
        raise DataError(f"config key 'tasks.{task}.hub_name': a hub task needs the dataset's name")
    name, config, split_names = tdef["hub_name"], tdef["hub_config"], tdef["hub_splits"]
    carved = {s: tdef["hub_carved"].get(s) for s in SPLITS if s != "train" and split_names.get(s) is None}
    sizes = _sizes(spec)
    train_where = f"hub:{name}[train]"
    _held_sizes(task, carved, sizes, float("inf"), train_where)  # before the download

    import datasets  # heavy import, only on this path

    loaded = datasets.load_dataset(name, config)

    def usable(hub_split: str) -> list[dict[str, Any]]:
        recs = [dict(r) for r in loaded[hub_split]]
        kept = [r for r in recs if not records.has_empty_field(tdef, r)]
        if len(kept) < len(recs):
            log.warning("hub:%s[%s]: dropped %d of %d records with an empty field", name, hub_split,
                        len(recs) - len(kept), len(recs))
        return kept

    out = {split: usable(split_names.get(split) or "train") for split in SPLITS if split not in carved}
    if carved:  # seeded slices of train (Europarl: dev and test; GSM8K: dev), in split order, then train
        pool = out["train"]
        *held, out["train"] = carve(pool, _held_sizes(task, carved, sizes, len(pool), train_where), seed)
        out.update(zip(carved, held))
    for split in SPLITS:
        recs = out[split]
        where = [f"hub:{name}[{split}] record {i}" for i in range(len(recs))]
        for i, rec in enumerate(recs):
            records.check_record(tdef, rec, where[i])
        left = " (what is left after carving dev/test)" if split == "train" and carved else ""
        recs = _assign_ids(task, split, _take(task, split, recs, sizes[split], f"hub:{name}[{split}]{left}"))
        _check_unique_ids(recs, where)
        out[split] = recs
    return out


def build(task: str, spec: dict[str, Any], seed: int, out_dir: str | Path) -> None:
    """Write the three split files of ``task`` (its config block ``spec``) into ``out_dir``, all or nothing."""
    tdef = tasks.resolve(task, spec)
    source = spec["source"]
    sizes = _sizes(spec)
    if source == "synthetic":
        for split, n in sizes.items():
            if n == "all":
                raise DataError(f"config key 'tasks.{task}.n_{split}': 'all' needs a hub or local source; "
                                f"synthetic data is generated to the size asked")
        if "generator" not in tdef:
            raise DataError(f"config key 'tasks.{task}.generator': a synthetic task needs a generator "
                            f"({', '.join(synthetic.GENERATORS)})")
        gen = tdef["generator"]
        splits = {s: synthetic.generate(gen, s, sizes[s] or {"train": 2000}.get(s, 200), seed) for s in SPLITS}
        for split, recs in splits.items():
            where = [f"synthetic:{task}[{split}] record {i}" for i in range(len(recs))]
            for i, rec in enumerate(recs):
                records.check_record(tdef, rec, where[i])
            splits[split] = _assign_ids(task, split, recs)
            _check_unique_ids(splits[split], where)
    elif source == "local":
        directory, ext = Path(spec["path"]), tdef["format"]
        splits = load_local(tdef, directory)
        if "dev" not in splits:  # no dev file: a seeded slice of train, as for GSM8K
            pool = splits["train"]
            held = _held_sizes(task, LOCAL_CARVED, sizes, len(pool), str(directory / f"train.{ext}"))
            splits["dev"], splits["train"] = carve(pool, held, seed)
        for split in SPLITS:
            where = str(directory / f"{split}.{ext}")
            if split == "train" and not (directory / f"dev.{ext}").exists():
                where += " (what is left after carving dev)"
            splits[split] = _take(task, split, splits[split], sizes[split], where)
    elif source == "hub":
        splits = load_hub(task, spec, seed)
    else:  # the schema rules this out; kept for direct callers
        raise DataError(f"tasks.{task}.source: unknown source {source!r}")
    # Only once every split has been checked is anything written.
    for split in SPLITS:
        write_jsonl(Path(out_dir) / f"{split}.jsonl", splits[split])


def examples(task: str | dict[str, Any], path: str | Path, prompt: str = "",
             calculator: bool = False) -> list[dict[str, str]]:
    """Read a split file and map each record to {id, source, target} with the task's ``fields``
    (``task``: its definition, ketchup.tasks; ``calculator``: GSM8K targets keep their annotations,
    see records.to_example)."""
    tdef = tasks.definition(task)
    numbered = numbered_jsonl(path)
    for lineno, rec in numbered:
        records.check_record(tdef, rec, f"{path}:{lineno}")
    return [records.to_example(tdef, rec, prompt, calculator) for _, rec in numbered]
