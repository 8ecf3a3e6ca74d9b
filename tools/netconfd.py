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
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tools.openssh import HOST, SshdError, free_port, make_key, program, start_sshd, stop_process, wait_ready

NetconfdError = SshdError  # netconfd or its sshd could not be started
START_ATTEMPTS = 3


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
        netconfd, subsystem = program("netconfd"), program("netconf-subsystem")
        self.workdir = Path(tempfile.mkdtemp(prefix="qstrata-netconfd-"))
        try:
            self._make_keys()
            for attempt in range(1, START_ATTEMPTS + 1):
                self.port = free_port()
                try:
                    self._start_netconfd(netconfd)
                    sock = self.workdir / f"ncxserver-{self.port}.sock"
                    self._sshd = start_sshd(self.workdir, self.port, self.username,
                                            f"{subsystem} --ncxserver-sockname={self.port}@{sock}", self.start_timeout)
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
        make_key(self.workdir / "host_key")
        (self.workdir / "authorized_keys").write_text(make_key(self.workdir / "client_key") + "\n")

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
        wait_ready("netconfd", self._netconfd, log, sock.exists, self.start_timeout)

    def _stop_processes(self) -> None:
        stop_process(self._sshd)
        stop_process(self._netconfd)
        self._sshd = self._netconfd = None
