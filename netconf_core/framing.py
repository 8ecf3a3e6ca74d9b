"""RFC 6242 message framing: end-of-message (NETCONF 1.0) and chunked (NETCONF 1.1).

`FrameReader` is fed bytes as they arrive and hands out whole messages; it knows nothing
of SSH or sessions, so client and server share it.
"""
from __future__ import annotations

EOM = b"]]>]]>"
MAX_CHUNK = 4294967295  # RFC 6242 section 4.2
# A single message larger than this is refused: it protects the process, not the protocol.
MAX_MESSAGE = 64 * 1024 * 1024


class FramingError(Exception):
    """The peer broke RFC 6242 framing; the session cannot continue."""


def encode(message: bytes, chunked: bool) -> bytes:
    if not chunked:
        return message + EOM
    if not message:
        raise ValueError("a chunked message must not be empty")
    return b"\n#%d\n" % len(message) + message + b"\n##\n"


class FrameReader:
    def __init__(self) -> None:
        self.chunked = False
        self._buf = bytearray()
        self._chunks: list[bytes] = []
        self._chunks_size = 0

    def switch_to_chunked(self) -> None:
        """Called once both hellos carried base:1.1 (RFC 6242 section 4.1)."""
        self.chunked = True

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_message(self) -> bytes | None:
        """The next whole message, or None until more bytes arrive. Call it in a loop after
        `feed`; framing may be switched between two calls (after the hello)."""
        return self._next_chunked() if self.chunked else self._next_eom()

    def _next_eom(self) -> bytes | None:
        end = self._buf.find(EOM)
        if end < 0:
            if len(self._buf) > MAX_MESSAGE:
                raise FramingError("message exceeds size limit without end-of-message marker")
            return None
        message = bytes(self._buf[:end])
        del self._buf[: end + len(EOM)]
        return message

    def _next_chunked(self) -> bytes | None:
        while True:
            if len(self._buf) < 4:
                return None
            if self._buf[0:2] != b"\n#":
                raise FramingError("expected chunk header '\\n#'")
            if self._buf[2:4] == b"#\n":
                del self._buf[:4]
                if not self._chunks:
                    raise FramingError("end-of-chunks without any chunk")
                message = b"".join(self._chunks)
                self._chunks, self._chunks_size = [], 0
                return message
            newline = self._buf.find(b"\n", 2, 14)
            if newline < 0:
                if len(self._buf) >= 14:
                    raise FramingError("chunk size too long")
                return None
            digits = bytes(self._buf[2:newline])
            if not digits.isdigit() or digits.startswith(b"0"):
                raise FramingError(f"invalid chunk size {digits!r}")
            size = int(digits)
            if size > MAX_CHUNK:
                raise FramingError("chunk size above 4294967295")
            if self._chunks_size + size > MAX_MESSAGE:
                raise FramingError("message exceeds size limit")
            start = newline + 1
            if len(self._buf) < start + size:
                return None
            self._chunks.append(bytes(self._buf[start : start + size]))
            self._chunks_size += size
            del self._buf[: start + size]
