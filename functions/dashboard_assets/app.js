// Orchesity dashboard: plain JavaScript, no framework, no build step, no other host.
// The admin key is kept in sessionStorage (this tab only) and sent as Authorization:
// Bearer to this server's API. Live views use Server-Sent Events with short-lived read
// tokens (POST …/stream-token), since EventSource cannot send a header: the key is
// never put in a URL.
"use strict";

const KEY_STORE = "orchesity.key";
const STEP_STATES = {
  pending: ["○", "Queued", "s-idle"], running: ["▶", "Running", "s-run"], retrying: ["↻", "Retrying", "s-warn"],
  succeeded: ["✓", "Succeeded", "s-ok"], failed: ["✕", "Failed", "s-bad"], cancelled: ["■", "Cancelled", "s-bad"],
};
const RUN_STATES = {
  queued: ["○", "Queued", "s-idle"], running: ["▶", "Running", "s-run"], succeeded: ["✓", "Succeeded", "s-ok"],
  failed: ["✕", "Failed", "s-bad"], cancelled: ["■", "Cancelled", "s-bad"], timed_out: ["⌛", "Timed out", "s-bad"],
};
const FINISHED = new Set(["succeeded", "failed", "cancelled", "timed_out"]);
const VIEWS = ["providers", "requests", "runs", "tools", "keys"];
const MAX_EVENTS = 500;  // the latest events a run's view shows
const state = { key: null, signedIn: false, view: null, providerStream: null, runStream: null,
                runId: null, runsTimer: null, tool: null, toolFields: [], pipelines: {}, weights: null };

// --- small helpers ---------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

// Label each cell with its column's heading: a narrow screen shows a table's rows as
// stacked "heading: value" lines (app.css, table.stack) instead of scrolling sideways.
function labelCells(table) {
  const headings = [...table.tHead.rows[0].cells].map((th) => th.querySelector(".sr") ? "" : th.textContent.trim());
  for (const row of table.tBodies[0].rows) {
    [...row.cells].forEach((cell, i) => { if (headings[i] && cell.colSpan === 1) cell.dataset.label = headings[i]; });
  }
}
new MutationObserver((changes) => {
  for (const change of changes) {
    const table = change.target.closest && change.target.closest("table.stack");
    if (table) labelCells(table);
  }
}).observe(document.body, { childList: true, subtree: true });

function showError(id, error) {
  const node = $(id);
  if (!error) { node.hidden = true; node.textContent = ""; return; }
  node.hidden = false;
  node.textContent = error.message || String(error);
}

function badge(map, status) {
  const [icon, label, cls] = map[status] || ["?", status, "s-idle"];
  return el("span", { class: `badge ${cls}` }, `${icon} ${label}`);
}

const fmt = {
  time: (iso) => iso ? new Date(iso).toLocaleString() : "–",
  clock: (epoch) => new Date(epoch * 1000).toLocaleTimeString(),
  ms: (v) => v === null || v === undefined ? "–" : `${Math.round(v)} ms`,
  pct: (v) => v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`,
  usd: (v) => `$${(v || 0).toFixed(v && v < 0.01 ? 6 : 4)}`,
  seconds(startIso, endIso) {
    if (!startIso) return "–";
    const s = ((endIso ? new Date(endIso) : new Date()) - new Date(startIso)) / 1000;
    return s < 10 ? `${s.toFixed(2)} s` : s < 120 ? `${s.toFixed(1)} s` : `${Math.round(s / 60)} min`;
  },
  json: (v) => typeof v === "string" ? v : JSON.stringify(v, null, 2),
};

// --- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error;
    super(error ? error.message : `the server answered ${status}`);
    this.status = status; this.body = body; this.param = error && error.param; this.details = error && error.details;
  }
}

async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (state.key) headers.authorization = `Bearer ${state.key}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                    cache: "no-store", credentials: "omit" });
  } catch (exc) {
    throw new Error(`the server cannot be reached (${exc.message})`);
  }
  let data = null;
  try { data = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 && state.signedIn) signOut(`Signed out: ${error.message}`);
    throw error;
  }
  return data;
}

// A Server-Sent Events stream that asks for its read token first, and a new one when the
// stream ends (tokens expire in minutes) or breaks.
class LiveStream {
  // query(): what to add to the stream's URL on each (re)connection, e.g. where to resume.
  constructor(tokenPath, handlers, onStatus, query = () => "") {
    this.tokenPath = tokenPath; this.handlers = handlers; this.onStatus = onStatus; this.query = query;
    this.source = null; this.stopped = false; this.retry = 1000; this.timer = null;
  }
  async start() {
    if (this.stopped) return;
    try {
      const grant = await api("POST", this.tokenPath);
      if (this.stopped) return;
      this.open(grant.stream_url + this.query());
    } catch (exc) {
      this.onStatus(`not live: ${exc.message}`);
      this.later();
    }
  }
  open(url) {
    const source = new EventSource(url);
    this.source = source;
    source.onopen = () => { this.retry = 1000; this.onStatus("live"); };
    for (const [name, handler] of Object.entries(this.handlers)) {
      source.addEventListener(name, (event) => handler(JSON.parse(event.data), this));
    }
    source.onerror = () => {  // ended (token expired, run finished) or broke: start again with a new token
      source.close();
      if (this.source === source && !this.stopped) { this.onStatus("reconnecting…"); this.later(); }
    };
  }
  later() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.start(), this.retry);
    this.retry = Math.min(this.retry * 2, 15000);
  }
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
  }
}

// --- signing in ------------------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  await api("GET", "/api/keys");  // an admin route: is this an admin key?
  state.signedIn = true;
  if (key) sessionStorage.setItem(KEY_STORE, key);
  $("who-text").textContent = key ? `Signed in with key ${key.slice(0, 12)}…` : "Open access (local, no key needed)";
  $("who").hidden = false; $("sign-out").hidden = !key;
  $("nav").hidden = false;
  route();
}

function signOut(message) {
  state.signedIn = false; state.key = null;
  sessionStorage.removeItem(KEY_STORE);
  leaveView();
  for (const name of VIEWS) $(`view-${name}`).hidden = true;
  $("nav").hidden = true; $("who").hidden = true;
  $("view-sign-in").hidden = false;
  showError("sign-in-error", message ? new Error(message) : null);
  $("sign-in-key").value = "";
  $("sign-in-key").focus();
}

$("sign-in").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("sign-in-key").value.trim();
  showError("sign-in-error", null);
  try {
    await signIn(key);
  } catch (exc) {
    state.key = null;
    showError("sign-in-error", exc.status === 403 ? new Error(`This key is not an admin key: ${exc.message}`) : exc);
  }
});
$("sign-out").addEventListener("click", () => signOut());

// --- which view ------------------------------------------------------------------------------

function leaveView() {
  if (state.providerStream) { state.providerStream.stop(); state.providerStream = null; }
  if (state.runStream) { state.runStream.stop(); state.runStream = null; }
  clearInterval(state.runsTimer); state.runsTimer = null;
}

function route() {
  if (!state.signedIn) return;
  const name = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "providers";
  leaveView();
  state.view = name;
  $("view-sign-in").hidden = true;
  for (const view of VIEWS) $(`view-${view}`).hidden = view !== name;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === `#${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · Orchesity dashboard`;
  ({ providers: openProviders, requests: openRequests, runs: openRuns, tools: openTools, keys: openKeys })[name]();
}
window.addEventListener("hashchange", () => { route(); $("main").focus(); });

// --- health: what is unavailable -------------------------------------------------------------

const COMPONENT_NAMES = { database: "Postgres (database)", cache: "Redis (cache, live state)", dwa: "Providers (routing)",
                          system: "This machine" };

// Shows what is not healthy above the views; returns the report (null: no answer).
async function checkHealth() {
  const node = $("health");
  let report;
  try {
    const response = await fetch("/api/health", { cache: "no-store", credentials: "omit" });
    report = await response.json();
  } catch (exc) {
    node.replaceChildren(el("strong", { text: `▲ The server cannot be reached (${exc.message}).` }));
    return null;
  }
  const bad = Object.entries(report.services || {}).filter(([, s]) => !["healthy", "disabled"].includes(s.status));
  if (!bad.length) { node.replaceChildren(); return report; }
  node.replaceChildren(el("strong", { text: "▲ Some parts are unavailable; views that need them say so:" }),
    el("ul", {}, bad.map(([name, s]) => el("li", {},
      `${COMPONENT_NAMES[name] || name}: ${s.status}${s.error ? ` (${s.error})` : ""}`))));
  return report;
}

// --- providers -------------------------------------------------------------------------------

function providerState(p) {
  if (p.circuit_state === "open") return ["✕", "Circuit open", "s-bad"];
  if (p.rate_limited_until) return ["▲", "Rate limited", "s-warn"];
  if (p.circuit_state === "half_open") return ["▲", "Probing", "s-warn"];
  if (p.availability !== null && p.availability < 0.5) return ["▲", "Degraded", "s-warn"];
  return ["✓", "Serving", "s-ok"];
}

// The share as a bar (drawn, not styled: the policy allows no inline style) and in figures.
function shareBar(share) {
  const bar = svg("svg", { width: "82", height: "12", viewBox: "0 0 82 12", "aria-hidden": "true" },
    svg("rect", { x: "0.5", y: "0.5", width: "81", height: "11", fill: "none", stroke: "#767676" }),
    svg("rect", { x: "1", y: "1", width: String(Math.round(share * 80)), height: "10", fill: "#333" }));
  return el("span", { class: "share" }, bar, `${(share * 100).toFixed(1)}%`);
}

function renderProviders(snapshot) {
  const body = $("providers-table").tBodies[0];
  if (!snapshot.providers.length) {
    body.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: "9", text: "No deployment is configured." })));
    return;
  }
  body.replaceChildren(...snapshot.providers.map((p) => {
    const [icon, label, cls] = providerState(p);
    return el("tr", { "data-provider": p.name },
      el("th", { scope: "row" }, el("span", { class: "mono" }, p.name), el("div", { class: "hint", text: `${p.kind} · ${p.model}` })),
      el("td", {}, el("span", { class: `badge ${cls}` }, `${icon} ${label}`)),
      el("td", { class: "num", text: fmt.pct(p.availability) }),
      el("td", { class: "num", text: `${fmt.ms(p.mean_latency_ms)} / ${fmt.ms(p.p95_latency_ms)}` }),
      el("td", { class: "num", text: String(p.in_flight ?? 0) }),
      el("td", { text: (p.circuit_state || "–").replace("_", " ") }),
      el("td", {}, shareBar(p.traffic_share), el("div", { class: "hint", text: `${p.attempts_last_minute} ${p.attempts_last_minute === 1 ? "call" : "calls"}` })),
      el("td", { class: "num", text: `${fmt.usd(p.cost_usd)} / ${fmt.usd(p.cost_last_minute)}` }),
      el("td", {}, el("button", { type: "button", class: "danger", "aria-label": `Reset ${p.name}`,
                                  onclick: () => resetProviders(p.name) }, "Reset…")));
  }));
  const filter = $("f-provider");
  if (filter.options.length === 1) {
    for (const p of snapshot.providers) filter.append(el("option", { value: p.name, text: p.name }));
  }
  $("providers-note").textContent = `Strategy: ${snapshot.strategy}. Share and cost "last minute" count the last ${snapshot.window_seconds} s.`;
}

async function resetProviders(name) {
  const what = name ? `the provider ${name}` : "every provider";
  if (!window.confirm(`Reset ${what} to its priors? What the router has learned about it is forgotten.`)) return;
  try {
    const done = await api("POST", `/api/llm/dwa/reset${name ? `?provider=${encodeURIComponent(name)}` : ""}`);
    $("providers-live").textContent = `Reset: ${done.reset.join(", ")}`;
    renderProviders(await api("GET", "/api/dashboard/providers"));
  } catch (exc) { showError("providers-error", exc); }
}
$("reset-all").addEventListener("click", () => resetProviders(null));

function openProviders() {
  showError("providers-error", null);
  api("GET", "/api/dashboard/providers").then(renderProviders, (exc) => {
    showError("providers-error", exc);
    $("providers-table").tBodies[0].replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: "9",
      text: "No live state to show: see above." })));
  });
  state.providerStream = new LiveStream("/api/dashboard/providers/stream-token", {
    providers: (snapshot) => {
      showError("providers-error", null);
      renderProviders(snapshot);
      $("providers-live").textContent = `● Live, updated ${fmt.clock(snapshot.timestamp)}`;
    },
    unavailable: (info) => {
      showError("providers-error", new Error(`Live state unavailable: ${info.message}`));
      $("providers-live").textContent = "○ Not live";
    },
  }, (status) => { $("providers-live").textContent = status === "live" ? "● Live" : `○ ${status}`; });
  state.providerStream.start();
  loadWeights();
}

// Dash patterns and markers tell the series apart without colour.
const SERIES = [["#000", "", "circle"], ["#0b57d0", "6 3", "square"], ["#b00020", "2 3", "triangle"],
                ["#1b6e20", "10 3 2 3", "diamond"], ["#8a5300", "1 1", "circle"], ["#6a1b9a", "12 4", "square"]];

function marker(shape, x, y, colour) {
  const common = { fill: colour, stroke: "#fff", "stroke-width": "1" };
  if (shape === "circle") return svg("circle", { cx: x, cy: y, r: 3.5, ...common });
  if (shape === "square") return svg("rect", { x: x - 3.5, y: y - 3.5, width: 7, height: 7, ...common });
  if (shape === "triangle") return svg("polygon", { points: `${x},${y - 4.5} ${x + 4.5},${y + 3.5} ${x - 4.5},${y + 3.5}`, ...common });
  return svg("polygon", { points: `${x},${y - 5} ${x + 5},${y} ${x},${y + 5} ${x - 5},${y}`, ...common });
}

function renderWeights(data, hours) {
  const figure = $("weights-chart");
  const points = data.points.filter((p) => p.weight !== null);
  if (!points.length) {
    figure.replaceChildren(el("p", { class: "note", text: "No weight history in this period yet: the cron recompute " +
      "writes one point per provider per window (orchesity cron, or POST /api/cron/tick)." }));
    return;
  }
  // Drawn at the figure's own width, so its text stays at 11px whatever the screen.
  const W = Math.max(300, Math.round(figure.clientWidth - 18)), H = 240, left = 44, right = 14, top = 12, bottom = 28;
  const end = Date.now(), start = end - hours * 3600 * 1000;
  const maxWeight = Math.max(1, ...points.map((p) => p.weight));
  const x = (iso) => left + (W - left - right) * (new Date(iso) - start) / (end - start);
  const y = (w) => top + (H - top - bottom) * (1 - w / maxWeight);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
                             "aria-label": `Weight of each provider over the last ${hours} hours` });
  for (let i = 0; i <= 4; i++) {
    const w = maxWeight * i / 4, yy = y(w);
    chart.append(svg("line", { class: "grid", x1: left, x2: W - right, y1: yy, y2: yy }));
    const label = svg("text", { x: left - 6, y: yy + 4, "text-anchor": "end" }); label.textContent = w.toFixed(2);
    chart.append(label);
  }
  const ticks = W < 500 ? 2 : 4;
  for (let i = 0; i <= ticks; i++) {
    const t = start + (end - start) * i / ticks;
    const label = svg("text", { x: left + (W - left - right) * i / ticks, y: H - 8,
                                "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" });
    label.textContent = new Date(t).toLocaleString([], hours > 24 ? { month: "short", day: "numeric" } : { hour: "2-digit", minute: "2-digit" });
    chart.append(label);
  }
  chart.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: H - bottom }),
               svg("line", { class: "axis", x1: left, x2: W - right, y1: H - bottom, y2: H - bottom }));
  const byProvider = new Map();
  for (const p of points) (byProvider.get(p.provider) || byProvider.set(p.provider, []).get(p.provider)).push(p);
  const legend = el("ul", { class: "legend" });
  [...byProvider.entries()].forEach(([name, series], i) => {
    const [colour, dash, shape] = SERIES[i % SERIES.length];
    const path = series.map((p) => `${x(p.window_end).toFixed(1)},${y(p.weight).toFixed(1)}`).join(" ");
    chart.append(svg("polyline", { class: "series", points: path, stroke: colour, "stroke-dasharray": dash,
                                   "data-provider": name }));
    for (const p of series) chart.append(marker(shape, x(p.window_end), y(p.weight), colour));
    const last = series[series.length - 1];
    legend.append(el("li", {}, svg("svg", { width: "34", height: "12", "aria-hidden": "true" },
      svg("line", { x1: 0, x2: 34, y1: 6, y2: 6, stroke: colour, "stroke-width": 2, "stroke-dasharray": dash }),
      marker(shape, 17, 6, colour)), `${name} (now ${last.weight.toFixed(3)})`));
  });
  figure.replaceChildren(chart, legend,
    el("figcaption", { class: "sr", text: `${points.length} points for ${byProvider.size} providers.` }));
}

async function loadWeights() {
  const hours = Number($("weights-hours").value);
  showError("weights-error", null);
  try {
    state.weights = [await api("GET", `/api/dashboard/weights?hours=${hours}`), hours];
    renderWeights(...state.weights);
  } catch (exc) { showError("weights-error", exc); }
}
$("weights-hours").addEventListener("change", loadWeights);
let resizing = null;
window.addEventListener("resize", () => {  // redraw at the new width
  clearTimeout(resizing);
  resizing = setTimeout(() => { if (state.view === "providers" && state.weights) renderWeights(...state.weights); }, 150);
});

// --- requests --------------------------------------------------------------------------------

async function loadRequests() {
  const form = new FormData($("requests-filters"));
  const query = new URLSearchParams();
  for (const [name, value] of form) if (String(value).trim()) query.set(name, String(value).trim());
  showError("requests-error", null);
  try {
    const data = await api("GET", `/api/dashboard/requests?${query}`);
    $("requests-note").textContent = data.note || `${data.count} requests shown.`;
    const body = $("requests-table").tBodies[0];
    if (!data.requests.length) {
      body.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: "9", text: "No request matches these filters." })));
      return;
    }
    body.replaceChildren(...data.requests.map((r) => el("tr", {},
      el("td", { text: fmt.time(r.created_at) }), el("td", { class: "mono", text: r.endpoint }),
      el("td", {}, el("span", { class: "mono", text: r.provider || "–" }), el("div", { class: "hint", text: r.model || "" })),
      el("td", {}, el("span", { class: `badge ${r.status === "ok" ? "s-ok" : "s-bad"}` }, r.status === "ok" ? "✓ ok" : `✕ ${r.status}`),
        r.error_class ? el("div", { class: "hint", text: r.error_class }) : null),
      el("td", { text: r.cached ? "yes" : "no" }), el("td", { class: "num", text: fmt.ms(r.latency_ms) }),
      el("td", { class: "num", text: String(r.total_tokens) }), el("td", { class: "num", text: fmt.usd(r.cost) }),
      el("td", { class: "mono", text: r.caller_key_id || "–" }))));
  } catch (exc) { showError("requests-error", exc); }
}

async function loadSpend() {
  showError("spend-error", null);
  try {
    const data = await api("GET", `/api/dashboard/spend?days=${$("spend-days").value}`);
    const body = $("spend-table").tBodies[0];
    if (!data.spend.length) {
      body.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: "5", text: "Nothing was spent in this period." })));
      return;
    }
    body.replaceChildren(...data.spend.map((s) => el("tr", {},
      el("td", { text: s.day }), el("td", {}, s.key_name || (s.key ? "" : "no key (open access)"),
        s.key ? el("div", { class: "hint mono", text: s.key }) : null),
      el("td", { class: "num", text: String(s.requests) }), el("td", { class: "num", text: String(s.tokens) }),
      el("td", { class: "num", text: fmt.usd(s.cost) }))));
  } catch (exc) { showError("spend-error", exc); }
}

$("requests-filters").addEventListener("submit", (event) => { event.preventDefault(); loadRequests(); });
$("spend-days").addEventListener("change", loadSpend);

async function openRequests() {
  if ($("f-provider").options.length === 1) {
    try { renderProviders(await api("GET", "/api/dashboard/providers")); } catch { /* the filter stays free text */ }
  }
  loadRequests();
  loadSpend();
}

// --- runs ------------------------------------------------------------------------------------

async function loadRuns() {
  const status = $("runs-status").value;
  try {
    const data = await api("GET", `/api/runs?limit=50${status ? `&status=${status}` : ""}`);
    showError("runs-error", null);
    const body = $("runs-table").tBodies[0];
    if (!data.runs.length) {
      body.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: "5", text: "No run yet." })));
      return;
    }
    body.replaceChildren(...data.runs.map((r) => el("tr", { class: r.id === state.runId ? "selected" : null },
      el("td", {}, el("a", { href: `#runs`, class: "mono", "data-run": r.id,
                             onclick: (e) => { e.preventDefault(); showRun(r.id, true); } }, r.id.slice(0, 8))),
      el("td", { text: r.pipeline || "(inline)" }), el("td", {}, badge(RUN_STATES, r.status)),
      el("td", { text: fmt.time(r.started_at || r.created_at) }),
      el("td", { class: "num", text: fmt.seconds(r.started_at, r.finished_at || (FINISHED.has(r.status) ? r.started_at : null)) }))));
  } catch (exc) { showError("runs-error", exc); }
}
$("runs-status").addEventListener("change", loadRuns);
$("runs-refresh").addEventListener("click", loadRuns);

async function loadPipelines() {
  const select = $("run-pipeline");
  try {
    const data = await api("GET", "/api/dashboard/pipelines");
    state.pipelines = Object.fromEntries(data.pipelines.map((p) => [p.name, p]));
    if (!data.pipelines.length) {
      select.replaceChildren(el("option", { value: "", text: "no saved pipeline (pipelines.json)" }));
      select.disabled = true;
    } else {
      const chosen = select.value;
      select.replaceChildren(...data.pipelines.map((p) => el("option", { value: p.name, text: `${p.name} (${p.steps.length} steps)` })));
      if (chosen in state.pipelines) select.value = chosen;
      select.disabled = false;
    }
    renderRunInputs();
  } catch (exc) { showError("run-start-error", exc); }
}

function renderRunInputs() {
  const pipeline = (state.pipelines || {})[$("run-pipeline").value];
  $("run-inputs").replaceChildren(...(pipeline ? pipeline.inputs : []).map((name) => el("div", {},
    el("label", { for: `run-input-${name}`, text: `Input: ${name}` }),
    el("textarea", { id: `run-input-${name}`, name, rows: "2" }))));
}
$("run-pipeline").addEventListener("change", renderRunInputs);

$("run-start").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("run-start-error", null);
  const name = $("run-pipeline").value;
  if (!name) return;
  const inputs = {};
  for (const field of $("run-inputs").querySelectorAll("textarea")) inputs[field.name] = field.value;
  try {
    const started = await api("POST", "/api/runs", { pipeline: name, inputs });
    await loadRuns();
    showRun(started.id, true);
  } catch (exc) { showError("run-start-error", exc); }
});

function renderRun(run, events) {
  $("h-run").textContent = `Run ${run.id.slice(0, 8)}`;
  $("run-status").replaceChildren(badge(RUN_STATES, run.status));
  $("run-meta").textContent = `${run.pipeline || "inline pipeline"} · ${run.progress}% done · started ${fmt.time(run.started_at || run.created_at)}` +
    (run.finished_at ? ` · took ${fmt.seconds(run.started_at || run.created_at, run.finished_at)}` : "");
  const cancel = $("run-cancel");
  cancel.disabled = FINISHED.has(run.status) || run.cancel_requested;
  cancel.textContent = run.cancel_requested && !FINISHED.has(run.status) ? "Cancelling…" : "Cancel run";
  $("run-steps").replaceChildren(...run.steps.map((step) => {
    const [icon, label, cls] = STEP_STATES[step.status] || ["?", step.status, "s-idle"];
    const output = run.outputs[step.id];
    const retries = Math.max(0, step.attempts - 1);
    return el("li", { class: cls, "data-step": step.id, "data-status": step.status },
      el("div", { class: "step-head" },
        el("span", { class: "step-name", text: step.id }),
        el("span", { class: `badge ${cls}`, "data-role": "status" }, `${icon} ${label}`),
        el("span", { class: "hint", text: step.started_at ? `took ${fmt.seconds(step.started_at, step.finished_at)}` : "not started" }),
        retries ? el("span", { class: "hint", text: `${retries} ${retries === 1 ? "retry" : "retries"}` }) : null),
      step.error ? el("p", { class: "error", text: step.error.message || fmt.json(step.error) }) : null,
      output !== undefined ? el("details", {}, el("summary", { text: "Output" }), el("pre", { text: fmt.json(output) })) : null);
  }));
  const resultBox = $("run-result-box");
  resultBox.hidden = !(run.result || run.error);
  $("run-result").textContent = run.error ? fmt.json(run.error) : run.result ? fmt.json(run.result.output) : "";
  const list = $("run-events");
  for (const e of events) {
    if (list.querySelector(`[data-seq="${e.seq}"]`)) continue;
    list.append(el("li", { value: String(e.seq), "data-seq": String(e.seq) },
      `${fmt.clock(e.at)} `, el("span", { class: "type", text: e.type }), ` ${e.message}`));
  }
  while (list.children.length > MAX_EVENTS) list.firstElementChild.remove();  // a long run keeps the page light
}

// Follow one run live; `focus`: the person asked for it, so move to it (on a phone it is below).
function showRun(id, focus = false) {
  if (state.runStream) state.runStream.stop();
  state.runId = id;
  $("run-detail").hidden = false;
  if (focus) $("h-run").focus();
  $("run-events").replaceChildren();
  $("run-steps").replaceChildren();
  showError("run-error", null);
  for (const row of $("runs-table").tBodies[0].rows) {
    row.classList.toggle("selected", !!row.querySelector(`[data-run="${id}"]`));
  }
  let seen = 0;  // the last event's seq: a new connection resumes after it
  state.runStream = new LiveStream(`/api/dashboard/runs/${id}/stream-token`, {
    run: ({ run, events }, stream) => {
      showError("run-error", null);
      renderRun(run, events);
      seen = Math.max(seen, ...events.map((e) => e.seq));
      if (FINISHED.has(run.status) && seen >= run.events) { stream.stop(); loadRuns(); }  // all is said
    },
    unavailable: (info) => showError("run-error", new Error(`Live progress unavailable: ${info.message}`)),
  }, (status) => { if (status !== "live") showError("run-error", new Error(`Progress is ${status}`)); },
  () => `&after=${seen}`);
  state.runStream.start();
}

$("run-cancel").addEventListener("click", async () => {
  if (!state.runId || !window.confirm("Cancel this run? It stops at its next step boundary.")) return;
  try {
    await api("POST", `/api/runs/${state.runId}/cancel`);
    $("run-cancel").disabled = true;
    $("run-cancel").textContent = "Cancelling…";
  } catch (exc) { showError("run-error", exc); }
});

function openRuns() {
  loadPipelines();
  loadRuns();
  state.runsTimer = setInterval(loadRuns, 5000);
  if (state.runId) showRun(state.runId);
}

// --- tools -----------------------------------------------------------------------------------

async function openTools() {
  showError("tools-error", null);
  try {
    const data = await api("GET", "/api/tools");
    const body = $("tools-table").tBodies[0];
    if (!data.tools.length) {
      body.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: "5", text: "No tool is registered." })));
      return;
    }
    body.replaceChildren(...data.tools.map((t) => el("tr", { "data-tool": t.definition.name },
      el("th", { scope: "row" }, el("span", { class: "mono", text: t.ref }),
        el("div", { class: "hint", text: t.definition.description || "" })),
      el("td", { text: t.definition.kind }), el("td", { text: t.source }),
      el("td", {}, t.available ? el("span", { class: "badge s-ok" }, "✓ yes")
        : el("span", { class: "badge s-bad", title: t.unavailable_reason || "" }, "✕ no"),
        t.unavailable_reason ? el("div", { class: "hint", text: t.unavailable_reason }) : null),
      el("td", {}, el("button", { type: "button", class: "quiet", "aria-label": `Invoke ${t.ref}`,
                                  onclick: () => openTool(t) }, "Invoke…")))));
  } catch (exc) { showError("tools-error", exc); }
}

// One form control per property of the tool's JSON Schema; read() gives its value
// (undefined: left out), or throws naming the field.
function schemaField(name, schema, required) {
  const id = `tool-arg-${name}`;
  const hint = [schema.description, schema.type ? `(${[].concat(schema.type).join(" or ")})` : "",
                required ? "required" : "optional"].filter(Boolean).join(" ");
  const label = el("label", { for: id, text: `${name}${required ? " *" : ""}` });
  const help = el("p", { class: "hint", id: `${id}-hint`, text: hint });
  const common = { id, name, "aria-describedby": `${id}-hint`, "aria-required": required ? "true" : null };
  let control, read;
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
  if (Array.isArray(schema.enum)) {
    control = el("select", common, required ? null : el("option", { value: "", text: "(not set)" }),
      schema.enum.map((v, i) => el("option", { value: String(i), text: JSON.stringify(v) })));
    read = () => control.value === "" ? undefined : schema.enum[Number(control.value)];
  } else if (type === "boolean") {
    control = el("input", { ...common, type: "checkbox", checked: schema.default === true });
    read = () => control.checked;
    return { node: el("div", {}, el("label", { class: "check", for: id }, control, ` ${name}`), help), read };
  } else if (type === "integer" || type === "number") {
    control = el("input", { ...common, type: "number", step: type === "integer" ? "1" : "any",
                            value: schema.default ?? null });
    read = () => control.value === "" ? undefined : Number(control.value);
  } else if (type === "string") {
    control = el("textarea", { ...common, rows: "2" });
    if (schema.default !== undefined) control.value = schema.default;
    read = () => control.value === "" && !required ? undefined : control.value;
  } else {  // objects, arrays, anything else: JSON
    control = el("textarea", { ...common, rows: "3", placeholder: "JSON" });
    read = () => {
      if (control.value.trim() === "") return undefined;
      try { return JSON.parse(control.value); }
      catch (exc) { throw new Error(`${name}: not valid JSON (${exc.message})`); }
    };
  }
  return { node: el("div", {}, label, control, help), read };
}

async function openTool(tool) {
  const form = $("tool-form");
  form.hidden = false;
  state.tool = tool;
  const definition = tool.definition;
  const schema = definition.parameters || { type: "object", properties: {} };
  const required = new Set(schema.required || []);
  state.toolFields = Object.entries(schema.properties || {}).map(([name, s]) => [name, schemaField(name, s, required.has(name))]);
  $("h-tool").textContent = `Invoke ${tool.ref}`;
  $("tool-description").textContent = definition.description || "";
  $("tool-fields").replaceChildren(...state.toolFields.map(([, f]) => f.node));
  if (!state.toolFields.length) $("tool-fields").append(el("p", { class: "note", text: "This tool takes no arguments." }));
  $("tool-outcome").replaceChildren();
  $("tool-versions").textContent = "";
  for (const row of $("tools-table").tBodies[0].rows) row.classList.toggle("selected", row.dataset.tool === definition.name);
  const first = form.querySelector("input, textarea, select");
  (first || form.querySelector("button")).focus();
  try {
    const detail = await api("GET", `/api/tools/${encodeURIComponent(tool.ref)}`);
    $("tool-versions").textContent = `Source: ${detail.source}. Versions: ${detail.versions.join(", ")}.`;
  } catch { /* the versions line stays empty */ }
}

$("tool-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const outcome = $("tool-outcome");
  const args = {};
  try {
    for (const [name, field] of state.toolFields) {
      const value = field.read();
      if (value !== undefined) args[name] = value;
    }
  } catch (exc) {
    outcome.replaceChildren(el("p", { class: "error", role: "alert", text: exc.message }));
    return;
  }
  outcome.replaceChildren(el("p", { class: "note", text: "Invoking…" }));
  try {
    const done = await api("POST", `/api/tools/${encodeURIComponent(state.tool.ref)}/invoke`, { arguments: args });
    outcome.replaceChildren(el("div", { class: "outcome-ok" },
      el("p", { class: "note", text: `${done.tool}: ${done.status} in ${Math.round(done.duration_ms)} ms` }),
      el("pre", { text: fmt.json(done.result) })));
  } catch (exc) {
    const details = Array.isArray(exc.details) ? exc.details : [];
    outcome.replaceChildren(el("p", { class: "error", role: "alert", text: `Refused: ${exc.message}` }));
    if (details.length > 1) {  // one line each, as the schema says it
      outcome.append(el("ul", {}, details.map((d) => el("li", { text: `${d.path || "(arguments)"}: ${d.message}` }))));
    }
  }
});

// --- keys ------------------------------------------------------------------------------------

async function loadKeys() {
  showError("keys-error", null);
  try {
    const data = await api("GET", `/api/keys${$("keys-revoked").checked ? "?include_revoked=true" : ""}`);
    const body = $("keys-table").tBodies[0];
    if (!data.keys.length) {
      body.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: "6", text: "No key." })));
      return;
    }
    body.replaceChildren(...data.keys.map((k) => el("tr", { "data-key": k.prefix },
      el("th", { scope: "row", text: k.name }), el("td", { class: "mono", text: k.prefix }),
      el("td", { text: k.scopes.join(", ") }), el("td", { text: fmt.time(k.created_at) }),
      el("td", { text: k.expires_at ? fmt.time(k.expires_at) : "never" }),
      el("td", {}, k.revoked_at ? el("span", { class: "badge s-bad" }, `■ revoked ${fmt.time(k.revoked_at)}`)
        : el("button", { type: "button", class: "danger", "aria-label": `Revoke ${k.name} (${k.prefix})`,
                         onclick: () => revokeKey(k) }, "Revoke…")))));
  } catch (exc) { showError("keys-error", exc); }
}

async function revokeKey(k) {
  if (!window.confirm(`Revoke the key ${k.name} (${k.prefix})? Whoever uses it is refused from now on.`)) return;
  try { await api("DELETE", `/api/keys/${encodeURIComponent(k.id)}`); await loadKeys(); }
  catch (exc) { showError("keys-error", exc); }
}

$("key-create").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("key-create-error", null);
  const form = new FormData(event.target);
  const body = { name: String(form.get("name")).trim(), scopes: form.getAll("scopes") };
  if (form.get("expires")) body.expires_in_days = Number(form.get("expires"));
  try {
    const created = await api("POST", "/api/keys", body);
    $("key-secret").textContent = created.key;
    $("key-created").hidden = false;
    $("key-copy").focus();
    event.target.reset();
    await loadKeys();
  } catch (exc) { showError("key-create-error", exc); }
});
$("key-copy").addEventListener("click", async () => {
  const text = $("key-secret").textContent;
  try { await navigator.clipboard.writeText(text); $("key-copy").textContent = "Copied"; }
  catch { window.getSelection().selectAllChildren($("key-secret")); $("key-copy").textContent = "Selected: press Ctrl+C"; }
});
$("key-dismiss").addEventListener("click", () => {
  $("key-secret").textContent = ""; $("key-created").hidden = true; $("key-copy").textContent = "Copy";
  $("key-name").focus();
});
$("keys-revoked").addEventListener("change", loadKeys);

function openKeys() { loadKeys(); }

// --- start -----------------------------------------------------------------------------------

(async function start() {
  const report = await checkHealth();
  setInterval(checkHealth, 15000);
  const open = !!(report && report.auth && report.auth.mode === "open");
  const saved = sessionStorage.getItem(KEY_STORE);
  if (open || saved) {
    try { await signIn(open ? null : saved); return; } catch (exc) { if (!open) sessionStorage.removeItem(KEY_STORE); }
  }
  signOut();
})();
