// The Federator's view: clusters, services, links, chains and moves, read from the API with
// the token the person typed (kept in sessionStorage only). No framework, no build step, no
// inline script (the page's Content-Security-Policy forbids it); text goes in with
// textContent only, never as HTML, so a name cannot inject markup.
"use strict";

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}


const TOKEN_KEY = "mobility.token";
const PHASES = ["admit", "place", "wire", "sync", "cutover", "release"];
const TERMINAL = new Set(["succeeded", "failed", "rolled_back"]);
const REFRESH_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const CHAIN_COLOURS = ["#c2185b", "#00838f", "#6a1b9a", "#ef6c00", "#2e7d32", "#283593"];

const state = {
  clusters: [], services: [], chains: [], moves: new Map(), streams: new Set(),
  targets: new Map(), sigs: new Map(), timer: null, busy: false, drawn: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else if (k === "onchange") node.addEventListener("change", v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function say(text) { $("status").textContent = text; }

class AuthError extends Error {}

async function api(path, options) {
  const opts = Object.assign({ method: "GET" }, options || {});
  const headers = { Authorization: "Bearer " + token(), Accept: "application/json" };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method: opts.method, headers, cache: "no-store", credentials: "omit",
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  if (resp.status === 401) throw new AuthError("the token was refused (401)");
  let data = null;
  try { data = await resp.json(); } catch (_e) { data = null; }
  if (!resp.ok) {
    const detail = data && data.detail ? (typeof data.detail === "string" ? data.detail
      : JSON.stringify(data.detail)) : resp.statusText;
    throw new Error(`${opts.method} ${path}: ${resp.status} ${detail}`);
  }
  return data;
}

// ---- signing in and out --------------------------------------------------------------------

function showLogin(message) {
  $("login").hidden = false;
  $("dash").hidden = true;
  $("signout").hidden = true;
  $("login-error").textContent = message || "";
  say("Not signed in.");
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.moves.clear();
  state.sigs.clear();
  state.streams.clear();
  showLogin(message);
  $("token").focus();
}

async function start() {
  $("login").hidden = true;
  $("dash").hidden = false;
  $("signout").hidden = false;
  say("Loading...");
  await refresh();
  if (token() && !state.timer) state.timer = setInterval(refresh, REFRESH_MS);
}

// ---- reading the API -----------------------------------------------------------------------

async function refresh() {
  if (state.busy || !token()) return;
  state.busy = true;
  try {
    const [clusters, services, chains, moves] = await Promise.all([
      api("/v1/clusters"), api("/v1/services"), api("/v1/chains"), api("/v1/moves?limit=10"),
    ]);
    state.clusters = clusters;
    state.services = services;
    state.chains = chains;
    for (const m of moves) mergeMove(m);
    render();
    for (const m of state.moves.values()) if (!TERMINAL.has(m.status)) follow(m.id);
    say(`${clusters.length} clusters, ${services.length} services; updated ` +
        new Date().toLocaleTimeString());
    if (!state.drawn) {
      state.drawn = true;
      performance.mark("mobility-dashboard-drawn");
    }
  } catch (err) {
    if (err instanceof AuthError) signOut("That token was refused: " + err.message);
    else say("Could not read the API: " + err.message);
  } finally {
    state.busy = false;
  }
}

function mergeMove(m) {
  // A listing fetched before the stream's latest events must not take them back: a phase
  // that ended stays ended (a refresh between PLACE's end and its record lost it), and a
  // freeze window once seen stays.
  const known = state.moves.get(m.id);
  const events = known ? known.events : [];
  const phase_ms = Object.assign({}, known ? known.phase_ms : {}, m.phase_ms || {});
  const freeze_ms = m.freeze_ms ?? (known ? known.freeze_ms : null);
  state.moves.set(m.id, Object.assign({}, m, { events, phase_ms, freeze_ms }));
}

// ---- the live event stream of a move (SSE read with fetch: EventSource sends no header) ---

async function follow(id) {
  if (state.streams.has(id)) return;
  state.streams.add(id);
  let last = null;
  try {
    for (let attempt = 0; attempt < 20 && token(); attempt++) {
      const headers = { Authorization: "Bearer " + token(), Accept: "text/event-stream" };
      if (last) headers["Last-Event-ID"] = last;
      let resp;
      try {
        resp = await fetch(`/v1/moves/${encodeURIComponent(id)}/events`,
                           { headers, cache: "no-store", credentials: "omit" });
      } catch (_e) { await sleep(1000); continue; }
      if (!resp.ok || !resp.body) return;
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const ev = parseEvent(block);
          if (!ev) continue;
          if (ev.id) last = ev.id;
          if (ev.event === "end" || ev.event === "error") {
            onEvent(id, ev);
            return;
          }
          onEvent(id, ev);
        }
      }
      await sleep(500);  // the stream broke off: resume after the last event seen
    }
  } finally {
    state.streams.delete(id);
  }
}

function parseEvent(block) {
  const ev = { id: null, event: "message", data: [] };
  let any = false;
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const at = line.indexOf(":");
    const field = at < 0 ? line : line.slice(0, at);
    let value = at < 0 ? "" : line.slice(at + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") ev.id = value;
    else if (field === "event") ev.event = value;
    else if (field === "data") ev.data.push(value);
    else continue;
    any = true;
  }
  if (!any) return null;
  try { ev.payload = JSON.parse(ev.data.join("\n")); } catch (_e) { ev.payload = {}; }
  return ev;
}

function onEvent(id, ev) {
  const m = state.moves.get(id);
  if (!m) return;
  const p = ev.payload || {};
  if (ev.event === "end") {
    if (p.status) m.status = p.status;
    api(`/v1/moves/${encodeURIComponent(id)}`).then((fresh) => {
      mergeMove(fresh); render();
    }).catch(() => {});
    refresh();
  } else if (ev.event === "phase_started" && p.phase) {
    m.phase = p.phase;
  } else if (ev.event === "phase_ended" && p.phase) {
    const ms = parseFloat(p.detail);
    m.phase_ms = Object.assign({}, m.phase_ms, { [p.phase]: isNaN(ms) ? 0 : ms });
  } else if (ev.event === "freeze_window") {
    const ms = parseFloat(p.detail);
    if (!isNaN(ms)) m.freeze_ms = ms;
  } else if (ev.event === "status" && p.detail) {
    m.status = String(p.detail).split(":")[0];
  }
  if (ev.event !== "end") {
    m.events = m.events.concat([`${ev.event}${p.phase ? " " + p.phase : ""}` +
                                `${p.detail ? ": " + p.detail : ""}`]).slice(-40);
  }
  renderMoves();
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

// ---- acting --------------------------------------------------------------------------------

async function moveService(name) {
  const to = state.targets.get(name);
  if (!to) { say(`Choose a target cluster for ${name} first.`); return; }
  say(`Moving ${name} to ${to}...`);
  try {
    const m = await api("/v1/moves", { method: "POST", body: { service: name, to_cluster: to } });
    mergeMove(m);
    follow(m.id);
    say(`Move ${m.id} of ${name} to ${to} started.`);
    await refresh();
  } catch (err) {
    if (err instanceof AuthError) signOut(err.message); else say(err.message);
  }
}

async function abortMove(id) {
  say(`Aborting ${id}...`);
  try {
    const m = await api(`/v1/moves/${encodeURIComponent(id)}/abort`, { method: "POST" });
    mergeMove(m);
    say(`Abort of ${id} requested.`);
    renderMoves();
  } catch (err) {
    if (err instanceof AuthError) signOut(err.message); else say(err.message);
  }
}

// ---- drawing -------------------------------------------------------------------------------

function render() {
  renderClusters();
  renderGraph();
  renderServices();
  renderMoves();
}

// Rebuild a region only when what it shows changed, so focus and choices survive a refresh.
function changed(key, value) {
  const sig = JSON.stringify(value);
  if (state.sigs.get(key) === sig) return false;
  state.sigs.set(key, sig);
  return true;
}

function keepFocus(container, rebuild) {
  const focused = document.activeElement;
  const id = focused && container.contains(focused) ? focused.id : null;
  rebuild();
  if (id && $(id)) $(id).focus();
}

function renderClusters() {
  const moving = new Set(state.services.filter((s) => s.moving).map((s) => s.name));
  if (!changed("clusters", [state.clusters, [...moving]])) return;
  const box = $("clusters");
  box.replaceChildren(...state.clusters.map((c) => {
    const labels = Object.entries(c.labels).map(([k, v]) => `${k}=${v}`).join(", ");
    return el("article", { class: "cluster", "data-cluster": c.name, "aria-label": "cluster " + c.name },
      el("h3", { text: c.name }),
      el("div", { class: "labels", text: `MTU ${c.underlay_mtu}${labels ? "; " + labels : ""}` }),
      ...c.nodes.map((n) => el("div", { class: "node", "data-node": n.name },
        el("strong", { text: n.name }), " ", el("span", { class: "ip", text: n.underlay_ip }),
        n.instances.length
          ? el("ul", { class: "instances", "aria-label": `instances on ${n.name}` },
              ...n.instances.map((s) => el("li", { class: moving.has(s) ? "moving" : null,
                                                    "data-service": s, text: s })))
          : el("div", { class: "ip", text: "no instances" }))));
  }));
}

function layout() {
  const cellW = 84, cellH = 58, top = 40;
  const per = new Map(state.clusters.map((c) => [c.name, []]));
  for (const s of state.services) {
    const c = s.instance ? s.instance.cluster : null;
    if (c && per.has(c)) per.get(c).push(s);
  }
  // a busy cluster gets a wider column (up to 8 a row), so 200 services stay one screen or two
  const most = Math.max(0, ...[...per.values()].map((l) => l.length));
  const perRow = Math.min(8, Math.max(3, Math.ceil(Math.sqrt(most))));
  const col = perRow * cellW + 8;
  const pos = new Map();
  let height = 120;
  state.clusters.forEach((c, i) => {
    const list = per.get(c.name).sort((a, b) => a.name.localeCompare(b.name));
    list.forEach((s, j) => {
      const x = i * col + 20 + (j % perRow) * cellW + cellW / 2;
      const y = top + 24 + Math.floor(j / perRow) * cellH + 18;
      pos.set(s.name, { x, y, cluster: c.name });
    });
    height = Math.max(height, top + 40 + Math.ceil(list.length / perRow) * cellH);
  });
  return { pos, col, height, width: Math.max(1, state.clusters.length) * col };
}

function renderGraph() {
  const sigData = state.services.map((s) => [s.name, s.instance && s.instance.cluster, s.moving,
    s.health && s.health.ok, s.links.map((l) => l.id)]);
  if (!changed("graph", [state.clusters.map((c) => c.name), sigData, state.chains])) return;
  const g = $("graph");
  const desc = $("graph-desc");
  const { pos, col, height, width } = layout();
  g.setAttribute("viewBox", `0 0 ${width} ${height}`);
  g.setAttribute("width", width);  // drawn at its own size, shrunk (never blown up) to fit
  g.setAttribute("height", height);
  const parts = [desc];
  state.clusters.forEach((c, i) => {
    parts.push(svg("rect", { class: "cl-box", x: i * col + 6, y: 6, width: col - 12,
                             height: height - 12, rx: 8, "data-cluster": c.name }));
    parts.push(svg("text", { class: "cl-name", x: i * col + 18, y: 28 }, c.name));
  });
  const seen = new Set();
  for (const s of state.services) {
    for (const l of s.links) {
      if (seen.has(l.id)) continue;
      seen.add(l.id);
      const a = pos.get(s.name), b = pos.get(l.peer);
      if (!a || !b) continue;
      const line = svg("line", { class: "link", x1: a.x, y1: a.y, x2: b.x, y2: b.y,
                                 "data-link": l.id });
      line.append(svg("title", {}, `${s.name} - ${l.peer} (VNI ${l.vni})`));
      parts.push(line);
    }
  }
  const legend = [];
  state.chains.forEach((ch, k) => {
    const pts = ch.services.map((n) => pos.get(n)).filter(Boolean);
    const colour = CHAIN_COLOURS[k % CHAIN_COLOURS.length];
    if (pts.length > 1) {
      const path = svg("polyline", { class: "chain", stroke: colour, "data-chain": ch.name,
                                     points: pts.map((p) => `${p.x},${p.y - 4}`).join(" ") });
      path.append(svg("title", {}, `chain ${ch.name}: ${ch.services.join(" -> ")}`));
      parts.push(path);
    }
    const swatch = el("span", { "aria-hidden": "true", text: "\u25A0 " });
    swatch.style.color = colour;  // CSSOM, allowed by the policy (no inline style attribute)
    legend.push(el("li", {}, swatch, `chain ${ch.name}: ${ch.services.join(" \u2192 ")}`));
  });
  for (const s of state.services) {
    const p = pos.get(s.name);
    if (!p) continue;
    const broken = s.health && !s.health.ok;
    const grp = svg("g", { class: `svc${s.moving ? " moving" : ""}${broken ? " broken" : ""}`,
                           "data-service": s.name, "data-cluster": p.cluster });
    grp.append(svg("title", {}, `${s.name} (${s.workload}) on ${p.cluster}/${s.instance.node}` +
                                `${s.moving ? ", moving" : ""}`));
    grp.append(svg("circle", { cx: p.x, cy: p.y, r: 9 }));
    grp.append(svg("text", { x: p.x, y: p.y + 22, "text-anchor": "middle" }, s.name));
    parts.push(grp);
  }
  g.replaceChildren(...parts);
  $("legend").replaceChildren(...legend);
}

function healthCell(s) {
  if (!s.health) return el("span", { class: "health-none", text: "no report in the last 10 s" });
  const age = Math.max(0, Date.now() / 1000 - s.health.checked_at).toFixed(0);
  const bad = Object.entries(s.health.links).filter(([, v]) => !v.startsWith("ok"));
  return el("span", { class: s.health.ok ? "health-ok" : "health-bad" },
    s.health.ok ? `ok (${plural(Object.keys(s.health.links).length, "link")})` : "broken",
    el("span", { class: "small", text: `${s.health.node}, ${age} s ago` }),
    ...bad.map(([k, v]) => el("span", { class: "small", text: `${k}: ${v}` })));
}

function renderServices() {
  const body = $("services").tBodies[0];
  const names = state.clusters.map((c) => c.name);
  const rows = state.services.slice().sort((a, b) => a.name.localeCompare(b.name));
  const sig = [names, rows.map((s) => [s.name, s.instance, s.moving, s.health && s.health.ok,
    s.health && Object.values(s.health.links), s.workload])];
  if (!changed("services", sig)) return;
  keepFocus(body, () => body.replaceChildren(...rows.map((s) => serviceRow(s, names))));
}

function serviceRow(s, names) {
  const here = s.instance ? s.instance.cluster : null;
  const others = names.filter((n) => n !== here);
  let chosen = state.targets.get(s.name);
  if (!others.includes(chosen)) chosen = others[0];
  if (chosen) state.targets.set(s.name, chosen);
  const selectId = `target-${s.name}`;
  const select = el("select", { id: selectId, "aria-label": `target cluster for ${s.name}`,
    disabled: s.moving || !others.length,
    onchange: (e) => state.targets.set(s.name, e.target.value) },
    ...others.map((n) => el("option", { value: n, selected: n === chosen, text: n })));
  const actions = el("div", { class: "actions" },
    el("label", { for: selectId, text: "to" }), select,
    el("button", { type: "button", id: `move-${s.name}`, class: "move-btn",
                   "aria-label": `Move ${s.name}`, "data-service": s.name,
                   disabled: s.moving || !others.length, onclick: () => moveService(s.name),
                   text: "Move" }));
  if (s.moving) {
    actions.append(el("button", { type: "button", id: `abort-${s.name}`, class: "danger",
                                  "aria-label": `Abort the move of ${s.name}`,
                                  onclick: () => abortMove(s.moving), text: "Abort" }));
  }
  return el("tr", { "data-service": s.name },
    el("th", { scope: "row", "data-label": "Service" }, s.name,
       el("span", { class: "small", text: s.workload + (s.chain ? `, chain ${s.chain}` : "") })),
    el("td", { "data-label": "Where",
               text: s.instance ? `${s.instance.cluster} / ${s.instance.node}` : "not placed" }),
    el("td", { "data-label": "Path health" }, healthCell(s)),
    el("td", { "data-label": "Move" }, actions));
}

function renderMoves() {
  const list = $("moves");
  const moves = [...state.moves.values()].sort((a, b) => b.created_at - a.created_at).slice(0, 10);
  if (!changed("moves", moves)) return;
  keepFocus(list, () => list.replaceChildren(...moves.map(moveItem)));
}

function moveItem(m) {
  const terminal = TERMINAL.has(m.status);
  const steps = PHASES.map((p) => {
    let cls = null;
    let note = "";
    if (m.phase_ms && p in m.phase_ms) { cls = "done"; note = `${Math.round(m.phase_ms[p])} ms`; }
    else if (m.phase === p && !terminal) { cls = "active"; note = "running"; }
    else if (m.phase === p && m.status !== "succeeded") { cls = "failed"; note = "stopped"; }
    return el("li", { class: cls, "data-phase": p }, p, el("span", { class: "ms", text: note }));
  });
  const noFreeze = m.freeze_ms === null || m.freeze_ms === undefined;
  const freeze = !noFreeze ? `freeze window: ${m.freeze_ms.toFixed(1)} ms`
    : terminal ? `freeze window: none (${m.stateful ? "not reached" : "no state to freeze"})`
    : "freeze window: not yet";
  const head = el("div", { class: "head" },
    el("strong", { text: `${m.service}: ${m.from_cluster} \u2192 ${m.to_cluster}` }),
    el("span", { class: `st st-${m.status}`, "data-status": m.status, text: m.status }),
    el("span", { class: "freeze", text: freeze }),
    el("span", { class: "small", text: m.total_ms ? `total ${Math.round(m.total_ms)} ms` : "" }),
    el("code", { text: m.id }));
  if (!terminal && !m.cutover_confirmed && !m.forward_only) {
    head.append(el("button", { type: "button", class: "danger", id: `abort-move-${m.id}`,
                               "aria-label": `Abort move ${m.id}`,
                               onclick: () => abortMove(m.id), text: "Abort" }));
  }
  const item = el("li", { class: "move", "data-move": m.id, "data-status": m.status }, head,
    el("ol", { class: "timeline", "aria-label": `phases of ${m.id}` }, ...steps));
  if (m.error) item.append(el("p", { class: "error", text: m.error }));
  if (m.events && m.events.length) {
    item.append(el("ul", { class: "events", "aria-label": `events of ${m.id}` },
                   ...m.events.slice(-8).reverse().map((t) => el("li", { text: t }))));
  }
  return item;
}

// ---- wiring --------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    start();
  });
  $("signout").addEventListener("click", () => signOut("Token forgotten."));
  if (token()) start(); else showLogin("");
});
