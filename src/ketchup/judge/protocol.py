"""Pure judging logic: example sampling, prompt rendering, reply parsing, pairwise combination.

Nothing here touches the network or the disk (apart from reading the packaged templates).

Pairwise protocol (position-bias control)
-----------------------------------------
Every pair is judged twice: order ``ab`` shows the method's output as A and the baseline's as B;
order ``ba`` swaps them. Each verdict is turned into an outcome from the method's point of view
(win / tie / loss) and the two outcomes are combined per example:

==================  ===========
order ab, order ba  combined
==================  ===========
win,  win           win
win,  tie (either)  win
loss, loss          loss
loss, tie (either)  loss
tie,  tie           tie
win,  loss (either) tie  (the judge followed the position, not the content)
any invalid         invalid (excluded from the rates, counted separately)
==================  ===========

A judge that always prefers position A (or B) therefore produces only ties, and the rule is
symmetric: swapping the roles of method and baseline swaps win and loss.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Iterator, Sequence

from ketchup import tasks

# Bump when the protocol (not only the text) changes. v2: structured output (response_format) and
# one repair turn for an unparseable reply, instead of asking the same prompt again.
TEMPLATE_VERSION = "v2"

CRITERIA_DESCRIPTIONS = {
    "overall": "overall quality: how well the output accomplishes the task, including correctness "
    "and faithfulness to the source",
    "informativeness": "how much of the important information it conveys (the key content of the "
    "source and reference), without irrelevant or invented content",
    "coherence": "how fluent, well-structured and logically consistent the text is",
    "fluency": "how grammatical and natural the text reads",
    "faithfulness": "whether everything it states is supported by the source",
    "correctness": "whether the final answer and the reasoning are correct",
}

_TRUNC_MARK = " [...]"

# The pairwise orders: ab shows the method's output as A, ba the baseline's.
PAIR_ORDERS = ("ab", "ba")


# --------------------------------------------------------------------------- sampling

def _rank(seed: int, ex_id: str) -> str:
    return hashlib.sha256(f"{seed}\x00{ex_id}".encode("utf-8")).hexdigest()


def sample_ids(ids: Iterable[str], n: int | None, seed: int) -> list[str]:
    """Deterministic seeded sample of ``n`` distinct ids, returned in input order.

    Each id gets the rank sha256(f"{seed}\\0{id}"); the ``n`` lowest ranks are kept. The chosen set
    depends only on the set of ids, ``n`` and ``seed`` (not on input order, the Python version or
    the method), so every run of a task judges the same examples. ``n`` None or <= 0, or
    ``n >= len(ids)``, keeps every id. Duplicate ids raise ValueError.
    """
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"duplicate example ids: {dup}")
    if n is None or n <= 0 or n >= len(ids):
        return list(ids)
    chosen = set(sorted(ids, key=lambda i: _rank(seed, i))[:n])
    return [i for i in ids if i in chosen]


# --------------------------------------------------------------------------- templates

@lru_cache(maxsize=None)
def load_template(name: str) -> str:
    """Text of ``prompts/<name>.txt`` (name: "system", "score", "pairwise" or "repair")."""
    return resources.files("ketchup.judge").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8")


def template_version(kind: str) -> str:
    """Version string of a prompt kind: protocol version + hash of the templates it uses (system,
    the kind's, and the repair turn's).

    Part of the cache key, so editing a template file invalidates exactly the affected entries.
    """
    texts = (load_template("system"), load_template(kind), load_template("repair"))
    h = hashlib.sha256("\x00".join(texts).encode("utf-8"))
    return f"{kind}-{TEMPLATE_VERSION}-{h.hexdigest()[:12]}"


def describe_task(task: str, overrides: dict[str, str] | None = None) -> str:
    """The task as the judge reads it: ``overrides[task]`` (the Snakefile passes each task's
    ``description``, replaced by judge.task_descriptions), else the ``description`` of the preset
    of that name or the generic one (ketchup.tasks)."""
    if overrides and task in overrides:
        return str(overrides[task])
    return tasks.resolve(task)["description"]


def _criteria_block(criteria: Sequence[str]) -> str:
    return "\n".join(f"- {c}: {CRITERIA_DESCRIPTIONS.get(c, c)}" for c in criteria)


def _truncate(text: Any, max_chars: int | None) -> str:
    text = "" if text is None else str(text)
    if max_chars and max_chars > 0 and len(text) > max_chars:
        return text[:max_chars] + _TRUNC_MARK
    return text


def _messages(user: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": load_template("system").strip()},
        {"role": "user", "content": user},
    ]


def _score_format(criteria: Sequence[str]) -> str:
    return "{" + ", ".join(f'"{c}": <1-10>' for c in criteria) + "}"


_PAIRWISE_FORMAT = '{"winner": "<A, B or tie>"}'


def score_messages(task_description: str, source: str, reference: str, output: str,
                   criteria: Sequence[str], max_chars: int | None = None) -> list[dict[str, str]]:
    """Chat messages asking for a 1-10 score per criterion for one output."""
    return _filled("score", task_description, criteria, max_chars, reply_format=_score_format(criteria),
                   source=source, reference=reference, output=output)


def pairwise_messages(task_description: str, source: str, reference: str, output_a: str,
                      output_b: str, criteria: Sequence[str],
                      max_chars: int | None = None) -> list[dict[str, str]]:
    """Chat messages asking which of two outputs (A, B) is better, or a tie."""
    return _filled("pairwise", task_description, criteria, max_chars, source=source, reference=reference,
                   output_a=output_a, output_b=output_b)


def example_messages(kind: str, task_description: str, source: str, reference: str, output: str,
                     baseline_output: str | None, criteria: Sequence[str],
                     max_chars: int | None = None) -> list[list[dict[str, str]]]:
    """The prompts a sampled example costs, one request each (before retries and repair turns):
    ``score``, one; ``pairwise``, one per order of PAIR_ORDERS. With ``sample_ids``, the one count
    of a job's requests: the stages ask these, the plan (ketchup.judge.estimate) counts them."""
    if kind == "score":
        return [score_messages(task_description, source, reference, output, criteria, max_chars)]
    if kind != "pairwise":
        raise ValueError(f"kind must be 'score' or 'pairwise', got {kind!r}")
    shown = {"ab": (output, baseline_output), "ba": (baseline_output, output)}
    return [pairwise_messages(task_description, source, reference, *shown[order], criteria, max_chars)
            for order in PAIR_ORDERS]


def _filled(template: str, task_description: str, criteria: Sequence[str], max_chars: int | None,
            reply_format: str | None = None, **texts: str) -> list[dict[str, str]]:
    """The chat messages of a prompt template, each text truncated to ``max_chars``."""
    extra = {} if reply_format is None else {"reply_format": reply_format}
    user = load_template(template).format(task=task_description, criteria=_criteria_block(criteria), **extra,
                                          **{name: _truncate(text, max_chars) for name, text in texts.items()})
    return _messages(user)


def repair_message(kind: str, criteria: Sequence[str]) -> dict[str, str]:
    """The user turn sent after an unparseable reply (which follows the prompt as the assistant's
    turn): it asks once more for the reply format of ``kind`` ("score" or "pairwise")."""
    fmt = _score_format(criteria) if kind == "score" else _PAIRWISE_FORMAT
    return {"role": "user", "content": load_template("repair").format(reply_format=fmt).strip()}


def response_format(kind: str, criteria: Sequence[str]) -> dict[str, Any]:
    """The OpenAI ``response_format`` asking for structured output: a JSON schema of the reply.

    Score: an object with exactly the configured criteria, each an integer 1..10. Pairwise: an
    object ``{"winner": "A" | "B" | "tie"}``. The parsers accept every reply these schemas allow.
    """
    if kind == "score":
        name = "judge_scores"
        schema = {
            "type": "object",
            "properties": {c: {"type": "integer", "minimum": 1, "maximum": 10} for c in criteria},
            "required": list(criteria),
            "additionalProperties": False,
        }
    elif kind == "pairwise":
        name = "judge_verdict"
        schema = {
            "type": "object",
            "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}},
            "required": ["winner"],
            "additionalProperties": False,
        }
    else:
        raise ValueError(f"kind must be 'score' or 'pairwise', got {kind!r}")
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


# --------------------------------------------------------------------------- reply parsing

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.S)


def iter_json_objects(text: str | None) -> Iterator[dict]:
    """JSON objects found in a reply: the whole text, then fenced blocks, then any ``{...}``."""
    if not text:
        return
    text = text.strip()
    seen: list[dict] = []

    def _new(obj: Any) -> bool:
        if isinstance(obj, dict) and obj not in seen:
            seen.append(obj)
            return True
        return False

    try:
        obj = json.loads(text)
        if _new(obj):
            yield obj
    except (json.JSONDecodeError, ValueError):
        pass
    for m in _FENCE.finditer(text):
        try:
            obj = json.loads(m.group(1).strip())
        except (json.JSONDecodeError, ValueError):
            continue
        if _new(obj):
            yield obj
    dec = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except (json.JSONDecodeError, ValueError):
            continue
        if _new(obj):
            yield obj


def _as_score(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, int) and 1 <= v <= 10:
        return v
    return None


def parse_score_reply(text: str | None, criteria: Sequence[str]) -> dict[str, int] | None:
    """``{criterion: int 1..10}`` for every criterion, or None if the reply is unusable.

    Tolerant about the wrapping (prose around the JSON, ```json fences, a nested ``"scores"``
    object, key case) but strict about values: each must be an integer 1..10 (a JSON number like
    ``7.0`` counts as 7; strings, booleans, 0, 11 or 7.5 make the reply invalid).
    """
    for obj in iter_json_objects(text):
        cands = [obj]
        if isinstance(obj.get("scores"), dict):
            cands.insert(0, obj["scores"])
        for cand in cands:
            low = {str(k).strip().lower(): v for k, v in cand.items()}
            out = {}
            for c in criteria:
                s = _as_score(low.get(c.lower()))
                if s is None:
                    break
                out[c] = s
            else:
                return out
    return None


_VERDICTS = {
    "a": "A", "output a": "A", "output_a": "A", "system a": "A", "[[a]]": "A",
    "b": "B", "output b": "B", "output_b": "B", "system b": "B", "[[b]]": "B",
    "tie": "tie", "equal": "tie", "draw": "tie", "[[c]]": "tie", "[[tie]]": "tie",
}


def _norm_verdict(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    return _VERDICTS.get(v.strip().strip("\"'.").strip().lower())


def parse_pairwise_reply(text: str | None) -> str | None:
    """"A", "B" or "tie" from a reply like ``{"winner": "A"}``, or None if unusable."""
    for obj in iter_json_objects(text):
        low = {str(k).strip().lower(): v for k, v in obj.items()}
        for key in ("winner", "better", "verdict", "preferred"):
            if key in low:
                v = _norm_verdict(low[key])
                if v is not None:
                    return v
    if text is not None:  # a bare "A" / "B" / "tie" is unambiguous too
        return _norm_verdict(text)
    return None


# --------------------------------------------------------------------------- pairwise logic

def orient(verdict: str | None, method_position: str) -> str | None:
    """Turn a raw verdict ("A"/"B"/"tie") into the method's outcome ("win"/"tie"/"loss")."""
    if verdict is None:
        return None
    if verdict == "tie":
        return "tie"
    if method_position not in ("A", "B"):
        raise ValueError(f"method_position must be 'A' or 'B', got {method_position!r}")
    return "win" if verdict == method_position else "loss"


def combine_outcomes(outcome_ab: str | None, outcome_ba: str | None) -> str:
    """Combine the method's outcomes from both orders (see the module docstring for the rule)."""
    if outcome_ab is None or outcome_ba is None:
        return "invalid"
    pair = {outcome_ab, outcome_ba}
    if not pair <= {"win", "tie", "loss"}:
        raise ValueError(f"unknown outcomes {outcome_ab!r}, {outcome_ba!r}")
    if pair == {"win"} or pair == {"win", "tie"}:
        return "win"
    if pair == {"loss"} or pair == {"loss", "tie"}:
        return "loss"
    return "tie"  # tie/tie, or win/loss (position bias)


def outcome_rates(outcomes: Iterable[str]) -> dict[str, Any]:
    """Win/tie/loss counts and rates over valid combined outcomes; invalid ones counted apart."""
    outcomes = list(outcomes)
    counts = {k: sum(o == k for o in outcomes) for k in ("win", "tie", "loss", "invalid")}
    n = counts["win"] + counts["tie"] + counts["loss"]
    rate = (lambda k: counts[k] / n) if n else (lambda k: None)
    return {
        "n_valid": n,
        "n_invalid": counts["invalid"],
        "n_win": counts["win"],
        "n_tie": counts["tie"],
        "n_loss": counts["loss"],
        "win_rate": rate("win"),
        "tie_rate": rate("tie"),
        "loss_rate": rate("loss"),
    }
