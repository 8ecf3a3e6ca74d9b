"""Our server behind OpenSSH's sshd (netconf_core/sshd.py): sshd authenticates, its netconf
subsystem (netconf_core/sshd_relay.py) hands the session's pipes to the server over a Unix
socket, and the session belongs to the NETCONF user the key names. Real sshd, real OpenSSH
client and our client; servers on 127.0.0.1, free ports, stopped by each test."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from netconf_core import NetconfClient, NetconfServer, Schema, User, standard_nacm
from netconf_core.errors import RPCError
from netconf_core.ssh import trusted_host_keys
from tools.openssh import SshdFront

TEST_YANG = Path(__file__).parent / "yang"
NS = "urn:qstrata:yang:qs-engine-test"
BASE = "urn:ietf:params:xml:ns:netconf:base:1.0"
EOM = b"]]>]]>"


@contextlib.asynccontextmanager
async def behind_sshd(tmp_path: Path, key_users=("admin", "reader")):
    """Our server (users admin read-write, reader read-only; no SSH port of its own) and an
    sshd whose keys name `key_users`."""
    schema = Schema(["qs-engine-test"], [TEST_YANG])
    server = NetconfServer(schema, {"admin": User(), "reader": User()}, port=None,
                           sshd_socket=tmp_path / "netconf.sock", nacm=standard_nacm(["admin"], ["reader"]))
    await server.start()
    try:
        with SshdFront(server.sshd_socket, users=key_users) as front:
            yield server, front
    finally:
        await server.stop()


async def connect(front: SshdFront, user: str) -> NetconfClient:
    return await NetconfClient.connect(front.host, front.port, front.username, client_keys=[str(front.client_key(user))],
                                       known_hosts=trusted_host_keys(front.host_key_line))


async def openssh(front: SshdFront, user: str, tmp_path: Path, messages: list[str]) -> tuple[int, list[bytes], str]:
    """`ssh -s netconf` as `user`'s key, the host key pinned: sends the messages (NETCONF 1.0
    framing) and returns ssh's exit status, the messages received and its stderr."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{front.host}]:{front.port} {front.host_key_line}\n")
    process = await asyncio.create_subprocess_exec(
        "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}", "-i", str(front.client_key(user)), "-p", str(front.port),
        f"{front.username}@{front.host}", "-s", "netconf",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(b"".join(m.encode() + EOM for m in messages)), 60)
    return process.returncode, [m for m in out.split(EOM) if m.strip()], err.decode()


HELLO = (f'<hello xmlns="{BASE}"><capabilities><capability>urn:ietf:params:netconf:base:1.0</capability>'
         "</capabilities></hello>")


def rpc(message_id: int, body: str) -> str:
    return f'<rpc xmlns="{BASE}" message-id="{message_id}">{body}</rpc>'


def test_openssh_client_hello_edit_get_close(tmp_path):
    async def main():
        async with behind_sshd(tmp_path) as (server, front):
            status, replies, err = await openssh(front, "admin", tmp_path, [
                HELLO,
                rpc(1, f'<edit-config><target><running/></target><config><system xmlns="{NS}">'
                       "<hostname>behind-sshd</hostname></system></config></edit-config>"),
                rpc(2, f'<get><filter type="subtree"><system xmlns="{NS}"><hostname/></system></filter></get>'),
                rpc(3, "<close-session/>"),
            ])
            assert status == 0, err
            hello, edited, got, closed = (etree.fromstring(m) for m in replies)
            assert hello.findtext(f"{{{BASE}}}session-id") == "1"
            assert edited.find(f"{{{BASE}}}ok") is not None and edited.get("message-id") == "1"
            assert got.findtext(f".//{{{NS}}}hostname") == "behind-sshd"
            assert closed.find(f"{{{BASE}}}ok") is not None and closed.get("message-id") == "3"
            assert server.running().findtext(f"{{{NS}}}system/{{{NS}}}hostname") == "behind-sshd"
            assert server.sessions == {} and server.stats["in-sessions"] == 1
    asyncio.run(main())


def test_the_key_names_the_netconf_user_and_nacm_applies(tmp_path):
    async def main():
        async with behind_sshd(tmp_path) as (server, front):
            admin = await connect(front, "admin")
            reader = await connect(front, "reader")
            await admin.edit_config(f'<system xmlns="{NS}"><hostname>a</hostname></system>')
            data = await reader.get(("subtree", f'<system xmlns="{NS}"/>'))
            assert data.findtext(f".//{{{NS}}}hostname") == "a"
            with pytest.raises(RPCError) as refused:
                await reader.edit_config(f'<system xmlns="{NS}"><hostname>b</hostname></system>')
            assert refused.value.tag == "access-denied"
            assert server.running().findtext(f"{{{NS}}}system/{{{NS}}}hostname") == "a"
            state = await admin.get(("subtree", '<netconf-state xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-'
                                                'monitoring"><sessions/></netconf-state>'))
            sessions = {s.findtext("{*}session-id"): (s.findtext("{*}username"), s.findtext("{*}source-host"))
                        for s in state.iter("{*}session")}
            assert sessions == {str(admin.session_id): ("admin", "127.0.0.1"),
                                str(reader.session_id): ("reader", "127.0.0.1")}
            await reader.close_session()
            await admin.close_session()
    asyncio.run(main())


def test_a_key_of_an_unknown_user_gets_no_session_and_the_server_logs_why(tmp_path, caplog):
    async def main():
        async with behind_sshd(tmp_path, key_users=("mallory",)) as (server, front):
            status, replies, _ = await openssh(front, "mallory", tmp_path, [HELLO])
            assert status != 0 and replies == []  # sshd forwards no subsystem's stderr: the channel just closes
            assert server.stats["in-sessions"] == 0
    with caplog.at_level(logging.INFO, logger="netconf_core.sshd"):
        asyncio.run(main())
    assert "sshd hand-off refused: no NETCONF user 'mallory' on this server" in caplog.text


def handoff(path: Path, header: bytes, fds: list[int]) -> bytes:
    """A hand-off as the relay makes it, with our own header and descriptors: what the server
    answers before it closes the connection (b"" when it took the session)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        if fds:
            socket.send_fds(sock, [header], fds)
        else:
            sock.sendall(header)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return answer


@pytest.mark.parametrize("header, with_fds, reason", [
    (b'{"user": "nobody-here", "peer": ""}\n', True, "no NETCONF user 'nobody-here'"),
    (b'{"user": "admin", "peer": ""}\n', False, "exactly two descriptors"),
    (b"admin\n", True, "not JSON"),
    (b'{"user": 7}\n', True, '{"user": name, "peer": address}'),
    (b'{"user": "admin"}', True, "one line"),
])
def test_a_bad_handoff_is_refused_and_opens_no_session(tmp_path, header, with_fds, reason):
    async def main():
        async with behind_sshd(tmp_path) as (server, front):
            read_end, write_end = os.pipe()
            try:
                answer = await asyncio.to_thread(handoff, server.sshd_socket, header,
                                                 [read_end, write_end] if with_fds else [])
            finally:
                os.close(read_end)
                os.close(write_end)
            assert answer.startswith(b"refused: ") and reason in answer.decode(), answer
            assert server.sessions == {} and server.stats["in-sessions"] == 0
    asyncio.run(main())


def test_the_socket_is_private_and_removed_at_stop(tmp_path):
    async def main():
        schema = Schema(["qs-engine-test"], [TEST_YANG])
        path = tmp_path / "netconf.sock"
        server = NetconfServer(schema, {"admin": User()}, port=None, sshd_socket=path)
        await server.start()
        mode = path.stat().st_mode
        await server.stop()
        return mode
    mode = asyncio.run(main())
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert not (tmp_path / "netconf.sock").exists() and list(tmp_path.iterdir()) == []


def test_the_session_ends_when_the_client_goes_away(tmp_path):
    async def main():
        async with behind_sshd(tmp_path) as (server, front):
            known_hosts = tmp_path / "known_hosts"
            known_hosts.write_text(f"[{front.host}]:{front.port} {front.host_key_line}\n")
            process = await asyncio.create_subprocess_exec(
                "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={known_hosts}", "-i", str(front.client_key("admin")), "-p", str(front.port),
                f"{front.username}@{front.host}", "-s", "netconf", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            process.stdin.write(HELLO.encode() + EOM)
            await asyncio.wait_for(process.stdout.readuntil(EOM), 60)  # the server's hello
            assert [s.username for s in server.sessions.values()] == ["admin"]
            process.kill()
            await process.wait()
            for _ in range(600):  # bounded: sshd notices, closes the pipes, the server sees EOF
                if not server.sessions and not server._user_channels:
                    break
                await asyncio.sleep(0.05)
            assert server.sessions == {} and not server._user_channels
            assert server._handoff.listener.connections == 0
    asyncio.run(main())
