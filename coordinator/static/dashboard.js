// The live dashboard: polls /api/status and /api/history, redraws in place (no reload, nothing fetched
// from elsewhere). Charts are plain SVG drawn here: a polyline and its area over a few grid lines.
"use strict";

const STATUS_EVERY_MS = 2000;
const HISTORY_EVERY_MS = 4000;
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function fmtNumber(x, digits = 1) {
  if (x === null || x === undefined || Number.isNaN(x)) return "-";
  return Number(x).toLocaleString(undefined, { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function fmtBytes(n) {
  if (!n) return "0 B";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function fmtRate(bps) {
  if (!bps) return "-";
  const mbit = (bps * 8) / 1e6;
  return (mbit >= 10 ? mbit.toFixed(0) : mbit.toFixed(1)) + " Mbit/s";
}

function fmtClock(t) {
  if (!t) return "-";
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

function fmtAgo(t) {
  if (!t) return "-";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return s.toFixed(0) + "s ago";
  if (s < 3600) return (s / 60).toFixed(0) + "m ago";
  return (s / 3600).toFixed(1) + "h ago";
}

function shortId(id) {
  return id ? "…" + id.slice(-10) : "-";
}

function setRows(table, rowsHtml, emptyText, columns) {
  const body = $(table).tBodies[0];
  body.innerHTML = rowsHtml.length ? rowsHtml.join("") : `<tr class="empty"><td colspan="${columns}">${esc(emptyText)}</td></tr>`;
}

// -- charts -------------------------------------------------------------------------------------------------

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) { const pad = Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const start = Math.floor(lo / step) * step;
  const ticks = [];
  for (let v = start; v <= hi + step * 0.5; v += step) ticks.push(v);
  return ticks;
}

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function drawChart(svg, points, digits) {
  const width = svg.clientWidth || 600, height = svg.clientHeight || 200;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  svg.replaceChildren();
  svg.dataset.points = String(points.length);
  const left = 52, right = 10, top = 8, bottom = 22;
  const w = width - left - right, h = height - top - bottom;
  if (points.length === 0) {
    svg.appendChild(svgEl("text", { x: left + w / 2, y: top + h / 2, "text-anchor": "middle", class: "axis" }, "waiting for data"));
    return;
  }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x1 <= x0) { x0 -= 1; x1 += 1; }
  const ticks = niceTicks(Math.min(...ys), Math.max(...ys), 4);
  const y0 = ticks[0], y1 = ticks[ticks.length - 1];
  const X = (x) => left + ((x - x0) / (x1 - x0)) * w;
  const Y = (y) => top + h - ((y - y0) / (y1 - y0 || 1)) * h;
  for (const t of ticks) {
    svg.appendChild(svgEl("line", { x1: left, x2: left + w, y1: Y(t), y2: Y(t), class: "grid" }));
    svg.appendChild(svgEl("text", { x: left - 6, y: Y(t) + 4, "text-anchor": "end", class: "axis" }, fmtNumber(t, digits)));
  }
  for (let i = 0; i <= 3; i++) {
    const t = x0 + ((x1 - x0) * i) / 3;
    const anchor = i === 0 ? "start" : i === 3 ? "end" : "middle";
    svg.appendChild(svgEl("text", { x: X(t), y: height - 6, "text-anchor": anchor, class: "axis" }, fmtClock(t)));
  }
  const line = points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
  const area = `M${X(xs[0]).toFixed(1)},${top + h} L${line.split(" ").join(" L")} L${X(xs[xs.length - 1]).toFixed(1)},${top + h} Z`;
  svg.appendChild(svgEl("path", { d: area, class: "area" }));
  svg.appendChild(svgEl("polyline", { points: line, class: "series" }));
  const last = points[points.length - 1];
  svg.appendChild(svgEl("circle", { cx: X(last[0]), cy: Y(last[1]), r: 3, class: "series" }));
}

// -- status -------------------------------------------------------------------------------------------------

function fmtEta(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.round(seconds), two = (n) => String(n).padStart(2, "0");
  if (s >= 86400) return `${Math.floor(s / 86400)}d ${two(Math.floor(s % 86400 / 3600))}h`;
  if (s >= 3600) return `${Math.floor(s / 3600)}h ${two(Math.floor(s % 3600 / 60))}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m ${two(s % 60)}s`;
  return `${s}s`;
}

function renderProgress(p) {
  if (!p) return;
  $("progress-text").textContent = `epoch ${p.epoch} / ${p.total_epochs} (${(100 * p.fraction).toFixed(1)}%)`;
  $("eta").textContent = p.state === "finished" ? "done" : fmtEta(p.eta_s);
  $("progress-bar").style.width = `${(100 * p.fraction).toFixed(2)}%`;
}

function renderStatus(s) {
  document.title = `swarm · ${s.run_id} · epoch ${s.epoch}`;
  $("run-id").textContent = s.run_id;
  $("task").textContent = s.task + (s.seed && s.seed.active ? ` · seeding epoch ${s.seed.epoch}` : "");
  $("state").textContent = s.state;
  $("state-dot").className = "dot " + (s.state === "running" ? "ok" : "");
  $("kpi-epoch").textContent = s.epoch;
  $("kpi-rate").textContent = fmtNumber(s.samples_per_second, 1);
  $("kpi-loss").textContent = s.loss === null ? "-" : fmtNumber(s.loss, 4);
  $("kpi-peers").textContent = s.peers.length;
  $("kpi-roles").textContent = Object.entries(s.peers_by_role).map(([r, n]) => `${n} ${r}`).join(" · ");
  const ck = s.checkpoints[0];
  $("kpi-ckpt").textContent = ck ? `epoch ${ck.epoch}` : "-";
  $("peers-count").textContent = `(${s.peers.length})`;
  $("join-command").textContent = s.coordinator.join_command || "-";
  $("invite").textContent = s.coordinator.invite || (s.coordinator.join_command ? "invite-only run: swarm invite create makes one" : "-");
  renderProgress(s.progress);
  $("updated").textContent = fmtClock(s.updated_at);

  setRows("peers-table", s.peers.map((p) => `<tr class="peer-row" data-peer-id="${esc(p.id)}">
      <td class="mono" title="${esc(p.id)}">${esc(shortId(p.id))}</td>
      <td><span class="role ${esc(p.role)}">${esc(p.role)}</span></td>
      <td>${esc(p.device || "-")}</td>
      <td class="num">${fmtNumber(p.samples_per_second, 1)}</td>
      <td>${fmtRate(p.upload_bps)} / ${fmtRate(p.download_bps)}</td>
      <td class="num">${Number(p.samples_contributed || 0).toLocaleString()}</td>
      <td>${fmtClock(p.online_since)}</td>
      <td>${fmtAgo(p.last_seen)}</td>
      <td>${p.client_mode ? "yes" : "no"}</td></tr>`), "no peers online", 9);

  setRows("rounds-table", s.rounds.map((r) => `<tr>
      <td class="num">${r.epoch}</td><td class="num">${r.members}</td><td class="num">${fmtNumber(r.seconds, 2)}</td>
      <td class="num">${fmtBytes(r.bytes_sent)}</td><td>${fmtClock(r.time)}</td></tr>`), "no rounds yet", 5);

  const total = s.leaderboard.reduce((a, r) => a + r.samples, 0) || 1;
  setRows("leaderboard-table", s.leaderboard.map((r, i) => `<tr>
      <td class="num">${i + 1}</td><td class="mono" title="${esc(r.id)}">${esc(shortId(r.id))}</td>
      <td class="num">${Number(r.samples).toLocaleString()}</td>
      <td style="width:35%"><div class="bar" style="width:${((100 * r.samples) / total).toFixed(1)}%"></div></td></tr>`), "no contributions yet", 4);

  setRows("checkpoints-table", s.checkpoints.map((c) => `<tr>
      <td class="num">${c.epoch}</td><td class="num">${fmtBytes(c.bytes)}</td><td>${fmtClock(c.time)}</td>
      <td class="mono">${esc(shortId(c.donor))}</td></tr>`), s.checkpoint_error ? `last attempt failed: ${s.checkpoint_error}` : "none yet", 4);
  document.body.dataset.peers = String(s.peers.length);
}

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

async function pollStatus() {
  try {
    renderStatus(await getJson("/api/status"));
  } catch (e) {
    $("state").textContent = "coordinator unreachable";
    $("state-dot").className = "dot bad";
  }
  setTimeout(pollStatus, STATUS_EVERY_MS);
}

async function pollHistory() {
  try {
    const [loss, rate] = await Promise.all([
      getJson("/api/history?metric=loss&points=300"),
      getJson("/api/history?metric=samples_per_second&points=300"),
    ]);
    drawChart($("loss-chart"), loss.points, 3);
    drawChart($("rate-chart"), rate.points, 0);
  } catch (e) {
    // the status poll reports the coordinator as unreachable; keep the last charts
  }
  setTimeout(pollHistory, HISTORY_EVERY_MS);
}

pollStatus();
pollHistory();
