"""The operator's console in a real browser: Debian's chromium, headless, driven by Playwright
(never a browser of its own), against the console server over a real stack of the Madrid
network. The page must show the network, follow a fibre cut made from the page within
seconds (span and links red, the intent on its new path), and offer a read-only user no
action, which the levels refuse anyway when the page is bypassed (curl, a direct POST).

A screenshot of each view is written to the test's tmp dir, and also to the directory
$QSTRATA_CONSOLE_SCREENSHOTS names, when set."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import time

import pytest

from conftest import LoopThread
from devices.base import DEMO_PASSWORDS
from devices.topology import default_topology, embedded_topology
from tools.console_stack import console_levels, console_users
from tools.stack import Stack

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make setup installs it)")

DIST = pathlib.Path(__file__).resolve().parents[1] / "console" / "web" / "dist" / "index.html"
VIEWS = ("connectivity", "forwarding", "service", "intents", "alarms")
RED = "rgb(214,40,40)"
SETTLE_S = 30.0          # bound for a change to reach the page (it takes about a second)
INTENT_YAML = "name: {name}\nendpoints: {{source-sae: sae-quintin, destination-sae: sae-distrito}}\nmin-rate: 20000\n"


class Running:
    """A stack (Madrid unless told) and a console over it, on a loop in a background thread."""

    def __init__(self, topology=None, title: str = "madrid", state_dir: pathlib.Path | None = None) -> None:
        from console.server import ConsoleServer

        self.loop = LoopThread()
        self.topology = topology or default_topology()
        self.stack = Stack(self.topology, passwords=dict(DEMO_PASSWORDS), insecure_sae_header=True)
        self.loop.run(self.stack.start(), timeout=120)
        rows = self.stack.table()
        self.console = ConsoleServer(console_levels(rows), console_users(rows), title=title, state_dir=state_dir)
        self.loop.run(self.console.start())
        self.loop.run(self.console.synced(60), timeout=90)
        self.url = self.console.url

    def close(self) -> None:
        self.loop.run(self.console.stop())
        self.loop.run(self.stack.stop(), timeout=120)
        self.loop.close()

    def span_up(self, span: str) -> bool:
        return next(s for s in self.console.hub.views["connectivity"]["spans"] if s["id"] == span)["up"]

    def intents(self) -> dict:
        return {i["name"]: i for i in self.console.hub.views["orchestrator"]["intents"]}


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    if not DIST.exists():
        pytest.fail(f"the console's page is not built ({DIST}): run `make setup`")
    stack = Running(state_dir=tmp_path_factory.mktemp("console-state"))
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture
def page_as(browser, running):
    """A fresh page (its own cookies and storage: another browser) logged in as a user."""
    with _pages(browser, running) as login:
        yield login


@contextlib.contextmanager
def _pages(browser, running):
    contexts = []

    def login(user: str):
        # the page's CSP refuses eval; the test's own probes (wait_for_function) need it
        context = browser.new_context(viewport={"width": 1400, "height": 850}, bypass_csp=True)
        contexts.append(context)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(running.url)
        page.fill("input[name=user]", user)
        page.fill("input[name=password]", DEMO_PASSWORDS[user])
        page.click("#login-form button[type=submit]")
        page.wait_for_function("window.qstrata.state.firstRender !== null", timeout=SETTLE_S * 1000)
        page.errors = errors
        return page

    try:
        yield login
    finally:
        for context in contexts:
            context.close()


def screenshot(page, tmp_path: pathlib.Path, name: str) -> pathlib.Path:
    path = tmp_path / f"console-{name}.png"
    page.screenshot(path=str(path))
    extra = os.environ.get("QSTRATA_CONSOLE_SCREENSHOTS")
    if extra:
        pathlib.Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, pathlib.Path(extra) / path.name)
    assert path.stat().st_size > 10_000   # a picture, not an empty page
    return path


def graph(page, stratum: str) -> dict:
    """The elements a graph of the page draws: nodes, and edges with their colour and classes."""
    return page.evaluate("""(stratum) => {
        const cy = window.qstrata.graphs[stratum];
        return {nodes: cy.nodes().map((n) => n.id()),
                edges: Object.fromEntries(cy.edges().map((e) => [e.id(),
                    {color: e.style('line-color').replace(/ /g, ''), classes: e.classes(), hl: e.hasClass('hl')}]))};
    }""", stratum)


def wait_until(page, script: str, arg=None, timeout: float = SETTLE_S) -> None:
    page.wait_for_function(script, arg=arg, timeout=timeout * 1000, polling=100)


def click_element(page, stratum: str, element_id: str) -> None:
    """A real mouse click on a node or on an edge's midpoint, where the page draws it."""
    page.click(f"#tabs button[data-view={stratum}]")
    point = page.evaluate("""([stratum, id]) => {
        const cy = window.qstrata.graphs[stratum], e = cy.getElementById(id);
        const p = e.isNode() ? e.renderedPosition() : e.renderedMidpoint();
        const box = cy.container().getBoundingClientRect();
        return {x: box.left + p.x, y: box.top + p.y};
    }""", [stratum, element_id])
    page.mouse.click(point["x"], point["y"])
    wait_until(page, "(id) => window.qstrata.state.selected && window.qstrata.state.selected.id === id", element_id,
               timeout=5)


def test_the_page_shows_the_madrid_network_on_every_stratum(page_as, running, tmp_path):
    page = page_as("admin")
    topology = running.topology
    keys = [f"km:{km.id}" for km in topology.key_managers]
    wait_until(page, "(keys) => keys.every((k) => window.qstrata.state.views[k])", keys)
    connectivity = graph(page, "connectivity")
    assert set(connectivity["nodes"]) == {f"n:{s.id}" for s in topology.sites} | {f"n:{s.id}" for s in topology.switches}
    assert set(connectivity["edges"]) == {f"s:{s.id}" for s in topology.spans}
    assert all(edge["color"] != RED for edge in connectivity["edges"].values())   # nothing is cut
    assert set(graph(page, "forwarding")["nodes"]) == {f"q:{n.id}" for n in topology.qkd_nodes}
    assert set(graph(page, "service")["nodes"]) == {f"k:{km.id}" for km in topology.key_managers}
    assert page.text_content("#whoami") == "admin (operator)"
    for view in VIEWS:
        page.click(f"#tabs button[data-view={view}]")
        assert page.is_visible(f"[data-testid=view-{view}]")
        screenshot(page, tmp_path, view)
    assert page.errors == []


def test_a_fibre_cut_from_the_page_turns_span_and_links_red_and_the_intent_moves(page_as, running, tmp_path):
    page = page_as("admin")
    name = f"cut-{time.monotonic_ns()}"
    page.click("#tabs button[data-view=intents]")
    page.fill("#apply-text", INTENT_YAML.format(name=name))
    assert page.is_disabled("#apply-button")       # a preview comes first
    page.click("#preview-button")
    page.wait_for_selector("[data-testid=dry-run-intent]", timeout=SETTLE_S * 1000)
    assert "create, feasible" in page.text_content("[data-testid=apply-result]")
    assert name not in running.intents()           # the dry run changed nothing
    page.click("#apply-button")
    row = f"#intents-table tr[data-intent='{name}']"
    try:
        page.wait_for_selector(f"{row} .state.active", timeout=SETTLE_S * 1000)
        page.click(row)
        wait_until(page, "() => window.qstrata.graphs.connectivity.edges('.hl').length > 0")
        before = graph(page, "connectivity")
        spans = sorted(edge for edge, e in before["edges"].items() if e["hl"])
        old_path = page.text_content(f"{row} [data-testid=intent-path]")
        links = [edge for edge, e in graph(page, "forwarding")["edges"].items() if e["hl"]]
        assert links, "the intent's QKD links are highlighted"
        screenshot(page, tmp_path, "intent-selected")
        cut = spans[0]
        page.evaluate("""() => { window.__turnedDown = [];
            window.qstrata.graphs.forwarding.on('class', 'edge', (e) => {
                if (e.target.hasClass('down')) window.__turnedDown.push(e.target.id()); }); }""")
        click_element(page, "connectivity", cut)
        started = time.monotonic()
        page.click("[data-testid=cut-span]")
        wait_until(page, "(id) => window.qstrata.graphs.connectivity.getElementById(id).style('line-color')"
                         ".replace(/ /g, '') === 'rgb(214,40,40)'", cut, timeout=10)
        red_after = time.monotonic() - started
        assert red_after < 10
        assert not running.span_up(cut[2:])
        wait_until(page, "(links) => links.some((id) => window.__turnedDown.includes(id)) || links.some((id) =>"
                         " window.qstrata.graphs.forwarding.getElementById(id).style('line-color').replace(/ /g, '')"
                         " === 'rgb(214,40,40)')", links, timeout=10)
        page.click("#tabs button[data-view=connectivity]")
        screenshot(page, tmp_path, "span-cut")
        # the intent moves to a path around the cut, and the page highlights that one
        wait_until(page, """([name, cut, old]) => {
            const intent = window.qstrata.state.views.orchestrator.intents.find((i) => i.name === name);
            const hl = window.qstrata.graphs.connectivity.edges('.hl').map((e) => e.id());
            const row = document.querySelector(`#intents-table tr[data-intent='${name}'] [data-testid=intent-path]`);
            return intent && intent.state === 'active' && hl.length > 0 && !hl.includes(cut)
                && row && row.textContent !== old; }""", [name, cut, old_path], timeout=SETTLE_S * 2)
        assert graph(page, "connectivity")["edges"][cut]["color"] == RED
        screenshot(page, tmp_path, "intent-moved")
        page.click("#tabs button[data-view=alarms]")
        page.wait_for_selector(f"#alarms-table tr[data-resource='{cut[2:]}']", timeout=SETTLE_S * 1000)
        assert page.locator("#events-table tr[data-event=span-down]").count() >= 1
        screenshot(page, tmp_path, "alarms-after-cut")
        click_element(page, "connectivity", cut)
        page.click("[data-testid=repair-span]")
        wait_until(page, "(id) => window.qstrata.graphs.connectivity.getElementById(id).style('line-color')"
                         ".replace(/ /g, '') !== 'rgb(214,40,40)'", cut, timeout=10)
        assert running.span_up(cut[2:])
    finally:
        for span in running.topology.spans:
            if not running.span_up(span.id):
                running.loop.run(_repair(running, span.id))
        _delete_intent(running, name)
    assert page.errors == []


def test_the_read_only_user_gets_no_action_and_the_levels_refuse_one_posted_directly(page_as, running, tmp_path):
    page = page_as("monitor")
    assert page.text_content("#whoami") == "monitor (read-only)"
    span = running.topology.spans[0].id
    click_element(page, "connectivity", f"s:{span}")
    assert "span " + span in page.text_content("[data-testid=details]")
    assert page.locator("[data-testid=actions]").count() == 0
    assert page.locator("[data-testid=cut-span]").count() == 0
    click_element(page, "forwarding", f"q:{running.topology.qkd_nodes[0].id}")
    assert page.locator("[data-testid=crash]").count() == 0
    page.click("#tabs button[data-view=intents]")
    assert not page.is_visible("[data-testid=apply-form]")
    assert page.locator("[data-testid=delete-intent]").count() == 0
    screenshot(page, tmp_path, "read-only-intents")

    def post(path: str, body: dict, user: str = "monitor") -> tuple[int, dict]:
        result = subprocess.run(
            ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-u", f"{user}:{DEMO_PASSWORDS[user]}",
             "-H", "Content-Type: application/json", "-d", json.dumps(body), running.url + path.lstrip("/")],
            capture_output=True, text=True, timeout=60, check=True)
        text, _, status = result.stdout.rpartition("\n")
        return int(status), json.loads(text)

    status, reply = post("/api/faults", {"action": "cut-span", "span": span})
    assert (status, reply["tag"]) == (403, "access-denied"), reply
    assert "monitor" in reply["error"] and "cut-span" in reply["error"]
    status, reply = post("/api/intents/apply", {"text": INTENT_YAML.format(name="by-monitor")})
    assert (status, reply["tag"]) == (403, "access-denied"), reply
    status, reply = post("/api/faults", {"action": "crash", "device": running.topology.qkd_nodes[0].id})
    assert (status, reply["tag"]) == (403, "access-denied"), reply
    time.sleep(1.0)   # had a level taken it, its notification would be through by now
    assert running.span_up(span)
    assert "by-monitor" not in running.intents()
    assert page.errors == []


async def _repair(running: Running, span: str) -> None:
    from models.connectivity import plant_operation

    plant = next(r for r in running.stack.table() if r.level == "fibre-plant")
    endpoint = running.stack.endpoint(plant.name, plant.port, plant.host_key)
    async with await endpoint.connect() as nc:
        await nc.dispatch(plant_operation("repair-span", span))


def _delete_intent(running: Running, name: str) -> None:
    if name in running.intents():
        running.loop.run(running.console.actions.delete_intent("read-write", name))


def test_a_dragged_site_keeps_its_place_after_a_reload_and_in_another_browser(page_as, running):
    page = page_as("admin")
    site = f"n:{running.topology.sites[0].id}"
    page.click("#tabs button[data-view=connectivity]")
    start = page.evaluate("""(id) => {
        const cy = window.qstrata.graphs.connectivity, p = cy.getElementById(id).renderedPosition();
        const box = cy.container().getBoundingClientRect();
        return {x: box.left + p.x, y: box.top + p.y};
    }""", site)
    before = page.evaluate("(id) => window.qstrata.graphs.connectivity.getElementById(id).position()", site)
    page.mouse.move(start["x"], start["y"])       # a real drag with the mouse
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(start["x"] + 8 * step, start["y"] + 5 * step)
    page.mouse.up()
    moved = page.evaluate("(id) => window.qstrata.graphs.connectivity.getElementById(id).position()", site)
    assert abs(moved["x"] - before["x"]) > 20 and abs(moved["y"] - before["y"]) > 10

    def kept() -> dict | None:
        return running.console.layout.positions.get(site)

    deadline = time.monotonic() + SETTLE_S
    while kept() != {"x": moved["x"], "y": moved["y"]} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert kept() == {"x": moved["x"], "y": moved["y"]}
    assert (running.console.layout.path.exists() and
            json.loads(running.console.layout.path.read_text())["positions"][site] == kept())
    where = "(id) => window.qstrata.graphs.connectivity.getElementById(id).position()"
    page.reload()
    page.wait_for_function("window.qstrata.state.firstRender !== null", timeout=SETTLE_S * 1000)
    assert page.evaluate(where, site) == moved
    other = page_as("monitor")      # another browser, nothing in its storage
    assert other.evaluate(where, site) == moved
    # the QKD node of that site is drawn at the site's new place
    node = next(n.id for n in running.topology.qkd_nodes if n.site == site[2:])
    at = other.evaluate("(id) => window.qstrata.graphs.forwarding.getElementById(id).position()", f"q:{node}")
    assert abs(at["x"] - moved["x"]) < 60 and abs(at["y"] - moved["y"]) < 60
    assert page.errors == [] and other.errors == []


@pytest.fixture(scope="module")
def entangled():
    stack = Running(embedded_topology("entanglement.yaml"), title="entanglement")
    yield stack
    stack.close()


def test_the_fabric_view_draws_entanglement_links_with_rate_and_fidelity(browser, entangled, tmp_path):
    with _pages(browser, entangled) as login:
        page = login("monitor")
        assert page.is_visible("#tabs button[data-view=fabric]")
        page.click("#tabs button[data-view=fabric]")
        nodes = {f"f:{n.id}" for n in entangled.topology.quantum_nodes}
        wait_until(page, r"""(nodes) => { const cy = window.qstrata.graphs.fabric;
            return nodes.every((id) => cy.getElementById(id).nonempty()) && cy.edges().length > 0
                && cy.edges().every((e) => e.hasClass('up') && /pairs\/s, F 0\.\d{3}$/.test(e.data('label'))); }""",
                   sorted(nodes))
        fabric = graph(page, "fabric")
        assert set(fabric["nodes"]) == nodes
        link = next(iter(fabric["edges"]))
        click_element(page, "fabric", link)
        details = page.text_content("[data-testid=details]")
        assert "entanglement link" in details and "pairs/s" in details and "fidelity" in details
        screenshot(page, tmp_path, "fabric")
        page.click("#tabs button[data-view=service]")
        assert page.is_visible("[data-testid=entanglement-sessions]")
        assert page.errors == []
