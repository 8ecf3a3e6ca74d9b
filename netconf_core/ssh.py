"""SSH settings shared by our NETCONF server and client, the limits that keep one client from
stalling the others or exhausting the process, and the server's accept loop that enforces the
connection limits."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import pathlib
import resource
import socket
import time
from dataclasses import dataclass
from typing import Callable

import asyncssh

from .framing import MAX_CHUNKS

log = logging.getLogger(__name__)

# AES-GCM first: with AES-NI it costs a fraction of chacha20-poly1305 per packet, which is
# most of the CPU of a controller syncing a thousand devices. The rest keep interoperability
# with clients and servers that lack it (paramiko, OpenSSH builds without GCM).
ENCRYPTION_ALGS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                   "aes128-ctr", "aes192-ctr", "aes256-ctr"]

# Our servers' asyncssh options: bytes, not text; the netconf subsystem only, so no SCP and no
# line editor (it would sit in the path of every byte). Keepalives and the login timeout come
# from TransportLimits.
SERVER_OPTIONS = {"encoding": None, "allow_scp": False, "line_editor": False, "keepalive_interval": 0,
                  "encryption_algs": ENCRYPTION_ALGS}


def public_key_line(key: asyncssh.SSHKey) -> str:
    """The OpenSSH public line of a key ("ssh-ed25519 AAAA..."), what `Endpoint.host_key` pins."""
    return key.export_public_key("openssh").decode().split("\n")[0].strip()


def fingerprint(key: asyncssh.SSHKey) -> str:
    """A key's SHA256 fingerprint as OpenSSH prints it ("SHA256:...")."""
    return key.get_fingerprint("sha256")


def trusted_host_keys(*lines: str) -> tuple[list[asyncssh.SSHKey], list, list]:
    """The `known_hosts` argument of asyncssh.connect that trusts exactly the keys given as
    OpenSSH public lines (several lines in one string also do), whatever the host name."""
    keys = [asyncssh.import_public_key(line.strip()) for text in lines for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ValueError("no host key to trust")
    return keys, [], []


def persistent_host_key(path: pathlib.Path | str) -> asyncssh.SSHKey:
    """The private host key kept in `path` (OpenSSH format, mode 0600), made the first time:
    a level that restarts on the same state directory keeps its host key."""
    path = pathlib.Path(path)
    try:
        return asyncssh.read_private_key(str(path))
    except FileNotFoundError:
        pass
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(key.export_private_key("openssh"))
    os.replace(scratch, path)
    return key


@dataclass(frozen=True)
class TransportLimits:
    """What one server grants its clients. The defaults suit the emulation: a device has a few
    controllers as clients, the benchmark opens 50 sessions of one user at once."""

    max_connections: int = 256  # TCP connections at once, authenticated or not
    max_unauthenticated: int = 64  # of which still in the SSH handshake or authentication
    max_sessions_per_user: int = 64  # NETCONF sessions (SSH channels) of one user at once
    login_timeout: float = 10.0  # seconds to finish the SSH handshake and authentication
    keepalive_interval: float = 30.0  # SSH keepalive; a peer silent for 4 of them is dropped
    max_message: int = 16 * 1024 * 1024  # bytes of one incoming message (RFC 6242 frame)
    max_chunks: int = MAX_CHUNKS  # chunks of one incoming message
    max_queued_requests: int = 64  # received, not yet answered: reading pauses above this
    output_high_water: int = 1024 * 1024  # unsent reply bytes above which requests wait
    output_hard_limit: int = 32 * 1024 * 1024  # unsent bytes at which the session is closed
    output_stall_timeout: float = 60.0  # seconds of paused output without progress: closed


def descriptor_budget() -> int:
    """Accepted connections the whole process may hold: the descriptor limit less a reserve
    for everything else (datastore files, outgoing connections, libyang)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(16, soft - max(64, soft // 4))


def raise_descriptor_limit(wanted: int) -> int:
    """Raise this process's descriptor limit (RLIMIT_NOFILE) to at least `wanted` where it is
    lower: the soft limit up to the hard one, and the hard one too when the process may (root);
    returns the soft limit now in force. A host of thousands of servers needs a listener, a
    session and files per device, beyond the usual default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):  # not privileged: as far as the hard limit goes
            pass
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


class RateLimitedLog:
    """One log line per `interval` seconds for an event that may repeat thousands of times a
    second, saying how many were folded into it."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = float("-inf")
        self._suppressed = 0

    def warning(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} more in the last {now - self._last:.0f} s)"
        log.warning(message, *args)
        self._last, self._suppressed = now, 0


# Out of descriptors is a state of the process, not of one server: one line for all of them.
_OUT_OF_DESCRIPTORS = RateLimitedLog()
_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_PAUSE = 1.0  # seconds without accepting after the process ran out of descriptors


class Listener:
    """A listening TCP socket with our own accept loop, so that over-limit connections are
    closed at accept for the price of a descriptor's life, and running out of descriptors
    pauses accepting with one log line (asyncio's loop logs a traceback per failed accept, many
    a second, and the pause it schedules multiplies).

    `handle(sock)` gets each admitted connection; the owner calls `authenticated()` once the
    connection passes SSH authentication and `release(...)` when it ends."""

    accepted_in_process = 0  # admitted connections of every Listener of the process

    def __init__(self, host: str, port: int, limits: TransportLimits, handle: Callable[[socket.socket], None],
                 name: str, sock: socket.socket | None = None) -> None:
        """Listens on host:port, or on `sock` when given (bound and listening: the Unix socket
        of netconf_core.sshd)."""
        self.limits = limits
        self.name = name
        self._handle = handle
        if sock is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host, port), family=family, backlog=128)
        self._sock = sock
        self._sock.setblocking(False)
        address = self._sock.getsockname()
        self.port = address[1] if isinstance(address, tuple) else 0
        self._loop = asyncio.get_running_loop()
        self._resume: asyncio.TimerHandle | None = None
        self.connections = 0
        self.unauthenticated = 0
        self.refused = 0
        self._refusals = RateLimitedLog()
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def authenticated(self) -> None:
        self.unauthenticated -= 1

    def release(self, authenticated: bool) -> None:
        self.connections -= 1
        Listener.accepted_in_process -= 1
        if not authenticated:
            self.unauthenticated -= 1

    def _accept(self) -> None:
        for _ in range(64):  # then let the loop run other work; the socket stays readable
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as err:
                if err.errno not in _RESOURCE_ERRNOS:
                    log.warning("%s: accept failed: %s", self.name, err)
                    return
                _OUT_OF_DESCRIPTORS.warning("out of descriptors (%s): not accepting connections for %.0f s",
                                            err.strerror, ACCEPT_PAUSE)
                self._loop.remove_reader(self._sock.fileno())
                self._resume = self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting)
                return
            why = self._over_limit()
            if why:
                conn.close()
                self.refused += 1
                self._refusals.warning("%s: refusing connections: %s", self.name, why)
                continue
            self.connections += 1
            self.unauthenticated += 1
            Listener.accepted_in_process += 1
            conn.setblocking(False)
            self._handle(conn)

    def _over_limit(self) -> str | None:
        limits = self.limits
        if self.connections >= limits.max_connections:
            return f"{self.connections} connections, the limit"
        if self.unauthenticated >= limits.max_unauthenticated:
            return f"{self.unauthenticated} connections not yet authenticated, the limit"
        budget = descriptor_budget()
        if Listener.accepted_in_process >= budget:
            return f"the process holds {Listener.accepted_in_process} connections, its limit for {budget} descriptors"
        return None

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._sock.fileno() >= 0:
            self._loop.add_reader(self._sock.fileno(), self._accept)


class NetconfSubsystemChannel(asyncssh.SSHServerSession):
    """An SSH channel that accepts the netconf subsystem and nothing else (no shell, no exec)."""

    chan: asyncssh.SSHServerChannel | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:
        self.chan = chan

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "netconf"
