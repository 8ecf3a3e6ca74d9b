"""OpenSSH's sshd on 127.0.0.1 in a temp directory, serving only the `netconf` subsystem: in
front of yuma123 netconfd (tools/netconfd.py) or of our server's sshd hand-off socket
(`SshdFront`, netconf_core/sshd.py), with the same settings, so that benchmarks compare the
servers behind it and not two SSH configurations.

    with SshdFront(server.sshd_socket, users=["admin", "reader"]) as front:
        await NetconfClient.connect(front.host, front.port, front.username,
                                    client_keys=[str(front.client_key("reader"))])

Each NETCONF user gets a key of its own in the account's authorized_keys, with
environment="NETCONF_USER=name", which sshd passes to the relay (PermitUserEnvironment
NETCONF_USER): one account, a NETCONF user per key.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from netconf_core.sshd import subsystem_command

HOST = "127.0.0.1"
# sshd and netconf-subsystem live in sbin, which a non-root PATH often lacks.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
# OpenSSH started as root insists on its privilege-separation directory (Debian's build path).
_PRIVSEP_DIR = Path("/run/sshd")
START_ATTEMPTS = 3


class SshdError(RuntimeError):
    """sshd (or the server behind it) could not be started."""


def program(name: str) -> str:
    path = shutil.which(name, path=_SEARCH_PATH)
    if path is None:
        raise SshdError(f"{name} not found; install the Debian packages netconfd and openssh-server")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def make_key(path: Path) -> str:
    """A new ed25519 key pair at `path` (and `path`.pub); returns the public line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, capture_output=True)
    return path.with_name(path.name + ".pub").read_text().strip()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(name: str, process: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool],
               timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SshdError(f"{name} exited with status {process.returncode}:\n{tail(log)}")
        if ready():
            return
        time.sleep(0.05)
    raise SshdError(f"{name} not ready after {timeout} s:\n{tail(log)}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_sshd(workdir: Path, port: int, username: str, subsystem: str, timeout: float) -> subprocess.Popen[bytes]:
    """sshd on HOST:port for `username` only, public keys of workdir/authorized_keys only,
    the host key workdir/host_key, and `subsystem` as the netconf subsystem's command."""
    if os.geteuid() == 0:
        _PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    config = workdir / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress {HOST}",
        f"Port {port}",
        f"HostKey {workdir / 'host_key'}",
        f"PidFile {workdir / 'sshd.pid'}",
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
        "AuthenticationMethods publickey",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "UsePAM no",
        # Only this variable, set per key in authorized_keys (the relay's NETCONF user).
        "PermitUserEnvironment NETCONF_USER",
        # Benchmarks open many sessions at once; the default (10) drops some of them.
        "MaxStartups 1000",
        f"AllowUsers {username}",
        f'Subsystem netconf "{subsystem}"',  # run by the account's shell
        "",
    ]))
    log = workdir / "sshd.log"
    # sshd re-executes itself, so it needs its absolute path; -D stays in the foreground.
    with open(log, "wb") as out:
        process = subprocess.Popen([program("sshd"), "-D", "-e", "-f", str(config)], cwd=workdir, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready("sshd", process, log, lambda: port_open(port), timeout)
    except SshdError:
        stop_process(process)
        raise
    return process


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class SshdFront:
    """sshd in front of a NetconfServer's `sshd_socket`. Attributes for clients: host, port,
    username (the account), client_key(user), host_key_line (what a client pins)."""

    def __init__(self, socket_path: Path | str, users: Sequence[str] = ("admin",), start_timeout: float = 15.0):
        self.socket_path = Path(socket_path)
        self.users = list(users)
        self.start_timeout = start_timeout
        self.host = HOST
        self.port = 0
        self.username = pwd.getpwuid(os.geteuid()).pw_name
        self.workdir: Path | None = None
        self.host_key_line = ""
        self._sshd: subprocess.Popen[bytes] | None = None

    def client_key(self, user: str) -> Path:
        assert self.workdir is not None, "sshd not started"
        return self.workdir / f"client_key_{user}"

    def __enter__(self) -> SshdFront:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="qstrata-sshd-"))
        try:
            self.host_key_line = make_key(self.workdir / "host_key")
            lines = [f'environment="NETCONF_USER={user}" {make_key(self.client_key(user))}' for user in self.users]
            (self.workdir / "authorized_keys").write_text("\n".join(lines) + "\n")
            for attempt in range(1, START_ATTEMPTS + 1):
                self.port = free_port()
                try:
                    self._sshd = start_sshd(self.workdir, self.port, self.username,
                                            subsystem_command(self.socket_path), self.start_timeout)
                    return
                except SshdError:
                    if attempt == START_ATTEMPTS:
                        raise
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self._sshd)
        self._sshd = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
