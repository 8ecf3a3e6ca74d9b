"""One process per level (issue 14): `qstrata up` writes a deployment per level and runs each
level as its own OS process (`qstrata run LEVEL --config FILE`) under a supervisor. An intent
pushed over NETCONF becomes active across the processes; the forwarding controller killed
with SIGKILL is restarted (with a log line), on the same address and host key, and the intent
is active again; SIGTERM to `up` stops every process; `up` again on the same state directory
keeps every address, host key and password. Then the supervisor alone: back-off, a level that
fails before it is ready, one that ignores SIGTERM, and levels outliving a killed supervisor."""
from __future__ import annotations

import asyncio
import json
import os
import pathlib
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from lxml import etree

from netconf_core.client import NetconfClient
from netconf_core.ssh import trusted_host_keys
from models.intent import intent_xml
from tools.cmd_intent import intent_states

ROOT = pathlib.Path(__file__).resolve().parents[1]
INT_NS = "urn:qstrata:yang:qi-intent"
NW_NS = "urn:ietf:params:xml:ns:yang:ietf-network"
LEVELS = {"devices", "connectivity", "forwarding", "service", "orchestrator"}
START_S, ACTIVE_S, RESTART_S, STOP_S = 120.0, 60.0, 60.0, 30.0
INTENT = {"name": "quintin-distrito", "endpoints": {"source-sae": "sae-quintin", "destination-sae": "sae-distrito"},
          "min-rate": 20000}


class Output:
    """The lines a process prints, read by a thread so that it never blocks on a full pipe."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first line from now on matching `pattern` (fail after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line matching {pattern!r} within {timeout:g} s; last lines:\n" + \
                "\n".join(self.lines[-30:])
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, "the process ended; its last lines:\n" + "\n".join(self.lines[-30:])
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match


def children(parent: int, by: bytes = b"run") -> dict[str, int]:
    """The `qstrata run LEVEL` processes whose parent is `parent`, by level (by=b"--config":
    by deployment file, when several run the same level)."""
    found = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == parent and b"run" in argv and by in argv and fields[0] != "Z":
            level = argv[argv.index(by) + 1].decode()
            found[level] = int(entry.name)
    return found


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def session(row: dict) -> NetconfClient:
    """A NETCONF session to a level of the stack file, its host key pinned."""
    user, password = row["read_write"]
    return await NetconfClient.connect(row["host"], row["port"], user, password=password,
                                       known_hosts=trusted_host_keys(row["host_key"]), timeout=20)


async def push_intent(row: dict) -> None:
    config = etree.Element(f"{{{INT_NS}}}intents", nsmap={None: INT_NS})
    config.append(intent_xml(INTENT, "the test's intent"))
    async with await session(row) as nc:
        await nc.edit_config(config, target="candidate")
        await nc.commit()


async def wait_active(row: dict, timeout: float) -> dict:
    """The intent once it is active (fail with its last state after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        try:
            async with await session(row) as nc:
                while time.monotonic() < deadline:
                    last = (await intent_states(nc)).get(INTENT["name"], {})
                    if last.get("state") == "active":
                        return last
                    await asyncio.sleep(0.5)
        except (OSError, asyncio.TimeoutError):  # the level is restarting: try again
            await asyncio.sleep(0.5)
    raise AssertionError(f"intent not active within {timeout:g} s: {last}")


def child_env() -> dict[str, str]:
    """The environment of a `python -m tools.cli` child: this checkout first on its path."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))


def start_up(tmp_path: pathlib.Path, *arguments: str) -> tuple[subprocess.Popen, Output]:
    """`qstrata up ARGUMENTS` on the state directory tmp_path/state, its output read as it comes."""
    env = child_env()
    command = [sys.executable, "-m", "tools.cli", "up", *arguments, "--port", "0", "--state-dir", str(tmp_path / "state")]
    up = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return up, Output(up.stdout)


def stop_up(up: subprocess.Popen, out: Output, levels: dict[str, int]) -> None:
    """SIGTERM to `up`: it exits 0 and no level's process is left."""
    up.send_signal(signal.SIGTERM)
    assert up.wait(STOP_S) == 0
    out.wait_for(r"^stopped$", STOP_S)
    assert not [level for level, pid in levels.items() if alive(pid)]


def terminate(up: subprocess.Popen, timeout: float = STOP_S) -> int:
    """SIGTERM to `up` unless it has ended (for a test's finally): its exit code."""
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
    return up.wait(timeout)


def assert_ended(code: int, out: Output, tmp_path: pathlib.Path, processes: dict[str, int]) -> None:
    """`up` exited 0, removed its stack file, and left none of its `processes` running."""
    assert code == 0, "\n".join(out.lines[-30:])
    assert not (tmp_path / "qstrata-stack.json").exists()
    assert processes and not [config for config, pid in processes.items() if alive(pid)]


def stack_file(tmp_path: pathlib.Path) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads((tmp_path / "qstrata-stack.json").read_text())["levels"]}


def test_up_runs_every_level_as_its_own_process_and_restarts_one_that_dies(tmp_path):
    up, out = start_up(tmp_path)
    started: dict[str, int] = {}
    try:
        out.wait_for(r"Wrote qstrata-stack\.json", START_S)
        started = children(up.pid)
        assert set(started) == LEVELS, started
        assert len(set(started.values())) == len(LEVELS)   # five processes
        rows = stack_file(tmp_path)
        assert {p.stem for p in (tmp_path / "state" / "deployments").iterdir()} == LEVELS
        assert rows["orchestrator"]["read_write"][1] != "admin"    # generated credentials

        asyncio.run(push_intent(rows["orchestrator"]))
        intent = asyncio.run(wait_active(rows["orchestrator"], ACTIVE_S))
        assert intent["paths"] and intent["paths"][0]["nodes"][0] == "qkd-quintin"

        os.kill(started["forwarding"], signal.SIGKILL)
        out.wait_for(rf"supervisor: forwarding \(pid {started['forwarding']}\) died \(killed by SIGKILL\); "
                     r"restarting in \d", RESTART_S)
        restarted = int(out.wait_for(r"supervisor: forwarding restarted \(pid (\d+)\)", RESTART_S)[1])
        out.wait_for(r"\[forwarding\] qstrata run forwarding: forwarding ready on 127\.0\.0\.1:"
                     + str(rows["forwarding"]["port"]), RESTART_S)
        assert restarted != started["forwarding"] and children(up.pid)["forwarding"] == restarted
        assert {level: pid for level, pid in children(up.pid).items() if level != "forwarding"} == \
               {level: pid for level, pid in started.items() if level != "forwarding"}   # the others ran on

        async def after_restart() -> None:
            async with await session(rows["forwarding"]) as nc:   # same address, same host key
                assert await nc.get(filter=("subtree", f"<networks xmlns='{NW_NS}'/>")) is not None
            await wait_active(rows["orchestrator"], ACTIVE_S)
        asyncio.run(after_restart())
        started["forwarding"] = restarted
        stop_up(up, out, started)
        assert not (tmp_path / "qstrata-stack.json").exists()

        # Again on the same state directory: every address, host key and password is kept.
        up, out = start_up(tmp_path)
        out.wait_for(r"Wrote qstrata-stack\.json", START_S)
        started = children(up.pid)
        assert stack_file(tmp_path) == rows
        asyncio.run(wait_active(rows["orchestrator"], ACTIVE_S))   # the intent came back from the store
        stop_up(up, out, started)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(STOP_S)
        for pid in started.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- the supervisor alone, over small real processes -----------------------------------------

def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def test_a_level_that_keeps_dying_is_restarted_with_a_growing_capped_back_off(tmp_path):
    from tools.supervisor import Program, Supervisor

    lines: list[str] = []
    dies = python("import sys; print('ready', flush=True); sys.exit(3)")
    supervisor = Supervisor([Program("flaky", dies, "ready", tmp_path / "flaky.log")], say=lines.append,
                            backoff_initial=0.05, backoff_cap=0.2, stable_s=60)

    async def body() -> None:
        await supervisor.start(timeout=20)
        async with asyncio.timeout(30):
            while supervisor.deaths("flaky") < 5:
                await asyncio.sleep(0.05)
        await supervisor.stop()
    asyncio.run(body())
    delays = [float(d) for d in re.findall(r"died \(exit status 3\); restarting in ([\d.]+) s", "\n".join(lines))]
    assert delays[:5] == [0.05, 0.1, 0.2, 0.2, 0.2]
    assert len(re.findall(r"supervisor: flaky restarted \(pid \d+\)", "\n".join(lines))) >= 4


def test_a_level_that_fails_before_it_is_ready_fails_the_start_with_its_log(tmp_path):
    from tools.supervisor import Program, Supervisor, SupervisorError

    bad = python("import sys; sys.stderr.write('listen.port: bad port 70000\\n'); sys.exit(1)")
    good = python("import time; print('ready', flush=True); time.sleep(60)")
    supervisor = Supervisor([Program("good", good, "ready", tmp_path / "good.log"),
                             Program("bad", bad, "ready", tmp_path / "bad.log")], say=lambda line: None)

    async def body() -> int | None:
        try:
            await supervisor.start(timeout=20)
        except SupervisorError as error:
            assert "bad exited (exit status 1) before it was ready" in str(error)
            assert "listen.port: bad port 70000" in str(error)
            return supervisor.pid("good")
        raise AssertionError("the start did not fail")
    assert asyncio.run(body()) is None   # what had started was stopped


def test_stop_kills_a_level_that_ignores_sigterm_and_restarts_nothing(tmp_path):
    from tools.supervisor import Program, Supervisor

    lines: list[str] = []
    stubborn = python("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "print('ready', flush=True); time.sleep(60)")
    supervisor = Supervisor([Program("stubborn", stubborn, "ready")], say=lines.append, stop_timeout=0.5)

    async def body() -> int:
        await supervisor.start(timeout=20)
        pid = supervisor.pid("stubborn")
        assert pid is not None and alive(pid)
        await supervisor.stop()
        return pid
    pid = asyncio.run(body())
    assert not alive(pid)
    assert any("stubborn" in line and "did not stop in 0.5 s; killing it" in line for line in lines)
    assert not any("restart" in line for line in lines)


def test_a_level_ends_when_its_supervisor_is_killed(tmp_path):
    """`qstrata run --parent-pid`: a supervisor killed with SIGKILL leaves no level behind."""
    from devices.topology import default_topology
    from tools.cmd_up import plan_stack

    plan = plan_stack(default_topology(), None, tmp_path / "state", 1.0, 0, demo_credentials=True,
                      insecure_sae_header=True)
    run = [sys.executable, "-m", "tools.cli", "run", "connectivity", "--config", str(plan.config("connectivity"))]
    env = child_env()
    # A stand-in supervisor: starts the level (its devices are not running: it keeps trying), prints its pid, waits.
    parent = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time\n"
        f"child = subprocess.Popen({run!r} + ['--parent-pid', str(os.getpid())], stdout=subprocess.DEVNULL)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n")], env=env, stdout=subprocess.PIPE, text=True)
    level = None
    try:
        level = int(parent.stdout.readline())
        port = next(row.port for row in plan.rows if row.name == "connectivity")
        deadline = time.monotonic() + START_S
        while not listening(port):   # it serves, and waits for its devices
            assert alive(level) and time.monotonic() < deadline, "the level did not start"
            time.sleep(0.1)
        parent.kill()
        parent.wait(STOP_S)
        deadline = time.monotonic() + STOP_S
        while alive(level):
            assert time.monotonic() < deadline, "the level outlived its supervisor"
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(STOP_S)
        if level is not None and alive(level):
            os.kill(level, signal.SIGKILL)
