// Stations / live: one card per station, fed by its Server-Sent Events (/api/v1/stations/NAME/events).
"use strict";

const LIST = 50;  // verdict rows shown per station
const cards = new Map();  // name -> card state
let paused = false;

function fmt(x, digits = 4) { return typeof x === "number" ? String(Number(x.toPrecision(digits))) : "–"; }
function label(v) { return v.fail_safe ? `fail-safe: ${v.reason}` : v.verdict; }
function kind(v) { return v.fail_safe ? "failsafe" : v.verdict === "OK" ? "ok" : "ng"; }
function firstType(v) {
  const d = (v.defects || [])[0];
  return d && d.type !== undefined && d.grade !== undefined ? d.type : "–";
}
function api(name, what) { return `/api/v1/stations/${encodeURIComponent(name)}/${what}`; }

function makeCard(name) {
  const node = document.getElementById("station-tpl").content.firstElementChild.cloneNode(true);
  node.dataset.station = name;
  node.querySelector(".name").textContent = name;
  document.getElementById("stations").append(node);
  const card = {name, node, verdicts: [], bySeq: new Map(), summary: null, summaryAt: 0, frameSeq: null,
                q: (sel) => node.querySelector(sel)};
  card.q(".overlay").addEventListener("change", () => showOverlay(card));
  node.querySelectorAll(".cmd").forEach((b) => b.addEventListener("click", () => stationCommand(card, b)));
  card.q(".frame").addEventListener("load", () => { card.q(".no-frame").hidden = true; drawBoxes(card); });
  cards.set(name, card);
  return card;
}

const ASK = {pause: "Pause station %s? It stops acquiring and deciding frames until it is resumed.",
             reload: "Reload the model of station %s?"};

async function stationCommand(card, button) {  // the station's reply (or why there is none) under its name
  const cmd = button.dataset.cmd;
  if (ASK[cmd] && !confirm(ASK[cmd].replace("%s", card.name))) return;
  const out = card.q(".cmd-reply");
  out.hidden = false;
  out.textContent = `${cmd}: sent, waiting for the station…`;
  out.className = "cmd-reply";
  try {
    const res = await sendCommand(card.name, cmd);
    out.textContent = replyText(cmd, res);
    out.className = `cmd-reply ${res.ok ? "ok" : "refused"}`;
  } catch (err) {
    out.textContent = `${cmd}: not sent (${err.message})`;
  }
}

function showOverlay(card) {
  const on = card.q(".overlay").checked;
  card.q(".heat").hidden = !on || !(card.summary && card.summary.heatmap);
  card.q(".boxes").style.display = on ? "" : "none";
}

function drawBoxes(card) {
  const svg = card.q(".boxes");
  const img = card.q(".frame");
  svg.replaceChildren();
  const v = card.bySeq.get(card.frameSeq);
  if (!v || !img.naturalWidth) return;
  svg.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
  const stroke = Math.max(2, img.naturalWidth / 300);
  (v.defects || []).forEach((d, i) => {
    const [x, y, w, h] = d.bbox;
    const ns = "http://www.w3.org/2000/svg";
    const rect = document.createElementNS(ns, "rect");
    for (const [k, val] of Object.entries({x, y, width: w, height: h, "stroke-width": stroke})) rect.setAttribute(k, val);
    const text = document.createElementNS(ns, "text");
    text.setAttribute("x", x);
    text.setAttribute("y", Math.max(y - stroke, 12 * stroke));
    text.setAttribute("font-size", 12 * stroke);
    text.textContent = String(i);
    svg.append(rect, text);
  });
}

function showVerdict(card, v) {
  const big = card.q(".verdict-big");
  big.textContent = label(v);
  big.className = `verdict-big ${kind(v)}`;
  const scored = typeof v.score === "number" && typeof v.threshold === "number";
  card.q(".score").textContent = scored ? `${fmt(v.score)} / ${fmt(v.threshold)}` : "–";
  if (scored && v.threshold > 0) {  // the threshold sits at the middle of the bar, twice it fills the bar
    card.q(".scorebar .fill").style.width = `${Math.min(100, 50 * v.score / v.threshold)}%`;
    card.q(".scorebar .fill").className = `fill ${kind(v)}`;
  }
  card.q(".reason").textContent = v.fail_safe ? `${v.reason}: ${v.detail || ""}` : v.reason;
  card.q(".dtype").textContent = firstType(v);
  card.q(".grade").textContent = v.grade ?? "–";
  card.q(".part").textContent = v.part_id;
  card.q(".seq").textContent = `${v.seq} (run ${v.run})`;
  card.q(".model").textContent = v.model ? `${v.model.id} v${v.model.version} (${v.model.hash})` : "none loaded";
}

function row(v) {
  const time = (v.host_ts || "").slice(11, 23);
  const score = typeof v.score === "number" ? `${fmt(v.score)} / ${fmt(v.threshold)}` : "–";
  const tr = el("tr", {class: kind(v), "data-seq": String(v.seq)}, el("td", {}, String(v.seq)), el("td", {}, time),
                el("td", {}, v.part_id), el("td", {}, label(v)), el("td", {}, score), el("td", {}, firstType(v)),
                el("td", {}, v.grade ?? "–"));
  return tr;
}

function addVerdicts(card, list) {  // list: newest first; anything already shown (same run and seq) is skipped
  const last = card.verdicts[0];
  const fresh = list.filter((v) => !last || v.run !== last.run || v.seq > last.seq).reverse();
  if (!fresh.length) return;
  for (const v of fresh) {
    card.verdicts.unshift(v);
    card.bySeq.set(v.seq, v);
  }
  for (const old of card.verdicts.splice(LIST)) card.bySeq.delete(old.seq);
  const body = card.q(".verdicts tbody");
  body.prepend(...fresh.slice().reverse().map(row));
  while (body.rows.length > LIST) body.deleteRow(-1);
  showVerdict(card, card.verdicts[0]);
  if (card.frameSeq !== null) drawBoxes(card);
}

function showSummary(card, s) {
  card.summary = s;
  card.summaryAt = performance.now();
  const c = s.counters;
  card.q(".c-ok").textContent = c.ok;
  card.q(".c-ng").textContent = c.ng;
  card.q(".c-fs").textContent = Object.values(c.fail_safe).reduce((a, b) => a + b, 0);
  card.q(".c-missed").textContent = c.missed;
  const reasons = Object.entries(c.fail_safe).map(([r, n]) => `${r}: ${n}`).join(", ");
  card.q(".fs-reasons").textContent = reasons ? `fail-safe by reason: ${reasons}` : "";
  card.q(".error").textContent = s.error || "";
  card.q(".controls").hidden = !s.commands;
  const status = card.q(".status");
  status.hidden = !s.status;
  status.textContent = `station ${s.status || ""}`;
  status.className = `status conn ${s.status === "online" ? "live" : "stale"}`;
  const camera = card.q(".camera");
  camera.hidden = !s.camera;
  camera.textContent = `camera ${s.camera || ""}`;
  camera.className = `camera conn ${s.camera === "up" ? "live" : "stale"}`;
  card.q(".alarms").hidden = !s.alarms.length;
  card.q(".alarms ul").replaceChildren(...s.alarms.slice(0, 8).map((a) =>
    el("li", {"data-code": a.code}, el("b", {}, a.code), ` ${a.host_ts ? a.host_ts.slice(11, 19) : ""} `, a.message)));
  showConnection(card);
  showOverlay(card);
}

function showConnection(card) {  // ages between summaries are counted here, so a silent station turns stale
  const s = card.summary;
  const conn = card.q(".conn");
  if (!s || s.last_message_age_s === null) {
    conn.textContent = "waiting for the first message";
    conn.className = "conn waiting";
    return;
  }
  const age = s.last_message_age_s + (performance.now() - card.summaryAt) / 1000;
  const live = age <= s.stale_after_s;
  conn.textContent = live ? "connected" : `no message for ${age.toFixed(0)} s`;
  conn.className = `conn ${live ? "live" : "stale"}`;
}

function showFrame(card, seq, heatmap) {
  card.frameSeq = seq;
  card.q(".frame").src = `${api(card.name, "frame")}?seq=${seq}`;
  if (heatmap) card.q(".heat").src = `${api(card.name, "heatmap")}?seq=${seq}`;
  card.q(".frame-seq").textContent = `frame of seq ${seq}`;
}

function listen(card) {
  const stream = card.q(".stream");
  const source = new EventSource(api(card.name, "events"));
  source.onopen = () => { stream.textContent = "live"; stream.className = "stream live"; };
  source.onerror = () => { stream.textContent = "stream reconnecting"; stream.className = "stream stale"; };
  source.addEventListener("snapshot", (e) => {
    if (paused) return;
    const {summary, verdicts} = JSON.parse(e.data);
    showSummary(card, summary);
    addVerdicts(card, verdicts);
    if (summary.frame_seq !== null) showFrame(card, summary.frame_seq, summary.heatmap);
  });
  source.addEventListener("verdict", (e) => { if (!paused) addVerdicts(card, [JSON.parse(e.data)]); });
  source.addEventListener("summary", (e) => { if (!paused) showSummary(card, JSON.parse(e.data)); });
  source.addEventListener("frame", (e) => {
    if (paused) return;
    const {seq, heatmap} = JSON.parse(e.data);
    showFrame(card, seq, heatmap);
  });
}

async function catchUp() {  // after a pause: the newest state, as a freshly opened page would show it
  for (const card of cards.values()) {
    const [summary, verdicts] = await Promise.all([
      getJSON(`/api/v1/stations/${encodeURIComponent(card.name)}`),
      getJSON(`${api(card.name, "verdicts")}?limit=${LIST}`)]);
    showSummary(card, summary);
    addVerdicts(card, verdicts);
    if (summary.frame_seq !== null) showFrame(card, summary.frame_seq, summary.heatmap);
  }
}

function togglePause() {
  paused = !paused;
  document.getElementById("pause").textContent = paused ? "Resume" : "Pause";
  document.getElementById("paused-note").hidden = !paused;
  document.body.classList.toggle("paused", paused);
  if (!paused) catchUp().catch((err) => console.warn(err));
}

async function start() {
  document.getElementById("pause").addEventListener("click", togglePause);
  const stations = await getJSON("/api/v1/stations");
  document.getElementById("none").hidden = stations.length > 0;
  for (const s of stations) {
    const card = makeCard(s.name);
    showSummary(card, s);
    listen(card);
  }
  setInterval(() => { if (!paused) cards.forEach(showConnection); }, 1000);
}

document.addEventListener("DOMContentLoaded", () => start().catch((err) => console.warn(err)));
