"""A real, scripted OpenAI-compatible chat-completions server for the judge tests.

``FakeJudgeServer`` listens on 127.0.0.1 (port 0) in a thread and answers
``POST /v1/chat/completions``. What it answers is decided by markers found in the user message
(the tests put them into an example's source text) and by how often the same messages were seen:

- ``[[MALFORMED_ONCE]]``   first request: prose without JSON; then (e.g. the repair turn) a valid reply
- ``[[ALWAYS_MALFORMED]]`` always prose without JSON (the repair turn too)
- ``[[OUT_OF_RANGE]]``     always JSON with a score of 11 (invalid)
- ``[[RATE_LIMIT_ONCE]]``  first request: HTTP 429 (Retry-After: 0); then valid
- ``[[ERROR_ONCE]]``       first request: HTTP 500; then valid
- ``[[ALWAYS_500]]``       always HTTP 500
- ``[[BAD_REQUEST]]``      always HTTP 400 (e.g. a prompt too long for the model)
- ``[[SLOW_ONCE]]``        first request: answers only after ``slow_s`` seconds; then valid
- ``[[FENCED]]``           valid JSON inside a ```json fence with prose around it
- ``[[BIASED]]``           pairwise: always answers "A" (pure position bias)

Valid score replies derive from a ``q=<int>`` marker in the ``<output>`` block (default 5):
overall = q, informativeness = max(1, q - 1), coherence = min(10, q + 1). Pairwise replies compare
the ``q`` of ``<output_a>`` and ``<output_b>`` (higher wins, equal: tie).

"The same messages" and "first request" count per prompt: the messages up to the first user turn,
so a repair turn (prompt, assistant reply, user instruction) is the prompt's next request.

Structured output: ``refuse_response_format=None`` takes ``response_format`` (recorded; a score
reply then has the keys the schema names, a criterion other than the three above scoring q, but
the markers above still break it); ``400`` or ``422`` refuses every request carrying it with that status (an error naming
response_format), as servers without structured output do. A refused request is recorded but does
not count as one of its prompt's requests.

The server counts requests, tracks the maximum number in flight at once, records each request
(messages, model, parameters, response_format, Authorization header, status, usage sent) and can
hold requests past a number (``hold_after``) until :meth:`release` is called, to simulate an
interrupted run.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_Q = re.compile(r"q=(\d+)")


def _block(text: str, tag: str) -> str | None:
    m = re.search(rf"<{tag}>\n?(.*?)\n?</{tag}>", text, re.S)
    return m.group(1) if m else None


def _q(text: str | None) -> int:
    m = _Q.search(text or "")
    return int(m.group(1)) if m else 5


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients hang up (timeouts, cancels): fine
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FakeJudgeServer:
    def __init__(self, delay: float = 0.0, slow_s: float = 1.0, expected_key: str | None = None,
                 hold_after: int | None = None, refuse_response_format: int | None = None):
        self.refuse_response_format = refuse_response_format
        self.delay = delay
        self.slow_s = slow_s
        self.expected_key = expected_key
        self.hold_after = hold_after
        self._released = threading.Event()
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.seen: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def n_requests(self) -> int:
        with self.lock:
            return len(self.requests)

    def start(self) -> "FakeJudgeServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()

    def release(self) -> None:
        self._released.set()

    def quiet(self, settle_s: float = 0.3, timeout_s: float = 10.0) -> int:
        """Wait until no request is in flight and none arrived for ``settle_s`` (requests a client
        gave up on may still reach the server a moment later); returns the number of requests."""
        deadline = time.monotonic() + timeout_s
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            with self.lock:
                n, busy = len(self.requests), self.in_flight
            if n != last or busy:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= settle_s:
                break
            time.sleep(0.02)
        return last

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ behaviour
    def respond(self, body: dict, auth: str | None) -> tuple[int, dict, dict, float]:
        """(status, json body, headers, delay) for one request; records it."""
        messages = body.get("messages", [])
        user = "\n".join(m.get("content", "") for m in messages if m.get("role") == "user")
        first_user = next((k for k, m in enumerate(messages) if m.get("role") == "user"), len(messages))
        prompt = messages[: first_user + 1]
        h = hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()
        refuse = self.refuse_response_format is not None and "response_format" in body
        with self.lock:
            n = self.seen.get(h, 0)
            if not refuse:
                self.seen[h] = n + 1
            number = len(self.requests) + 1
            rec = {"number": number, "messages": messages, "model": body.get("model"),
                   "temperature": body.get("temperature"), "max_tokens": body.get("max_tokens"),
                   "response_format": body.get("response_format"), "repair": len(messages) > len(prompt),
                   "auth": auth, "attempt": n, "status": 200, "usage": None, "slow": False}
            self.requests.append(rec)
        delay = self.delay
        if self.hold_after is not None and number > self.hold_after:
            self._released.wait(timeout=30)
        if self.expected_key is not None and auth != f"Bearer {self.expected_key}":
            rec["status"] = 401
            shown = (auth or "")[-4:]
            return 401, {"error": {"message": f"Incorrect API key provided: ***{shown}", "type": "invalid_request_error",
                                   "code": "invalid_api_key"}}, {}, 0.0
        if refuse:
            rec["status"] = self.refuse_response_format
            return rec["status"], {"error": {"message": "response_format is not supported by this server",
                                             "type": "invalid_request_error", "param": "response_format"}}, {}, 0.0
        if "[[RATE_LIMIT_ONCE]]" in user and n == 0:
            rec["status"] = 429
            return 429, {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}, {"Retry-After": "0"}, 0.0
        if ("[[ERROR_ONCE]]" in user and n == 0) or "[[ALWAYS_500]]" in user:
            rec["status"] = 500
            return 500, {"error": {"message": "internal error", "type": "server_error"}}, {}, 0.0
        if "[[BAD_REQUEST]]" in user:
            rec["status"] = 400
            return 400, {"error": {"message": "maximum context length exceeded", "type": "invalid_request_error"}}, {}, 0.0
        if "[[SLOW_ONCE]]" in user and n == 0:
            rec["slow"] = True
            delay = self.slow_s

        pairwise = "<output_a>" in user
        if "[[ALWAYS_MALFORMED]]" in user or ("[[MALFORMED_ONCE]]" in user and n == 0):
            content = "I think this output is pretty good overall, maybe a seven."
        elif pairwise:
            qa, qb = _q(_block(user, "output_a")), _q(_block(user, "output_b"))
            if "[[BIASED]]" in user:
                winner = "A"
            else:
                winner = "A" if qa > qb else "B" if qb > qa else "tie"
            content = json.dumps({"winner": winner})
        else:
            q = _q(_block(user, "output"))
            scores = {"overall": q, "informativeness": max(1, q - 1), "coherence": min(10, q + 1)}
            schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema") or {}
            if schema.get("properties"):  # structured output: the criteria the schema names (others: q)
                scores = {c: scores.get(c, q) for c in schema["properties"]}
            if "[[OUT_OF_RANGE]]" in user:
                scores["overall"] = 11
            content = json.dumps(scores)
            if "[[FENCED]]" in user:
                content = f"Here is my evaluation:\n```json\n{content}\n```\nThanks."
        usage = {"prompt_tokens": max(1, len(user) // 4), "completion_tokens": max(1, len(content) // 4)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        rec["usage"], rec["reply"] = usage, content
        resp = {
            "id": f"chatcmpl-{number}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": usage,
        }
        return 200, resp, {}, delay

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None):
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, body, headers, delay = server.respond(json.loads(raw), self.headers.get("Authorization"))
                    if delay:
                        time.sleep(delay)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                self._send(status, body, headers)

        return Handler
