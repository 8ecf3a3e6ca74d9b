"""Debian's yuma123 netconfd behind its own OpenSSH sshd, on 127.0.0.1, in a temp directory.

A third-party NETCONF server for interop tests, the conformance suite and benchmarks:

    with NetconfdServer(modules=["qs-test"], yang_dirs=[some_dir]) as server:
        await NetconfClient.connect(server.host, server.port, server.username,
                                    client_keys=[server.client_key])

How the pieces fit: sshd runs the `netconf` subsystem as yuma123's netconf-subsystem
program, which relays the session to netconfd over a Unix socket. netconfd must be told
the SSH port too (it only accepts sessions relayed for one of its ports). Authentication is
by a public key generated for the current user; netconfd treats that user as superuser,
so NACM does not get in the way. Everything lives in one temp directory, which is removed
by stop().
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

HOST = "127.0.0.1"
# sshd and netconf-subsystem live in sbin, which a non-root PATH often lacks.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
# OpenSSH started as root insists on its privilege-separation directory (Debian's build path).
_PRIVSEP_DIR = Path("/run/sshd")
START_ATTEMPTS = 3


class NetconfdError(RuntimeError):
    """netconfd or its sshd could not be started."""


def _program(name: str) -> str:
    path = shutil.which(name, path=_SEARCH_PATH)
    if path is None:
        raise NetconfdError(f"{name} not found; install the Debian packages netconfd and openssh-server")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class NetconfdServer:
    """netconfd serving `modules` (names found in `yang_dirs`, or .yang paths).

    `target` is netconfd's edit target: "candidate" (with :candidate, commit and
    confirmed-commit) or "running" (:writable-running). `extra_args` go to netconfd as they
    are, e.g. ["--with-startup=true"]. Attributes for clients: host, port, username,
    client_key (private key path).
    """

    def __init__(self, modules: Sequence[str], yang_dirs: Sequence[Path | str] = (),
                 target: str = "candidate", extra_args: Sequence[str] = (), start_timeout: float = 15.0):
        if target not in ("candidate", "running"):
            raise ValueError(f"target must be 'candidate' or 'running', not {target!r}")
        self.modules = list(modules)
        self.yang_dirs = [Path(d).resolve() for d in yang_dirs]
        self.target = target
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.host = HOST
        self.port = 0
        self.username = pwd.getpwuid(os.geteuid()).pw_name
        self.workdir: Path | None = None
        self._netconfd: subprocess.Popen[bytes] | None = None
        self._sshd: subprocess.Popen[bytes] | None = None

    @property
    def client_key(self) -> Path:
        assert self.workdir is not None, "server not started"
        return self.workdir / "client_key"

    @property
    def netconfd_pid(self) -> int:
        """For tests that freeze (SIGSTOP) or kill the server under a client."""
        assert self._netconfd is not None, "server not started"
        return self._netconfd.pid

    def __enter__(self) -> NetconfdServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Start netconfd and sshd; retry on a new port if another process took ours."""
        netconfd, sshd, subsystem = _program("netconfd"), _program("sshd"), _program("netconf-subsystem")
        self.workdir = Path(tempfile.mkdtemp(prefix="qstrata-netconfd-"))
        try:
            self._make_keys()
            for attempt in range(1, START_ATTEMPTS + 1):
                self.port = _free_port()
                try:
                    self._start_netconfd(netconfd)
                    self._start_sshd(sshd, subsystem)
                    return
                except NetconfdError:
                    self._stop_processes()
                    if attempt == START_ATTEMPTS:
                        raise
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both processes and remove the temp directory."""
        self._stop_processes()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # -- internals --------------------------------------------------------------------

    def _make_keys(self) -> None:
        assert self.workdir is not None
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name,
                            "-f", str(self.workdir / name)], check=True, capture_output=True)
        shutil.copyfile(self.workdir / "client_key.pub", self.workdir / "authorized_keys")

    def _start_netconfd(self, program: str) -> None:
        assert self.workdir is not None
        sock = self.workdir / f"ncxserver-{self.port}.sock"
        args = [program, "--no-startup", f"--target={self.target}", f"--superuser={self.username}",
                f"--ncxserver-sockname={sock}", f"--port={self.port}"]
        args += [f"--modpath={os.pathsep.join(str(d) for d in self.yang_dirs)}"] if self.yang_dirs else []
        args += [f"--module={m}" for m in self.modules] + self.extra_args
        # HOME keeps netconfd's ~/.yuma (saved startup configuration) inside the temp directory.
        env = {**os.environ, "HOME": str(self.workdir)}
        log = self.workdir / "netconfd.log"
        with open(log, "wb") as out:
            self._netconfd = subprocess.Popen(args, cwd=self.workdir, env=env, stdout=out,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              start_new_session=True)
        self._wait("netconfd", self._netconfd, log, sock.exists)

    def _start_sshd(self, program: str, subsystem: str) -> None:
        assert self.workdir is not None
        if os.geteuid() == 0:
            _PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        sock = self.workdir / f"ncxserver-{self.port}.sock"
        config = self.workdir / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f"HostKey {self.workdir / 'host_key'}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
            "AuthenticationMethods publickey",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UsePAM no",
            # Benchmarks open many sessions at once; the default (10) drops some of them.
            "MaxStartups 1000",
            f"AllowUsers {self.username}",
            f'Subsystem netconf "{subsystem} --ncxserver-sockname={self.port}@{sock}"',
            "",
        ]))
        log = self.workdir / "sshd.log"
        # sshd re-executes itself, so it needs its absolute path; -D stays in the foreground.
        with open(log, "wb") as out:
            self._sshd = subprocess.Popen([program, "-D", "-e", "-f", str(config)], cwd=self.workdir,
                                          stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait("sshd", self._sshd, log, self._port_open)

    def _port_open(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _wait(self, name: str, process: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise NetconfdError(f"{name} exited with status {process.returncode}:\n{_tail(log)}")
            if ready():
                return
            time.sleep(0.05)
        raise NetconfdError(f"{name} not ready after {self.start_timeout} s:\n{_tail(log)}")

    def _stop_processes(self) -> None:
        for process in (self._sshd, self._netconfd):
            if process is not None and process.poll() is None:
                process.terminate()
        for process in (self._sshd, self._netconfd):
            if process is None:
                continue
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._sshd = self._netconfd = None
