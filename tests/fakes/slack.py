"""A local fake of the Slack Web API: a real HTTP server on 127.0.0.1, port 0.

It implements the methods Vigil calls (chat.postMessage, chat.update, conversations.history,
conversations.replies, auth.test), keeps the channels' messages, records every request, and
can be scripted per method to answer 429 with Retry-After, 5xx, a Slack error, or to hang —
either before doing the work or after it (Slack posted the message but the client never
hears back, the case that makes naive retries post twice).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlparse

TOKEN = "xoxb-vigil-test-token"


@dataclass(frozen=True)
class RateLimited:
    retry_after: int = 1


@dataclass(frozen=True)
class ServerError:
    status: int = 500
    after_work: bool = False  # Slack did the work, then failed to answer


@dataclass(frozen=True)
class Hang:
    seconds: float = 2.0
    after_work: bool = False  # the message is stored, the answer never arrives in time


@dataclass(frozen=True)
class SlackError:
    error: str = "channel_not_found"


Behaviour = RateLimited | ServerError | Hang | SlackError


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None
    reply_broadcast: bool
    metadata: dict[str, Any] | None
    updates: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self, *, with_metadata: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        if self.blocks is not None:
            body["blocks"] = self.blocks
        if self.thread_ts:
            body["thread_ts"] = self.thread_ts
        if with_metadata and self.metadata:
            body["metadata"] = self.metadata
        return body


@dataclass(frozen=True)
class Recorded:
    method: str
    params: dict[str, Any]
    status: int
    behaviour: str


class FakeSlack:
    """Start with `start()` (returns the base URL for WebClient), stop with `stop()`."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.channels: dict[str, list[Message]] = defaultdict(list)
        self._scripts: dict[str, deque[Behaviour]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._counter = 0
        # The clock message timestamps follow (Unix seconds); None: the wall clock. Tests that
        # simulate time set it, so "posted after the page was queued" holds as in real life.
        self.now: float | None = None
        self.base_url = ""  # set by start()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ control

    def script(self, method: str, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next calls of `method`; afterwards calls succeed."""
        with self._lock:
            self._scripts[method].extend(behaviours)

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake._handle(self)

            def do_GET(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}/api/"
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ------------------------------------------------------------ what happened

    def messages(self, channel: str | None = None) -> list[Message]:
        with self._lock:
            if channel is not None:
                return list(self.channels.get(channel, []))
            return [m for messages in self.channels.values() for m in messages]

    def calls(self, method: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method]

    def by_key(self) -> dict[str, list[Message]]:
        """Stored messages grouped by the outbox key in their metadata."""
        grouped: dict[str, list[Message]] = defaultdict(list)
        for message in self.messages():
            key = ((message.metadata or {}).get("event_payload") or {}).get("key")
            grouped[str(key)].append(message)
        return grouped

    def raw_requests_text(self) -> str:
        """Every request the server received, as one text (for scanning payloads)."""
        return "\n".join(json.dumps(r.params, sort_keys=True) for r in self.requests)

    # ------------------------------------------------------------ the server side

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urlparse(request.path)
        method = url.path.rsplit("/", 1)[-1]
        params: dict[str, Any] = dict(parse_qsl(url.query))
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        content_type = request.headers.get("Content-Type", "")
        if raw and "json" in content_type:
            params.update(json.loads(raw))
        elif raw:
            params.update(dict(parse_qsl(raw.decode())))
        for name in ("blocks", "metadata"):
            if isinstance(params.get(name), str):
                params[name] = json.loads(params[name])
        with self._lock:
            behaviour = self._scripts[method].popleft() if self._scripts[method] else None
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._reply(
                request, method, params, 200, {"ok": False, "error": "invalid_auth"}, "auth"
            )
            return
        if isinstance(behaviour, RateLimited):
            self._reply(
                request,
                method,
                params,
                429,
                {"ok": False, "error": "ratelimited"},
                "429",
                {"Retry-After": str(behaviour.retry_after)},
            )
            return
        if isinstance(behaviour, SlackError):
            self._reply(
                request, method, params, 200, {"ok": False, "error": behaviour.error}, "err"
            )
            return
        if isinstance(behaviour, ServerError) and not behaviour.after_work:
            body = {"ok": False, "error": "internal_error"}
            self._reply(request, method, params, behaviour.status, body, str(behaviour.status))
            return
        # A hang is recorded when it starts, not when the late answer goes out: the client
        # has given up by then, and a test may already be checking what happened.
        if isinstance(behaviour, Hang) and not behaviour.after_work:
            self._record(method, params, 500, "hang")
            time.sleep(behaviour.seconds)
            self._reply(request, method, params, 500, {"ok": False, "error": "late"}, None)
            return
        status, body = self._work(method, params)
        if isinstance(behaviour, Hang):
            self._record(method, params, status, "hang-after-work")
            time.sleep(behaviour.seconds)
            self._reply(request, method, params, status, body, None)
            return
        if isinstance(behaviour, ServerError):
            body = {"ok": False, "error": "internal_error"}
            self._reply(request, method, params, behaviour.status, body, "5xx-after-work")
            return
        self._reply(request, method, params, status, body, "ok")

    def _reply(
        self,
        request: BaseHTTPRequestHandler,
        method: str,
        params: dict[str, Any],
        status: int,
        body: dict[str, Any],
        behaviour: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if behaviour is not None:  # None: already recorded
            self._record(method, params, status, behaviour)
        data = json.dumps(body).encode()
        try:
            request.send_response(status)
            request.send_header("Content-Type", "application/json; charset=utf-8")
            request.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                request.send_header(name, value)
            request.end_headers()
            request.wfile.write(data)
        except OSError:
            pass  # the client gave up (a hang)

    def _record(self, method: str, params: dict[str, Any], status: int, behaviour: str) -> None:
        with self._lock:
            self.requests.append(Recorded(method, params, status, behaviour))

    def _channel_id(self, channel: str) -> str:
        return channel if channel[:1] in {"C", "G", "D"} else "C" + channel.lstrip("#").upper()

    def _work(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if method == "auth.test":
                return 200, {"ok": True, "team": "vigil-test", "user": "vigil"}
            channel = self._channel_id(str(params.get("channel", "")))
            stored = self.channels[channel]
            if method == "chat.postMessage":
                thread_ts = params.get("thread_ts") or None
                if thread_ts and not any(m.ts == thread_ts for m in stored):
                    return 200, {"ok": False, "error": "thread_not_found"}
                if not params.get("text") and not params.get("blocks"):
                    return 200, {"ok": False, "error": "no_text"}
                self._counter += 1
                message = Message(
                    channel=channel,
                    ts=f"{int(self.now or time.time())}.{self._counter:06d}",
                    text=str(params.get("text", "")),
                    blocks=params.get("blocks"),
                    thread_ts=thread_ts,
                    reply_broadcast=str(params.get("reply_broadcast")) in {"True", "true", "1"},
                    metadata=params.get("metadata"),
                )
                stored.append(message)
                return 200, {
                    "ok": True,
                    "channel": channel,
                    "ts": message.ts,
                    "message": message.as_json(with_metadata=False),
                }
            if method == "chat.update":
                for message in stored:
                    if message.ts == params.get("ts"):
                        message.updates.append(
                            {"text": params.get("text"), "blocks": params.get("blocks")}
                        )
                        message.text = str(params.get("text", ""))
                        message.blocks = params.get("blocks")
                        return 200, {"ok": True, "channel": channel, "ts": message.ts}
                return 200, {"ok": False, "error": "message_not_found"}
            with_metadata = str(params.get("include_all_metadata")) in {"True", "true", "1"}
            if method == "conversations.history":
                oldest = float(params.get("oldest") or 0)
                visible = [
                    m
                    for m in stored
                    if (m.thread_ts is None or m.reply_broadcast) and float(m.ts) >= oldest
                ]
                visible.reverse()  # newest first, like Slack
                return 200, self._page(visible, params, with_metadata)
            if method == "conversations.replies":
                root = params.get("ts")
                thread = [m for m in stored if m.ts == root or m.thread_ts == root]
                if not thread:
                    return 200, {"ok": False, "error": "thread_not_found"}
                return 200, self._page(thread, params, with_metadata)
            return 200, {"ok": False, "error": "unknown_method"}

    @staticmethod
    def _page(
        messages: list[Message], params: dict[str, Any], with_metadata: bool
    ) -> dict[str, Any]:
        limit = int(params.get("limit") or 100)
        start = int(params.get("cursor") or 0)
        chunk = messages[start : start + limit]
        more = start + limit < len(messages)
        return {
            "ok": True,
            "messages": [m.as_json(with_metadata=with_metadata) for m in chunk],
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }
