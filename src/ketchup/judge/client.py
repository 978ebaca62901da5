"""Async judge client: OpenAI-compatible chat completions with our own retry loop and a cache.

* The API key is read only from ``os.environ[judge.api_key_env]`` (``JudgeConfigError`` naming the
  variable if it is missing). It is passed to ``openai.AsyncOpenAI`` and nowhere else: it is never
  logged, cached or written, and error texts are scrubbed of it.
* ``openai.AsyncOpenAI(base_url=..., api_key=..., max_retries=0, timeout=timeout_s)``; retries are
  ours: HTTP 408/409/425/429/5xx, timeouts and connection errors are retried after
  ``min(backoff_s * 2**attempt, backoff_max_s)`` seconds (plus up to 10 % jitter; a larger
  ``Retry-After`` header is honoured, capped at ``backoff_max_s``); an unparseable reply is retried
  at once. At most ``1 + max_retries`` attempts in all.
* Only a reply that cannot be parsed after every attempt is a judgement recorded as invalid
  (``valid=False`` with an ``error``, cached, never dropped); the stages fail the job when more
  than ``judge.max_invalid_fraction`` of them are invalid.
* No reply after every attempt (connection refused, DNS, TLS, timeouts, 429/5xx) raises
  :class:`JudgeTransportError` naming ``base_url`` (never the key); the stage then stops, and every
  judgement that finished is already cached, so a rerun asks only the rest.
* 401/403/404 raise :class:`JudgeAPIError` at once (wrong key, model or URL: retrying cannot help);
  so does any other 4xx (e.g. 400, a prompt too long for the model: lower ``judge.max_chars``).
* A semaphore caps the requests in flight at ``judge.concurrency``.
* Token usage of every attempt that got a reply is summed, and priced with the config's prices.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import openai

from .cache import JudgeCache, cache_key
from .config import JudgeAPIError, JudgeConfig, JudgeConfigError, JudgeTransportError, get_api_key, load_config

__all__ = ["JudgeClient", "Judgement", "JudgeConfigError", "JudgeAPIError", "JudgeTransportError"]

log = logging.getLogger("ketchup.judge")

FATAL_STATUS = frozenset({401, 403, 404})
RETRY_STATUS = frozenset({408, 409, 425, 429})


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
    cost_usd: float = 0.0
    cached: bool = False
    cacheable: bool = True
    requests: int = field(default=0, repr=False)  # HTTP requests made for it in this run

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


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
        self._secret = key  # kept only to scrub error texts
        self._client = openai.AsyncOpenAI(
            base_url=self.cfg.base_url, api_key=key, max_retries=0, timeout=self.cfg.timeout_s
        )
        self.cache = cache
        self._sem = asyncio.Semaphore(self.cfg.concurrency)
        self._key_locks: dict[str, asyncio.Lock] = {}  # identical requests in flight: asked once
        self.n_requests = 0  # HTTP requests made
        self.n_cache_hits = 0

    def __repr__(self) -> str:  # never show the key
        return f"JudgeClient(model={self.cfg.model!r}, base_url={self.cfg.base_url!r})"

    async def __aenter__(self) -> "JudgeClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.close()

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _delay(self, attempt: int, retry_after: float | None = None) -> float:
        c = self.cfg
        d = min(c.backoff_s * (2 ** attempt), c.backoff_max_s)
        d += random.uniform(0.0, 0.1 * d)
        if retry_after is not None:
            d = max(d, min(retry_after, c.backoff_max_s))
        return d

    async def judge(self, messages: Sequence[Mapping[str, str]], parse: Callable[[str | None], Any],
                    template_version: str, kind: str = "judge") -> Judgement:
        """One judgement: from the cache if present, else from the API (with retries)."""
        c = self.cfg
        messages = [dict(m) for m in messages]
        key = cache_key(c.model, messages, c.temperature, c.max_tokens, template_version)
        # The same messages asked twice at once (e.g. both orders of a pair whose outputs are
        # equal) make one request: the second waits and then reads the first one's cache entry.
        async with self._key_locks.setdefault(key, asyncio.Lock()):
            if self.cache is not None:
                entry = self.cache.get(key)
                if entry is not None:
                    self.n_cache_hits += 1
                    reply = entry.get("reply")
                    parsed = parse(reply) if reply is not None else None
                    usage = entry.get("usage") or {}
                    pt, ct = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
                    return Judgement(
                        key=key, valid=parsed is not None, parsed=parsed, reply=reply,
                        error=None if parsed is not None else (entry.get("error") or "unparseable reply"),
                        attempts=int(entry.get("attempts", 0)), prompt_tokens=pt, completion_tokens=ct,
                        cost_usd=c.cost(pt, ct), cached=True,
                    )
            async with self._sem:
                j = await self._request(key, messages, parse)
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
                    "reply": j.reply, "valid": j.valid, "error": j.error, "attempts": j.attempts,
                    "usage": j.usage, "created": round(time.time(), 3),
                })
            return j

    async def _request(self, key: str, messages: list[dict], parse: Callable[[str | None], Any]) -> Judgement:
        c = self.cfg
        j = Judgement(key=key, valid=False)
        backstop = c.timeout_s * 3 + 5  # in case the HTTP timeout never fires (trickling server)
        for attempt in range(c.max_retries + 1):
            last = attempt == c.max_retries
            j.attempts += 1
            j.requests += 1
            self.n_requests += 1
            try:
                resp = await asyncio.wait_for(
                    self._client.chat.completions.create(
                        model=c.model, messages=messages, temperature=c.temperature, max_tokens=c.max_tokens,
                    ),
                    timeout=backstop,
                )
            except openai.APIStatusError as exc:
                status = int(getattr(exc, "status_code", 0) or 0)
                if status in FATAL_STATUS:
                    raise JudgeAPIError(
                        f"judge endpoint {c.base_url} answered HTTP {status} ({type(exc).__name__}) for model "
                        f"{c.model!r}: check judge.base_url, judge.model and the key in ${c.api_key_env}"
                    ) from None
                j.error = f"HTTP {status}"
                if status in RETRY_STATUS or status >= 500:
                    j.cacheable = False
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
                j.error, j.cacheable = "timeout", False
                if not last:
                    delay = self._delay(attempt)
                    log.info("judge: timeout, retry %d/%d in %.2fs", attempt + 1, c.max_retries, delay)
                    await asyncio.sleep(delay)
                continue
            except openai.APIConnectionError as exc:
                cause = f": {self._scrub(str(exc.__cause__))[:200]}" if exc.__cause__ is not None else ""
                j.error, j.cacheable = f"connection error ({type(exc).__name__}{cause})", False
                if not last:
                    delay = self._delay(attempt)
                    log.info("judge: connection error, retry %d/%d in %.2fs", attempt + 1, c.max_retries, delay)
                    await asyncio.sleep(delay)
                continue
            except openai.APIError as exc:  # malformed response body etc.
                j.error, j.cacheable = self._scrub(f"API error ({type(exc).__name__})"), False
                if not last:
                    await asyncio.sleep(self._delay(attempt))
                continue

            usage = getattr(resp, "usage", None)
            if usage is not None:
                j.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
                j.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
            text = None
            choices = getattr(resp, "choices", None) or []
            if choices and getattr(choices[0], "message", None) is not None:
                text = choices[0].message.content
            j.reply = text
            parsed = parse(text) if text is not None else None
            if parsed is not None:
                j.valid, j.parsed, j.error, j.cacheable = True, parsed, None, True
                break
            j.error, j.cacheable = "unparseable reply", True
            if not last:
                log.info("judge: unparseable reply, retry %d/%d", attempt + 1, c.max_retries)
        if not j.valid and j.cacheable:
            log.warning("judge: judgement invalid after %d attempt(s): %s", j.attempts, j.error)
        j.cost_usd = c.cost(j.prompt_tokens, j.completion_tokens)
        return j
