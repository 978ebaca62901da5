"""The distillation methods, each described once: every list of method names derives from here.

Light on purpose (no torch): the Snakefile, the config checks and the command line read it before
any model library is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # "untrained" | "supervised" | "divergence" | "rl"
    trains_on: str | None  # "ground_truth" | "teacher" (the teacher's greedy outputs) | None
    k: str | None  # RL only: "one" (LLMR) or "task" (the task's K)
    starts_from: str | None  # the method whose student this one starts from (None: the student as built)
    baseline: str = "none"  # RL only: the per-sequence baseline subtracted from the advantages
    label: str = ""  # the name tables and figures print
    ppo: bool = False  # RL only: several clipped-surrogate updates per rollout batch (rl.ppo_*), else one
    # Divergence only: the share of each micro-batch's rows whose targets the student samples (the rest
    # keep the teacher's outputs), a number or the divergence.* setting that gives it (source_rows).
    student_share: float | str = 0.0
    settings: tuple[str, ...] = ()  # the divergence.* config keys the objective reads

    def __post_init__(self) -> None:
        if self.ppo and self.family != "rl":
            raise ValueError(f"method {self.name!r}: only an RL method updates with PPO")

    @property
    def needs_teacher(self) -> bool:
        """Whether training runs the teacher (its logits), not only its outputs."""
        return self.family in ("divergence", "rl")


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("prompted", "untrained", None, None, None, label="Prompted student"),
    Method("sft", "supervised", "ground_truth", None, None, label="SFT"),
    Method("seqkd", "supervised", "teacher", None, None, label="SeqKD"),
    Method("kl", "divergence", "teacher", None, None, label="KL"),
    Method("js", "divergence", "teacher", None, None, label="JS", student_share=0.5),
    Method("tvd", "divergence", "teacher", None, None, label="TVD", student_share=0.5),
    Method("llmr", "rl", "teacher", "one", "kl", label="LLMR"),
    Method("llmr-mean", "rl", "teacher", "one", "kl", baseline="mean", label="LLMR + mean baseline"),
    Method("llmr-minvar", "rl", "teacher", "one", "kl", baseline="minvar", label="LLMR + min-variance baseline"),
    Method("ketchup", "rl", "teacher", "task", "kl", label="KETCHUP"),
    # Beyond the paper (its proposed future work): the same advantages, optimised with PPO's clipped
    # surrogate over rl.ppo_epochs x rl.ppo_minibatches updates per rollout batch.
    Method("llmr-ppo", "rl", "teacher", "one", "kl", label="LLMR + PPO", ppo=True),
    Method("ketchup-ppo", "rl", "teacher", "task", "kl", label="KETCHUP + PPO", ppo=True),
    # Beyond the paper: the field's on-policy and skew divergences (docs/methods.md), from the
    # pretrained student like kl, js and tvd. GKD: generalized JSD(beta) on a divergence.lambda share of
    # student samples; rkl: GKD at beta = 1, lambda = 1; DistiLLM's skew KL / skew reverse KL on the
    # teacher's outputs.
    Method("gkd", "divergence", "teacher", None, None, label="GKD", student_share="lambda",
           settings=("beta", "lambda")),
    Method("rkl", "divergence", "teacher", None, None, label="On-policy reverse KL", student_share=1.0),
    Method("skl", "divergence", "teacher", None, None, label="Skew KL", settings=("alpha",)),
    Method("srkl", "divergence", "teacher", None, None, label="Skew reverse KL", settings=("alpha",)),
)}
NAMES = list(METHODS)  # the paper's row order
RL_METHODS = [name for name, m in METHODS.items() if m.family == "rl"]
PPO_METHODS = [name for name, m in METHODS.items() if m.ppo]
TRAINED_METHODS = [name for name, m in METHODS.items() if m.family != "untrained"]

# The K sweep trains KETCHUP at other K under run names of this form.
K_SWEEP = "ketchup"
_SWEEP_RUN = re.compile(rf"{re.escape(K_SWEEP)}-k(\d+)")


def sweep_run(k: int) -> str:
    return f"{K_SWEEP}-k{k}"


# An RL method with another budget of rollout batches trains under the run name ``{method}-r{N}``
# (N rollout batches: train.max_steps = N); the equal-time analysis runs the PPO methods so.
_BUDGET_RUN = re.compile(rf"({'|'.join(re.escape(n) for n in RL_METHODS)})-r(\d+)")


def budget_run(method: str, steps: int) -> str:
    if method not in RL_METHODS:
        raise ValueError(f"method {method!r}: only an RL method has a budget of rollout batches")
    return f"{method}-r{steps}"


def rollout_budget(run: str) -> int | None:
    """N of a run ``{method}-r{N}`` (its rollout batches), None for any other run."""
    match = _BUDGET_RUN.fullmatch(run)
    return int(match.group(2)) if match else None


def run_pattern() -> str:
    """A regular expression matching every run name (the Snakemake wildcard constraint)."""
    return "|".join([*(re.escape(n) for n in NAMES), _SWEEP_RUN.pattern, _BUDGET_RUN.pattern])


def method_and_k(run: str, task_k: int) -> tuple[str, int]:
    """The objective and K of a run name: ``ketchup-k{K}`` is the sweep, LLMR uses K = 1, KETCHUP the
    task's K; ``{method}-r{N}`` is its method's."""
    if match := _SWEEP_RUN.fullmatch(run):
        return K_SWEEP, int(match.group(1))
    if match := _BUDGET_RUN.fullmatch(run):
        run = match.group(1)
    if run not in METHODS:
        raise KeyError(f"unknown method {run!r}; known: {', '.join(NAMES)}")
    return run, 1 if METHODS[run].k == "one" else task_k


def without_ppo(name: str) -> str:
    """The method a PPO method optimises with one update per rollout batch (the same K and baseline)."""
    m = get(name)
    if not m.ppo:
        raise ValueError(f"method {name!r} does not update with PPO")
    return next(n for n, o in METHODS.items() if not o.ppo and (o.family, o.k, o.baseline) == (m.family, m.k, m.baseline))


def student_share(name: str, settings: dict[str, float]) -> float:
    """The share of rows a divergence method's student samples for, given its divergence.* settings."""
    share = get(name).student_share
    return float(settings[share]) if isinstance(share, str) else float(share)


def source_rows(n: int, share: float) -> tuple[int, int]:
    """(teacher rows, student rows) of an n-row micro-batch whose student samples for a ``share`` of rows.

    The first n - floor(share * n) rows keep the teacher's outputs, the rest get the student's samples
    (js and tvd: ceil(n/2) and floor(n/2)). A share of 0 or 1 takes one source; a share strictly
    between whose split would leave a source empty (e.g. n = 1) scores both sources on all n rows.
    """
    if share <= 0.0:
        return n, 0
    if share >= 1.0:
        return 0, n
    student = int(round(share * n, 9))  # floor, blind to float noise (0.29 * 100 = 28.999...)
    return (n, n) if student in (0, n) else (n - student, student)


def get(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(NAMES)}")
    return METHODS[name]
