"""Benchmark of the operator's console: a generated network of N sites (each with a QKD node
and a key manager; ring with chords, devices.topology.generate_topology) runs as `qstrata up`
runs it, every level its own OS process (tools/cmd_up.ProcessStack), and the console is one
more process (`qstrata console` over the stack file), measured on its own; Debian's chromium
(headless, Playwright) shows it.

- console up: from the console's start until it has a view of every level;
- idle: the console's CPU while nothing happens (IDLE_S), and that of the controllers it
  watches (the controllers signal their state changes, so a YANG-Push on-change subscription
  costs them a look only when something changed); the console's peak resident memory;
- first full render: from opening the page (logged in) until every stratum is drawn and the
  sites are laid out (the page's `firstRender`), in a fresh browser context (nothing kept);
- update latency: a span is cut at the fibre plant over NETCONF; measured from the RPC, and
  from the connectivity controller's span-down notification (its eventTime), to the moment the
  page turns the span red (cytoscape's class change, the page's clock); the span is repaired
  between runs. The console's CPU over the cuts is shown per cut.

--follow says how the console keeps its views (console/hub.py): `push`, its YANG-Push updates
applied to a copy, or `reread`, a read of the level on each notification; --compare measures
both, side by side, against the same stack in one run (one console process after the other).

    .venv/bin/qstrata bench console [--nodes 100 1000] [--runs 5] [--follow push|reread] [--compare]

Every server binds 127.0.0.1; the runs are bounded in count and time."""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

STEP_TIMEOUT_S = 120.0
IDLE_S = 10.0
STACK_ATTEMPTS = 5
CONSOLE_READY = "console: http://"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000],
                        help="sites of each generated network (default 100 1000)")
    parser.add_argument("--runs", type=int, default=5, help="span cuts per network (default 5)")
    parser.add_argument("--follow", choices=("push", "reread"), default="push",
                        help="how the console keeps its views (default push)")
    parser.add_argument("--compare", action="store_true", help="measure push and reread side by side")
    parser.add_argument("--settle", type=float, default=900.0,
                        help="seconds the stack, then the console, may take to be up (default 900)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated networks (default 0)")


def run(args: argparse.Namespace) -> int:
    if shutil.which("chromium") is None:
        print("qstrata bench console: Debian's chromium is not installed (make setup installs it)", file=sys.stderr)
        return 1
    if args.runs < 1 or any(n < 2 for n in args.nodes) or args.settle <= 0:
        print("qstrata bench console: --runs must be >= 1, --nodes >= 2 and --settle > 0", file=sys.stderr)
        return 2
    follows = ("reread", "push") if args.compare else (args.follow,)
    rows = []
    for nodes in args.nodes:
        rows += asyncio.run(measure(nodes, args.runs, follows, args.settle, args.seed))
        print()
        print(format_rows(rows), flush=True)
    return 0


async def measure(nodes: int, runs: int, follows: tuple[str, ...], settle: float, seed: int = 0) -> list[dict]:
    """The figures of a console of each `follows` mode over one stack of `nodes` sites."""
    from playwright.async_api import async_playwright

    from devices.topology import generate_topology, load_topology
    from tools.cmd_up import LEVEL_ORDER, write_state

    with tempfile.TemporaryDirectory(prefix="qstrata-bench-console-") as scratch:
        scratch = pathlib.Path(scratch)
        topology_file = scratch / f"generated-{nodes}.json"
        topology_file.write_text(json.dumps(generate_topology(nodes, seed)))
        topology = load_topology(topology_file)
        print(f"{nodes} sites: starting {len(LEVEL_ORDER)} level processes ({len(topology.spans)} spans) ...",
              flush=True)
        started = time.monotonic()
        stack = await _start_stack(topology, topology_file, scratch / "stack", settle)
        try:
            print(f"{nodes} sites: levels ready in {time.monotonic() - started:.0f} s", flush=True)
            stack_file = scratch / "qstrata-stack.json"
            write_state(stack_file, topology.name, stack.table())
            results = []
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                                           args=["--no-sandbox", "--disable-gpu"])
                try:
                    for follow in follows:
                        results.append(await _measure_console(browser, stack, stack_file, topology, nodes, runs,
                                                              follow, settle, scratch))
                finally:
                    await browser.close()
            return results
        finally:
            await stack.stop()


async def _start_stack(topology, topology_file: pathlib.Path, state_dir: pathlib.Path, settle: float):
    """The stack started; again on fresh ports when one of the thousands it took was bound by
    someone else in the meantime (a machine shared with others)."""
    from tools.cmd_up import PORTS_FILE, ProcessStack
    from tools.supervisor import SupervisorError

    for attempt in range(STACK_ATTEMPTS):
        stack = ProcessStack(topology, topology_file, state_dir, demo_credentials=True, insecure_sae_header=True,
                             ready_timeout=settle)
        try:
            await stack.start()
            return stack
        except SupervisorError as error:
            if "Address already in use" not in str(error) or attempt == STACK_ATTEMPTS - 1:
                raise
            print(f"a port was taken meanwhile ({str(error).splitlines()[-1]}): again on other ports", flush=True)
            (state_dir / PORTS_FILE).unlink(missing_ok=True)


class ConsoleProcess:
    """`qstrata console` over the stack file, its own process, under a Supervisor."""

    def __init__(self, stack_file: pathlib.Path, follow: str, state_dir: pathlib.Path):
        from tools.supervisor import Program, Supervisor

        self.url: str | None = None
        argv = (sys.executable, "-m", "tools.cli", "console", "--stack-file", str(stack_file), "--follow", follow,
                "--state-dir", str(state_dir), "--parent-pid", str(os.getpid()))
        self.supervisor = Supervisor([Program("console", argv, ready=CONSOLE_READY,
                                              log_file=state_dir / "console.log")], say=self._heard)

    def _heard(self, line: str) -> None:
        if CONSOLE_READY in line and self.url is None:
            self.url = line[line.index("http://"):].split()[0]

    @property
    def pid(self) -> int:
        return self.supervisor.pid("console")

    async def __aenter__(self) -> ConsoleProcess:
        await self.supervisor.start(60)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.supervisor.stop()


async def _measure_console(browser, stack, stack_file: pathlib.Path, topology, nodes: int, runs: int, follow: str,
                           settle: float, scratch: pathlib.Path) -> dict:
    import aiohttp

    from devices.base import DEMO_PASSWORDS
    from models.connectivity import plant_operation

    auth = aiohttp.BasicAuth("admin", DEMO_PASSWORDS["admin"])
    levels = {r.name: r for r in stack.table()}
    watched = [r.level for r in levels.values() if r.level in ("connectivity", "forwarding", "service", "orchestrator")]
    wanted = set(watched) | {f"km:{r.name}" for r in levels.values() if r.level == "key-manager"}
    started = time.monotonic()
    async with ConsoleProcess(stack_file, follow, scratch / f"console-{follow}") as console, \
            aiohttp.ClientSession(auth=auth) as http:
        async def state() -> dict:
            async with http.get(console.url + "api/state") as response:
                return await response.json()

        async with asyncio.timeout(settle):
            while True:
                snapshot = await state()
                if wanted <= set(snapshot["views"]) and all(s["reachable"] for s in snapshot["status"].values()):
                    break
                await asyncio.sleep(0.5)
        up = time.monotonic() - started
        print(f"{nodes} sites, {follow}: console up in {up:.1f} s", flush=True)
        pids = {"console": console.pid, **{level: stack.supervisor.pid(level) for level in watched}}
        before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        await asyncio.sleep(IDLE_S)
        idle = {name: (_cpu_seconds(pid) - before[name]) / IDLE_S for name, pid in pids.items()}

        context = await browser.new_context(viewport={"width": 1400, "height": 850}, bypass_csp=True)
        page = await context.new_page()
        await page.goto(console.url)
        await page.fill("input[name=user]", "admin")
        await page.fill("input[name=password]", DEMO_PASSWORDS["admin"])
        opened = time.time()
        await page.click("#login-form button[type=submit]")
        await page.wait_for_function("window.qstrata.state.firstRender !== null", timeout=STEP_TIMEOUT_S * 1000)
        first_render = (await page.evaluate("window.qstrata.state.firstRender.at")) / 1000 - opened
        drawn = await page.evaluate("Object.values(window.qstrata.graphs).reduce((n, cy) => n + cy.elements().length, 0)")
        print(f"{nodes} sites, {follow}: first full render in {first_render:.2f} s ({drawn} elements)", flush=True)
        await page.evaluate("""() => { window.__cutAt = {};
            window.qstrata.graphs.connectivity.on('class', 'edge', (e) => {
                if (e.target.hasClass('cut') && !window.__cutAt[e.target.id()]) window.__cutAt[e.target.id()] = Date.now(); });
        }""")
        plant = next(r for r in levels.values() if r.level == "fibre-plant")
        from_rpc, from_notification = [], []
        cpu_before = _cpu_seconds(console.pid)
        async with await stack_endpoint(plant).connect(timeout=STEP_TIMEOUT_S) as nc:
            for span in topology.spans[:runs]:
                sent = time.time()
                await nc.dispatch(plant_operation("cut-span", span.id), timeout=STEP_TIMEOUT_S)
                await page.wait_for_function("(id) => window.__cutAt[id]", arg=f"s:{span.id}",
                                             timeout=STEP_TIMEOUT_S * 1000, polling=20)
                shown = (await page.evaluate("(id) => window.__cutAt[id]", f"s:{span.id}")) / 1000
                from_rpc.append(shown - sent)
                notified = _notified((await state())["events"], span.id)
                if notified is not None:
                    from_notification.append(shown - notified)
                print(f"{nodes} sites, {follow}: cut {span.id} on the page {1000 * (shown - sent):.0f} ms after the RPC",
                      flush=True)
                await nc.dispatch(plant_operation("repair-span", span.id), timeout=STEP_TIMEOUT_S)
                await page.wait_for_function(
                    "(id) => !window.qstrata.graphs.connectivity.getElementById(id).hasClass('cut')",
                    arg=f"s:{span.id}", timeout=STEP_TIMEOUT_S * 1000)
        cuts_cpu = (_cpu_seconds(console.pid) - cpu_before) / runs
        memory = _peak_rss_mb(console.pid)
        await context.close()
    return {"nodes": nodes, "follow": follow, "elements": drawn, "up": up, "first_render": first_render,
            "from_rpc": from_rpc, "from_notification": from_notification, "idle": idle, "cut_cpu": cuts_cpu,
            "memory": memory}


def stack_endpoint(row):
    """A NETCONF endpoint of a row of the stack as its read-write user, the host key pinned."""
    from netconf_core import Endpoint

    user, password = row.read_write
    return Endpoint(row.name, row.host, row.port, user, password, host_key=row.host_key)


def _cpu_seconds(pid: int | None) -> float:
    """User and system CPU time of process `pid` (Linux /proc), in seconds."""
    if pid is None:
        return float("nan")
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _notified(events: list[dict], span: str) -> float | None:
    """When the connectivity controller sent the span-down of `span` (its eventTime)."""
    for event in reversed(events):
        if event["event"] == "span-down" and event["resource"] == span and event["time"]:
            return datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
    return None


def format_rows(rows: list[dict]) -> str:
    def ms(values: list[float]) -> str:
        return f"{1000 * statistics.median(values):.0f} / {1000 * max(values):.0f}" if values else "-"

    def cpu(row: dict) -> str:
        levels = ", ".join(f"{name} {100 * share:.0f}%" for name, share in row["idle"].items() if name != "console")
        return f"{100 * row['idle']['console']:.1f}% ({levels})"

    header = ("NODES", "FOLLOW", "ELEMENTS", "CONSOLE UP", "FIRST RENDER", "CUT RPC -> PAGE (median / max ms)",
              "NOTIFICATION -> PAGE (median / max ms)", "CONSOLE CPU PER CUT", "PEAK RSS",
              "IDLE CPU: CONSOLE (LEVELS)")
    lines = [header] + [(str(r["nodes"]), r["follow"], str(r["elements"]), f"{r['up']:.1f} s",
                         f"{r['first_render']:.2f} s", ms(r["from_rpc"]), ms(r["from_notification"]),
                         f"{1000 * r['cut_cpu']:.0f} ms", f"{r['memory']:.0f} MB", cpu(r)) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
