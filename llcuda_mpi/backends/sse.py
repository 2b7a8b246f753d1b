"""Incremental Server-Sent Events parser (the WHATWG `text/event-stream` rules).

Hand-written on purpose: httpx has no SSE support, and its `aiter_lines`
splits on every Unicode line break (U+2028, U+0085, ...), which can occur raw
inside the JSON that llama-server streams for arbitrary model output. SSE
lines end only at CRLF, LF or CR, so we split bytes ourselves.
"""

import re
from dataclasses import dataclass

_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass
class Event:
    event: str      # the `event:` field, "" if none (i.e. "message")
    data: str       # `data:` lines joined with "\n"


class SSEParser:
    """feed(bytes) -> completed Events; `pending` tells whether an event is cut short."""

    def __init__(self):
        self._buf = b""
        self._event = ""
        self._data = []
        self._has_fields = False

    def feed(self, chunk: bytes) -> list[Event]:
        buf = self._buf + chunk
        # A trailing CR may be the first half of a CRLF split across chunks.
        cut = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        lines = _EOL.split(buf[:cut])
        self._buf = lines.pop() + buf[cut:]
        events = []
        for raw in lines:
            event = self._line(raw.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    @property
    def pending(self) -> bool:
        """True if the stream so far ends inside an event (no blank line yet)."""
        return bool(self._buf) or self._has_fields

    def pending_text(self) -> str:
        return "\n".join(self._data + [self._buf.decode("utf-8", errors="replace")]).strip()

    def _line(self, line):
        if line == "":
            if not self._has_fields:
                return None
            event = Event(self._event, "\n".join(self._data))
            self._event, self._data, self._has_fields = "", [], False
            return event
        if line.startswith(":"):
            return None                      # comment / keep-alive
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        self._has_fields = True
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name not in ("id", "retry"):
            # Not SSE, but llama-server writes stream errors as an `error: {json}` line.
            self._event = name
            self._data.append(value)
        return None
