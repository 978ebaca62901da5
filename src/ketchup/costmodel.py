"""What a run costs, before it starts: counts per job from the config and the prepared data, times
unit costs measured on the machine that will run the jobs (ketchup.calibration).

Pure functions, no torch. A job's seconds are a sum of counted units:

    training     steps x (grad_accum x loss_backward(family, S, T) + optimizer_step)
    rollouts     steps x grad_accum x decode(micro-batch, L)          (what the method samples)
    dev eval     dev_evals x sum over dev batches of decode(generation batch, L_batch)
    generation   the test predictions (students), the teacher's outputs, ...
    other        startup (interpreter, imports, model loading) and the CPU jobs

with ``loss_backward(S, T) = a + b_S S + b_T T`` and ``decode(L) = a + b L`` fitted per model, unit
and batch size on timings at a few lengths. S and T are a micro-batch's padded lengths: the mean,
over random micro-batches of the real data, of the longest source and target. A decode's length L
is predicted from the data's targets (the longest target of each generation batch, which is how
long a model that writes the reference's lengths decodes); the upper bound, every decode running to
``max_new_tokens``, is a column of its own.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterable

from ketchup import config as kconfig, registry

# Units the calibration times, per model ("teacher" or "student:<size>"): loss + backward of one
# micro-batch of a family, the optimiser step, a decode. Every registry family maps to one of these;
# a family without its own unit costs like the one named here.
LOSS_UNIT = {"supervised": "supervised", "divergence": "divergence", "rl": "rl"}
# The method timed for a family's loss unit (its cost stands for every method of the family).
UNIT_METHOD = {"supervised": "sft", "divergence": "kl", "rl": "ketchup"}

COMPONENTS = ("train_s", "dev_eval_s", "rollout_s", "generation_s", "other_s")


@dataclass(frozen=True)
class SplitLengths:
    """Token lengths of one split, in the split's order: each example's source and target (EOS
    included)."""
    source: tuple[int, ...]
    target: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.source)


@dataclass(frozen=True)
class TaskLengths:
    splits: dict[str, SplitLengths]
    how: str  # how the lengths were obtained (the data and the task's tokenizer, or a stated estimate)


@dataclass
class Counts:
    """What one job does, counted; seconds per component; what the counts were built from."""
    steps: int = 0
    dev_evals: int = 0
    decoded_examples: int = 0
    decoded_tokens: float = 0.0
    decoded_tokens_max: float = 0.0
    rollouts: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0.0))
    seconds_max: float = 0.0  # every decode to max_new_tokens
    peak_mib: float = 0.0

    def add(self, component: str, seconds: float) -> None:
        self.seconds[component] += seconds

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


# ---------------------------------------------------------------------------------------------------
# Unit costs (a calibration file's content, see ketchup.calibration)


def loss_seconds(cal: dict[str, Any], model: str, unit: str, batch: int, s: float, t: float) -> float:
    """One micro-batch's loss and backward: the fitted ``a + b_S S + b_T T`` at the timed batch size,
    scaled by rows when the job's batch differs from it (calibrations made below the real shapes)."""
    fit = cal["models"][model]["loss"][f"{unit}@{batch}"]
    a, bs, bt = fit["coef"]
    return (a + bs * s + bt * t) * batch / fit["batch"]


def decode_seconds(cal: dict[str, Any], model: str, batch: int, length: float) -> float:
    """One batch decoded ``length`` new tokens deep: the fitted ``a + b L`` at the batch size."""
    fit = cal["models"][model]["decode"][str(batch)]
    a, b = fit["coef"]
    return (a + b * length) * batch / fit["batch"]


def optimizer_seconds(cal: dict[str, Any], model: str) -> float:
    return cal["models"][model]["optimizer_s"]


# ---------------------------------------------------------------------------------------------------
# Lengths


def expected_max(lengths: Iterable[int], batch: int, cap: int, draws: int = 400, seed: int = 0) -> float:
    """The mean, over seeded random micro-batches of ``batch`` examples, of the longest length
    (capped at ``cap``): a random micro-batch's padded length."""
    return _expected_max(tuple(lengths), batch, cap, draws, seed)


@functools.lru_cache(maxsize=64)  # a plan asks the same split's lengths once per job (Europarl: 2M examples)
def _expected_max(lengths: tuple[int, ...], batch: int, cap: int, draws: int, seed: int) -> float:
    values = [min(x, cap) for x in lengths]
    if not values:
        return 0.0
    if batch >= len(values):
        return float(max(values))
    rng = random.Random(seed)
    return sum(max(rng.sample(values, batch)) for _ in range(draws)) / draws


def grouped_max(lengths: Iterable[int], batch: int, cap: int) -> float:
    """Padded length of length-grouped micro-batches (train.group_by_length): sorted, cut, mean of maxima."""
    values = sorted(min(x, cap) for x in lengths)
    chunks = [values[i: i + batch] for i in range(0, len(values), batch)]
    return sum(c[-1] for c in chunks) / max(len(chunks), 1)


def decode_batches(split: SplitLengths, n: int, batch: int, max_new: int) -> list[int]:
    """Predicted new tokens of each generation batch over the first ``n`` examples: the longest
    target of the batch (a model writing the references' lengths stops there), at most ``max_new``.
    Batches are formed as generation forms them: the first ``n`` examples sorted by source length
    (ketchup.stages.generate_texts sorts by characters; tokens here)."""
    order = sorted(range(min(n, split.n)), key=lambda i: split.source[i])
    return [min(max_new, max(split.target[i] for i in order[s: s + batch])) for s in range(0, len(order), batch)]


def decode_cost(cal: dict[str, Any], model: str, split: SplitLengths, n: int, gen_batch: int,
                max_new: int, processes: int = 1) -> tuple[float, float, int, float, float]:
    """(seconds, seconds at max_new_tokens, examples, predicted tokens, tokens at max_new_tokens) of
    decoding the first ``n`` examples of a split in generation batches. A job of several processes
    deals the batches round-robin (ketchup.stages.generate_texts): it takes its slowest process's time."""
    lengths = decode_batches(split, n, gen_batch, max_new)
    examples = min(n, split.n)
    rows = [min(gen_batch, examples - i * gen_batch) for i in range(len(lengths))]
    seconds = max((sum(decode_seconds(cal, model, gen_batch, length) for length in lengths[rank::processes])
                   for rank in range(processes)), default=0.0)
    seconds_max = math.ceil(len(lengths) / processes) * decode_seconds(cal, model, gen_batch, max_new)
    tokens = float(sum(r * length for r, length in zip(rows, lengths)))
    return seconds, seconds_max, examples, tokens, float(examples * max_new)


# ---------------------------------------------------------------------------------------------------
# Counts from the settings


def total_steps(settings: dict[str, Any], n: int, processes: int = 1) -> int:
    """The training loop's number of updates (ketchup.training.train): each takes grad_accum
    micro-batches on each process."""
    steps_per_epoch = max(1, math.ceil(n / settings["batch_size"]) // (settings["grad_accum"] * processes))
    return settings["max_steps"] or max(1, round(settings["epochs"] * steps_per_epoch))


def dev_evaluations(steps: int, eval_every: int) -> int:
    """Evaluations: at step 0, every ``eval_every`` updates, and at the last update."""
    return 1 + steps // eval_every + (0 if steps % eval_every == 0 else 1)


def student_model_key(student: str) -> str:
    return f"student:{student}"


def _add_decode(c: Counts, component: str, cal, model, split, n, gen_batch, max_new, times: int = 1,
                processes: int = 1) -> None:
    seconds, seconds_max, examples, tokens, tokens_max = decode_cost(cal, model, split, n, gen_batch, max_new,
                                                                     processes)
    c.add(component, times * seconds)
    c.seconds_max += times * (seconds_max - seconds)
    c.decoded_examples += times * examples
    c.decoded_tokens += times * tokens
    c.decoded_tokens_max += times * tokens_max


def _unit(cal: dict[str, Any], model: str, name: str) -> float:
    return cal["models"][model].get(name, 0.0)


def _add_checkpoints(c: Counts, cal: dict[str, Any], model: str, checkpoint_every: int) -> None:
    """The training loop's writes: a resumable checkpoint every checkpoint_every updates and at the
    last, a dev-best model at each evaluation after step 0 that improves (counted as every one: an
    upper estimate), the accelerator's setup, and the output copied from the dev-best model."""
    checkpoints = c.steps // checkpoint_every + (1 if c.steps % checkpoint_every else 0)
    c.add("other_s", checkpoints * _unit(cal, model, "state_s") + max(c.dev_evals - 1, 0) * _unit(cal, model, "save_s")
          + _unit(cal, model, "save_s") + cal.get("accelerator_s", 0.0))


def training_counts(cal: dict[str, Any], model: str, family: str, settings: dict[str, Any], train: SplitLengths,
                    dev: SplitLengths, gen: dict[str, Any], max_source: int, max_target: int,
                    rollout_target: int, processes: int = 1) -> Counts:
    """A training job (teacher, pretrain or student) without its startup and final predictions. With
    several processes, a step's time is one process's (its grad_accum micro-batches; the gradients'
    all-reduce is not counted), its rollouts every process's, its dev evaluation shared."""
    c = Counts()
    bs, accum = settings["batch_size"], settings["grad_accum"]
    c.steps = total_steps(settings, train.n, processes)
    pad = grouped_max if settings.get("group_by_length") else expected_max
    s_hat, t_hat = pad(train.source, bs, max_source), pad(train.target, bs, max_target)
    unit = LOSS_UNIT[family]
    micro = c.steps * accum
    passes, updates = 1, 1
    if family == "rl":
        if settings.get("ppo"):
            # ketchup.methods.Objective.updates: a forward of the teacher and the student per micro-batch
            # to prepare (counted as one loss unit, an upper bound), then rl.ppo_epochs passes over its
            # rows (a pass in rl.ppo_minibatches parts costs about one pass at the full micro-batch), and
            # ppo_epochs x ppo_minibatches optimizer updates per step.
            epochs, parts = settings["ppo"]
            passes, updates = epochs + 1, epochs * parts
        # The rollouts replace the targets: as long as the data's targets, up to max_target_length.
        roll_len = expected_max(train.target, bs, rollout_target)
        c.rollouts = micro * bs * processes
        c.add("rollout_s", micro * decode_seconds(cal, model, bs, roll_len))
        c.seconds_max += micro * (decode_seconds(cal, model, bs, rollout_target)
                                  - decode_seconds(cal, model, bs, roll_len))
        t_hat = roll_len
    elif family == "divergence" and settings.get("student_share", 0.0) > 0.0:
        rows = registry.source_rows(bs, settings["student_share"])[1]  # ketchup.methods.split_for_two_sources
        roll_len = expected_max(train.target, rows, rollout_target)
        c.rollouts = micro * rows * processes
        c.add("rollout_s", micro * decode_seconds(cal, model, rows, roll_len))
        c.seconds_max += micro * (decode_seconds(cal, model, rows, rollout_target)
                                  - decode_seconds(cal, model, rows, roll_len))
    c.add("train_s", micro * passes * loss_seconds(cal, model, unit, bs, s_hat, t_hat)
          + c.steps * updates * optimizer_seconds(cal, model))
    c.dev_evals = dev_evaluations(c.steps, settings["eval_every"])
    _add_checkpoints(c, cal, model, settings["checkpoint_every"])
    _add_decode(c, "dev_eval_s", cal, model, dev, settings["dev_eval_examples"], gen["batch_size"],
                gen["max_new_tokens"], times=c.dev_evals, processes=processes)
    return c


# ---------------------------------------------------------------------------------------------------
# Jobs


@dataclass(frozen=True)
class Job:
    """One job of the DAG, as Snakemake's dry run lists it."""
    rule: str
    wildcards: dict[str, str]
    output: str
    benchmark: str


def job_counts(job: Job, config: dict[str, Any], cal: dict[str, Any], lengths: dict[str, TaskLengths],
               startup: str = "cold") -> Counts:
    """Counts and seconds of one job. Every job pays its startup: ``cold``, a fresh interpreter's
    imports (the calibration's light or model startup: cluster jobs, conda); ``warm``, a fork of a
    local run's warm worker (ketchup.worker), which imported them once. Rules that neither train nor
    decode cost their startup only."""
    w = job.wildcards
    fn = _RULES.get(job.rule)
    c = fn(w, config, cal, lengths) if fn else Counts()
    heavy = job.rule in MODEL_RULES
    c.add("other_s", cal["startup_s"]["warm" if startup == "warm" else "model" if heavy else "light"])
    if startup == "warm" and job.rule == "data":  # the first jobs wait while the warm worker imports the model stack
        c.add("other_s", cal["startup_s"]["model"])
    c.seconds_max += c.total
    c.peak_mib = peak_mib(job, config, cal)
    return c


def _gen(config, task):
    return kconfig.generation_settings(config, task)


def _student(w, config, cal, lengths) -> Counts:
    task, student = w["task"], w["student"]
    method, _k = registry.method_and_k(w["method"], config["tasks"][task].get("k", 1))
    m = registry.get(method)
    src, tgt = kconfig.task_lengths(config, task)
    gen = _gen(config, task)
    splits = lengths[task].splits
    model = student_model_key(student)
    processes = kconfig.processes(config, "student", task=task, student=student, method=w["method"])
    if m.family == "untrained":
        c = Counts()
        c.add("other_s", _unit(cal, model, "save_s"))
    else:
        settings = {**kconfig.optim_settings(config, w["method"]), "student_share": _student_share(config, method)}
        if m.ppo:
            rl = kconfig.rl_settings(config, method)
            settings["ppo"] = (rl["ppo_epochs"], rl["ppo_minibatches"])
        c = training_counts(cal, model, m.family, settings, splits["train"], splits["dev"], gen, src, tgt, tgt,
                            processes)
    # Loads: the start (init or pretrained model), the teacher where the method runs it, the saved
    # model that writes the test predictions.
    c.add("other_s", 2 * _unit(cal, model, "load_s") + (_unit(cal, "teacher", "load_s") if m.needs_teacher else 0.0))
    _add_decode(c, "generation_s", cal, model, splits["test"], splits["test"].n, gen["batch_size"],
                gen["max_new_tokens"], processes=processes)
    return c


def _teacher(w, config, cal, lengths) -> Counts:
    task = w["task"]
    if not config["teacher"].get("finetune", True):  # prompted: the job loads the model and saves it again
        c = Counts()
        c.add("other_s", _unit(cal, "teacher", "load_s") + _unit(cal, "teacher", "save_s"))
        return c
    src, tgt = kconfig.task_lengths(config, task)
    splits = lengths[task].splits
    c = training_counts(cal, "teacher", "supervised", kconfig.teacher_settings(config, task), splits["train"],
                        splits["dev"], _gen(config, task), src, tgt, tgt, kconfig.processes(config, "teacher", task))
    return c


def _teacher_outputs(w, config, cal, lengths) -> Counts:
    c = Counts()
    split = lengths[w["task"]].splits[w["split"]]
    gen = _gen(config, w["task"])
    _add_decode(c, "generation_s", cal, "teacher", split, split.n, gen["batch_size"], gen["max_new_tokens"],
                processes=kconfig.processes(config, "teacher_outputs", w["task"]))
    c.add("other_s", _unit(cal, "teacher", "load_s"))
    return c


def _pretrain(w, config, cal, lengths) -> Counts:
    """Span corruption (seq2seq) or next-token prediction (decoder) over documents (every source and
    target); the held-out loss is forward passes only, counted as a third of a loss + backward."""
    task, student = w["task"], w["student"]
    pre = kconfig.pretrain_settings(config, student)
    settings = kconfig.pretrain_optim(pre)
    src, tgt = kconfig.task_lengths(config, task)
    train = lengths[task].splits["train"]
    cap = max(src, tgt)
    docs = [*train.source, *train.target]
    if config["architecture"] == "seq2seq":  # the document with spans masked -> the spans (+ sentinels)
        targets = [max(2, round(2 * pre["noise_density"] * d)) for d in docs]
        doc_split = SplitLengths(tuple(docs), tuple(targets))
    else:
        doc_split = SplitLengths(tuple([1] * len(docs)), tuple(docs))
    c = Counts()
    model = student_model_key(student)
    c.steps = settings["max_steps"]
    s_hat = expected_max(doc_split.source, settings["batch_size"], cap)
    t_hat = expected_max(doc_split.target, settings["batch_size"], cap)
    c.add("train_s", c.steps * (loss_seconds(cal, model, "supervised", settings["batch_size"], s_hat, t_hat)
                                + optimizer_seconds(cal, model)))
    c.dev_evals = dev_evaluations(c.steps, settings["eval_every"])
    batches = math.ceil(pre["dev_examples"] * 2 / settings["batch_size"])
    c.add("dev_eval_s", c.dev_evals * batches
          * loss_seconds(cal, model, "supervised", settings["batch_size"], s_hat, t_hat) / 3)
    _add_checkpoints(c, cal, model, settings["checkpoint_every"])
    return c


def _grad_variance(w, config, cal, lengths) -> Counts:
    """Rollouts of n_minibatches minibatches, then each K's policy gradient on each (one loss + backward)."""
    from ketchup.analysis import settings as asettings

    task = w["task"]
    gv = asettings.analysis_settings(config)["grad_variance"]
    bs = gv["batch_size"] or kconfig.optim_settings(config, "ketchup")["batch_size"]
    ks = asettings.grad_variance_ks(config, task)
    src, tgt = kconfig.task_lengths(config, task)
    train = lengths[task].splits["train"]
    model = student_model_key(w["student"])
    c = Counts()
    roll = expected_max(train.target, bs, tgt)
    c.rollouts = gv["n_minibatches"] * bs
    c.add("rollout_s", gv["n_minibatches"] * decode_seconds(cal, model, bs, roll))
    s_hat = expected_max(train.source, bs, src)
    c.add("train_s", gv["n_minibatches"] * len(ks) * loss_seconds(cal, model, "rl", bs, s_hat, roll))
    c.add("other_s", _unit(cal, model, "load_s") + _unit(cal, "teacher", "load_s"))
    return c


_RULES = {"student": _student, "teacher": _teacher, "teacher_outputs": _teacher_outputs, "pretrain": _pretrain,
          "grad_variance": _grad_variance}
MODEL_RULES = set(_RULES)


def peak_mib(job: Job, config: dict[str, Any], cal: dict[str, Any]) -> float:
    """The process's peak memory: the measured baseline of a model job (interpreter, torch, the
    model libraries) plus the measured peak of the job's largest unit, or the light baseline."""
    if job.rule not in MODEL_RULES:
        return cal["baseline_mib"]["light"]
    teacher_only = job.rule in ("teacher", "teacher_outputs")
    models = ["teacher"] if teacher_only else [student_model_key(job.wildcards["student"])]
    if job.rule in ("student", "grad_variance"):
        models.append("teacher")
    extra = sum(cal["models"][m]["peak_mib"] for m in models if m in cal["models"])
    return cal["baseline_mib"]["model"] + extra


# ---------------------------------------------------------------------------------------------------
# What the calibration must time for a config


def units_needed(config: dict[str, Any], rules: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per model: the loss units ``{unit@batch: (max S, max T)}``, the decode batch sizes and the
    longest decode, from the config's settings (the same ones job_counts reads)."""
    need: dict[str, dict[str, Any]] = {}
    arch_lengths = [kconfig.task_lengths(config, t) for t in config["tasks"]]
    max_src = max(s for s, _ in arch_lengths)
    max_tgt = max(t for _, t in arch_lengths)
    max_new = max(kconfig.generation_settings(config, t)["max_new_tokens"] for t in config["tasks"])
    gen_batch = kconfig.generation_settings(config, next(iter(config["tasks"])))["batch_size"]

    def model(key: str) -> dict[str, Any]:
        return need.setdefault(key, {"loss": {}, "decode": set(), "max_new": max_new, "max_source": max_src,
                                     "max_target": max_tgt})

    teacher = model("teacher")
    teacher["decode"].add(gen_batch)
    if config["teacher"].get("finetune", True):
        for task in config["tasks"]:
            teacher["loss"][f"supervised@{kconfig.teacher_settings(config, task)['batch_size']}"] = "sft"
    for student in config["students"]:
        s = model(student_model_key(student))
        s["decode"].add(gen_batch)
        if "pretrain" in config["students"][student]:
            s["loss"][f"supervised@{kconfig.pretrain_settings(config, student)['batch_size']}"] = "sft"
        for method in config["methods"]:
            fam = registry.get(method).family
            if fam == "untrained":
                continue
            bs = kconfig.optim_settings(config, method)["batch_size"]
            s["loss"][f"{LOSS_UNIT[fam]}@{bs}"] = UNIT_METHOD[LOSS_UNIT[fam]]
            if fam == "rl":
                s["decode"].add(bs)
            elif fam == "divergence" and _student_share(config, method) > 0.0:
                s["decode"].add(registry.source_rows(bs, _student_share(config, method))[1])
        # The analyses' runs: ketchup-k{K} (the rl unit at ketchup's batch) and the gradient variance.
        from ketchup.analysis import settings as asettings

        gv = asettings.analysis_settings(config)["grad_variance"]["batch_size"]
        for bs in {kconfig.optim_settings(config, "ketchup")["batch_size"], gv or
                   kconfig.optim_settings(config, "ketchup")["batch_size"]}:
            s["loss"][f"rl@{bs}"] = "ketchup"
            s["decode"].add(bs)
    for m in need.values():
        m["decode"] = sorted(m["decode"])
    return need


# ---------------------------------------------------------------------------------------------------
# The plan's rows and summary


def _student_share(config: dict[str, Any], method: str) -> float:
    """The share of rows a divergence method samples for (0 for every other method)."""
    if registry.get(method).family != "divergence":
        return 0.0
    return registry.student_share(method, kconfig.divergence_spec(config, method).get("divergence", {}))


def family_of(job: Job, config: dict[str, Any]) -> str:
    if job.rule != "student":
        return ""
    method, _ = registry.method_and_k(job.wildcards["method"], 1)
    return registry.get(method).family


def job_processes(job: Job, config: dict[str, Any]) -> int:
    """The job's processes, each on a GPU of its own (config key ``processes``; 1 for most rules)."""
    w = job.wildcards
    return kconfig.processes(config, job.rule, task=w.get("task"), student=w.get("student"), method=w.get("method"))


def plan_row(job: Job, c: Counts, margin: float, processes: int = 1) -> dict[str, Any]:
    """A job's row; ``mem_mb`` holds all its processes (each loads its models)."""
    w = job.wildcards
    return {
        "rule": job.rule, "output": job.output, "benchmark": job.benchmark,
        "wildcards": ",".join(f"{k}={v}" for k, v in sorted(w.items())),
        "task": w.get("task", ""), "student": w.get("student", ""), "method": w.get("method", ""),
        "predicted_s": round(c.total, 3), "predicted_max_s": round(max(c.seconds_max, c.total), 3),
        "predicted_peak_mib": round(c.peak_mib, 1),
        "runtime_min": max(1, math.ceil(c.total * margin / 60)),
        "mem_mb": max(1, math.ceil(processes * c.peak_mib * margin * 1.048576)), "processes": processes,
        "steps": c.steps, "dev_evals": c.dev_evals, "decoded_examples": c.decoded_examples,
        "decoded_tokens": round(c.decoded_tokens), "decoded_tokens_max": round(c.decoded_tokens_max),
        "rollouts": c.rollouts, **{k: round(v, 3) for k, v in c.seconds.items()},
    }
