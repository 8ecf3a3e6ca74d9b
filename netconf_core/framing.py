"""RFC 6242 message framing: end-of-message (NETCONF 1.0) and chunked (NETCONF 1.1).

`FrameReader` is fed bytes as they arrive and hands out whole messages; it knows nothing
of SSH or sessions, so client and server share it.

The reader protects the process, not the protocol: a message longer than `max_message`
bytes, or made of more than `max_chunks` chunks, is a FramingError. The work per byte fed is
constant: the end-of-message marker is searched only in the bytes not yet searched, and
chunks are appended to one bytearray as they complete (no list of small objects).
"""
from __future__ import annotations

import re

EOM = b"]]>]]>"
MAX_CHUNK = 4294967295  # RFC 6242 section 4.2
# Defaults of the limits above (a server passes its own, see netconf_core.ssh.TransportLimits).
MAX_MESSAGE = 64 * 1024 * 1024
MAX_CHUNKS = 65536
_HEADER_MAX = 14  # "\n#" + 10 digits + "\n" fits in 13 bytes
_CHUNK_HEADER = re.compile(rb"\n#([1-9][0-9]{0,9})\n")


class FramingError(Exception):
    """The peer broke RFC 6242 framing (or a limit); the session cannot continue."""


def encode(message: bytes, chunked: bool) -> bytes:
    if not chunked:
        return message + EOM
    if not message:
        raise ValueError("a chunked message must not be empty")
    return b"\n#%d\n" % len(message) + message + b"\n##\n"


class FrameReader:
    def __init__(self, max_message: int = MAX_MESSAGE, max_chunks: int = MAX_CHUNKS) -> None:
        self.chunked = False
        self.max_message = max_message
        self.max_chunks = max_chunks
        self._buf = bytearray()
        self._pos = 0  # bytes of _buf already consumed (dropped at the end of next_message)
        self._eom_searched = 0  # end-of-message mode: _buf[_pos:_eom_searched] holds no marker
        self._message = bytearray()  # chunked mode: the chunks of the current message so far
        self._chunks = 0

    @property
    def buffered(self) -> int:
        """Bytes held for messages not yet complete."""
        return len(self._buf) - self._pos + len(self._message)

    def switch_to_chunked(self) -> None:
        """Called once both hellos carried base:1.1 (RFC 6242 section 4.1)."""
        self.chunked = True

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        """Drop everything held (the session is over)."""
        self._buf, self._message, self._pos, self._eom_searched, self._chunks = bytearray(), bytearray(), 0, 0, 0

    def next_message(self) -> bytes | None:
        """The next whole message, or None until more bytes arrive. Call it in a loop after
        `feed`; framing may be switched between two calls (after the hello)."""
        try:
            return self._next_chunked() if self.chunked else self._next_eom()
        finally:
            if self._pos:
                del self._buf[: self._pos]
                self._eom_searched = max(0, self._eom_searched - self._pos)
                self._pos = 0

    def _next_eom(self) -> bytes | None:
        # A marker may straddle the last search's end: search again from len(EOM) - 1 before it.
        start = max(self._pos, self._eom_searched - (len(EOM) - 1))
        end = self._buf.find(EOM, start)
        if end < 0:
            self._eom_searched = len(self._buf)
            if len(self._buf) - self._pos > self.max_message:
                raise FramingError(f"message exceeds {self.max_message} bytes without end-of-message marker")
            return None
        if end - self._pos > self.max_message:
            raise FramingError(f"message exceeds {self.max_message} bytes")
        message = bytes(self._buf[self._pos : end])
        self._pos = self._eom_searched = end + len(EOM)
        return message

    def _next_chunked(self) -> bytes | None:
        buf = self._buf
        while True:
            pos = self._pos
            if len(buf) - pos < 4:
                return None
            if buf[pos : pos + 2] != b"\n#":
                raise FramingError("expected chunk header '\\n#'")
            if buf[pos + 2 : pos + 4] == b"#\n":
                self._pos = pos + 4
                if not self._chunks:
                    raise FramingError("end-of-chunks without any chunk")
                message = bytes(self._message)
                self._message, self._chunks = bytearray(), 0
                return message
            header = _CHUNK_HEADER.match(buf, pos)
            if header is None:
                self._bad_header(pos)
                return None
            size = int(header.group(1))
            if size > MAX_CHUNK:
                raise FramingError("chunk size above 4294967295")
            if len(self._message) + size > self.max_message:
                raise FramingError(f"message exceeds {self.max_message} bytes")
            if self._chunks >= self.max_chunks:
                raise FramingError(f"message has more than {self.max_chunks} chunks")
            start = header.end()
            if len(buf) < start + size:
                return None
            with memoryview(buf) as view:
                self._message += view[start : start + size]
            self._chunks += 1
            self._pos = start + size

    def _bad_header(self, pos: int) -> None:
        """Raise FramingError for the header at `pos`, unless it may still be completed."""
        newline = self._buf.find(b"\n", pos + 2, pos + _HEADER_MAX)
        if newline < 0:
            if len(self._buf) - pos >= _HEADER_MAX:
                raise FramingError("chunk size too long")
            return
        raise FramingError(f"invalid chunk size {bytes(self._buf[pos + 2 : newline])!r}")
