"""Keep a set of processes running: start each, restart one that dies, stop them all.

    supervisor = Supervisor([Program("forwarding", (sys.executable, "-m", "tools.cli", "run", ...),
                                     ready="ready on", log_file=state / "logs" / "forwarding.log")])
    await supervisor.start(timeout=120)   # every program started and printed its ready line once
    ...
    await supervisor.stop()               # SIGTERM, in reverse order; SIGKILL after stop_timeout

Each program runs in a session of its own, so that a Ctrl-C at the terminal reaches the
supervisor only, which stops the programs in order. A program's stdout is read line by line
(its ready line, then anything it prints, each line passed to `say` with the program's name);
its stderr (its log) is appended to its log file. A program that dies after it was first ready
is started again after a back-off (`backoff_initial`, doubling per death up to `backoff_cap`,
back to the initial one after a run of `stable_s`); every death and restart is one line to
`say`. A program that dies before it was ever ready fails `start`, with the end of its log:
that is a configuration error, not a crash, and restarting it would only repeat it.
"""
from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
from dataclasses import dataclass
from typing import Callable

LOG_TAIL_LINES = 20
LINE_LIMIT = 1 << 20


@dataclass(frozen=True)
class Program:
    name: str
    argv: tuple[str, ...]
    ready: str                       # a line containing this says the program serves
    log_file: pathlib.Path | None = None


class SupervisorError(Exception):
    pass


class _Child:
    def __init__(self, program: Program) -> None:
        self.program = program
        self.process: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()      # set while the current process is ready
        self.first_ready = asyncio.get_running_loop().create_future()
        self.deaths = 0
        self.task: asyncio.Task | None = None


class Supervisor:
    def __init__(self, programs: list[Program], *, say: Callable[[str], None] = print,
                 backoff_initial: float = 0.5, backoff_cap: float = 30.0, stable_s: float = 60.0,
                 stop_timeout: float = 10.0, cwd: pathlib.Path | None = None, env: dict[str, str] | None = None):
        names = [p.name for p in programs]
        if len(set(names)) != len(names):
            raise ValueError(f"two programs have the same name: {names}")
        self.programs = programs
        self.say = say
        self.backoff_initial, self.backoff_cap, self.stable_s = backoff_initial, backoff_cap, stable_s
        self.stop_timeout = stop_timeout
        self.cwd, self.env = cwd, env
        self._children: dict[str, _Child] = {}
        self._stopping: asyncio.Event | None = None

    # --- what the caller sees -------------------------------------------------------------

    def pid(self, name: str) -> int | None:
        """The pid of the program's current process (None between a death and its restart)."""
        child = self._children.get(name)
        process = child.process if child else None
        return process.pid if process is not None and process.returncode is None else None

    def deaths(self, name: str) -> int:
        return self._children[name].deaths

    async def wait_ready(self, name: str, timeout: float) -> None:
        """Wait until the program's current process is ready (after a restart, the new one)."""
        async with asyncio.timeout(timeout):
            await self._children[name].ready.wait()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self, timeout: float) -> None:
        """Start every program and wait until each has been ready once. If one dies before,
        or they are not all ready within `timeout`, stop everything and raise SupervisorError."""
        self._stopping = asyncio.Event()
        for program in self.programs:
            child = _Child(program)
            self._children[program.name] = child
            child.task = asyncio.get_running_loop().create_task(self._keep(child), name=f"supervise {program.name}")
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(c.first_ready for c in self._children.values()))
        except TimeoutError:
            late = [c.program.name for c in self._children.values() if not c.first_ready.done()]
            await self.stop()
            raise SupervisorError(f"not ready after {timeout:.0f} s: {', '.join(late)}") from None
        except SupervisorError:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every program, the last started first: SIGTERM, then SIGKILL after stop_timeout."""
        if self._stopping is None:
            return
        self._stopping.set()
        for child in reversed(list(self._children.values())):
            await self._terminate(child)
        tasks = [c.task for c in self._children.values() if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _terminate(self, child: _Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.stop_timeout):
                await process.wait()
        except TimeoutError:
            self.say(f"supervisor: {child.program.name} (pid {process.pid}) did not stop in "
                     f"{self.stop_timeout:g} s; killing it")
            process.kill()
            await process.wait()

    # --- one program ----------------------------------------------------------------------------

    async def _keep(self, child: _Child) -> None:
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        backoff = self.backoff_initial
        while not self._stopping.is_set():
            began = loop.time()
            try:
                process = await self._spawn(child.program)
            except OSError as error:
                if not child.first_ready.done():
                    child.first_ready.set_exception(SupervisorError(f"{child.program.name}: cannot start: {error}"))
                    return
                self.say(f"supervisor: {child.program.name} cannot start: {error}")
                process = None
            if process is not None:
                child.process = process
                if child.deaths:
                    self.say(f"supervisor: {child.program.name} restarted (pid {process.pid})")
                await self._read(child, process)
                code = await process.wait()
                child.ready.clear()
                if self._stopping.is_set():
                    return
                child.deaths += 1
                if not child.first_ready.done():
                    child.first_ready.set_exception(SupervisorError(
                        f"{child.program.name} exited ({_describe(code)}) before it was ready"
                        + _tail(child.program.log_file)))
                    return
                if loop.time() - began >= self.stable_s:
                    backoff = self.backoff_initial
                self.say(f"supervisor: {child.program.name} (pid {process.pid}) died ({_describe(code)}); "
                         f"restarting in {backoff:g} s")
            try:
                async with asyncio.timeout(backoff):
                    await self._stopping.wait()
                return
            except TimeoutError:
                backoff = min(backoff * 2, self.backoff_cap)

    async def _spawn(self, program: Program) -> asyncio.subprocess.Process:
        stderr = subprocess.DEVNULL
        if program.log_file is not None:
            program.log_file.parent.mkdir(parents=True, exist_ok=True)
            stderr = os.open(program.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            return await asyncio.create_subprocess_exec(
                *program.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                start_new_session=True, cwd=self.cwd, env=self.env, limit=LINE_LIMIT)
        finally:
            if program.log_file is not None:
                os.close(stderr)

    async def _read(self, child: _Child, process: asyncio.subprocess.Process) -> None:
        """Pass the program's lines on until it closes its stdout; note its ready line."""
        assert process.stdout is not None
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # a line over LINE_LIMIT: skip it
                continue
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            self.say(f"[{child.program.name}] {text}")
            if child.program.ready in text:
                child.ready.set()
                if not child.first_ready.done():
                    child.first_ready.set_result(None)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _tail(log_file: pathlib.Path | None) -> str:
    if log_file is None or not log_file.exists():
        return ""
    lines = log_file.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return f"; the end of {log_file}:\n" + "\n".join(lines) if lines else ""
