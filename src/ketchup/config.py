"""Load and validate the pipeline configuration against the schema shipped with the package
(src/ketchup/schema/config.schema.yaml); its ``default:`` values are the settings' defaults.

Validation happens when the Snakemake DAG is built, so a bad config stops the run before any job
starts; errors name the offending key as a dotted path (``tasks.xsum.k``).
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ketchup import registry, tasks

SCHEMA_PATH = Path(str(resources.files("ketchup") / "schema" / "config.schema.yaml"))


@lru_cache(maxsize=None)
def _schema_text(schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    return yaml.safe_load(schema_path.read_text())


def schema_defaults(*where: str) -> dict[str, Any]:
    """The ``default:`` of each property of the schema node at ``where`` (e.g. ``"$defs", "optim"``):
    the one place every default is written. Layered settings (defaults < train < rl_train < method_overrides)
    merge these under the config, so an override never brings defaults of its own."""
    node = _schema_text()
    for key in where:
        node = node[key]
    return {name: copy.deepcopy(prop["default"]) for name, prop in node["properties"].items() if "default" in prop}


# Reference defaults (docs/settings.md); the config overrides any of them.
RL_DEFAULTS = schema_defaults("properties", "rl")
DIVERGENCE_DEFAULTS = schema_defaults("properties", "divergence")
# `processes` says how a job is launched (ketchup.launch), not how it trains: it stays out of the
# stages' specs, so that a config without the key keeps its specs and resume fingerprints.
LAUNCH_KEYS = ("processes",)
OPTIM_DEFAULTS = {k: v for k, v in schema_defaults("$defs", "optim").items() if k not in LAUNCH_KEYS}
RL_OPTIM_DEFAULTS = schema_defaults("properties", "rl_train")  # the RL family's own defaults (lr), over train
GENERATION_DEFAULTS = schema_defaults("properties", "generation")
LENGTH_DEFAULTS = {k: v for k, v in schema_defaults("$defs", "task").items()
                   if k in ("max_source_length", "max_target_length")}
PRETRAIN_DEFAULTS = {k: v for k, v in schema_defaults("$defs", "pretrain").items() if k not in LAUNCH_KEYS}
TOKENIZER_DEFAULTS = schema_defaults("properties", "tokenizer")


class ConfigError(ValueError):
    """A configuration problem, with the dotted key that caused it."""


def _key_path(error: jsonschema.ValidationError, prefix: tuple[str, ...] = ()) -> str:
    path = ".".join(str(p) for p in (*prefix, *error.absolute_path))
    return path or "<top level>"


def load_schema(schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The config schema, with the method enums filled from the method registry."""
    schema = copy.deepcopy(_schema_text(schema_path))
    schema["$defs"]["method"]["enum"] = list(registry.NAMES)
    schema["$defs"]["trained_method"]["enum"] = list(registry.TRAINED_METHODS)
    return schema


def validate(config: dict[str, Any], schema_path: Path = SCHEMA_PATH) -> None:
    """Raise ConfigError listing every schema violation with its key path."""
    _raise_errors(jsonschema.Draft202012Validator(load_schema(schema_path)), config)
    _check_semantics(config)


def validate_block(key: str, block: dict[str, Any], schema_path: Path = SCHEMA_PATH) -> None:
    """Check one top-level block given on its own (e.g. the judge's, passed to a job) against its
    part of the schema. Conditions between keys (``if``/``then``) are left to the block's own code,
    which explains them (e.g. ketchup.judge.check_enabled)."""
    schema = load_schema(schema_path)
    part = {k: v for k, v in schema["properties"][key].items() if k not in ("if", "then", "else")}
    _raise_errors(jsonschema.Draft202012Validator({**part, "$defs": schema["$defs"]}), block, (key,))


def _raise_errors(validator: jsonschema.Draft202012Validator, instance: Any, prefix: tuple[str, ...] = ()) -> None:
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for err in errors:
            where = _key_path(err, prefix)
            inside = bool(prefix or err.absolute_path)
            if "propertyNames" in err.absolute_schema_path:
                # jsonschema reports the parent (and validator enum/pattern); name the key itself.
                key = f"{where}.{err.instance}" if inside else str(err.instance)
                lines.append(f"config key '{key}': unknown name {err.instance!r} ({err.message})")
            elif err.validator == "additionalProperties":
                known = err.schema.get("properties", {})
                for extra in (k for k in err.instance if k not in known):
                    key = f"{where}.{extra}" if inside else str(extra)
                    lines.append(f"config key '{key}': unknown key (known: {', '.join(known)})")
            else:
                lines.append(f"config key '{where}': {err.message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def _check_semantics(config: dict[str, Any]) -> None:
    """Cross-key rules a JSON schema cannot express simply."""
    for name, task in config["tasks"].items():
        if task["source"] == "local" and "path" not in task:
            raise ConfigError(f"config key 'tasks.{name}.path': required when source is 'local'")
        for split in ("train", "dev", "test"):
            if task["source"] == "synthetic" and task.get(f"n_{split}") == "all":
                raise ConfigError(f"config key 'tasks.{name}.n_{split}': 'all' needs a hub or local source; "
                                  "synthetic data is generated to the size asked, give a number")
        check_task(name, task)
    tok = config["tokenizer"]
    if tok["kind"] == "pretrained" and "name_or_path" not in tok and "name_or_path" not in config["teacher"]["model"]:
        raise ConfigError("config key 'tokenizer.name_or_path': a pretrained tokenizer needs a name or the teacher's")
    if tok["kind"] == "train" and "config" not in config["teacher"]["model"]:
        raise ConfigError("config key 'tokenizer.kind': 'train' only works with models built from config")
    if any(registry.METHODS[name].ppo for name in config["methods"]):
        rl = rl_settings(config)
        for name in config["methods"]:
            if registry.METHODS[name].ppo and rl["ppo_minibatches"] > optim_settings(config, name)["batch_size"]:
                raise ConfigError(f"config key 'rl.ppo_minibatches': {rl['ppo_minibatches']} minibatches of a "
                                  f"{optim_settings(config, name)['batch_size']}-rollout micro-batch ({name}'s "
                                  "batch_size) leave some empty; use at most the batch size")
    for name in config["methods"]:
        start = registry.METHODS[name].starts_from
        if start and start not in config["methods"]:
            raise ConfigError(f"config key 'methods': {name!r} starts from the {start!r} student; add {start!r}")
    if "from_teacher" in config["teacher"]["model"]:
        raise ConfigError("config key 'teacher.model.from_teacher': only students are cut from the teacher")
    layer_keys = {"decoder": {"layers"}, "seq2seq": {"encoder_layers", "decoder_layers"}}[config["architecture"]]
    for name, student in config["students"].items():
        cut = student.get("from_teacher")
        if cut is not None and set(cut) != layer_keys:
            raise ConfigError(f"config key 'students.{name}.from_teacher': a {config['architecture']} student "
                              f"cut from the teacher lists {sorted(layer_keys)} (got {sorted(cut)})")
    if "pretrain" in config["teacher"]["model"]:
        raise ConfigError("config key 'teacher.model.pretrain': only students are pretrained")
    for name, student in config["students"].items():
        if "pretrain" not in student:
            continue
        check_pretrainable(name, student)
        held_out = pretrain_settings(config, name)["dev_examples"]
        for task_name, task in config["tasks"].items():
            if isinstance(task.get("n_train"), int) and held_out >= task["n_train"]:
                raise ConfigError(f"config key 'students.{name}.pretrain.dev_examples': {held_out} held-out examples "
                                  f"leave none of the {task['n_train']} of tasks.{task_name}.n_train to pretrain on")


def check_task(name: str, block: dict[str, Any]) -> None:
    """A task's definition over its preset (ketchup.tasks) is complete and consistent."""
    tdef = tasks.resolve(name, block)
    key = f"tasks.{name}"
    no_preset = "" if tasks.preset_name(name, block) else (
        f" (task {name} has no preset: give it, or preset: one of {', '.join(tasks.PRESETS)})")
    for needed in ("fields", "metrics"):
        if needed not in tdef:
            raise ConfigError(f"config key '{key}.{needed}': required{no_preset}")
    if tdef["primary_metric"] not in tdef["metrics"]:
        raise ConfigError(f"config key '{key}.primary_metric': {tdef['primary_metric']!r} is not one of the task's "
                          f"metrics {tdef['metrics']}")
    for role, text in tdef["fields"].items():
        try:
            tasks.template_fields(text)
        except ValueError as exc:
            raise ConfigError(f"config key '{key}.fields.{role}': {exc}") from None
    needs = {"synthetic": "generator", "hub": "hub_name"}.get(tdef["source"])
    if needs and needs not in tdef:
        raise ConfigError(f"config key '{key}.{needs}': required for source {tdef['source']}{no_preset}")
    if tdef.get("calculator") and tdef["answer_format"] != "gsm8k":
        raise ConfigError(f"config key '{key}.calculator': the calculator works on GSM8K-style references "
                          "(answer_format: gsm8k); remove it or set it to false")


def task_definition(config: dict[str, Any], task: str) -> dict[str, Any]:
    """The task's full definition: its config block over its preset (ketchup.tasks)."""
    return tasks.resolve(task, config["tasks"][task])


def judge_block(config: dict[str, Any]) -> dict[str, Any]:
    """The judge block as its jobs (and the cost plan) read it: ``task_descriptions`` holds each task's
    ``description``, replaced by the config's judge.task_descriptions."""
    judge = config.get("judge") or {}
    described = {task: task_definition(config, task)["description"] for task in config["tasks"]}
    return {**judge, "task_descriptions": {**described, **judge.get("task_descriptions", {})}}


def check_pretrainable(name: str, student: dict[str, Any]) -> None:
    """Only a student built from config (``students.<name>.config``) is pretrained: a loaded or cut one
    starts from those weights."""
    if "config" not in student:
        how = "loaded (name_or_path)" if "name_or_path" in student else "cut from the teacher (from_teacher)"
        raise ConfigError(f"config key 'students.{name}.pretrain': only a student built from config is "
                          f"pretrained; this one is {how} and starts from those weights")


def read(path: str | Path) -> dict[str, Any]:
    """A YAML config as it is in the file (its ``extends`` resolved), not yet validated."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return resolve_extends(config, path.parent) if isinstance(config, dict) else config


def resolve_extends(config: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """``extends: FILE`` (relative to ``where``, the extending file's folder): FILE's config, with this
    config's keys merged into it (``extend``), so a variant such as workflow/configs/study.yaml states
    only what differs from the default."""
    if "extends" not in config:
        return config
    base_path = Path(where) / str(config["extends"])
    if not base_path.is_file():
        raise ConfigError(f"extends: {base_path} does not exist")
    return extend(read(base_path), {k: v for k, v in config.items() if k != "extends"})


MODEL_SOURCES = ("config", "name_or_path", "from_teacher")  # a model block has exactly one


def _model_source(block: Any) -> str | None:
    return next((k for k in MODEL_SOURCES if k in block), None) if isinstance(block, dict) else None


def extend(base: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``variant`` merged into it: nested mappings key by key, anything else (lists
    included) replaced; except a model block (``teacher.model``, ``students.<size>``) whose source
    (config, name_or_path or from_teacher) is not the base's: it replaces the base's block whole,
    its pretrain and gguf_file included, since a loaded model is never built from config."""
    merged = deep_update(base, variant)
    blocks = [("teacher", "model")] + [("students", size) for size in (variant.get("students") or {})]
    for outer, inner in blocks:
        old = (base.get(outer) or {}).get(inner) if isinstance(base.get(outer), dict) else None
        new = (variant.get(outer) or {}).get(inner) if isinstance(variant.get(outer), dict) else None
        if _model_source(new) is not None and _model_source(old) not in (None, _model_source(new)):
            merged[outer][inner] = copy.deepcopy(new)
    return merged


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config, apply overrides, validate, return it."""
    config = read(path)
    if overrides:
        config = deep_update(config, overrides)
    validate(config)
    return config


def deep_update(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _without_launch(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in LAUNCH_KEYS}


def _student_layers(config: dict[str, Any], method: str | None) -> dict[str, Any]:
    """train < (an RL method) rl_train's schema defaults < rl_train < method_overrides[method], launch
    keys included."""
    settings = dict(config.get("train", {}))
    if method is not None:
        name = registry.method_and_k(method, 1)[0]
        if registry.get(name).family == "rl":
            settings.update({**RL_OPTIM_DEFAULTS, **config.get("rl_train", {})})
        settings.update(config.get("method_overrides", {}).get(name, {}))
    return settings


def optim_settings(config: dict[str, Any], method: str | None = None) -> dict[str, Any]:
    """Student optimiser settings for a method or run name: defaults < train < method_overrides[method],
    and for an RL method defaults < train < rl_train's schema defaults < rl_train < method_overrides[method]
    (so train.lr, set for the other methods, never reaches RL); a run ``{method}-r{N}`` then trains N
    steps, ``ketchup-k{K}`` as ketchup. Without a method: the train block alone."""
    settings = {**OPTIM_DEFAULTS, **_without_launch(_student_layers(config, method))}
    if method is not None and (steps := registry.rollout_budget(method)) is not None:
        settings["max_steps"] = steps
    return settings


PROCESSES_DEFAULT = schema_defaults("$defs", "optim")["processes"]


def processes(config: dict[str, Any], rule: str, task: str | None = None, student: str | None = None,
              method: str | None = None) -> int:
    """The processes (and devices) of a job of ``rule``: student (train < method_overrides[method]),
    teacher and teacher_outputs (teacher.train < tasks[task].teacher_train), pretrain
    (students[student].pretrain); 1 for every other rule, and for a teacher used as loaded (it only
    saves the model)."""
    if rule == "student":
        layers = _student_layers(config, method)
    elif rule == "teacher" and not config["teacher"].get("finetune", True):
        return 1
    elif rule in ("teacher", "teacher_outputs"):
        layers = {**config["teacher"].get("train", {}),
                  **(config["tasks"][task].get("teacher_train", {}) if task is not None else {})}
    elif rule == "pretrain":
        layers = config["students"][student].get("pretrain", {})
    else:
        return 1
    return int(layers.get("processes", PROCESSES_DEFAULT))


TEACHER_DTYPE_DEFAULT = schema_defaults("properties", "teacher")["dtype"]


def teacher_dtype_name(config: dict[str, Any]) -> str:
    """``teacher.dtype`` over the schema's default (auto)."""
    return config["teacher"].get("dtype", TEACHER_DTYPE_DEFAULT)


def teacher_dtype_spec(config: dict[str, Any]) -> dict[str, str]:
    """``{"teacher_dtype": teacher.dtype}`` for the specs of the stages that run the teacher, empty for
    the default (auto), so that a config without the key keeps its specs and resume fingerprints."""
    dtype = teacher_dtype_name(config)
    return {} if dtype == TEACHER_DTYPE_DEFAULT else {"teacher_dtype": dtype}


def teacher_settings(config: dict[str, Any], task: str | None = None) -> dict[str, Any]:
    """Teacher optimiser settings (defaults < teacher.train < tasks[task].teacher_train)."""
    settings = {**OPTIM_DEFAULTS, **_without_launch(config["teacher"].get("train", {}))}
    if task is not None:
        settings.update(_without_launch(config["tasks"][task].get("teacher_train", {})))
    return settings


def tokenizer_settings(config: dict[str, Any]) -> dict[str, Any]:
    return {**TOKENIZER_DEFAULTS, **config["tokenizer"]}


def pretrain_settings(config: dict[str, Any], student: str) -> dict[str, Any]:
    """A student size's pretrain block (defaults < students.<student>.pretrain)."""
    return {**PRETRAIN_DEFAULTS, **_without_launch(config["students"][student]["pretrain"])}


def pretrain_optim(pretrain: dict[str, Any]) -> dict[str, Any]:
    """The training loop's settings for a (filled) pretrain block: its own keys, the optimiser's
    defaults for the rest (a constant rate after warmup, gradients clipped at 1)."""
    return {**OPTIM_DEFAULTS, "max_steps": pretrain["steps"],
            **{k: pretrain[k] for k in ("lr", "batch_size", "warmup_steps", "eval_every", "checkpoint_every")}}


def plan_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The cost plan's settings (defaults < plan)."""
    return {**schema_defaults("properties", "plan"), **config.get("plan", {})}


PPO_KEYS = ("ppo_epochs", "ppo_minibatches", "ppo_clip")


def rl_settings(config: dict[str, Any], method: str | None = None) -> dict[str, Any]:
    """The rl block over the schema's defaults; for a given ``method`` without PPO updates, without the
    rl.ppo_* keys it never reads (so that they change neither its spec nor its resume fingerprint)."""
    settings = {**RL_DEFAULTS, **config.get("rl", {})}
    if method is not None and not registry.get(registry.method_and_k(method, 1)[0]).ppo:
        settings = {k: v for k, v in settings.items() if k not in PPO_KEYS}
    return settings


def divergence_spec(config: dict[str, Any], method: str) -> dict[str, Any]:
    """``{"divergence": settings}`` with the divergence.* keys the method reads (defaults < config), or
    {} for a method that reads none (so that their specs and resume fingerprints stay as they were)."""
    keys = registry.get(registry.method_and_k(method, 1)[0]).settings
    settings = {**DIVERGENCE_DEFAULTS, **config.get("divergence", {})}
    return {"divergence": {k: settings[k] for k in keys}} if keys else {}


def task_lengths(config: dict[str, Any], task: str) -> tuple[int, int]:
    """(max_source_length, max_target_length) of a task, in tokens."""
    spec = {**LENGTH_DEFAULTS, **config["tasks"][task]}
    return spec["max_source_length"], spec["max_target_length"]


def calculator_on(config: dict[str, Any], task: str) -> bool:
    """Whether the task keeps calculator annotations and decodes through the calculator (GSM8K-style)."""
    return bool(config["tasks"][task].get("calculator", False))


def generation_settings(config: dict[str, Any], task: str) -> dict[str, Any]:
    """Decoding settings for a task. Without ``generation.max_new_tokens`` a task decodes up to its
    ``max_target_length``: no target a model trained on was longer. ``calculator`` (the task's) says
    whether targets keep their annotations and decodes go through ``ketchup.calculator``."""
    return {**GENERATION_DEFAULTS, "max_new_tokens": task_lengths(config, task)[1], **config.get("generation", {}),
            "calculator": calculator_on(config, task)}
