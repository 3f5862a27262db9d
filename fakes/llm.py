"""A scriptable OpenAI-compatible LLM server: a real separate process speaking the real protocol.

The tests and the chaos suite use it where no real model can run: the LLM is an external service, faked as a
server, never as a mock. ``python -m fakes.llm --port N [--script JSON]``; from Python, ``FakeLLM`` below.

OpenAI endpoints (what the ``openai`` client calls):

- ``POST /v1/chat/completions``: a ``chat.completion`` object with ``choices[0].message.content`` and ``usage``
  ``{prompt_tokens, completion_tokens, total_tokens}`` (estimated: one token per CJK character, one per four
  other characters); with ``"stream": true``, server-sent events as OpenAI sends them: ``chat.completion.chunk``
  objects (the role, then the answer in pieces of ``STREAM_PIECE`` characters, then ``finish_reason``; a usage
  chunk when ``stream_options.include_usage``), then ``data: [DONE]``;
- ``POST /v1/embeddings``: deterministic 384-dim unit vectors from a hash of each text (``float`` or ``base64``);
- ``GET /v1/models``.

Scripting (per test, over HTTP):

- ``POST /_script`` ``{"routes": {"facts": [step, ...], "preferences": [...], "merge": [...]},
  "defaults": {"facts": step, ...}, "content_by_match": [{"route": "facts", "match": "七天", ...step}]}``
  replaces the script (the call log is kept; ``"reset": true`` clears it too). The route of a request is chosen
  from its system prompt: ``USER FEEDBACK`` -> feedback, ``# Memories of this user`` -> chat (POST /chat),
  ``USER PROFILE`` -> profile, ``SUB-QUESTIONS`` -> decompose, ``MemReader`` -> facts, ``EXISTING memories`` -> merge,
  ``preferences`` -> preferences.
  A request takes the next scripted step of its route; when there is none, the first ``content_by_match`` entry
  whose ``match`` occurs in the conversation (the first user message); else the route's default; else ``auto``.
- A step: ``{"content": "<the model's answer>"}``, ``{"json": {...}}`` (serialised), ``{"auto": true}`` (a
  capable model: one fact per user message, in the conversation's language, with correct sources; an explicit
  and an implicit preference per conversation; merge says "new"; feedback adds the feedback as one fact and
  changes nothing else; decompose splits a question at "and" (else no parts); profile fills the name, location and occupation slots it is offered from
  facts that say "name is X", "lives in X", "works as a X", citing them; chat answers in plain text with the first memory it was shown, or says it remembers
  nothing), ``{"status": 429}`` / ``{"status": 500}`` (an
  OpenAI error body), ``{"drop": true}`` (close the connection without answering), and ``"delay": seconds`` before
  any of them (past the client's timeout: the client gives up, the server notices the broken pipe).
- ``GET /_calls``: ``{"calls": [{route, user (first 200 chars of the first user message), last (first 200 chars of
  the last user message), system (first 2000 chars of the system prompt), n_messages, model, max_tokens,
  temperature, top_p, stream, status, delay, outcome, t}], "counts": {route: n}, "ok": {route: n}}``.
- ``POST /_reset``: clear the script and the log.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import socket
import struct
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

from fakes.server import CallLog, FakeProcess, JsonHandler, serve

DIM = 384
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LINE = re.compile(r"^\[m(\d+)\](?: \([^)]*\))? ([^:]+): (.*)$")
_MEMORY = re.compile(r"^\[M\d+\](?: \([^)]*\))? (.*)$")  # a memory line of a chat's system prompt
_FACT = re.compile(r"^\[f(\d+)\] (.*)$")  # a new fact of a profile prompt
_SLOT = re.compile(r"^- ([^:]+):")  # a slot offered by a profile prompt
_PROFILE_READS = {  # what the fake model reads in a fact, per slot
    "name": re.compile(r"name is ([A-Z][\w-]+(?: [A-Z][\w-]+)?)"),
    "location": re.compile(r"lives? in ([A-Z][\w-]+(?: [A-Z][\w-]+)?)"),
    "occupation": re.compile(r"works? as an? ([a-z]+(?: [a-z]+)?)"),
}
_FEEDBACK = re.compile(r"^FEEDBACK(?: \([^)]*\))?: (.*)$", re.M)
STREAM_PIECE = 8  # characters per streamed chunk: several chunks for any real answer, CJK included

ERRORS = {
    400: ("invalid_request_error", "bad request"),
    401: ("invalid_request_error", "invalid api key"),
    404: ("not_found", "no such route"),
    429: ("rate_limit_exceeded", "Rate limit reached for requests"),
    500: ("server_error", "The server had an error while processing your request"),
    503: ("server_error", "The engine is currently overloaded"),
}


class State(CallLog):
    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, deque[dict[str, Any]]] = {}
        self.defaults: dict[str, dict[str, Any]] = {}
        self.by_match: list[dict[str, Any]] = []

    def load(self, script: dict[str, Any]) -> None:
        with self.lock:
            if script.get("reset"):
                self.calls.clear()
            self.routes = {r: deque(steps) for r, steps in (script.get("routes") or {}).items()}
            self.defaults = dict(script.get("defaults") or {})
            cbm = script.get("content_by_match") or []
            if isinstance(cbm, dict):  # {"facts": [{"match": ..., ...}]} form
                cbm = [{**e, "route": r} for r, entries in cbm.items() for e in entries]
            self.by_match = list(cbm)

    def reset(self) -> None:
        self.load({"reset": True})

    def next_step(self, route: str, conversation: str) -> dict[str, Any]:
        with self.lock:
            queue = self.routes.get(route)
            if queue:
                return queue.popleft()
            for entry in self.by_match:
                if entry.get("route") in (None, route) and entry["match"] in conversation:
                    return entry
            return self.defaults.get(route, {"auto": True})

    def snapshot(self) -> dict[str, Any]:
        out = super().snapshot()
        counts: dict[str, int] = {}
        ok: dict[str, int] = {}
        for c in out["calls"]:
            counts[c["route"]] = counts.get(c["route"], 0) + 1
            if c["status"] == 200 and c["outcome"] == "answered":
                ok[c["route"]] = ok.get(c["route"], 0) + 1
        return {**out, "counts": counts, "ok": ok, "total": out["count"]}


def route_of(system: str) -> str:
    # Feedback and chat first: a chat's system prompt may be the caller's own text, about anything.
    if "USER FEEDBACK" in system:
        return "feedback"
    if "# Memories of this user" in system:
        return "chat"
    if "USER PROFILE" in system:
        return "profile"
    if "SUB-QUESTIONS" in system:
        return "decompose"
    if "MemReader" in system:
        return "facts"
    if "EXISTING memories" in system or "long-term memory" in system:
        return "merge"
    if "preferences" in system:
        return "preferences"
    return "other"


def tokens(text: str) -> int:
    cjk = len(_CJK.findall(text))
    return cjk + (len(text) - cjk + 3) // 4


def is_chinese(text: str) -> bool:
    cjk = len(_CJK.findall(text))
    latin = len(re.findall(r"[A-Za-z]", text))
    return cjk > 0 and cjk * 3 >= cjk + latin


def parse_lines(conversation: str) -> list[tuple[str, str, str]]:
    """(ref, speaker, content) of every ``[mN] speaker: content`` line of a rendered conversation."""
    out = []
    for line in conversation.splitlines():
        m = _LINE.match(line.strip())
        if m:
            out.append((f"m{m.group(1)}", m.group(2).strip(), m.group(3).strip()))
    return out


def auto_answer(route: str, conversation: str) -> dict[str, Any]:
    """What a capable, literal-minded model answers: grounded in the lines it was shown, correct sources."""
    lines = parse_lines(conversation)
    users = [(ref, text) for ref, who, text in lines if who == "user"]
    zh = is_chinese(" ".join(t for _, _, t in lines))
    if route == "facts":
        return {
            "memories": [
                {
                    "memory_key": text[:40],
                    "memory_value": (f"用户说：{text}" if zh else f"The user said: {text}"),
                    "memory_type": "UserMemory",
                    "tags": ["对话"] if zh else ["conversation"],
                    "sources": [ref],
                }
                for ref, text in users
            ]
        }
    if route == "preferences":
        if not users:
            return {"explicit_preferences": [], "implicit_preferences": []}
        (r0, t0), (r1, t1) = users[0], users[-1]
        return {
            "explicit_preferences": [
                {"preference": f"用户明确表示：{t0}" if zh else f"The user stated: {t0}", "sources": [r0]}
            ],
            "implicit_preferences": [
                {
                    "preference": f"用户可能喜欢：{t1}" if zh else f"The user probably likes: {t1}",
                    "reasoning": f"用户在{r1}中提到了这一点" if zh else f"The user brought it up in {r1}",
                    "sources": [r1],
                }
            ],
        }
    if route == "merge":
        return {"action": "new", "target": None, "merged_value": None}
    if route == "profile":
        return profile_answer(conversation)
    if route == "feedback":
        m = _FEEDBACK.search(conversation)
        said = m.group(1).strip() if m else conversation.strip()
        zh = is_chinese(said)
        fact = {
            "memory_key": said[:40],
            "memory_value": f"用户反馈：{said}" if zh else f"The user said in feedback: {said}",
            "memory_type": "UserMemory",
            "tags": ["反馈"] if zh else ["feedback"],
        }
        return {"add": [fact], "update": [], "archive": []}
    return {}


def profile_answer(prompt: str) -> dict[str, Any]:
    """A profile update: each offered slot (name, location, occupation) a fact states, the last such fact winning."""
    offered = {m.group(1).strip() for line in prompt.splitlines() if (m := _SLOT.match(line.strip()))}
    found: dict[str, dict[str, Any]] = {}
    for line in prompt.splitlines():
        fact = _FACT.match(line.strip())
        if fact is None:
            continue
        for slot, pattern in _PROFILE_READS.items():
            m = pattern.search(fact.group(2))
            if slot in offered and m:
                found[slot] = {"slot": slot, "value": m.group(1), "sources": [f"f{fact.group(1)}"]}
    return {"updates": list(found.values())}


def decompose_answer(question: str) -> dict[str, Any]:
    """A question joined by "and" is two questions; anything else is simple."""
    parts = [p.strip(" ?") for p in re.split(r"\band\b", question) if p.strip(" ?")]
    return {"queries": parts if len(parts) > 1 else []}


def chat_answer(system: str) -> str:
    """A chat's plain-text answer: the first memory of the system prompt, quoted (so a test sees which reached the
    model), or an admission that there is none."""
    memories = [m.group(1) for line in system.splitlines() if (m := _MEMORY.match(line.strip()))]
    return f"From what I remember: {memories[0]}" if memories else "I do not remember anything about that."


def embed(text: str) -> list[float]:
    """A deterministic unit vector from a hash of the text (equal texts, equal vectors; nothing else meant)."""
    raw = b"".join(hashlib.sha256(f"{i}:{text}".encode()).digest() for i in range(DIM * 4 // 32))
    vals = [v / 2**31 - 1.0 for v in struct.unpack(f"<{DIM}I", raw)]
    norm = sum(v * v for v in vals) ** 0.5 or 1.0
    return [v / norm for v in vals]


def embeddings_response(body: dict[str, Any], vector: Any, dims: int, model: str, count: Any = tokens) -> Any:
    """``POST /v1/embeddings``'s answer (``float`` or ``base64``): ``vector(text)`` for every input."""
    inputs = body.get("input")
    texts = [
        t if isinstance(t, str) else json.dumps(t) for t in ([inputs] if isinstance(inputs, str) else inputs or [])
    ]
    b64 = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(texts):
        vec = vector(text)
        emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    total = sum(count(t) for t in texts)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model") or model,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }


class Handler(JsonHandler):
    server_version = "fake-llm/1.0"
    state: ClassVar[State] = State()
    GET: ClassVar[dict[str, str]] = {"/v1/models": "models"}
    POST: ClassVar[dict[str, str]] = {
        "/_script": "script",
        "/v1/chat/completions": "chat",
        "/v1/embeddings": "embeddings",
    }

    @classmethod
    def configure_from(cls, args: argparse.Namespace) -> None:
        if args.script:
            cls.state.load(json.loads(args.script))

    def error(self, status: int, message: str | None = None) -> None:
        etype, default = ERRORS.get(status, ("server_error", "error"))
        body = {"error": {"message": message or default, "type": etype, "param": None, "code": etype}}
        self.send(status, body, {"x-should-retry": "false"})

    def models(self) -> None:
        model = {"id": "fake-model", "object": "model", "created": 0, "owned_by": "tests"}
        self.send(200, {"object": "list", "data": [model]})

    def script(self, body: dict[str, Any]) -> None:
        self.state.load(body)
        self.send(200, {"ok": True})

    def embeddings(self, body: dict[str, Any]) -> None:
        self.send(200, embeddings_response(body, embed, DIM, "fake-embedding"))

    def chat(self, body: dict[str, Any]) -> None:
        state = self.state
        messages = body.get("messages") or []
        system = next((m.get("content") or "" for m in messages if m.get("role") == "system"), "")
        users = [m.get("content") or "" for m in messages if m.get("role") == "user"]
        conversation = users[0] if users else ""
        route = route_of(system)
        step = state.next_step(route, conversation)
        entry: dict[str, Any] = {
            "route": route,
            "user": conversation[:200],
            "last": (users[-1] if users else "")[:200],
            "system": system[:2000],
            "n_messages": len(messages),
            "model": body.get("model"),
            "max_tokens": body.get("max_tokens"),
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "stream": bool(body.get("stream")),
            "status": int(step.get("status", 200)),
            "delay": float(step.get("delay", 0)),
            "outcome": "answered",
            "t": time.time(),
        }
        state.log(entry)
        try:
            if entry["delay"]:
                time.sleep(entry["delay"])
            if step.get("drop"):
                entry["outcome"] = "dropped"
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if entry["status"] != 200:
                self.error(entry["status"])
                return
            if "content" in step:
                content = str(step["content"])
            elif "json" in step:
                content = json.dumps(step["json"], ensure_ascii=False)
            elif route == "chat":
                content = chat_answer(system)
            elif route == "decompose":
                content = json.dumps(decompose_answer(conversation), ensure_ascii=False)
            else:
                content = json.dumps(auto_answer(route, conversation), ensure_ascii=False)
            prompt_tokens = sum(tokens(m.get("content") or "") + 4 for m in messages)
            completion_tokens = tokens(content)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            head = {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "created": int(time.time()),
                "model": body.get("model") or "fake-model",
                "system_fingerprint": "fake",
            }
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                self.stream(head, content, usage if include_usage else None)
                return
            message = {"role": "assistant", "content": content, "refusal": None}
            self.send(
                200,
                {
                    **head,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
                    "usage": usage,
                },
            )
        except (BrokenPipeError, ConnectionResetError, OSError):
            entry["outcome"] = "client_gone"  # the client timed out and hung up while we were "thinking"
            self.close_connection = True

    def stream(self, head: dict[str, Any], content: str, usage: dict[str, int] | None) -> None:
        """The answer as OpenAI streams it. No Content-Length: the stream ends when the connection closes."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(choices: list[dict[str, Any]], **extra: Any) -> None:
            chunk = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
            self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
            self.wfile.flush()

        def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

        event(choice({"role": "assistant", "content": ""}))
        for i in range(0, len(content), STREAM_PIECE):
            event(choice({"content": content[i : i + STREAM_PIECE]}))
        event(choice({}, "stop"))
        if usage is not None:
            event([], usage=usage)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def main(argv: Sequence[str] | None = None) -> None:
    def options(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--script", help="an initial script: the JSON body of POST /_script")

    serve(Handler, argv, "A scriptable OpenAI-compatible LLM server.", options)


def answer(obj: Any) -> dict[str, Any]:
    """A step whose content is ``obj`` as JSON."""
    return {"content": json.dumps(obj, ensure_ascii=False)}


class FakeLLM(FakeProcess):
    """The server as a child process, scripted over HTTP: ``with FakeLLM() as llm: llm.script(...)``.
    ``base_url`` is the OpenAI base (``.../v1``); ``restart`` starts it on the same port with the last script."""

    module = "fakes.llm"

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        super().__init__(port, host)
        self._script: dict[str, Any] = {}

    @property
    def base_url(self) -> str:
        return self.url("/v1")

    def args(self) -> list[str]:
        return ["--script", json.dumps(self._script)] if self._script else []

    def script(
        self,
        routes: dict[str, list[dict[str, Any]]] | None = None,
        defaults: dict[str, dict[str, Any]] | None = None,
        content_by_match: list[dict[str, Any]] | None = None,
        *,
        reset: bool = True,
    ) -> None:
        """Replace the script; ``reset`` also clears the call log (the usual start of a test)."""
        self._script = {"routes": routes or {}, "defaults": defaults or {}, "content_by_match": content_by_match or []}
        self.call("POST", "/_script", {**self._script, "reset": reset})

    def reset(self) -> None:
        self._script = {}
        super().reset()

    def kill(self) -> None:
        """An abrupt crash: SIGKILL, in-flight requests see their connection reset."""
        self.stop(kill=True)


if __name__ == "__main__":
    main()
