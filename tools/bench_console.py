"""Benchmark of the operator's console: a generated network of N sites (each with a QKD node
and a key manager; ring with chords, devices.topology.generate_topology) runs as a real stack
on 127.0.0.1, the console watches it, and Debian's chromium (headless, Playwright) shows it.

- first full render: from opening the page (logged in) until every stratum is drawn and the
  sites are laid out (the page's `firstRender`), in a fresh browser context (no positions kept);
- update latency: a span is cut at the fibre plant over NETCONF; measured from the RPC, and
  from the connectivity controller's span-down notification (its eventTime), to the moment the
  page turns the span red (cytoscape's class change, the page's clock). The span is repaired
  between runs.

    .venv/bin/qstrata bench console [--nodes 100 1000] [--runs 5]

Every server binds 127.0.0.1; the runs are bounded in count and time."""
from __future__ import annotations

import argparse
import asyncio
import datetime
import shutil
import statistics
import sys
import time

STACK_TIMEOUT_S = 900.0
STEP_TIMEOUT_S = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000],
                        help="sites of each generated network (default 100 1000)")
    parser.add_argument("--runs", type=int, default=5, help="span cuts per network (default 5)")


def run(args: argparse.Namespace) -> int:
    if shutil.which("chromium") is None:
        print("qstrata bench console: Debian's chromium is not installed (make setup installs it)", file=sys.stderr)
        return 1
    if args.runs < 1 or any(n < 2 for n in args.nodes):
        print("qstrata bench console: --runs must be >= 1 and --nodes >= 2", file=sys.stderr)
        return 2
    rows = [asyncio.run(measure(nodes, args.runs)) for nodes in args.nodes]
    print()
    print(format_rows(rows))
    return 0


async def measure(nodes: int, runs: int) -> dict:
    from playwright.async_api import async_playwright

    from console.server import ConsoleServer
    from devices.base import DEMO_PASSWORDS
    from devices.topology import generate_topology, parse_topology
    from tools.console_stack import console_levels, console_users
    from tools.stack import Stack

    topology = parse_topology(generate_topology(nodes), f"generated-{nodes}")
    print(f"{nodes} sites: starting the stack ({len(topology.spans)} spans) ...", flush=True)
    started = time.monotonic()
    stack = Stack(topology, passwords=dict(DEMO_PASSWORDS), insecure_sae_header=True)
    async with asyncio.timeout(STACK_TIMEOUT_S):
        await stack.start(timeout=STACK_TIMEOUT_S)
    try:
        rows = stack.table()
        console = ConsoleServer(console_levels(rows), console_users(rows), title=topology.name)
        await console.start()
        try:
            await console.synced(STACK_TIMEOUT_S)
            print(f"{nodes} sites: stack and console up in {time.monotonic() - started:.0f} s", flush=True)
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                                           args=["--no-sandbox", "--disable-gpu"])
                try:
                    return await _measure_page(browser, console, stack, topology, nodes, runs)
                finally:
                    await browser.close()
        finally:
            await console.stop()
    finally:
        await stack.stop()


async def _measure_page(browser, console, stack, topology, nodes: int, runs: int) -> dict:
    from devices.base import DEMO_PASSWORDS
    from models.connectivity import plant_operation

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
    await page.evaluate("""() => { window.__cutAt = {};
        window.qstrata.graphs.connectivity.on('class', 'edge', (e) => {
            if (e.target.hasClass('cut') && !window.__cutAt[e.target.id()]) window.__cutAt[e.target.id()] = Date.now(); });
    }""")
    plant = next(r for r in stack.table() if r.level == "fibre-plant")
    from_rpc, from_notification = [], []
    async with await stack.endpoint(plant.name, plant.port, plant.host_key).connect() as nc:
        for span in topology.spans[:runs]:
            sent = time.time()
            await nc.dispatch(plant_operation("cut-span", span.id))
            await page.wait_for_function("(id) => window.__cutAt[id]", arg=f"s:{span.id}",
                                         timeout=STEP_TIMEOUT_S * 1000, polling=20)
            shown = (await page.evaluate("(id) => window.__cutAt[id]", f"s:{span.id}")) / 1000
            from_rpc.append(shown - sent)
            notified = _notified(console, span.id)
            if notified is not None:
                from_notification.append(shown - notified)
            await nc.dispatch(plant_operation("repair-span", span.id))
            await page.wait_for_function("(id) => !window.qstrata.graphs.connectivity.getElementById(id).hasClass('cut')",
                                         arg=f"s:{span.id}", timeout=STEP_TIMEOUT_S * 1000)
    await context.close()
    return {"nodes": nodes, "elements": drawn, "first_render": first_render, "from_rpc": from_rpc,
            "from_notification": from_notification}


def _notified(console, span: str) -> float | None:
    """When the connectivity controller sent the span-down of `span` (its eventTime)."""
    for event in reversed(console.hub.events):
        if event["event"] == "span-down" and event["resource"] == span and event["time"]:
            return datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
    return None


def format_rows(rows: list[dict]) -> str:
    def ms(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{1000 * statistics.median(values):.0f} / {1000 * max(values):.0f}"

    header = ("NODES", "ELEMENTS DRAWN", "FIRST FULL RENDER", "CUT RPC -> PAGE (median / max ms)",
              "NOTIFICATION -> PAGE (median / max ms)")
    lines = [header] + [(str(r["nodes"]), str(r["elements"]), f"{r['first_render']:.2f} s", ms(r["from_rpc"]),
                         ms(r["from_notification"])) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
