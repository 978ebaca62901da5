"""Async judge client: OpenAI-compatible chat completions with our own retry loop and a cache.

* The API key is read only from ``os.environ[judge.api_key_env]`` (``JudgeConfigError`` naming the
  variable if it is missing). It is passed to ``openai.AsyncOpenAI`` and nowhere else: it is never
  logged, cached or written, and error texts are scrubbed of it.
* ``openai.AsyncOpenAI(base_url=..., api_key=..., max_retries=0, timeout=timeout_s)``; retries are
  ours: HTTP 408/409/425/429/5xx, timeouts and connection errors are retried after
  ``min(backoff_s * 2**attempt, backoff_max_s)`` seconds (plus up to 10 % jitter; a larger
  ``Retry-After`` header is honoured, capped at ``backoff_max_s``). At most ``1 + max_retries``
  attempts per request.
* Structured output (``judge.structured_output``, on by default): every request carries the
  ``response_format`` given by the stage (a JSON schema of the reply). The first such request of a
  run goes alone; if the server refuses it (HTTP 400/422, or any error naming response_format or
  json_schema), the client logs that once, asks the same request again without it, and sends no
  ``response_format`` for the rest of the run (one refused request per run, no more).
* An unparseable reply gets one repair turn: the conversation ``[prompt..., assistant: the reply,
  user: the stage's repair instruction]``, never the same prompt again (at temperature 0 that
  comes back identical). If the repaired reply is unparseable too, the judgement is recorded as
  invalid (``valid=False`` with an ``error``, cached, never dropped); the stages fail the job when
  more than ``judge.max_invalid_fraction`` of them are invalid.
* No reply after every attempt (connection refused, DNS, TLS, timeouts, 429/5xx) raises
  :class:`JudgeTransportError` naming ``base_url`` (never the key); the stage then stops, and every
  judgement that finished is already cached, so a rerun asks only the rest.
* 401/403/404 raise :class:`JudgeAPIError` at once (wrong key, model or URL: retrying cannot help);
  so does any other 4xx (e.g. 400, a prompt too long for the model: lower ``judge.max_chars``).
* A semaphore caps the requests in flight at ``judge.concurrency``.
* Token usage of every request that got a reply is summed (the repair turn's also apart), and
  priced with the config's prices; the client also counts this run's requests, repair turns,
  cache hits and tokens (:meth:`JudgeClient.run_stats`).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import openai

from .cache import JudgeCache, cache_key
from .config import (NO_KEY, JudgeAPIError, JudgeConfig, JudgeConfigError, JudgeTransportError, get_api_key,
                     load_config)

__all__ = ["JudgeClient", "Judgement", "JudgeConfigError", "JudgeAPIError", "JudgeTransportError"]

log = logging.getLogger("ketchup.judge")

FATAL_STATUS = frozenset({401, 403, 404})
RETRY_STATUS = frozenset({408, 409, 425, 429})
REFUSAL_STATUS = frozenset({400, 422})  # how servers without structured output answer response_format
REFUSAL_WORDS = ("response_format", "json_schema")


@dataclass
class Judgement:
    key: str  # cache key
    valid: bool
    parsed: Any = None  # parser output (None when invalid)
    reply: str | None = None  # last reply text received
    error: str | None = None  # why it is invalid (last failure), None when valid
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # None: no price set
    cached: bool = False
    cacheable: bool = True
    repairs: int = 0  # repair turns asked (0 or 1)
    repair_prompt_tokens: int = 0  # part of prompt_tokens spent on the repair turn
    repair_completion_tokens: int = 0
    first_reply: str | None = None  # the unparseable reply a repair turn followed (None without one)
    structured: bool | None = None  # whether the request of the last reply carried response_format

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    @property
    def repair_usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.repair_prompt_tokens, "completion_tokens": self.repair_completion_tokens}


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        v = exc.response.headers.get("retry-after")
        return float(v) if v is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


class JudgeClient:
    """Use as ``async with JudgeClient(cfg, cache) as jc: await jc.judge(...)``."""

    def __init__(self, judge_cfg: Mapping[str, Any] | JudgeConfig, cache: JudgeCache | None = None):
        self.cfg = load_config(judge_cfg)
        if not self.cfg.base_url or not self.cfg.model:
            raise JudgeConfigError("judge.base_url and judge.model must be set to use the LLM judge")
        key = get_api_key(self.cfg)
        self._secret = key if key != NO_KEY else None  # kept only to scrub error texts
        self._client = openai.AsyncOpenAI(
            base_url=self.cfg.base_url, api_key=key, max_retries=0, timeout=self.cfg.timeout_s
        )
        self.cache = cache
        self._sem = asyncio.Semaphore(self.cfg.concurrency)
        self._key_locks: dict[str, asyncio.Lock] = {}  # identical requests in flight: asked once
        # Structured output: None until a request carrying response_format got an answer (True) or
        # a refusal (False); the first such request holds _probe so that only one can be refused.
        self.structured: bool | None = None if self.cfg.structured_output else False
        self._probe = asyncio.Lock()
        self.n_requests = 0  # HTTP requests made (repair turns and refused ones included)
        self.n_repairs = 0  # repair turns asked
        self.n_refused = 0  # requests refused for their response_format (0 or 1)
        self.n_cache_hits = 0
        self.prompt_tokens = 0  # tokens of every reply received in this run
        self.completion_tokens = 0

    def __repr__(self) -> str:  # never show the key
        return f"JudgeClient(model={self.cfg.model!r}, base_url={self.cfg.base_url!r})"

    async def __aenter__(self) -> "JudgeClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.close()

    def run_stats(self) -> dict[str, Any]:
        """What this run asked and spent (cache hits cost nothing)."""
        if not self.cfg.structured_output:
            structured = "off"
        else:
            structured = {None: "untried", True: "used", False: "refused"}[self.structured]
        return {
            "api_requests": self.n_requests, "repair_requests": self.n_repairs, "cache_hits": self.n_cache_hits,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cost_usd": self.cfg.cost(self.prompt_tokens, self.completion_tokens),
            "structured_output": structured,
        }

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _delay(self, attempt: int, retry_after: float | None = None) -> float:
        c = self.cfg
        d = min(c.backoff_s * (2 ** attempt), c.backoff_max_s)
        d += random.uniform(0.0, 0.1 * d)
        if retry_after is not None:
            d = max(d, min(retry_after, c.backoff_max_s))
        return d

    def key(self, messages: Sequence[Mapping[str, str]], template_version: str,
            response_format: Mapping[str, Any] | None = None) -> str:
        """The cache key of a judgement: the request as configured (the response_format asked for,
        not whether this server honours it, so a rerun from the cache makes no request)."""
        c = self.cfg
        rf = response_format if c.structured_output else None
        return cache_key(c.model, [dict(m) for m in messages], c.temperature, c.max_tokens, template_version,
                         response_format=rf)

    async def judge(self, messages: Sequence[Mapping[str, str]], parse: Callable[[str | None], Any],
                    template_version: str, kind: str = "judge", *,
                    response_format: Mapping[str, Any] | None = None,
                    repair: Mapping[str, str] | None = None) -> Judgement:
        """One judgement: from the cache if present, else from the API (with retries).

        ``response_format`` is sent while the server takes it (and ``judge.structured_output`` is
        on); ``repair`` is the user turn asked once after an unparseable reply (None: no repair).
        """
        c = self.cfg
        messages = [dict(m) for m in messages]
        key = self.key(messages, template_version, response_format)
        # The same messages asked twice at once (e.g. both orders of a pair whose outputs are
        # equal) make one request: the second waits and then reads the first one's cache entry.
        async with self._key_locks.setdefault(key, asyncio.Lock()):
            if self.cache is not None:
                entry = self.cache.get(key)
                if entry is not None:
                    self.n_cache_hits += 1
                    return self._from_cache(key, entry, parse)
            rf = dict(response_format) if (response_format is not None and c.structured_output) else None
            async with self._sem:
                j = await self._request(key, messages, parse, rf, dict(repair) if repair is not None else None)
            if not j.valid and not j.cacheable:  # no reply after every attempt: fail, cache nothing
                where = f"; finished judgements are cached in {self.cache.root}, a rerun asks only the rest" \
                    if self.cache is not None else ""
                raise JudgeTransportError(
                    f"judge endpoint {c.base_url} gave no usable reply after {j.attempts} attempt(s) "
                    f"(last: {j.error}){where}. Check that the endpoint is up and reachable, or raise "
                    f"judge.max_retries / judge.timeout_s."
                )
            if self.cache is not None and j.cacheable:
                self.cache.put(key, {
                    "kind": kind, "model": c.model, "template_version": template_version,
                    "temperature": c.temperature, "max_tokens": c.max_tokens,
                    "response_format": rf is not None, "structured": j.structured,
                    "reply": j.reply, "valid": j.valid, "error": j.error, "attempts": j.attempts,
                    "repairs": j.repairs, "first_reply": j.first_reply,
                    "usage": j.usage, "repair_usage": j.repair_usage, "created": round(time.time(), 3),
                })
            return j

    def _from_cache(self, key: str, entry: Mapping[str, Any], parse: Callable[[str | None], Any]) -> Judgement:
        reply = entry.get("reply")
        parsed = parse(reply) if reply is not None else None
        usage, rusage = entry.get("usage") or {}, entry.get("repair_usage") or {}
        pt, ct = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        return Judgement(
            key=key, valid=parsed is not None, parsed=parsed, reply=reply,
            error=None if parsed is not None else (entry.get("error") or "unparseable reply"),
            attempts=int(entry.get("attempts", 0)), prompt_tokens=pt, completion_tokens=ct,
            cost_usd=self.cfg.cost(pt, ct), cached=True, repairs=int(entry.get("repairs", 0)),
            repair_prompt_tokens=int(rusage.get("prompt_tokens", 0)),
            repair_completion_tokens=int(rusage.get("completion_tokens", 0)),
            first_reply=entry.get("first_reply"), structured=entry.get("structured"),
        )

    async def _request(self, key: str, messages: list[dict], parse: Callable[[str | None], Any],
                       rf: dict | None, repair: dict | None) -> Judgement:
        j = Judgement(key=key, valid=False)
        got = await self._ask(j, messages, rf)
        if got is None:  # no reply after every attempt
            return j
        text, pt, ct = got
        parsed = parse(text) if text is not None else None
        if parsed is None and repair is not None:
            # Asking the same prompt again at temperature 0 brings the same reply back: show the
            # model its reply and ask once for the format instead.
            log.info("judge: unparseable reply, asking once for the format (repair turn)")
            j.first_reply, j.repairs = text, 1
            self.n_repairs += 1
            convo = messages + [{"role": "assistant", "content": text or ""}, repair]
            got = await self._ask(j, convo, rf)
            if got is None:
                return j
            text, pt, ct = got
            j.repair_prompt_tokens, j.repair_completion_tokens = pt, ct
            parsed = parse(text) if text is not None else None
        j.reply, j.cacheable = text, True
        if parsed is not None:
            j.valid, j.parsed, j.error = True, parsed, None
        else:
            j.error = "unparseable reply"
            log.warning("judge: judgement invalid after %d request(s) (%d repair turn): %s",
                        j.attempts, j.repairs, j.error)
        j.cost_usd = self.cfg.cost(j.prompt_tokens, j.completion_tokens)
        return j

    def _refuses_response_format(self, exc: openai.APIStatusError) -> bool:
        status = int(getattr(exc, "status_code", 0) or 0)
        if status in FATAL_STATUS:
            return False
        text = f"{getattr(exc, 'message', '')} {getattr(exc, 'body', '')}".lower()
        return status in REFUSAL_STATUS or any(w in text for w in REFUSAL_WORDS)

    async def _call(self, j: Judgement, messages: list[dict], rf: dict | None):
        """One HTTP request (counted whatever its fate)."""
        c = self.cfg
        j.attempts += 1
        self.n_requests += 1
        j.structured = rf is not None
        extra = {"response_format": rf} if rf is not None else {}
        backstop = c.timeout_s * 3 + 5  # in case the HTTP timeout never fires (trickling server)
        return await asyncio.wait_for(
            self._client.chat.completions.create(
                model=c.model, messages=messages, temperature=c.temperature, max_tokens=c.max_tokens, **extra,
            ),
            timeout=backstop,
        )

    async def _call_structured(self, j: Judgement, messages: list[dict], rf: dict | None):
        """:meth:`_call` with ``rf`` while the server takes it; finds out once per run whether it does."""
        if rf is None or self.structured is False:
            return await self._call(j, messages, None)
        if self.structured:
            return await self._call(j, messages, rf)
        async with self._probe:  # the run's first request with response_format goes alone
            if self.structured is None:
                try:
                    resp = await self._call(j, messages, rf)
                except openai.APIStatusError as exc:
                    if not self._refuses_response_format(exc):
                        raise
                    self.structured = False
                    self.n_refused += 1
                    status = int(getattr(exc, "status_code", 0) or 0)
                    log.warning("judge: %s answered HTTP %s to response_format (structured output): asking "
                                "without it for the rest of this run (%s)", self.cfg.base_url, status,
                                self._scrub(str(getattr(exc, "message", "") or exc))[:200])
                    return await self._call(j, messages, None)
                self.structured = True
                return resp
        return await self._call(j, messages, rf if self.structured else None)

    async def _ask(self, j: Judgement, messages: list[dict], rf: dict | None) -> tuple[str | None, int, int] | None:
        """``(reply text, prompt tokens, completion tokens)`` of one request, retried on transport
        failures; None when every attempt failed (``j.error`` says how, ``j.cacheable`` is False)."""
        c = self.cfg
        for attempt in range(c.max_retries + 1):
            last = attempt == c.max_retries
            try:
                resp = await self._call_structured(j, messages, rf)
            except openai.APIStatusError as exc:
                status = int(getattr(exc, "status_code", 0) or 0)
                if status in FATAL_STATUS:
                    raise JudgeAPIError(
                        f"judge endpoint {c.base_url} answered HTTP {status} ({type(exc).__name__}) for model "
                        f"{c.model!r}: check judge.base_url, judge.model and the key in ${c.api_key_env}"
                    ) from None
                j.error = f"HTTP {status}"
                if status in RETRY_STATUS or status >= 500:
                    if not last:
                        delay = self._delay(attempt, _retry_after(exc))
                        log.info("judge: HTTP %s, retry %d/%d in %.2fs", status, attempt + 1, c.max_retries, delay)
                        await asyncio.sleep(delay)
                    continue
                # other 4xx: this request cannot succeed as it is, and it is no reply to parse
                raise JudgeAPIError(
                    f"judge endpoint {c.base_url} answered HTTP {status} ({type(exc).__name__}) for model "
                    f"{c.model!r}: {self._scrub(str(getattr(exc, 'message', '') or exc))[:300]} "
                    f"(a prompt too long for the model? lower judge.max_chars)"
                ) from None
            except (openai.APITimeoutError, asyncio.TimeoutError, TimeoutError):
                j.error = "timeout"
                if not last:
                    delay = self._delay(attempt)
                    log.info("judge: timeout, retry %d/%d in %.2fs", attempt + 1, c.max_retries, delay)
                    await asyncio.sleep(delay)
                continue
            except openai.APIConnectionError as exc:
                cause = f": {self._scrub(str(exc.__cause__))[:200]}" if exc.__cause__ is not None else ""
                j.error = f"connection error ({type(exc).__name__}{cause})"
                if not last:
                    delay = self._delay(attempt)
                    log.info("judge: connection error, retry %d/%d in %.2fs", attempt + 1, c.max_retries, delay)
                    await asyncio.sleep(delay)
                continue
            except openai.APIError as exc:  # malformed response body etc.
                j.error = self._scrub(f"API error ({type(exc).__name__})")
                if not last:
                    await asyncio.sleep(self._delay(attempt))
                continue

            usage = getattr(resp, "usage", None)
            pt = int(getattr(usage, "prompt_tokens", 0) or 0) if usage is not None else 0
            ct = int(getattr(usage, "completion_tokens", 0) or 0) if usage is not None else 0
            j.prompt_tokens += pt
            j.completion_tokens += ct
            self.prompt_tokens += pt
            self.completion_tokens += ct
            text = None
            choices = getattr(resp, "choices", None) or []
            if choices and getattr(choices[0], "message", None) is not None:
                text = choices[0].message.content
            return text, pt, ct
        j.cacheable = False
        return None
