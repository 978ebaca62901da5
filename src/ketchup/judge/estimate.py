"""Before a run: what the LLM judge will ask (the cost plan's judge columns, ketchup.plan).

Counted as the judge stage asks: the same seeded sample of test examples (``protocol.sample_ids``)
and the same prompts (``protocol.example_messages``), with the reference standing in for each output
the students have not written yet. Tokens are estimated at ``CHARS_PER_TOKEN`` characters a token
(the judge's own tokenizer is not known here). The ``_max`` figures bound what a job can take: every
output as long as ``judge.max_chars`` lets into a prompt, every judgement needing its repair turn
(the prompt again with the reply and the repair instruction), every completion ``judge.max_tokens``
long, and one request refused for its ``response_format``. Retries after HTTP 429/5xx and timeouts
are not counted (a server's failures, not the config's).
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping

from . import protocol
from .config import JudgeConfig

CHARS_PER_TOKEN = 4.0  # a common rule of thumb for English text with BPE tokenizers

COLUMNS = ("judge_requests", "judge_requests_max", "judge_prompt_tokens", "judge_prompt_tokens_max",
           "judge_completion_tokens", "judge_completion_tokens_max", "judge_cost_usd", "judge_cost_usd_max")


def tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def prompt_tokens(messages: Iterable[Mapping[str, str]]) -> int:
    return tokens(sum(len(m["content"]) for m in messages))


def reply_text(kind: str, criteria: list[str]) -> str:
    """A valid reply in the form the prompts ask for (its length is the completion estimate)."""
    return json.dumps({c: 10 for c in criteria} if kind == "score" else {"winner": "tie"})


def job_estimate(cfg: JudgeConfig, kind: str, task: str, examples: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The judge's requests, tokens and cost for one judge job (``kind`` "score" or "pairwise") of a
    run of ``task``; ``examples`` are the test split's ``{id, source, target}`` as the predictions
    will hold them (source with the task's prompt, target as the reference)."""
    by_id = {str(e["id"]): e for e in examples}
    ids = protocol.sample_ids(by_id, cfg.n_examples, cfg.seed)
    description = protocol.describe_task(task, dict(cfg.task_descriptions))
    criteria = list(cfg.criteria)
    reply = tokens(len(reply_text(kind, criteria)))
    repair = tokens(len(protocol.repair_message(kind, criteria)["content"]))
    longest = "x" * cfg.max_chars if cfg.max_chars else None
    judgements = prompt = prompt_max = 0
    for i in ids:
        e = by_id[i]
        typical = protocol.example_messages(kind, description, e["source"], e["target"], e["target"], e["target"],
                                            criteria, cfg.max_chars)
        worst = typical if longest is None else protocol.example_messages(
            kind, description, e["source"], e["target"], longest, longest, criteria, cfg.max_chars)
        judgements += len(typical)
        prompt += sum(prompt_tokens(m) for m in typical)
        # the first request, then its repair turn: the prompt again, the reply, the repair instruction
        prompt_max += sum(2 * prompt_tokens(m) + cfg.max_tokens + repair for m in worst)
    requests_max = 2 * judgements + (1 if cfg.structured_output and judgements else 0)
    completion, completion_max = judgements * reply, 2 * judgements * cfg.max_tokens
    return dict(zip(COLUMNS, (judgements, requests_max, prompt, prompt_max, completion, completion_max,
                              cfg.cost(prompt, completion), cfg.cost(prompt_max, completion_max))))
