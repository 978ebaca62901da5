# Helpers of the analysis and figure rules (analysis.smk, figures.smk): which runs each analysis reads.
# Functions only (no rules), so that the rule files stay lint-clean.

from ketchup.analysis import settings as asettings  # noqa: E402  (light import: no torch)

ANALYSIS = asettings.analysis_settings(config)
K_SWEEP = asettings.k_sweep(config)  # analysis.k_sweep, or [1, 2, 4, 8] when the config has none
SEED0 = SEEDS[0]
EQUAL_TIME = asettings.ppo_equal_time(config)  # PPO method -> its plain, equal-rollout and equal-time runs


def sweep_run(task, k):
    """The student run that gives the K sweep's point K for a task, reusing identical runs.

    K equal to the task's K is the `ketchup` run (same spec); K = 1 is the `llmr` run when llmr is a
    configured method with the same training settings as ketchup (KETCHUP with K = 1 is LLMR);
    any other K is `ketchup-k{K}`, trained by the student rule.
    """
    if k == task_cfg(task).get("k", 1):
        return "ketchup"
    same = kconfig.optim_settings(config, "llmr") == kconfig.optim_settings(config, "ketchup")
    if k == 1 and "llmr" in METHODS and same:
        return "llmr"
    return registry.sweep_run(k)


def sweep_runs():
    return {task: {str(k): sweep_run(task, k) for k in K_SWEEP} for task in TASKS}


def sweep_files(pattern, runs_only=False):
    """`pattern` (with {task}, {student}, {method}, {seed}) for every sweep run, plus kl and llmr."""
    refs = [] if runs_only else [m for m in ("kl", "llmr") if m in METHODS]
    files = []
    for task in TASKS:
        methods = list(dict.fromkeys([sweep_run(task, k) for k in K_SWEEP] + refs))
        files += expand(pattern, task=task, student=STUDENTS, method=methods, seed=SEEDS)
    return files


def sweep_spec():
    return as_json({"sweep": sweep_runs(), "task_k": {task: task_cfg(task).get("k", 1) for task in TASKS}})


def equal_time_files(pattern, budget_runs_only=False):
    """`pattern` for the equal-time comparison's runs (all three, or only the {method}-r{N} runs)."""
    keys = ["time"] if budget_runs_only else ["plain", "rollouts", "time"]
    runs = list(dict.fromkeys(named[key] for named in EQUAL_TIME.values() for key in keys))
    return expand(pattern, task=TASKS, student=STUDENTS, method=runs, seed=SEEDS)


def grad_variance_spec(wildcards):
    gv = ANALYSIS["grad_variance"]
    return as_json(
        {
            **task_spec(wildcards.task),
            "student": wildcards.student,
            "seed": int(wildcards.seed),
            "ks": asettings.grad_variance_ks(config, wildcards.task),
            "rl": kconfig.rl_settings(config, "ketchup"),
            "n_minibatches": gv["n_minibatches"],
            "batch_size": gv["batch_size"] or kconfig.optim_settings(config, "ketchup")["batch_size"],
            "sample_seed": gv["seed"],
            "resamples": gv["resamples"],
            "confidence": gv["confidence"],
            "projection_dim": gv["projection_dim"],
            "calculator": kconfig.calculator_on(config, wildcards.task),
            **{k: kconfig.generation_settings(config, wildcards.task)[k] for k in ("cache", "compile")},
            **kconfig.teacher_dtype_spec(config),
        }
    )


def grad_variance_files():
    return expand(
        paths.grad_variance("{task}", "{student}", "{seed}"), task=TASKS, student=STUDENTS, seed=SEEDS
    )


def trained_model_dirs():
    return expand(
        paths.student_model("{task}", "{student}", "{method}", "{seed}"),
        task=TASKS,
        student=STUDENTS,
        method=TRAINED_METHODS,
        seed=SEEDS,
    )


def size_models():
    """One model directory per (task, student size) for its parameter count: the first method, first seed."""
    return {
        f"{task}/{student}": paths.student_model(task, student, METHODS[0], SEED0)
        for task in TASKS
        for student in STUDENTS
    }


def size_spec():
    return as_json({"models": size_models(), "teachers": {task: paths.teacher_model(task) for task in TASKS}})


def significance_spec():
    bs = ANALYSIS["bootstrap"]
    return as_json(
        {
            "baselines": [m for m in ("kl", "llmr", "ketchup") if m in METHODS],
            "resamples": bs["resamples"],
            "seed": bs["seed"],
            "confidence": bs["confidence"],
        }
    )


def paper_spec():
    return as_json(
        {
            "architecture": ARCH,
            "tasks": {task: task_cfg(task) for task in TASKS},
            "students": config["students"],
            "teacher": config["teacher"]["model"],
        }
    )


ANALYSIS_TABLES = [
    paths.table("main.md"),
    paths.table("main.tex"),
    paths.table("k_sweep.csv"),
    paths.table("grad_variance.csv"),
    paths.table("length_by_k.csv"),
    paths.table("significance.csv"),
    paths.table("paper_comparison.csv"),
    paths.table("student_size.csv"),
    paths.table("training_curves.csv"),
    *([paths.table("equal_time.csv")] if EQUAL_TIME else []),
]
ANALYSIS_FIGURES = expand(
    paths.figure("{name}", "{ext}"),
    name=["k_sweep", "grad_variance", "student_size", "training_curves"],
    ext=["pdf", "png"],
)
