// The qstrata console's page: three strata drawn with cytoscape.js, intents, alarms and
// events, all following the console server's stream (Server-Sent Events) without reloading.
// Every action is a request to the console server, which performs it at the level as the
// logged-in user: what a read-only user may not do, the page does not offer, and the level
// refuses anyway.
import cytoscape from "cytoscape";
import fcose from "cytoscape-fcose";

cytoscape.use(fcose);

const RED = "#d62828", BLUE = "#2b7bd6", GREY = "#9aa5b1", ORANGE = "#dd6b20", GREEN = "#2a9d4b", YELLOW = "#ffd400";
const STRATA = ["connectivity", "forwarding", "service"];
const GRAPHS = [...STRATA, "fabric"];   // the fabric's only when the network has one
const LARGE = 300;   // nodes past which labels and animations are thinned out

const state = {
  me: null, views: {}, status: {}, events: [], alarms: [], selectedIntent: null, selected: null,
  previewed: null, source: null, renderPending: false, lastApplied: null, firstRender: null, layout: {},
};
const graphs = {};
window.qstrata = { state, graphs, select: (stratum, id) => selectElement(stratum, id) };

const $ = (selector, root = document) => root.querySelector(selector);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
};

// --- formatting ---------------------------------------------------------------------------------

function rate(bits) {
  if (bits === null || bits === undefined || Number.isNaN(bits)) return "-";
  for (const [unit, scale] of [["Gb/s", 1e9], ["Mb/s", 1e6], ["kb/s", 1e3]]) {
    if (bits >= scale) return `${(bits / scale).toPrecision(3)} ${unit}`;
  }
  return `${Math.round(bits)} b/s`;
}
const bits = (n) => (n === null || n === undefined ? "-" : n >= 1e6 ? `${(n / 1e6).toPrecision(3)} Mb` :
  n >= 1e3 ? `${(n / 1e3).toPrecision(3)} kb` : `${n} b`);
const pairs = (rate) => (rate === null || rate === undefined ? "-" : `${rate.toPrecision(3)} pairs/s`);
const fidelity = (f) => (f === null || f === undefined ? "-" : f.toFixed(3));
const badge = (text) => el("span", { class: `state ${text}` }, text || "-");
const bar = (value, total) => el("span", { class: "bar", title: `${value} / ${total}` },
  el("span", { style: `width:${total ? Math.min(100, (100 * value) / total) : 0}%` }));
const time = (text) => (text ? text.replace("T", " ").replace(/\.\d+/, "").replace(/(Z|[+-]\d\d:\d\d)$/, "") : "");

// --- the graphs ---------------------------------------------------------------------------------

const STYLE = [
  { selector: "node", style: { label: "data(label)", "font-size": 10, "text-valign": "bottom", "text-margin-y": 3,
    width: 18, height: 18, "background-color": "#4a5568", color: "#1d2733", "min-zoomed-font-size": 7 } },
  { selector: "node:parent", style: { "background-color": "#edf2f7", "border-color": "#a0aec0", "border-width": 1,
    shape: "round-rectangle", padding: 14, "text-valign": "top", "text-margin-y": -3 } },
  { selector: "node.switch", style: { shape: "diamond", "background-color": "#805ad5" } },
  { selector: "node.qkd", style: { shape: "round-rectangle", "background-color": "#2c5282" } },
  { selector: "node.km", style: { shape: "hexagon", "background-color": "#2f855a", width: 22, height: 22 } },
  { selector: "node.down", style: { "background-color": RED } },
  { selector: "edge", style: { width: 3, "line-color": GREY, "curve-style": "bezier", label: "data(label)",
    "font-size": 8, "text-rotation": "autorotate", "text-background-color": "#fff", "text-background-opacity": 0.8,
    "text-background-padding": 1, "min-zoomed-font-size": 7 } },
  { selector: "edge.inuse", style: { "line-color": BLUE, width: 5 } },
  { selector: "edge.tapped", style: { "line-color": ORANGE, "line-style": "dashed", width: 5 } },
  { selector: "edge.cut", style: { "line-color": RED, "line-style": "dashed", width: 5 } },
  { selector: "edge.qkdlink", style: { "line-color": GREEN, width: "data(width)" } },
  { selector: "edge.qkdlink.down", style: { "line-color": RED } },
  { selector: "edge.pool", style: { "line-color": "#68a37a", width: "data(width)" } },
  { selector: "edge.pool.empty", style: { "line-color": RED } },
  { selector: "node.qn", style: { shape: "ellipse", "background-color": "#6b46c1" } },
  { selector: "node.qn.repeater", style: { shape: "octagon", "background-color": "#975a16" } },
  { selector: "edge.entlink", style: { "line-color": "#805ad5", width: "data(width)" } },
  { selector: "edge.entlink.down", style: { "line-color": RED, "line-style": "dashed" } },
  { selector: ".hl", style: { "underlay-color": YELLOW, "underlay-opacity": 0.8, "underlay-padding": 5 } },
  { selector: ":selected", style: { "overlay-color": "#1d2733", "overlay-opacity": 0.08, "overlay-padding": 8 } },
];

function makeGraph(stratum) {
  const cy = cytoscape({ container: $(`#cy-${stratum}`), style: STYLE, minZoom: 0.05,
    maxZoom: 4, boxSelectionEnabled: false });
  cy.on("tap", "node, edge", (event) => showDetails(stratum, event.target.id()));
  cy.on("tap", (event) => { if (event.target === cy) showDetails(null, null); });
  if (stratum === "connectivity") {
    cy.on("dragfree", "node", (event) => savePositions(event.target.union(event.target.descendants())));
  }
  graphs[stratum] = cy;
  return cy;
}

// Make `cy` hold exactly `elements` ({group, data, classes}), changing only what differs.
function sync(cy, elements) {
  const wanted = new Map(elements.map((e) => [e.data.id, e]));
  cy.batch(() => {
    cy.elements().forEach((existing) => { if (!wanted.has(existing.id())) cy.remove(existing); });
    const added = [];
    for (const [id, e] of wanted) {
      const existing = cy.getElementById(id);
      if (existing.empty()) { added.push(e); continue; }
      const data = existing.data();
      for (const [key, value] of Object.entries(e.data)) {
        if (key !== "parent" && data[key] !== value) existing.data(key, value);
      }
      if (existing.classes().join(" ") !== e.classes) existing.classes(e.classes);
    }
    const nodes = added.filter((e) => e.group === "nodes").sort((a, b) => (a.data.parent ? 1 : 0) - (b.data.parent ? 1 : 0));
    const edges = added.filter((e) => e.group === "edges");
    cy.add(nodes);
    cy.add(edges.filter((e) => !cy.getElementById(e.data.source).empty() && !cy.getElementById(e.data.target).empty()));
  });
}

// Positions: the sites and switches are laid out once (fcose) and kept on the console server,
// one layout per network (GET/POST /api/layout), so a dragged site stays where it was put
// after a reload and for every other browser; every other stratum puts its nodes at their
// site's place. A read-only user may not move the shared layout: their drags are kept in
// this browser only (local storage), over the shared one.
const localKey = () => `qstrata-console:positions:${state.me?.title || "network"}`;
let sitePositions = null;

function fitGraph(cy) {   // the whole graph in view, not magnified past 1.5
  cy.fit(undefined, 30);
  if (cy.zoom() > 1.5) { cy.zoom(1.5); cy.center(); }
}
const fit = fitGraph;

function loadPositions() {
  let local = {};
  if (!canAct()) {
    try { local = JSON.parse(localStorage.getItem(localKey()) || "{}") || {}; } catch { local = {}; }
  }
  const kept = { ...state.layout, ...local };
  return Object.keys(kept).length ? kept : null;
}

// Keep the positions of `nodes` (all of the connectivity graph when not given: a new layout).
function savePositions(nodes) {
  const cy = graphs.connectivity;
  const whole = !nodes;
  const positions = {};
  (nodes || cy.nodes()).forEach((n) => { positions[n.id()] = { x: n.position().x, y: n.position().y }; });
  sitePositions = whole ? { ...positions } : { ...(sitePositions || {}), ...positions };
  if (!whole) cy.nodes(":parent").forEach((n) => { sitePositions[n.id()] = { ...n.position() }; });
  if (canAct()) {
    state.layout = whole ? { ...positions } : { ...state.layout, ...positions };
    request("POST", "/api/layout", { positions, replace: whole }).catch((error) => toast(`layout not kept: ${error.message}`, true));
  } else {
    try { localStorage.setItem(localKey(), JSON.stringify(sitePositions)); } catch { /* private mode: not kept */ }
  }
  placeUpperStrata();
}

// Another browser moved sites (or laid the network out anew): draw them where it put them.
function applyLayout(body) {
  state.layout = body.replace ? { ...body.positions } : { ...state.layout, ...body.positions };
  const cy = graphs.connectivity;
  if (!cy || !sitePositions) return;
  cy.batch(() => {
    for (const [id, at] of Object.entries(body.positions)) {
      const n = cy.getElementById(id);
      if (!n.empty() && n.isChildless() && !n.grabbed()) n.position(at);
    }
  });
  cy.nodes().forEach((n) => { sitePositions[n.id()] = { ...n.position() }; });
  placeUpperStrata(false);
}

function layoutConnectivity() {
  const cy = graphs.connectivity;
  const kept = sitePositions || loadPositions() || {};
  const missing = cy.nodes().filter((n) => !kept[n.id()]);
  cy.nodes().forEach((n) => { if (kept[n.id()] && n.isChildless()) n.position(kept[n.id()]); });
  if (missing.length === 0) { sitePositions = kept; fit(cy); return; }
  if (missing.length < cy.nodes().length) {   // a few new nodes: beside their neighbours
    missing.forEach((n) => {
      const around = n.neighborhood("node").filter((m) => kept[m.id()]);
      const x = around.length ? around.reduce((s, m) => s + kept[m.id()].x, 0) / around.length : 0;
      const y = around.length ? around.reduce((s, m) => s + kept[m.id()].y, 0) / around.length : 0;
      n.position({ x: x + 40 * Math.random(), y: y + 40 * Math.random() });
    });
    sitePositions = kept;
    savePositions(missing);
    fit(cy);
    return;
  }
  const large = cy.nodes().length > LARGE;
  cy.layout({ name: "fcose", quality: large ? "draft" : "default", randomize: true, animate: false,
    nodeRepulsion: 9000, idealEdgeLength: 90, numIter: large ? 1500 : 2500, fit: false }).run();
  fitGraph(cy);
  savePositions();
}

function siteOf(id) {
  const node = state.views.connectivity?.nodes.find((n) => n.id === id);
  return node ? node.site : id;
}

function placeAtSites(cy, siteOfNode, spread) {
  if (!sitePositions) return;
  const bySite = new Map();
  cy.nodes().forEach((n) => {
    const site = siteOfNode(n);
    const list = bySite.get(site) || [];
    list.push(n);
    bySite.set(site, list);
  });
  cy.batch(() => {
    for (const [site, nodes] of bySite) {
      const at = sitePositions[`n:${site}`] || { x: 0, y: 0 };
      nodes.forEach((n, i) => n.position({ x: at.x + spread * i, y: at.y + spread * i * 0.6 }));
    }
  });
}

let upperFitted = false;

function placeUpperStrata(fit = true) {
  const upper = [graphs.forwarding, graphs.service, graphs.fabric];
  upper.forEach((cy) => placeAtSites(cy, (n) => n.data("site"), 28));
  if (fit && sitePositions && upper.some((cy) => cy.nodes().length)) {
    upper.forEach(fitGraph);
    upperFitted = true;
  }
}

// --- the views as graph elements ------------------------------------------------------------------

function spansInUse() {
  const used = new Set();
  for (const path of state.views.connectivity?.paths || []) {
    if (path.status === "up") path.spans.forEach((s) => used.add(s));
  }
  return used;
}

function connectivityElements() {
  const view = state.views.connectivity;
  if (!view) return [];
  const used = spansInUse();
  const large = view.nodes.length > LARGE;
  // A switch sits inside its site (a compound node), where the site is a node of the network.
  const sites = new Set(view.nodes.filter((n) => n.kind !== "optical-switch").map((n) => n.id));
  const nodes = view.nodes.map((n) => {
    const inside = n.kind === "optical-switch" && sites.has(n.site) ? `n:${n.site}` : undefined;
    return { group: "nodes", data: { id: `n:${n.id}`, label: n.id, site: n.site, ...(inside ? { parent: inside } : {}) },
      classes: n.kind === "optical-switch" ? "switch" : "site" };
  });
  const edges = view.spans.map((s) => {
    const status = !s.up ? "cut" : s.eavesdropper ? "tapped" : used.has(s.id) ? "inuse" : "idle";
    return { group: "edges", data: { id: `s:${s.id}`, source: `n:${s.a}`, target: `n:${s.b}`, state: status,
      label: large ? "" : `${s.id}${status === "cut" ? " (cut)" : status === "tapped" ? " (tapped)" : ""}` },
      classes: status };
  });
  return [...nodes, ...edges];
}

function forwardingElements() {
  const view = state.views.forwarding;
  if (!view) return [];
  const large = view.nodes.length > LARGE;
  const nodes = view.nodes.map((n) => ({ group: "nodes", data: { id: `q:${n.id}`, label: n.id, site: n.site },
    classes: "qkd" }));
  const edges = view.links.map((l) => {
    const width = l.up && l.skr ? Math.max(2, Math.min(12, 1.6 * Math.log10(Math.max(l.skr, 1)))) : 2;
    const qber = l.qber === null || l.qber === undefined ? "-" : `${l.qber.toFixed(2)} %`;
    return { group: "edges", data: { id: `l:${l.id}`, source: `q:${l.a}`, target: `q:${l.b}`, status: l.status,
      width, label: large ? "" : `${l.id}: ${rate(l.skr)}, QBER ${qber}` },
      classes: `qkdlink ${l.up ? "up" : "down"}` };
  });
  return [...nodes, ...edges];
}

function keyManagers() {
  return Object.entries(state.views).filter(([key]) => key.startsWith("km:")).map(([, view]) => view);
}

function serviceElements() {
  const forwarding = state.views.forwarding;
  const kms = keyManagers();
  const siteOfKm = new Map();
  (forwarding?.nodes || []).forEach((n) => { if (n.km) siteOfKm.set(n.km, n.site); });
  kms.forEach((km) => { if (km.site) siteOfKm.set(km.id, km.site); });
  const nodes = [...siteOfKm.keys()].map((km) => ({ group: "nodes", data: { id: `k:${km}`, label: km,
    site: siteOfKm.get(km) }, classes: "km" }));
  // A pool is named by its link's qkdl_id; it is drawn as the QKD link it feeds.
  const linkOf = new Map((forwarding?.links || []).map((l) => [l.qkdl, l.id]));
  const pools = new Map();
  for (const km of kms) {
    for (const pool of km.pools) {
      const link = linkOf.get(pool.link) || pool.link;
      if (!pool.peer || pools.has(link)) continue;
      pools.set(link, { km: km.id, ...pool, link });
    }
  }
  const edges = [...pools.values()].map((p) => ({ group: "edges", data: { id: `p:${p.link}`, source: `k:${p.km}`,
    target: `k:${p.peer}`, width: 2 + 6 * (p.capacity ? p.stored / p.capacity : 0),
    label: `${bits(p.stored)} / ${bits(p.capacity)}` }, classes: `pool ${p.stored ? "" : "empty"}` }));
  return [...nodes, ...edges];
}

// The entanglement fabric: quantum nodes at their sites, elementary links with their pair
// generation rate (width) and fresh fidelity.
function fabricElements() {
  const view = state.views.fabric;
  if (!view) return [];
  const large = view.nodes.length > LARGE;
  const nodes = view.nodes.map((n) => ({ group: "nodes", data: { id: `f:${n.id}`, label: n.id, site: n.site },
    classes: `qn ${n.role} ${n.status && n.status !== "up" ? "down" : ""}` }));
  const edges = view.links.map((l) => {
    const width = l.up && l.rate ? Math.max(2, Math.min(12, 2 + 2 * Math.log10(Math.max(l.rate, 1)))) : 2;
    return { group: "edges", data: { id: `e:${l.id}`, source: `f:${l.a}`, target: `f:${l.b}`, status: l.status, width,
      label: large ? "" : `${l.id}: ${pairs(l.rate)}, F ${fidelity(l.fidelity)}` }, classes: `entlink ${l.up ? "up" : "down"}` };
  });
  return [...nodes, ...edges];
}

// --- the intent's path, on every stratum ----------------------------------------------------------

function intentPath(intent) {
  if (!intent) return null;
  const path = intent.paths.find((p) => p["in-use"]) || intent.paths[0];
  if (!path) return { nodes: [], links: [], spans: [], kms: [] };
  const links = state.views.forwarding?.links || [];
  const paths = new Map((state.views.connectivity?.paths || []).map((p) => [p.name, p]));
  const spans = [];
  for (const linkId of path.links) {
    const link = links.find((l) => l.id === linkId);
    const optical = link && link.path ? paths.get(link.path) : null;
    if (optical) spans.push(...optical.spans);
  }
  const kmOf = new Map((state.views.forwarding?.nodes || []).map((n) => [n.id, n.km]));
  return { nodes: path.nodes, links: path.links, spans, kms: path.nodes.map((n) => kmOf.get(n)).filter(Boolean) };
}

function highlight() {
  const intent = (state.views.orchestrator?.intents || []).find((i) => i.name === state.selectedIntent);
  const path = intentPath(intent);
  const chip = $("#selected-intent");
  chip.hidden = !intent;
  chip.textContent = intent ? `intent ${intent.name}: ${intent.state}` : "";
  const ids = {
    connectivity: path ? [...path.spans.map((s) => `s:${s}`), ...spanEnds(path.spans)] : [],
    forwarding: path ? [...path.links.map((l) => `l:${l}`), ...path.nodes.map((n) => `q:${n}`)] : [],
    service: path ? [...path.kms.map((k) => `k:${k}`), ...path.links.map((l) => `p:${l}`)] : [],
  };
  for (const stratum of STRATA) {
    const cy = graphs[stratum];
    const wanted = new Set(ids[stratum]);
    cy.batch(() => {
      cy.elements(".hl").forEach((e) => { if (!wanted.has(e.id())) e.removeClass("hl"); });
      wanted.forEach((id) => cy.getElementById(id).addClass("hl"));
    });
  }
}

function spanEnds(spanIds) {
  const spans = new Map((state.views.connectivity?.spans || []).map((s) => [s.id, s]));
  return spanIds.flatMap((id) => (spans.has(id) ? [`n:${spans.get(id).a}`, `n:${spans.get(id).b}`] : []));
}

// --- details and actions ---------------------------------------------------------------------------

const canAct = () => state.me && state.me.role === "read-write";

function selectElement(stratum, id) {
  showView(stratum);
  const cy = graphs[stratum];
  cy.elements(":selected").unselect();
  cy.getElementById(id).select();
  showDetails(stratum, id);
}

function showDetails(stratum, id) {
  state.selected = stratum && id ? { stratum, id } : null;
  renderDetails();
}

function renderDetails() {
  const aside = $("#details");
  const typed = new Map([...aside.querySelectorAll("input")].map((i) => [i.getAttribute("aria-label"), i.value]));
  aside.replaceChildren();
  const selected = state.selected;
  if (!selected) { aside.append(el("p", { class: "hint" }, "Select a site, span, node or link.")); return; }
  const [kind, name] = [selected.id.slice(0, 1), selected.id.slice(2)];
  const rows = [];
  const actions = [];
  let title = name;
  if (kind === "n") {
    const node = state.views.connectivity?.nodes.find((n) => n.id === name);
    title = `${node?.kind === "optical-switch" ? "optical switch" : "site"} ${name}`;
    rows.push(["site", node?.site]);
    const spans = (state.views.connectivity?.spans || []).filter((s) => s.a === name || s.b === name);
    rows.push(["spans", spans.map((s) => s.id).join(", ")]);
  } else if (kind === "s") {
    const span = state.views.connectivity?.spans.find((s) => s.id === name);
    const paths = (state.views.connectivity?.paths || []).filter((p) => p.spans.includes(name));
    title = `span ${name}`;
    if (span) {
      rows.push(["ends", `${span.a} - ${span.b}`], ["loss", `${span.loss} dB`],
        ["status", span.up ? "up" : "cut"], ["eavesdropper", span.eavesdropper ? "present" : "none"],
        ["faults", span.faults.join(", ") || "none"], ["optical paths", paths.map((p) => `${p.name} (${p.status})`).join(", ") || "none"]);
    }
    if (canAct() && state.me.emulated) {
      const fraction = el("input", { type: "number", min: "0.01", max: "1", step: "0.05", value: "0.5",
        "aria-label": "intercepted fraction", "data-testid": "fraction" });
      actions.push(
        el("button", { class: "danger", "data-testid": "cut-span", onclick: () => fault({ action: "cut-span", span: name }) }, "Cut"),
        el("button", { "data-testid": "repair-span", onclick: () => fault({ action: "repair-span", span: name }) }, "Repair"),
        el("button", { class: "danger", "data-testid": "eavesdrop",
          onclick: () => fault({ action: "eavesdrop", span: name, fraction: Number(fraction.value) }) }, "Eavesdrop"), fraction,
        el("button", { "data-testid": "clear-eavesdropper",
          onclick: () => fault({ action: "clear-eavesdropper", span: name }) }, "Remove eavesdropper"));
    }
  } else if (kind === "q" || kind === "k") {
    const node = kind === "q" ? state.views.forwarding?.nodes.find((n) => n.id === name) : null;
    const km = kind === "k" ? state.views[`km:${name}`] : null;
    title = kind === "q" ? `QKD node ${name}` : `key manager ${name}`;
    if (node) rows.push(["site", node.site], ["key manager", node.km], ["qkdn_id", node.qkdn]);
    if (km) {
      rows.push(["site", km.site], ["pools", km.pools.map((p) => `${p.link}: ${bits(p.stored)} / ${bits(p.capacity)}`).join("; ") || "none"],
        ["sessions", km.sessions.map((s) => `${s.id} (${s.status})`).join(", ") || "none"]);
    }
    const device = (state.me?.devices || []).find(([device]) => device === name);
    if (canAct() && state.me.emulated && device) {
      const outage = el("input", { type: "number", min: "1", max: "3600", value: "30", "aria-label": "outage (s)" });
      actions.push(
        el("button", { class: "danger", "data-testid": "crash",
          onclick: () => fault({ action: "crash", device: name, outage: Math.round(Number(outage.value)) }) }, "Crash"),
        outage, el("span", {}, "s"),
        el("button", { "data-testid": "restart", onclick: () => fault({ action: "restart", device: name }) }, "Restart"));
    }
  } else if (kind === "l") {
    const link = state.views.forwarding?.links.find((l) => l.id === name);
    title = `QKD link ${name}`;
    if (link) {
      rows.push(["nodes", `${link.a} - ${link.b}`], ["type", link.type], ["status", link.status],
        ["secret key rate", rate(link.skr)], ["expected rate", rate(link.eskr)],
        ["QBER", link.qber === null ? "-" : `${link.qber.toFixed(2)} %`],
        ["channel loss", link.loss === null ? "-" : `${link.loss.toFixed(1)} dB`], ["optical path", link.path || "-"]);
    }
  } else if (kind === "f") {
    const node = state.views.fabric?.nodes.find((n) => n.id === name);
    title = `quantum node ${name}`;
    if (node) rows.push(["role", node.role], ["site", node.site], ["status", node.status],
      ["qubits free / stored", `${node.free ?? "-"} / ${node.storage ?? "-"}`]);
  } else if (kind === "e") {
    const link = state.views.fabric?.links.find((l) => l.id === name);
    title = `entanglement link ${name}`;
    if (link) {
      rows.push(["nodes", `${link.a} - ${link.b}`], ["type", link.type], ["status", link.status],
        ["generation rate", pairs(link.rate)], ["fidelity", fidelity(link.fidelity)],
        ["reserved", pairs(link.reserved)], ["length", link.length === null ? "-" : `${link.length} km`]);
    }
  } else if (kind === "p") {
    title = `key pool of link ${name}`;
    const qkdl = (state.views.forwarding?.links || []).find((l) => l.id === name)?.qkdl;
    for (const km of keyManagers()) {
      const pool = km.pools.find((p) => p.link === name || p.link === qkdl);
      if (pool) rows.push([km.id, `${bits(pool.stored)} / ${bits(pool.capacity)} (peer ${pool.peer})`]);
    }
  }
  aside.append(el("h3", {}, title), el("dl", {}, rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "-")])));
  if (actions.length) aside.append(el("div", { class: "actions", "data-testid": "actions" }, actions));
  for (const input of aside.querySelectorAll("input")) {   // what the person typed survives an update
    if (typed.has(input.getAttribute("aria-label"))) input.value = typed.get(input.getAttribute("aria-label"));
  }
}

async function request(method, url, body) {
  const response = await fetch(url, { method, credentials: "same-origin",
    headers: body ? { "Content-Type": "application/json" } : {}, body: body ? JSON.stringify(body) : undefined });
  let reply = {};
  try { reply = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) throw new Error(reply.error || `${response.status} ${response.statusText}`);
  return reply;
}

function toast(text, bad = false) {
  const box = $("#toast");
  box.textContent = text;
  box.className = bad ? "toast bad" : "toast";
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, bad ? 8000 : 4000);
}

async function fault(body) {
  try { toast((await request("POST", "/api/faults", body)).message); } catch (error) { toast(error.message, true); }
}

// --- intents, alarms and events ---------------------------------------------------------------------

function renderIntents() {
  const tbody = $("#intents-table tbody");
  const intents = state.views.orchestrator?.intents || [];
  tbody.replaceChildren(...intents.map((i) => {
    const path = i.paths.find((p) => p["in-use"]) || i.paths[0];
    const row = el("tr", { "data-intent": i.name, class: i.name === state.selectedIntent ? "selected" : "",
      onclick: () => { state.selectedIntent = state.selectedIntent === i.name ? null : i.name; scheduleRender(); } },
    el("td", {}, i.name), el("td", {}, badge(i.state)), el("td", {}, `${i.source} → ${i.destination}`),
    el("td", {}, rate(i.min_rate)), el("td", {}, rate(i.observed_rate)),
    el("td", { "data-testid": "intent-path" }, path ? path.nodes.join(" - ") : "-"), el("td", {}, i.reason),
    el("td", {}, canAct() ? el("button", { class: "quiet", "data-testid": "delete-intent", onclick: (event) => {
      event.stopPropagation();
      if (confirm(`Delete intent ${i.name}?`)) request("DELETE", `/api/intents/${encodeURIComponent(i.name)}`)
        .then((r) => toast(r.message), (e) => toast(e.message, true));
    } }, "delete") : ""));
    return row;
  }));
  const detail = $("#intent-detail");
  const intent = intents.find((i) => i.name === state.selectedIntent);
  detail.replaceChildren();
  if (!intent) return;
  detail.append(el("h3", {}, `Conditions of ${intent.name}`),
    el("table", {}, el("thead", {}, el("tr", {}, ["type", "status", "reason", "message", "since"].map((h) => el("th", {}, h)))),
      el("tbody", {}, intent.conditions.map((c) => el("tr", {}, el("td", {}, c.type), el("td", {}, c.status),
        el("td", {}, c.reason), el("td", {}, c.message), el("td", {}, time(c["last-transition-time"])))))),
    el("h3", {}, "Paths"),
    el("ul", {}, intent.paths.map((p) => el("li", {}, `${p["in-use"] ? "in use" : "standby"}: ${p.nodes.join(" - ")}`))),
    el("h3", {}, "History"),
    el("table", {}, el("thead", {}, el("tr", {}, ["#", "time", "from", "to", "reason"].map((h) => el("th", {}, h)))),
      el("tbody", {}, [...intent.history].reverse().map((t) => el("tr", {}, el("td", {}, t.sequence), el("td", {}, time(t.time)),
        el("td", {}, t.from || "-"), el("td", {}, badge(t.to)), el("td", {}, t.reason))))));
}

function renderService() {
  const sessions = state.views.service?.sessions || [];
  $("#sessions-table tbody").replaceChildren(...sessions.map((s) => el("tr", {},
    el("td", {}, s.name), el("td", {}, `${s.source} → ${s.destination}`), el("td", {}, rate(s.rate)),
    el("td", {}, badge(s.status)), el("td", {}, bits(s.delivered_bits)),
    el("td", {}, s.path.map((h) => h.km).join(" - ")))));
  const kms = keyManagers();
  $("#buckets-table tbody").replaceChildren(...kms.flatMap((km) => km.sessions.filter((s) => s.tokens !== null)
    .map((s) => el("tr", {}, el("td", {}, km.id), el("td", {}, s.id),
      el("td", {}, bar(s.tokens, s.burst), `${bits(s.tokens)} / ${bits(s.burst)}`), el("td", {}, rate(s.rate)),
      el("td", {}, badge(s.status))))));
  $("#pools-table tbody").replaceChildren(...kms.flatMap((km) => km.pools.map((p) => el("tr", {},
    el("td", {}, km.id), el("td", {}, p.link), el("td", {}, p.peer),
    el("td", {}, bar(p.stored, p.capacity), `${bits(p.stored)} / ${bits(p.capacity)}`)))));
}

function renderEntanglementSessions() {
  const view = state.views.entanglement;
  $("#entanglement-sessions").hidden = !view;
  if (!view) return;
  $("#entanglement-table tbody").replaceChildren(...view.sessions.map((s) => el("tr", { "data-session": s.name },
    el("td", {}, s.name), el("td", {}, `${s.source || "-"} → ${s.destination || "-"}`),
    el("td", {}, `≥ ${fidelity(s.min_fidelity)}`), el("td", {}, badge(s.status)),
    el("td", {}, fidelity(s.expected_fidelity)), el("td", {}, s.delivered_pairs ?? "-"),
    el("td", { "data-testid": "entanglement-path" }, s.path.join(" - ") || "-"), el("td", {}, s.reason))));
}

function renderAlarms() {
  const alarms = [
    ...(state.views.connectivity?.alarms || []).map((a) => ({ level: "connectivity", ...a })),
    ...(state.views.forwarding?.alarms || []).map((a) => ({ level: "forwarding", ...a })),
  ].sort((a, b) => (a.since < b.since ? 1 : -1));
  $("#alarm-count").textContent = alarms.length ? String(alarms.length) : "";
  $("#alarms-table tbody").replaceChildren(...alarms.map((a) => el("tr", { "data-resource": a.link || a.resource },
    el("td", {}, time(a.since)), el("td", {}, a.level), el("td", {}, a.link || a.resource), el("td", {}, a.type),
    el("td", {}, badge(a.severity)), el("td", {}, a.text))));
}

const eventRow = (e) => el("tr", { "data-event": e.event }, el("td", {}, time(e.time)), el("td", {}, e.level),
  el("td", {}, e.status ? `${e.event}: ${e.status}` : e.event), el("td", {}, e.resource), el("td", {}, badge(e.severity)),
  el("td", {}, e.text));

function renderEvents() {
  $("#events-table tbody").replaceChildren(...[...state.events].reverse().map(eventRow));
}

function addEvent(event) {
  state.events.push(event);
  if (state.events.length > 500) state.events.shift();
  const tbody = $("#events-table tbody");
  tbody.prepend(eventRow(event));
  while (tbody.children.length > 500) tbody.lastChild.remove();
}

// --- applying intents ---------------------------------------------------------------------------------

let applyReady = false;

function setupApply() {
  const form = $("#apply-form"), text = $("#apply-text"), result = $("#apply-result");
  form.hidden = !canAct();
  if (applyReady) return;
  applyReady = true;
  text.addEventListener("input", () => { $("#apply-button").disabled = state.previewed !== text.value || !state.previewed; });
  $("#preview-button").addEventListener("click", async () => {
    result.replaceChildren(el("p", {}, "asking the orchestrator for a dry run ..."));
    try {
      const reply = await request("POST", "/api/intents/preview", { text: text.value });
      state.previewed = text.value;
      $("#apply-button").disabled = false;
      result.replaceChildren(el("h3", {}, "Dry run: nothing has been changed"),
        ...(reply.intents.length ? reply.intents.map((i) => el("div", { "data-testid": "dry-run-intent" },
          el("p", {}, el("b", {}, i.name), `: ${i.change}, `, i.feasible ? "feasible" : el("b", {}, "NOT feasible"), `: ${i.reason}`),
          el("pre", {}, i.requests.map((r) => `${r.stratum}  ${r.operation} ${r.resource} ${r.name}: ${r.detail}`).join("\n") || "(no request)")))
          : [el("p", {}, "the commit would change nothing")]));
    } catch (error) {
      state.previewed = null;
      $("#apply-button").disabled = true;
      result.replaceChildren(el("p", { class: "error" }, error.message));
    }
  });
  $("#apply-button").addEventListener("click", async () => {
    try {
      const reply = await request("POST", "/api/intents/apply", { text: text.value });
      result.replaceChildren(el("p", {}, `committed: ${reply.committed.join(", ")}; follow them in the list above`));
      state.previewed = null;
      $("#apply-button").disabled = true;
    } catch (error) {
      result.replaceChildren(el("p", { class: "error" }, error.message));
    }
  });
}

// --- the stream ---------------------------------------------------------------------------------------

// What each part of the page was last drawn from: a part is drawn again only when a view it
// shows has been replaced (each message replaces one view object) or the selection changed.
const drawn = new Map();

function changed(part, ...inputs) {
  const before = drawn.get(part);
  if (before && before.length === inputs.length && before.every((v, i) => v === inputs[i])) return false;
  drawn.set(part, inputs);
  return true;
}

function render() {
  state.renderPending = false;
  const v = state.views;
  const kms = keyManagers();
  const firstLayout = !sitePositions && v.connectivity;
  if (changed("connectivity", v.connectivity)) sync(graphs.connectivity, connectivityElements());
  if (firstLayout) layoutConnectivity();
  const forwardingChanged = changed("forwarding", v.forwarding);
  const serviceChanged = changed("service-graph", v.forwarding, ...kms);
  if (forwardingChanged) sync(graphs.forwarding, forwardingElements());
  if (serviceChanged) sync(graphs.service, serviceElements());
  const fabricChanged = changed("fabric", v.fabric);
  if (fabricChanged) {
    $("#tab-fabric").hidden = !v.fabric;
    sync(graphs.fabric, fabricElements());
  }
  if (forwardingChanged || serviceChanged || fabricChanged || firstLayout) placeUpperStrata(firstLayout || !upperFitted);
  highlight();
  if (changed("intents", v.orchestrator, state.selectedIntent)) renderIntents();
  if (changed("tables", v.service, ...kms)) renderService();
  if (changed("entanglement", v.entanglement)) renderEntanglementSessions();
  if (changed("alarms", v.connectivity, v.forwarding)) renderAlarms();
  if (state.selected) renderDetails();
  const live = $("#live");
  const down = Object.entries(state.status).filter(([, s]) => !s.reachable).map(([k]) => k);
  live.textContent = down.length ? `unreachable: ${down.join(", ")}` : "live";
  live.className = down.length ? "live" : "live on";
  const applied = { sequence: state.sequence, at: Date.now() };
  state.lastApplied = applied;
  if (!state.firstRender && state.views.connectivity && state.views.forwarding && state.views.orchestrator) {
    state.firstRender = applied;
  }
}

function scheduleRender() {
  if (state.renderPending) return;
  state.renderPending = true;
  requestAnimationFrame(render);
}

function connect() {
  const source = new EventSource("/api/stream");
  state.source = source;
  source.addEventListener("snapshot", (message) => {
    const snapshot = JSON.parse(message.data);
    state.views = snapshot.views;
    state.status = snapshot.status;
    state.sequence = snapshot.sequence;
    state.events = snapshot.events;
    renderEvents();
    scheduleRender();
  });
  source.addEventListener("level", (message) => {
    const body = JSON.parse(message.data);
    state.views[body.key] = body.view;
    state.sequence = body.sequence;
    scheduleRender();
  });
  source.addEventListener("status", (message) => {
    const body = JSON.parse(message.data);
    state.status[body.key] = body.status;
    state.sequence = body.sequence;
    scheduleRender();
  });
  source.addEventListener("layout", (message) => applyLayout(JSON.parse(message.data)));
  source.addEventListener("event", (message) => {
    const body = JSON.parse(message.data);
    state.sequence = body.sequence;
    addEvent(body.event);
  });
  source.onerror = () => {
    $("#live").textContent = "reconnecting";
    $("#live").className = "live";
    if (source.readyState === EventSource.CLOSED) {   // logged out, or the console went away
      setTimeout(() => start(), 2000);
    }
  };
}

// --- tabs, login, start ---------------------------------------------------------------------------------

function showView(name) {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.setAttribute("aria-selected", String(button.dataset.view === name));
  }
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.id !== `view-${name}`;
  }
  if (graphs[name]) {
    graphs[name].resize();
    fitGraph(graphs[name]);
  }
  location.hash = name;
}

async function start() {
  let me;
  try {
    me = await request("GET", "/api/me");
  } catch {
    $("#app").hidden = true;
    $("#login").hidden = false;
    return;
  }
  state.me = me;
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#network-title").textContent = `network ${me.title}`;
  $("#whoami").textContent = `${me.user} (${me.role === "read-write" ? "operator" : "read-only"})`;
  document.body.dataset.role = me.role;
  if (!graphs.connectivity) GRAPHS.forEach(makeGraph);
  setupApply();
  try { state.layout = (await request("GET", "/api/layout")).positions || {}; } catch { state.layout = {}; }
  const wanted = location.hash.slice(1);
  showView(["connectivity", "forwarding", "service", "fabric", "intents", "alarms"].includes(wanted) ? wanted : "connectivity");
  if (state.source) state.source.close();
  connect();
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    await request("POST", "/api/login", { user: form.get("user"), password: form.get("password") });
    $("#login-error").textContent = "";
    await start();
  } catch (error) {
    $("#login-error").textContent = error.message;
  }
});
$("#logout").addEventListener("click", async () => {
  await request("POST", "/api/logout").catch(() => {});
  if (state.source) state.source.close();
  location.reload();
});
for (const button of document.querySelectorAll("#tabs button")) {
  button.addEventListener("click", () => showView(button.dataset.view));
}
start();
