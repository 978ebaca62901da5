"""Whether a student's tokenizer is the teacher's: checked before any training or scoring.

The divergences and the RL rewards compare teacher and student token by token, over the first
min(V_s, V_t) entries of their vocabularies, whatever those entries mean; a student whose
tokenizer maps ids to other tokens would train without a word on wrong numbers. Two tokenizers
agree when (1) every id both have maps to the same token, (2) their padding and EOS ids are the
same, (3) seq2seq: the two models start decoding from the same id, and (4) the student has an
output row for every id of the teacher's tokenizer (more rows, a padded vocabulary, are fine).
Cross-tokenizer distillation is out of scope.

Light (``tokenizers`` and json, no torch): the DAG build reads local folders with ``read_folder``;
the student job builds a ``Vocab`` from the loaded tokenizer with ``of_tokenizer``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ketchup.config import ConfigError


@dataclass(frozen=True)
class Vocab:
    """What the check compares of one model's tokenizer (``name`` says whose, for the error)."""

    name: str
    tokens: dict[int, str]  # id -> token, added tokens included
    pad: int | None
    eos: int | None
    decoder_start: int | None = None  # seq2seq models' config, None where unknown or decoder-only
    rows: int | None = None  # the model's vocab_size (output rows), None where unknown


def _special_id(value: Any, ids: dict[str, int]) -> int | None:
    """A tokenizer_config.json special-token entry (a string or {"content": ...}) as an id."""
    if isinstance(value, dict):
        value = value.get("content")
    return ids.get(value) if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def read_folder(folder: str | Path, name: str, model: bool = True) -> Vocab | None:
    """The Vocab of a local folder written by ``save_pretrained`` (tokenizer.json, tokenizer_config.json
    and, with ``model``, config.json), or None when it has no tokenizer.json (the job checks it then,
    through transformers, which reads every format)."""
    from tokenizers import Tokenizer

    folder = Path(os.path.expanduser(str(folder)))
    if not (folder / "tokenizer.json").is_file():
        return None
    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab(with_added_tokens=True)
    settings = {**_read_json(folder / "special_tokens_map.json"), **_read_json(folder / "tokenizer_config.json")}
    config = _read_json(folder / "config.json") if model else {}
    return Vocab(name, {i: t for t, i in ids.items()}, _special_id(settings.get("pad_token"), ids),
                 _special_id(settings.get("eos_token"), ids), config.get("decoder_start_token_id"),
                 config.get("vocab_size"))


def of_tokenizer(tokenizer, name: str, decoder_start: int | None = None, rows: int | None = None) -> Vocab:
    """The Vocab of a loaded transformers tokenizer (and its model's decoder start and rows)."""
    return Vocab(name, {i: t for t, i in tokenizer.get_vocab().items()}, tokenizer.pad_token_id,
                 tokenizer.eos_token_id, decoder_start, rows)


def first_difference(teacher: dict[int, str], student: dict[int, str]) -> int | None:
    """The lowest id both map, to different tokens (None: they agree on every id they share)."""
    return next((i for i in sorted(teacher.keys() & student.keys()) if teacher[i] != student[i]), None)


def check(teacher: Vocab, student: Vocab, key: str) -> None:
    """Raise ConfigError naming ``key`` (the student's config key), both models and the first thing
    that differs, unless ``student`` can be distilled from ``teacher`` token by token."""
    where = f"config key '{key}': the student {student.name!r} and the teacher {teacher.name!r}"
    scope = ("; distillation here compares the two models token by token, so the student needs the "
             "teacher's tokenizer (cross-tokenizer distillation is out of scope)")
    i = first_difference(teacher.tokens, student.tokens)
    if i is not None:
        raise ConfigError(f"{where} have different tokenizers: id {i} is {teacher.tokens[i]!r} for the teacher "
                          f"and {student.tokens[i]!r} for the student (the first id that differs){scope}")
    for what in ("pad", "eos", "decoder_start"):
        t, s = getattr(teacher, what), getattr(student, what)
        if t is not None and s is not None and t != s:
            label = {"pad": "padding", "eos": "EOS", "decoder_start": "decoder-start"}[what]
            raise ConfigError(f"{where} have different {label} ids: {t} ({teacher.tokens.get(t)!r}) for the "
                              f"teacher and {s} ({student.tokens.get(s)!r}) for the student{scope}")
    if student.rows is not None and teacher.tokens and student.rows <= max(teacher.tokens):
        raise ConfigError(f"{where}: the student has {student.rows} output rows, fewer than the teacher's "
                          f"tokenizer's {max(teacher.tokens) + 1} ids{scope}")


def written_as_path(name_or_path: str) -> bool:
    """Whether ``name_or_path`` can only mean a local folder: absolute, starting with ``.`` or ``~``,
    more than one ``/``, or ``a/b`` whose ``a`` is a folder here. Anything else that is no folder
    here (``org/name``, ``name``) is a hub name, as transformers reads it."""
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path:
        return True
    return "/" in name_or_path and Path(name_or_path.split("/")[0]).is_dir()


def local_folder(name_or_path: str, key: str) -> Path | None:
    """The local folder a ``name_or_path`` names, None for a hub name; a folder written as a path that
    does not exist is a ConfigError naming ``key``."""
    path = Path(os.path.expanduser(name_or_path))
    if path.is_dir():
        return path
    if path.exists() or written_as_path(name_or_path):
        raise ConfigError(f"config key '{key}': {name_or_path!r} is not a folder (relative paths are read from "
                          f"the working directory, {Path.cwd()}); write the model there with save_pretrained, "
                          "or give a hub name")
    return None


def check_local_models(config: dict[str, Any]) -> None:
    """At DAG build: every ``name_or_path`` written as a path is a folder, and each student loaded from
    a local folder has the tokenizer of the run (the pretrained tokenizer's folder, when local).
    Hub names, GGUF files and trained tokenizers are checked by the student job (ketchup.stages)."""
    teacher = config["teacher"]["model"]
    tok = config["tokenizer"]
    folders = {}
    for key, block in (("teacher.model", teacher), ("tokenizer", tok),
                       *((f"students.{size}", block) for size, block in config["students"].items())):
        if "name_or_path" in block:
            folders[key] = local_folder(block["name_or_path"], f"{key}.name_or_path")
    if tok["kind"] != "pretrained" or ("gguf_file" in tok if "name_or_path" in tok else "gguf_file" in teacher):
        return
    source = "tokenizer" if "name_or_path" in tok else "teacher.model"
    if folders.get(source) is None or (reference := read_folder(folders[source], str(folders[source]))) is None:
        return
    seq2seq = config["architecture"] == "seq2seq"
    start = None
    if seq2seq:  # the teacher's own config, or build_model's rule for one built from config (the pad id)
        start = (_read_json(folders["teacher.model"] / "config.json").get("decoder_start_token_id")
                 if folders.get("teacher.model") else reference.pad if "config" in teacher else None)
    reference = Vocab(reference.name, reference.tokens, reference.pad, reference.eos, start)
    for size, block in config["students"].items():
        folder = folders.get(f"students.{size}")
        if folder is None or "gguf_file" in block:
            continue
        student = read_folder(folder, str(folder))
        if student is not None:
            if not seq2seq:
                student = Vocab(student.name, student.tokens, student.pad, student.eos, None, student.rows)
            check(reference, student, f"students.{size}.name_or_path")
