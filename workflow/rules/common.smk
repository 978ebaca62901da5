# Configuration checks (before any job starts) and the specs each stage receives as JSON.

import json
import os
import sys
from pathlib import Path

SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))

from ketchup import config as kconfig, jobenv, paths, planned, registry, specs as kspecs, tasks as ktasks, worker as kworker  # noqa: E402  (light imports: no torch at DAG build)
from ketchup import tokenizer_match as ktokmatch  # noqa: E402  (tokenizers and json only)
from ketchup.span_corruption import SENTINELS  # noqa: E402
from ketchup.data import sources as ksources  # noqa: E402
from ketchup.io import DataError  # noqa: E402

# The embedded default applies only when no --configfile is given: a given config replaces it
# whole instead of being merged into it (merging would leak the default's tasks into every run).
# A given config may extend another (`extends:`, relative to the last --configfile).
try:
    if not config:
        config.update(kconfig.read(Path(workflow.basedir) / "config.yaml"))
    elif "extends" in config:
        resolved = kconfig.resolve_extends(config, Path(workflow.configfiles[-1]).parent)
        config.clear()
        config.update(resolved)
    kconfig.validate(config)
    # A local model folder that is missing, or a local student whose tokenizer is not the run's,
    # stops the DAG build naming the config key (hub models: the student job checks them).
    ktokmatch.check_local_models(config)
except kconfig.ConfigError as exc:
    raise WorkflowError(str(exc))

# Under --sdm apptainer every job runs in this image (it has the CUDA lock's packages); else ignored.
container: jobenv.CONTAINER_IMAGE


DEPLOYMENT = str(workflow.deployment_settings.deployment_method).lower()
if "apptainer" in DEPLOYMENT:
    try:
        jobenv.check_container_image(Path.cwd())
    except FileNotFoundError as exc:
        raise WorkflowError(str(exc))

# Jobs' PYTHONPATH and PATH, set in each job's shell command (braces doubled: shell.prefix formats).
shell.prefix(
    jobenv.shell_prefix(SRC, own_python="conda" in DEPLOYMENT or "apptainer" in DEPLOYMENT)
    .replace("{", "{{")
    .replace("}", "}}")
)

# A local run's jobs fork from one warm process that imported torch and transformers once
# (ketchup.worker); jobs in a cluster, conda or container run as their own processes.
WARM_WORKER = {}


onstart:
    if workflow.local_exec and not workflow.deployment_settings.deployment_method:
        WARM_WORKER["address"] = kworker.start(paths.worker_log(), str(SRC))


onsuccess:
    kworker.stop(WARM_WORKER.get("address"))


onerror:
    kworker.stop(WARM_WORKER.get("address"))


ARCH = config["architecture"]
TASKS = list(config["tasks"])
STUDENTS = list(config["students"])
METHODS = config["methods"]
SEEDS = config["seeds"]
DATA_SEED = config.get("data_seed", 0)
SPLITS = ["train", "dev", "test"]
TRAINED_METHODS = [m for m in METHODS if m in registry.TRAINED_METHODS]
PRETRAINED = [s for s in STUDENTS if "pretrain" in config["students"][s]]  # sizes with a pretrain block


wildcard_constraints:
    task="|".join(TASKS),
    student="|".join(STUDENTS),
    split="train|dev|test",
    seed=r"\d+",
    method=registry.run_pattern(),


def job_processes(rule):
    """A job's processes, one device each (config key `processes`; ketchup.launch starts them): its
    params and its `gpu` resource, so Snakemake and SLURM give the job as many GPUs."""
    return lambda wildcards: kconfig.processes(config, rule, task=getattr(wildcards, "task", None),
                                               student=getattr(wildcards, "student", None),
                                               method=getattr(wildcards, "method", None))


def task_cfg(task):
    return config["tasks"][task]


def local_files(task):
    """A `source: local` task's split files: inputs of the data rule, so an edited file reruns it."""
    spec = task_cfg(task)
    return [str(p) for p in ksources.local_split_files(task, spec)] if spec["source"] == "local" else []


# A missing local data folder or split file, or a field the task reads missing from the first records
# of one, stops the DAG build, naming tasks.<task>.path or the file, the line and tasks.<task>.fields.
try:
    LOCAL_FILES = {task: local_files(task) for task in TASKS}
    for _task in TASKS:
        if task_cfg(_task)["source"] == "local":
            ksources.check_local_fields(_task, task_cfg(_task))
except DataError as exc:
    raise WorkflowError(str(exc))


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


# Each task's definition over its preset (ketchup.tasks), and the parts of it each kind of job needs,
# so that, e.g., editing the judge's description reruns no training.
TASK_DEFS = {task: kconfig.task_definition(config, task) for task in TASKS}
TASK_INFO = as_json({task: ktasks.info(tdef) for task, tdef in TASK_DEFS.items()})
TRAIN_KEYS = (*ktasks.READ_KEYS, "primary_metric", "answer")


def task_def(task, keys):
    return ktasks.subset(TASK_DEFS[task], keys)


def lengths(task):
    return kconfig.task_lengths(config, task)


def task_spec(task):
    """What every training stage's spec holds of its task: name, architecture and lengths."""
    src_len, tgt_len = lengths(task)
    return {"task": task, "arch": ARCH, "max_source_length": src_len, "max_target_length": tgt_len}


def tokenizer_spec():
    """How the stages that load the tokenizer from its source (teacher, pretrain) prepare it."""
    return {"tokenizer_gguf_file": tokenizer_gguf_file(), "prompt_format": config.get("prompt_format", "chat")}


def teacher_spec(wildcards):
    return as_json(
        {
            **task_spec(wildcards.task),
            **tokenizer_spec(),
            "prompt": task_cfg(wildcards.task).get("prompt", ""),
            "task_def": task_def(wildcards.task, TRAIN_KEYS),
            "model": config["teacher"]["model"],
            "finetune": config["teacher"].get("finetune", True),
            "train": kconfig.teacher_settings(config, wildcards.task),
            "generation": kconfig.generation_settings(config, wildcards.task),
            "seed": DATA_SEED,
        }
    )


def teacher_resource(name):
    """A teacher job's ``runtime`` or ``mem_mb``: its row of the cost plan, else a prompted teacher's
    load and save sized by its weight files, or a fine-tuning job's long default (ketchup.planned).
    A profile that sets the resource itself (profiles/workstation) overrides this."""
    default = planned.teacher_default(name, config["teacher"]["model"], config["teacher"].get("finetune", True))
    return lambda wildcards: planned.resource(name, "teacher", wildcards, default)


def method_and_k(method, task):
    """A run's objective and K (ketchup.registry: the sweep's runs, K = 1 for LLMR, the task's K)."""
    return registry.method_and_k(method, task_cfg(task).get("k", 1))


def student_model(student):
    """A student size's model block (config, name_or_path or from_teacher), without its pretrain
    settings: those are the pretrain stage's."""
    return {k: v for k, v in config["students"][student].items() if k != "pretrain"}


def student_spec(wildcards):
    method, k = method_and_k(wildcards.method, wildcards.task)
    return as_json(
        {
            **task_spec(wildcards.task),
            "prompt": task_cfg(wildcards.task).get("prompt", ""),
            "task_def": task_def(wildcards.task, TRAIN_KEYS),
            "student": wildcards.student,
            "method": method,
            "model": student_model(wildcards.student),
            "pretrained": wildcards.student in PRETRAINED,
            "train": kconfig.optim_settings(config, wildcards.method),  # a {method}-r{N} run: N steps
            "rl": kconfig.rl_settings(config, method),
            "k": k,
            **kconfig.divergence_spec(config, method),
            "generation": kconfig.generation_settings(config, wildcards.task),
            "seed": int(wildcards.seed),
            **kconfig.teacher_dtype_spec(config),
        }
    )


def student_metric_files():
    return expand(
        paths.metrics("{task}", "{student}", "{method}", "{seed}"),
        task=TASKS,
        student=STUDENTS,
        method=METHODS,
        seed=SEEDS,
    )


def tokenizer_source(wildcards):
    """The trained tokenizer's directory, or the pretrained tokenizer's name / path."""
    if config["tokenizer"]["kind"] == "train":
        return paths.tokenizer(wildcards.task)
    return config["tokenizer"].get("name_or_path", config["teacher"]["model"].get("name_or_path"))


def tokenizer_gguf_file():
    """The GGUF file the pretrained tokenizer is read from, if any (the teacher's when the tokenizer
    has no name of its own)."""
    tok = config["tokenizer"]
    if tok["kind"] == "train":
        return None
    return tok.get("gguf_file") if "name_or_path" in tok else config["teacher"]["model"].get("gguf_file")


def tokenizer_input(wildcards):
    return [paths.tokenizer(wildcards.task)] if config["tokenizer"]["kind"] == "train" else []


# Pretraining (workflow/rules/pretrain.smk): one model per task and student size with a pretrain
# block, on the data seed; every method of that size not starting from another run starts from it.


def pretrain_spec_of(task, student):
    return {
        **task_spec(task),
        **tokenizer_spec(),
        "student": student,
        "model": student_model(student),
        "pretrain": kconfig.pretrain_settings(config, student),
        "calculator": kconfig.calculator_on(config, task),
        "task_def": task_def(task, ktasks.READ_KEYS),
        "seed": DATA_SEED,
    }


def pretrain_spec(wildcards):
    if wildcards.student not in PRETRAINED:
        raise WorkflowError(f"students.{wildcards.student} has no pretrain block: nothing to pretrain")
    return as_json(pretrain_spec_of(wildcards.task, wildcards.student))


def tokenizer_sentinels():
    """Sentinel tokens the trained tokenizers need: span corruption of seq2seq students (pretrain)."""
    return SENTINELS if ARCH == "seq2seq" and PRETRAINED else 0


def check_sentinels():
    """Too few sentinels for a task's longest document stops the DAG build, naming
    students.<size>.pretrain (a pretrained tokenizer's sentinels are counted by the pretrain job)."""
    if not tokenizer_sentinels() or config["tokenizer"]["kind"] != "train":
        return
    try:
        for task in TASKS:
            for student in PRETRAINED:
                kspecs.check_sentinels(pretrain_spec_of(task, student), SENTINELS)
    except kconfig.ConfigError as exc:
        raise WorkflowError(str(exc))


check_sentinels()


def student_init(wildcards):
    """The model a run starts from: the registry's starts_from run (RL: the KL student), else the
    size's pretrained model when it has a pretrain block, else none (built from its spec)."""
    start = registry.get(method_and_k(wildcards.method, wildcards.task)[0]).starts_from
    if start:
        return paths.student_model(wildcards.task, wildcards.student, start, wildcards.seed)
    if wildcards.student in PRETRAINED:
        return paths.pretrained_model(wildcards.task, wildcards.student)
    return []


# LLM judge (workflow/rules/judge.smk): its config block, the check that stops the DAG build when a
# judge target is asked for while the judge is off or has no key, and the judge rules' inputs.

import re  # noqa: E402

from ketchup import judge as kjudge  # noqa: E402  (light import: no openai at DAG-build time)

JUDGE = config.get("judge", {})
JUDGE_SPEC = as_json(kconfig.judge_block(config))  # with each task's description
JUDGE_BASELINE = JUDGE.get("baseline", kjudge.JudgeConfig.baseline)
JUDGE_CACHE = paths.JUDGE_CACHE
JUDGE_PROMPTS = Path(workflow.basedir) / "src" / "ketchup" / "judge" / "prompts"
JUDGE_METHOD = "|".join(re.escape(m) for m in METHODS)


def judge_ready(wildcards=None):
    """Stop the DAG build (before any job starts) unless the judge can run; says how to enable it.

    Called by the judge rules' input functions, which Snakemake evaluates while building the DAG:
    asking for any judge output while the judge is off, or without the key, fails there.
    """
    try:
        kjudge.check_enabled(JUDGE)
    except kjudge.JudgeConfigError as exc:
        raise WorkflowError(str(exc))
    if JUDGE_BASELINE not in METHODS:
        raise WorkflowError(
            f"config key 'judge.baseline': {JUDGE_BASELINE!r} is not one of the configured methods "
            f"{METHODS}; set judge.baseline to one of them (the method every other one is compared with)."
        )
    return []


def judged_predictions(wildcards):
    judge_ready()
    return paths.predictions(wildcards.task, wildcards.student, wildcards.method, wildcards.seed)


def baseline_predictions(wildcards):
    judge_ready()
    if wildcards.method == JUDGE_BASELINE:
        raise WorkflowError(
            f"judge_pairwise: {wildcards.method!r} is judge.baseline; it is not compared with itself"
        )
    return paths.predictions(wildcards.task, wildcards.student, JUDGE_BASELINE, wildcards.seed)


def judge_table_inputs(wildcards):
    """Every judge job's output (ketchup.judge.judge_runs, which the cost plan counts too)."""
    judge_ready()
    runs = kjudge.judge_runs(config)
    return {
        key: [paths.judge_file(*run, kjudge.RUN_FILES[kind]) for kind, *run in runs if kind == want]
        for key, want in (("scores", "score"), ("pairwise", "pairwise"))
    }


# The cost plan (plan.smk)
PLAN = kconfig.plan_settings(config)


def plan_tokenizers():
    """Per task: the tokenizer the jobs use (the trained one, or the pretrained name) and its GGUF file."""
    if config["tokenizer"]["kind"] == "train":
        return {task: [paths.tokenizer(task), None] for task in TASKS}
    source = config["tokenizer"].get("name_or_path", config["teacher"]["model"].get("name_or_path"))
    return {task: [source, tokenizer_gguf_file()] for task in TASKS}
