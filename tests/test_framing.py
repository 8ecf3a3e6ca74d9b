"""RFC 6242 framing, both modes, fed byte by byte and in bulk."""
import pytest
from hypothesis import given, settings, strategies as st

from netconf_core.framing import EOM, FrameReader, FramingError, encode


def drain(reader):
    out = []
    while (m := reader.next_message()) is not None:
        out.append(m)
    return out


def test_eom_then_switch_to_chunked_in_one_buffer():
    reader = FrameReader()
    reader.feed(b"<hello/>" + EOM + encode(b"<rpc/>", chunked=True))
    assert reader.next_message() == b"<hello/>"
    reader.switch_to_chunked()
    assert reader.next_message() == b"<rpc/>"
    assert reader.next_message() is None


def test_rfc6242_example_with_two_chunks():
    reader = FrameReader()
    reader.switch_to_chunked()
    reader.feed(b"\n#4\n<rpc\n#18\n message-id=\"102\"\n\n##\n")
    assert drain(reader) == [b'<rpc message-id="102"\n']


@pytest.mark.parametrize("bad", [b"\n#0\nx\n##\n", b"\n#012\n", b"xx#4\nabcd", b"\n##\n", b"\n#abc\n"])
def test_bad_chunk_headers_raise(bad):
    reader = FrameReader()
    reader.switch_to_chunked()
    reader.feed(bad)
    with pytest.raises(FramingError):
        drain(reader)


@given(st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=5), st.integers(1, 50))
def test_chunked_round_trip_any_split(messages, step):
    stream = b"".join(encode(m, chunked=True) for m in messages)
    reader = FrameReader()
    reader.switch_to_chunked()
    got = []
    for i in range(0, len(stream), step):
        reader.feed(stream[i : i + step])
        got += drain(reader)
    assert got == messages


# --- limits and cost -----------------------------------------------------------------------

def test_message_over_the_cap_is_refused_as_soon_as_a_header_announces_it():
    reader = FrameReader(max_message=1000)
    reader.switch_to_chunked()
    reader.feed(b"\n#600\n" + b"a" * 600)
    assert reader.next_message() is None
    reader.feed(b"\n#401\n")  # 1001 bytes announced: refused before the chunk's bytes arrive
    with pytest.raises(FramingError, match="exceeds 1000 bytes"):
        reader.next_message()


def test_exactly_the_cap_is_accepted_in_both_framings():
    reader = FrameReader(max_message=1000)
    reader.feed(b"x" * 1000 + EOM)
    assert drain(reader) == [b"x" * 1000]
    reader.switch_to_chunked()
    reader.feed(b"\n#999\n" + b"y" * 999 + b"\n#1\nz\n##\n")
    assert drain(reader) == [b"y" * 999 + b"z"]


def test_too_many_chunks_is_refused():
    reader = FrameReader(max_chunks=100)
    reader.switch_to_chunked()
    reader.feed(b"\n#1\na" * 100)
    assert reader.next_message() is None
    assert reader.buffered == 100
    reader.feed(b"\n#1\na")
    with pytest.raises(FramingError, match="more than 100 chunks"):
        reader.next_message()


def test_one_byte_chunks_are_held_compactly():
    """30,000 one-byte chunks of one message: what is held is the message's bytes, not an
    object per chunk (tracemalloc counts every allocation the reader keeps)."""
    import tracemalloc
    reader = FrameReader(max_chunks=10**6)
    reader.switch_to_chunked()
    packet = b"\n#1\na" * 6000  # 30 kB: about one SSH packet
    tracemalloc.start()
    try:
        for _ in range(5):
            reader.feed(packet)
            assert reader.next_message() is None
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reader.buffered == 30_000
    assert held < 3 * 30_000 + 40_000, held  # the message, growth slack, the last packet  # a bytearray's growth slack, not 11x


def test_end_of_message_marker_search_is_incremental():
    """A megabyte without the marker, fed in 1 kB pieces, is searched once: a marker split
    across two feeds is still found."""
    reader = FrameReader()
    for _ in range(1000):
        reader.feed(b"a" * 1024)
        assert reader.next_message() is None
        assert reader._eom_searched == len(reader._buf)  # nothing left to search again
    reader.feed(b"]]>")
    assert reader.next_message() is None
    reader.feed(b"]]>tail")
    assert reader.next_message() == b"a" * 1024 * 1000
    assert reader.buffered == 4


def test_marker_missing_beyond_the_cap_is_refused():
    reader = FrameReader(max_message=4096)
    reader.feed(b"a" * 4096)
    assert reader.next_message() is None
    reader.feed(b"a")
    with pytest.raises(FramingError, match="without end-of-message marker"):
        reader.next_message()


# --- fuzz: any stream, any split, against a reference parse ---------------------------------

FUZZ_MAX_MESSAGE = 300
FUZZ_MAX_CHUNKS = 6


def reference_parse(stream: bytes, chunked: bool) -> tuple[list[bytes], bool]:
    """The messages of a whole stream and whether it breaks the framing (an unfinished tail
    is no error), written plainly from RFC 6242 and the reader's two limits."""
    import re
    messages: list[bytes] = []
    if not chunked:
        parts = stream.split(EOM)
        for part in parts[:-1]:
            if len(part) > FUZZ_MAX_MESSAGE:
                return messages, True
            messages.append(part)
        return messages, len(parts[-1]) > FUZZ_MAX_MESSAGE
    pos, current, count = 0, b"", 0
    while True:
        rest = stream[pos:]
        if len(rest) < 4:
            return messages, False
        if rest.startswith(b"\n##\n"):
            if count == 0:
                return messages, True
            messages.append(current)
            pos, current, count = pos + 4, b"", 0
            continue
        header = re.match(rb"\n#([0-9]{1,11})\n", rest)
        if header is None:
            complete = len(rest) >= 14 or b"\n" in rest[2:] or not rest.startswith(b"\n#")
            return messages, complete
        digits = header.group(1)
        size = int(digits)
        if digits.startswith(b"0") or size > 4294967295 or len(current) + size > FUZZ_MAX_MESSAGE \
                or count >= FUZZ_MAX_CHUNKS:
            return messages, True
        body = rest[header.end():header.end() + size]
        if len(body) < size:
            return messages, False
        current, count, pos = current + body, count + 1, pos + header.end() + size


def chunked_message(draw, body: bytes) -> bytes:
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=7, unique=True)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if body[a:b]]
    return b"".join(b"\n#%d\n" % len(p) + p for p in pieces) + b"\n##\n"


@st.composite
def framed_streams(draw) -> tuple[bytes, bool]:
    chunked = draw(st.booleans())
    bodies = draw(st.lists(st.binary(min_size=1, max_size=400), max_size=5))
    if chunked:
        stream = b"".join(chunked_message(draw, body) for body in bodies)
    else:
        stream = b"".join(body.replace(EOM, b"") + EOM for body in bodies)
    if draw(st.booleans()):  # damage it: bytes inserted, or cut short
        at = draw(st.integers(0, len(stream)))
        stream = stream[:at] + draw(st.binary(max_size=12)) + stream[at:]
    if draw(st.booleans()):
        stream = stream[: draw(st.integers(0, len(stream)))]
    return stream, chunked


@settings(max_examples=1500, deadline=None)
@given(framed_streams(), st.lists(st.integers(1, 64), min_size=1, max_size=40))
def test_fuzz_any_stream_any_split_matches_the_reference(case, steps):
    stream, chunked = case
    expected, broken = reference_parse(stream, chunked)
    reader = FrameReader(max_message=FUZZ_MAX_MESSAGE, max_chunks=FUZZ_MAX_CHUNKS)
    if chunked:
        reader.switch_to_chunked()
    got, error, pos, i = [], False, 0, 0
    try:
        while pos < len(stream):
            step = steps[i % len(steps)]
            reader.feed(stream[pos:pos + step])
            pos, i = pos + step, i + 1
            while (message := reader.next_message()) is not None:
                got.append(message)
    except FramingError:
        error = True
    assert (got, error) == (expected, broken)
