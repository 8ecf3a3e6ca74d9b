"""RFC 6242 framing, both modes, fed byte by byte and in bulk."""
import pytest
from hypothesis import given, strategies as st

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
