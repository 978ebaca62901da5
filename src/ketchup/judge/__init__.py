"""LLM-judge evaluation: cached, fault-tolerant, position-unbiased judging of predictions.

Modules
-------
- :mod:`.config`   -- ``JudgeConfig`` (the ``judge:`` config block), ``check_enabled``, errors
- :mod:`.protocol` -- pure logic: example sampling, prompts, reply parsing, pairwise combination
- :mod:`.cache`    -- content-addressed on-disk cache of replies
- :mod:`.client`   -- async OpenAI-compatible client with retries, concurrency cap, usage/cost
- :mod:`.stages`   -- ``score_run``, ``pairwise_run``, ``judge_table`` (pipeline entry points)
- :mod:`.figure`   -- ``judge_figure``
- :mod:`.estimate` -- what a run's judge jobs will ask, for the cost plan (requests, tokens, cost)
- ``python -m ketchup judge-score | judge-pairwise | judge-table | judge-figure`` -- the stages as commands

Prompt templates live in ``prompts/`` (``system.txt``, ``score.txt``, ``pairwise.txt``).
"""

from .config import (RUN_FILES, JudgeAPIError, JudgeConfig, JudgeConfigError, check_enabled, is_enabled,
                     judge_runs, load_config)
from .protocol import sample_ids

__all__ = [
    "JudgeAPIError", "JudgeConfig", "JudgeConfigError", "check_enabled", "is_enabled", "load_config",
    "judge_runs", "RUN_FILES", "sample_ids", "score_run", "pairwise_run", "judge_table", "judge_figure",
]


def __getattr__(name):  # lazy: importing the package does not import openai / matplotlib
    if name in ("score_run", "pairwise_run", "judge_table"):
        from . import stages
        return getattr(stages, name)
    if name == "judge_figure":
        from .figure import judge_figure
        return judge_figure
    raise AttributeError(name)
