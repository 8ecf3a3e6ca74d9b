"""Property tests against a running `qstrata serve`: broken framing, broken XML, unknown elements
and edits that break the model's constraints, sent over a real SSH session on the netconf
subsystem with RFC 6242 framing written by hand. After every example the server process is
alive, a fresh session works, and the running and candidate datastores are as they were."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from netconf_core.framing import FrameReader
from conftest import ServedProcess, qstrata_serve
from tools import conform

NC = conform.NC
NS = conform.NS
EOM = b"]]>]]>"
HELLO = (f'<hello xmlns="{NC}"><capabilities><capability>urn:ietf:params:netconf:base:1.0</capability>'
         f"<capability>urn:ietf:params:netconf:base:1.1</capability></capabilities></hello>").encode()
GET_CONFIG = f'<rpc message-id="1" xmlns="{NC}"><get-config><source><running/></source></get-config></rpc>'
READ_TIMEOUT = 10.0
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def server() -> Iterator[ServedProcess]:
    with qstrata_serve() as served:
        yield served


class Channel:
    """One NETCONF session with the framing done here, so that anything can be sent."""

    def __init__(self, conn: asyncssh.SSHClientConnection, writer, reader):
        self.conn, self.writer, self.reader = conn, writer, reader
        self.frames = FrameReader()

    @classmethod
    async def open(cls, server: ServedProcess, hello: bool = True) -> "Channel":
        conn = await asyncssh.connect("127.0.0.1", server.port, username="admin", password=server.password,
                                      known_hosts=None, client_keys=None, agent_path=None, config=None)
        writer, reader, _ = await conn.open_session(subsystem="netconf", encoding=None)
        channel = cls(conn, writer, reader)
        server_hello = await channel.read()
        assert server_hello is not None and etree.QName(server_hello).localname == "hello"
        if hello:
            channel.send(HELLO + EOM)
            channel.frames.switch_to_chunked()
        return channel

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def send_message(self, message: bytes) -> None:
        self.send(b"\n#%d\n" % len(message) + message + b"\n##\n")

    async def read(self) -> etree._Element | None:
        """The next message, or None once the server closed the session."""
        async with asyncio.timeout(READ_TIMEOUT):
            while (message := self.frames.next_message()) is None:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.frames.feed(data)
        return etree.fromstring(message)

    async def rpc(self, body: str, message_id: int = 1) -> etree._Element:
        self.send_message(f'<rpc message-id="{message_id}" xmlns="{NC}">{body}</rpc>'.encode())
        reply = await self.read()
        assert reply is not None, "the server closed the session"
        return reply

    async def closed_by_server(self) -> bool:
        """Wait for the server to end the session; False if it sends a message instead."""
        async with asyncio.timeout(READ_TIMEOUT):
            return await self.reader.read() == b""

    def close(self) -> None:
        self.conn.close()


def run(coro):
    return asyncio.run(coro)


async def datastores(server: ServedProcess) -> tuple[bytes, bytes]:
    """running and candidate, read on a fresh session (which also proves the server answers)."""
    channel = await Channel.open(server)
    try:
        trees = []
        for source in ("running", "candidate"):
            reply = await channel.rpc(f"<get-config><source><{source}/></source></get-config>")
            data = reply.find(f"{{{NC}}}data")
            assert data is not None, etree.tostring(reply)
            trees.append(etree.tostring(data, method="c14n"))
        return trees[0], trees[1]
    finally:
        channel.close()


@pytest.fixture(scope="module")
def baseline(server: ServedProcess) -> tuple[bytes, bytes]:
    async def setup() -> tuple[bytes, bytes]:
        channel = await Channel.open(server)
        try:
            reply = await channel.rpc(f"<edit-config><target><running/></target><config>{conform.FIXTURE}"
                                      "</config></edit-config>")
            assert reply.find(f"{{{NC}}}ok") is not None, etree.tostring(reply)
        finally:
            channel.close()
        return await datastores(server)
    return run(setup())


def assert_unharmed(server: ServedProcess, baseline: tuple[bytes, bytes]) -> None:
    assert server.process.poll() is None, "the server process died"
    assert run(datastores(server)) == baseline


def error_of(reply: etree._Element) -> tuple[str | None, str | None, dict[str, str]]:
    err = reply.find(f"{{{NC}}}rpc-error")
    assert err is not None, f"expected an rpc-error, got {etree.tostring(reply)!r}"
    info = {etree.QName(c).localname: (c.text or "").strip() for c in err.iterfind(f"{{{NC}}}error-info/*")}
    return err.findtext(f"{{{NC}}}error-tag"), err.findtext(f"{{{NC}}}error-app-tag"), info


# --- framing ------------------------------------------------------------------------------

bad_chunk_headers = st.one_of(
    st.from_regex(rb"\A\n#[^0-9\n#]{1,8}\n\Z"),                               # not a number
    st.integers(0, 10**6).map(lambda n: b"\n#0%d\n" % n),                     # leading zero, or zero
    st.integers(2**32, 10**11).map(lambda n: b"\n#%d\n" % n),                 # above 4294967295
    st.just(b"\n##\n"),                                                       # end of chunks, no chunk
    st.binary(min_size=4, max_size=32).filter(lambda b: not b.startswith(b"\n#")),  # no header at all
)


@FUZZ
@given(header=bad_chunk_headers)
def test_bad_chunk_header_closes_the_session(server: ServedProcess, baseline, header: bytes) -> None:
    async def scenario() -> bool:
        channel = await Channel.open(server)
        try:
            channel.send(header + b"<rpc/>")
            return await channel.closed_by_server()
        finally:
            channel.close()
    assert run(scenario()), "the server went on after a framing error"
    assert_unharmed(server, baseline)


@FUZZ
@given(garbage=st.binary(min_size=1, max_size=256), before_hello=st.booleans())
def test_garbage_bytes_do_no_harm(server: ServedProcess, baseline, garbage: bytes, before_hello: bool) -> None:
    async def scenario() -> None:
        channel = await Channel.open(server, hello=not before_hello)
        try:
            channel.send(garbage + EOM if before_hello else garbage)
            if before_hello:  # a first message that is no hello ends the session
                assert await channel.closed_by_server()
        finally:
            channel.close()
    run(scenario())
    assert_unharmed(server, baseline)


@FUZZ
@given(cuts=st.lists(st.integers(1, len(GET_CONFIG) - 1), max_size=40, unique=True),
       write_size=st.integers(1, 64))
def test_any_chunking_and_write_split_of_a_request_is_answered(server: ServedProcess, baseline, cuts: list[int],
                                                               write_size: int) -> None:
    """One request cut into any chunks (down to one byte each), written in pieces of any size:
    the reply is the same <data> as for one chunk."""
    message = GET_CONFIG.encode()
    bounds = [0, *sorted(cuts), len(message)]
    framed = b"".join(b"\n#%d\n" % (b - a) + message[a:b] for a, b in zip(bounds, bounds[1:])) + b"\n##\n"

    async def scenario() -> bytes:
        channel = await Channel.open(server)
        try:
            for i in range(0, len(framed), write_size):
                channel.send(framed[i : i + write_size])
            reply = await channel.read()
            assert reply is not None, "the session was closed instead of answered"
            data = reply.find(f"{{{NC}}}data")
            assert data is not None, etree.tostring(reply)
            return etree.tostring(data, method="c14n")
        finally:
            channel.close()
    assert run(scenario()) == baseline[0]
    assert server.process.poll() is None


# --- XML ----------------------------------------------------------------------------------

def not_well_formed(text: str) -> bool:
    try:
        etree.fromstring(text.encode())
    except etree.XMLSyntaxError:
        return True
    return False


broken_xml = st.one_of(
    st.integers(1, len(GET_CONFIG) - 1).map(lambda n: GET_CONFIG[:n]),
    st.tuples(st.integers(0, len(GET_CONFIG)), st.sampled_from(["<", "&", "</x>", "<!--", "<a", '"', "]]>", "\x01"]))
    .map(lambda t: GET_CONFIG[:t[0]] + t[1] + GET_CONFIG[t[0]:]),
    st.text(min_size=1, max_size=80),
).filter(lambda text: text.strip() != "" and not_well_formed(text))


@FUZZ
@given(text=broken_xml)
def test_broken_xml_is_answered_with_malformed_message(server: ServedProcess, baseline, text: str) -> None:
    async def scenario() -> None:
        channel = await Channel.open(server)
        try:
            channel.send_message(text.encode("utf-8", "surrogatepass"))
            reply = await channel.read()
            assert reply is not None, "the session was closed instead of answered"
            assert error_of(reply)[0] == "malformed-message"
            assert reply.findtext(f"{{{NC}}}rpc-error/{{{NC}}}error-type") == "rpc"
            # The session goes on.
            assert (await channel.rpc("<get-config><source><running/></source></get-config>", 2)).find(
                f"{{{NC}}}data") is not None
        finally:
            channel.close()
    run(scenario())
    assert_unharmed(server, baseline)


# --- unknown elements ----------------------------------------------------------------------

NAMES = st.from_regex(r"\A[a-z][a-z0-9-]{0,15}\Z")
MODEL_NAMES = {"system", "interfaces", "hostname", "mtu", "dns", "tcp-port", "unix-socket", "uptime",
               "interface", "route", "name", "enabled", "vlan", "speed-mbps", "oper-status", "reset",
               "prefix", "out-interface"}
BASE_OPERATIONS = {"get", "get-config", "edit-config", "copy-config", "delete-config", "lock", "unlock",
                   "close-session", "kill-session", "commit", "discard-changes", "cancel-commit", "validate"}


@st.composite
def unknown_requests(draw) -> tuple[str, str, dict[str, str]]:
    """(operation XML, expected error-tag, expected error-info)."""
    name = draw(NAMES)
    place = draw(st.sampled_from(["system", "interface", "namespace", "operation"]))
    edit = "<edit-config><target><running/></target><config>{}</config></edit-config>"
    if place == "system" and name not in MODEL_NAMES:
        return edit.format(conform.system(f"<{name}>1</{name}>")), "unknown-element", {"bad-element": name}
    if place == "interface" and name not in MODEL_NAMES:
        return (edit.format(conform.interface("eth0", f"<{name}>1</{name}>")), "unknown-element",
                {"bad-element": name})
    if place == "operation" and name not in BASE_OPERATIONS:
        return f"<{name}/>", "operation-not-supported", {}
    namespace = f"urn:fuzz:{name}"
    return (edit.format(f'<{name} xmlns="{namespace}"><x>1</x></{name}>'), "unknown-namespace",
            {"bad-element": name, "bad-namespace": namespace})


@FUZZ
@given(request=unknown_requests())
def test_unknown_elements_are_rejected(server: ServedProcess, baseline, request) -> None:
    body, tag, info = request

    async def scenario() -> None:
        channel = await Channel.open(server)
        try:
            got_tag, _, got_info = error_of(await channel.rpc(body))
            assert got_tag == tag
            for key, value in info.items():
                got = got_info.get(key, "")
                assert (got.rpartition(":")[2] if key == "bad-element" else got) == value, (key, got_info)
        finally:
            channel.close()
    run(scenario())
    assert_unharmed(server, baseline)


# --- constraint violations ------------------------------------------------------------------

FREE_NAMES = NAMES.filter(lambda n: n not in ("eth0", "eth1"))


def bad_edits() -> st.SearchStrategy[tuple[str, str, str | None]]:
    """(config XML, expected error-tag, expected error-app-tag or None) against the fixture."""
    system, interface = conform.system, conform.interface
    out_of_range = lambda lo, hi: st.one_of(st.integers(0, lo - 1), st.integers(hi + 1, 10**6))
    return st.one_of(
        out_of_range(576, 9216).map(lambda v: (system(f"<mtu>{v}</mtu>"), "invalid-value", None)),
        st.text("abc.-", min_size=33, max_size=60).map(lambda h: (system(f"<hostname>{h}</hostname>"),
                                                                  "invalid-value", None)),
        st.just((system("<hostname></hostname>"), "invalid-value", None)),
        st.from_regex(r"\A[a-z]{1,8}\Z").map(lambda t: (system(f"<mtu>{t}</mtu>"), "invalid-value", None)),
        st.tuples(FREE_NAMES, st.one_of(st.just(0), st.integers(4095, 10**5))).map(
            lambda t: (interface(t[0], f"<vlan>{t[1]}</vlan>"), "invalid-value", None)),
        st.tuples(FREE_NAMES, st.from_regex(r"\A[a-z]{1,6}\Z").filter(lambda b: b not in ("true", "false"))).map(
            lambda t: (interface(t[0], f"<enabled>{t[1]}</enabled>"), "invalid-value", None)),
        st.tuples(st.sampled_from(["eth0", "eth1"]), st.integers(0, 9)).map(
            lambda t: (interface(t[0], f"<speed-mbps>{t[1]}</speed-mbps>"), "operation-failed", "must-violation")),
        FREE_NAMES.map(lambda n: (interface(n, "<vlan>10</vlan>"), "operation-failed", "data-not-unique")),
        FREE_NAMES.map(lambda n: (f'<interfaces xmlns="{NS}"><route><prefix>p</prefix>'
                                  f"<out-interface>{n}</out-interface></route></interfaces>",
                                  "data-missing", "instance-required")),
        st.sampled_from(["eth0", "eth1"]).map(lambda n: (interface(n, op="create"), "data-exists", None)),
        FREE_NAMES.map(lambda n: (interface(n, op="delete"), "data-missing", None)),
    )


@FUZZ
@given(edit=bad_edits(), valid_part_first=st.booleans(), target=st.sampled_from(["running", "candidate"]),
       error_option=st.sampled_from([None, "stop-on-error", "rollback-on-error"]))
def test_edits_breaking_constraints_change_nothing(server: ServedProcess, baseline, edit, valid_part_first: bool,
                                                   target: str, error_option: str | None) -> None:
    config, tag, app_tag = edit
    if valid_part_first:  # a valid change in the same edit must not stay either
        config = conform.system("<dns>198.51.100.9</dns>") + config
    option = f"<error-option>{error_option}</error-option>" if error_option else ""

    async def scenario() -> None:
        channel = await Channel.open(server)
        try:
            got_tag, got_app_tag, _ = error_of(await channel.rpc(
                f"<edit-config><target><{target}/></target>{option}<config>{config}</config></edit-config>"))
            assert (got_tag, got_app_tag if app_tag else None) == (tag, app_tag)
        finally:
            channel.close()
    run(scenario())
    assert_unharmed(server, baseline)
