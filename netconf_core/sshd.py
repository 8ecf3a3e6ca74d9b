"""NETCONF behind OpenSSH's sshd, the way netconfd is deployed: sshd terminates SSH and runs
the `netconf` subsystem as netconf_core/sshd_relay.py, which hands the session's pipes to our
server over a Unix socket (see docs/sshd-handoff.md). The server then reads and writes sshd's
pipes itself: SSH costs our process nothing, and no relay copies the bytes.

Who may hand a session over: the socket is mode 0600, and a connection whose peer (SO_PEERCRED)
is neither this process's user nor root is refused, so only sshd's relay running as the
service account can. The header names the user sshd authenticated; the server's `users` must
know that name (NACM applies to it), and the per-user session limit holds as for SSH.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import socket
import stat
import struct
import sys
from typing import TYPE_CHECKING

from .ssh import Listener
from .sshd_relay import HEADER_MAX

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

RELAY = pathlib.Path(__file__).with_name("sshd_relay.py")
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


def subsystem_command(socket_path: pathlib.Path | str, python: str = sys.executable) -> str:
    """The command of sshd_config's `Subsystem netconf` line for a server listening on
    `socket_path` (isolated Python without site packages: the relay needs only the stdlib)."""
    return f"{python} -I -S {RELAY} {socket_path}"


def _bind_private(path: pathlib.Path) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600 from the moment it has that name: bound
    under a scratch name, restricted, then renamed into place. A socket file left by a
    process that is gone is replaced; one that still answers is not."""
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            pass
        else:
            raise OSError(f"{path}: another server listens there")
        finally:
            probe.close()
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scratch.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(scratch))
        os.chmod(scratch, 0o600)
        os.replace(scratch, path)
        sock.listen(128)
    except BaseException:
        sock.close()
        scratch.unlink(missing_ok=True)
        raise
    return sock


class SshdHandoff:
    """The Unix socket on which one NetconfServer (`server`; not imported here, it imports
    this module) takes sessions from sshd's relay."""

    def __init__(self, server, path: pathlib.Path | str) -> None:
        self.server = server
        self.path = pathlib.Path(path)
        self._loop = asyncio.get_running_loop()
        self._pending: dict[socket.socket, asyncio.TimerHandle] = {}  # header not yet read
        self._sessions: set[_HandedSession] = set()
        self._starting: set[asyncio.Task] = set()
        self.listener = Listener("", 0, server.limits, self._accepted, f"{server.name} (sshd)",
                                 sock=_bind_private(self.path))

    def close(self) -> None:
        self.listener.close()
        if self.path.is_socket():
            self.path.unlink(missing_ok=True)
        for conn in list(self._pending):
            self._drop(conn, None)
        for task in list(self._starting):
            task.cancel()
        for handed in list(self._sessions):
            handed.abort()
            handed._end()  # now: the loop may stop before the transports report their loss

    def _accepted(self, conn: socket.socket) -> None:
        _, uid, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        if uid not in (os.geteuid(), 0):
            self._refuse(conn, [], f"uid {uid} may not hand sessions to this server")
            return
        timer = self._loop.call_later(self.server.limits.login_timeout, self._drop, conn,
                                      "no hand-off header in time")
        self._pending[conn] = timer
        self._loop.add_reader(conn.fileno(), self._read_header, conn)

    def _drop(self, conn: socket.socket, why: str | None) -> None:
        timer = self._pending.pop(conn, None)
        if timer is None:
            return
        timer.cancel()
        self._loop.remove_reader(conn.fileno())
        if why:
            self._refuse(conn, [], why)
        else:
            conn.close()
            self.listener.release(authenticated=False)

    def _refuse(self, conn: socket.socket, fds: list[int], why: str, authenticated: bool = False) -> None:
        log.info("%s: sshd hand-off refused: %s", self.server.name, why)
        for fd in fds:
            os.close(fd)
        try:
            conn.send(f"refused: {why}\n".encode())
        except OSError:
            pass
        conn.close()
        self.listener.release(authenticated)

    def _read_header(self, conn: socket.socket) -> None:
        timer = self._pending.pop(conn)
        timer.cancel()
        self._loop.remove_reader(conn.fileno())
        try:
            data, fds, flags, _ = socket.recv_fds(conn, HEADER_MAX, 2)
        except OSError as err:
            self._refuse(conn, [], f"cannot read the header: {err.strerror}")
            return
        why, user, peer = self._check(data, fds, flags)
        if why:
            self._refuse(conn, fds, why)
            return
        self.listener.authenticated()
        task = self._loop.create_task(self._start(conn, fds, user, peer))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    def _check(self, data: bytes, fds: list[int], flags: int) -> tuple[str | None, str, str]:
        """Why the header is refused (None: accepted), the user and the peer it names. The
        header is one line, sent in one message together with the two pipes."""
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(fds) != 2:
            return "the header must come with exactly two descriptors (stdin, stdout)", "", ""
        if not data.endswith(b"\n") or data.count(b"\n") != 1:
            return f"the header must be one line of at most {HEADER_MAX} bytes", "", ""
        try:
            header = json.loads(data)
        except ValueError:
            return "the header is not JSON", "", ""
        if (not isinstance(header, dict) or not isinstance(header.get("user"), str)
                or not isinstance(header.get("peer", ""), str)):
            return 'the header must be {"user": name, "peer": address}', "", ""
        user, peer = header["user"], header.get("peer", "")
        if user not in self.server.users:
            return f"no NETCONF user '{user}' on this server", "", ""
        limit = self.server.limits.max_sessions_per_user
        if self.server._user_channels[user] >= limit:
            return f"user '{user}' already has {limit} NETCONF sessions on this server, its limit", "", ""
        return None, user, peer

    async def _start(self, conn: socket.socket, fds: list[int], user: str, peer: str) -> None:
        handed = _HandedSession(self, conn, user)
        try:
            await handed.connect(*fds)
        except BaseException as err:
            handed.abort()
            handed._end()
            if not isinstance(err, Exception):
                raise
            log.info("%s: sshd hand-off failed: %r", self.server.name, err)
            return
        self._sessions.add(handed)
        handed.start(self.server._open_session(handed, user, peer))
        try:
            conn.send(b"ok\n")  # the relay lets go of the pipes
        except OSError:  # the relay is gone already: its control connection says so
            pass


class _HandedSession(asyncio.Protocol):
    """The pipes sshd handed over, as one Transport of a Session (netconf_core.session), and
    the protocol of both. The hand-off connection stays open while the session lives: its end
    tells the relay to exit, and the relay's end (killed with its sshd) ends the session."""

    def __init__(self, handoff: SshdHandoff, control: socket.socket, user: str) -> None:
        self.handoff = handoff
        self.control = control
        self.user = user
        self.session: Session | None = None
        self._early = bytearray()  # read before the session existed (the pipes connect first)
        self._reader: asyncio.ReadTransport | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._open = 2  # transports not yet lost
        self._ended = False
        handoff.server._user_channels[user] += 1
        handoff._loop.add_reader(control.fileno(), self._control_readable)

    async def connect(self, stdin: int, stdout: int) -> None:
        loop = self.handoff._loop
        same = os.fstat(stdin)
        if stat.S_ISSOCK(same.st_mode) and (same.st_dev, same.st_ino) == (os.fstat(stdout).st_dev,
                                                                           os.fstat(stdout).st_ino):
            os.close(stdout)  # one socket both ways (sshd built without pipes)
            transport, _ = await loop.connect_accepted_socket(lambda: self, socket.socket(fileno=stdin))
            self._reader = self._writer = transport
            self._open = 1
            return
        try:
            self._writer, _ = await loop.connect_write_pipe(lambda: self, open(stdout, "wb", buffering=0))
        except BaseException:
            os.close(stdin)
            raise
        self._reader, _ = await loop.connect_read_pipe(lambda: self, open(stdin, "rb", buffering=0))

    def start(self, session: Session) -> None:
        self.session = session
        early, self._early = bytes(self._early), bytearray()
        if early:
            session.data_received(early)

    # --- Transport (what Session uses) ---

    def write(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    def close(self) -> None:
        """After the buffered output is sent."""
        if self._writer is not None:
            self._writer.close()
        if self._reader is not None and self._reader is not self._writer:
            self._reader.close()
        if self._writer is None:
            self._end()

    def abort(self) -> None:
        for transport in {self._writer, self._reader} - {None}:
            transport.abort()
        if self._writer is None:
            self._end()

    def pause_reading(self) -> None:
        assert self._reader is not None
        self._reader.pause_reading()

    def resume_reading(self) -> None:
        assert self._reader is not None
        self._reader.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._writer.get_write_buffer_size() if self._writer is not None else 0

    def set_write_buffer_limits(self, high: int) -> None:
        assert self._writer is not None
        self._writer.set_write_buffer_limits(high=high)

    # --- Protocol (of both pipes) ---

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.data_received(data)
        elif not self._ended:
            self._early += data  # at most what the client sends before our hello: its hello

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.pause_output()

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.resume_output()

    def connection_lost(self, exc: Exception | None) -> None:
        self._open -= 1
        if self.session is not None:
            self.handoff.server._channel_lost(self.session)
        if self._open > 0:
            self.close()  # one pipe lost: the session is over, close the other (its output sent)
        else:
            self._end()

    def _control_readable(self) -> None:
        try:
            data = self.control.recv(1)
        except OSError:
            data = b""
        if not data:  # the relay is gone (killed with its sshd session)
            self.abort()

    def _end(self) -> None:
        """Both pipes closed: tell the relay, release the connection and the user's slot."""
        if self._ended:
            return
        self._ended = True
        handoff = self.handoff
        handoff._loop.remove_reader(self.control.fileno())
        self.control.close()
        handoff._sessions.discard(self)
        handoff.listener.release(authenticated=True)
        channels = handoff.server._user_channels
        channels[self.user] -= 1
        if channels[self.user] <= 0:
            del channels[self.user]
        self.session = None
