// Review: a station's archive newest first (GET /api/v1/stations/NAME/archive), frame | heatmap side by side, and
// feedback into the station's project (cmd/feedback through POST .../commands/feedback).
"use strict";

const PAGE = 48;  // records per request
let station = null;
let next = null;  // cursor of the next (older) page
let selected = null;  // the record shown in the detail panel
const types = new Set();  // defect types seen, offered when correcting a type

function fmt(x, digits = 4) { return typeof x === "number" ? String(Number(x.toPrecision(digits))) : "–"; }
function archiveUrl(what = "") { return `/api/v1/stations/${encodeURIComponent(station)}/archive${what}`; }
function kind(r) { return r.fail_safe ? "failsafe" : r.verdict === "OK" ? "ok" : "ng"; }
function label(r) { return r.fail_safe ? `fail-safe (${r.verdict}): ${r.reason}` : r.verdict; }

function query() {
  const q = new URLSearchParams({limit: String(PAGE)});
  for (const [k, v] of new FormData(document.getElementById("filters"))) {
    if (v === "") continue;
    q.set(k, k === "since" || k === "until" ? `${v}Z` : v);  // datetime-local has no zone: the filter says UTC
  }
  return q;
}

function tile(r) {
  const img = el("img", {alt: `seq ${r.seq}`, loading: "lazy"});
  if (r.image) img.src = archiveUrl(`/${encodeURIComponent(r.id)}/image`);
  const t = el("button", {type: "button", class: `tile ${kind(r)}`, "data-id": r.id, "data-seq": String(r.seq)},
               img, el("span", {class: "v"}, label(r)),
               el("span", {}, `${fmt(r.score)} · ${r.defect_types[0] || "–"}`),
               el("span", {class: "note"},
                  `${(r.host_ts || "").replace("T", " ").slice(0, 19)} · ${r.part_id || ""}`));
  t.addEventListener("click", () => show(r, t));
  return t;
}

async function load(more = false) {
  const gallery = document.getElementById("gallery");
  const problem = document.getElementById("problem");
  problem.hidden = true;
  if (!more) { gallery.replaceChildren(); next = null; }
  const q = query();
  if (more && next) q.set("before", next);
  const r = await fetch(`${archiveUrl()}?${q}`, {cache: "no-store"});
  const body = await r.json().catch(() => ({detail: `HTTP ${r.status}`}));
  if (r.status === 401) askToken("This UI needs a token to read (auth.read_open is false).");
  if (!r.ok) {
    problem.textContent = body.detail || `HTTP ${r.status}`;
    problem.hidden = false;
    return;
  }
  for (const rec of body.records) {
    rec.defect_types.forEach((t) => types.add(t));
    gallery.append(tile(rec));
  }
  next = body.next;
  document.getElementById("more").hidden = !next;
  const shown = gallery.children.length;
  document.getElementById("status").textContent = body.stopped_early
    ? `${shown} shown; this request stopped after reading ${body.read} records: "Older records" goes on`
    : next ? `${shown} shown` : `${shown} shown: the archive ends here`;
  document.getElementById("known-types").replaceChildren(...[...types].sort().map((t) => el("option", {value: t})));
}

function show(r, t) {
  selected = r;
  document.querySelectorAll(".tile.selected").forEach((x) => x.classList.remove("selected"));
  t.classList.add("selected");
  document.getElementById("detail").hidden = false;
  const id = encodeURIComponent(r.id);
  const image = document.getElementById("d-image");
  const heat = document.getElementById("d-heatmap");
  image.hidden = !r.image;
  heat.hidden = !r.heatmap;
  if (r.image) image.src = archiveUrl(`/${id}/image`);
  if (r.heatmap) heat.src = archiveUrl(`/${id}/heatmap`);
  const set = (key, text) => { document.getElementById(key).textContent = text; };
  set("d-verdict", label(r));
  set("d-score", typeof r.score === "number" ? `${fmt(r.score)} / ${fmt(r.threshold)}` : "–");
  set("d-reason", r.reason || "–");
  set("d-types", r.defect_types.join(", ") || "–");
  set("d-grade", r.grade ?? "–");
  set("d-part", r.part_id || "–");
  set("d-seq", `${r.seq} (run ${r.run ?? "?"})`);
  set("d-time", r.host_ts || "–");
  set("d-model", r.model ? `${r.model.id} v${r.model.version} (${r.model.hash})` : "–");
  const reply = document.getElementById("fb-reply");
  reply.hidden = true;
  document.getElementById("fb-type-box").hidden = true;
  document.getElementById("cap-reply").textContent = "";
}

async function feedback(labelValue) {
  const r = selected;
  if (!r) return;
  const reply = document.getElementById("fb-reply");
  reply.hidden = false;
  reply.className = "cmd-reply";
  reply.textContent = `feedback ${labelValue} for seq ${r.seq}: sent, waiting for the station…`;
  const payload = {seq: r.seq, label: labelValue};
  if (r.part_id) payload.part_id = r.part_id;
  if (typeof r.run === "number") payload.run = r.run;
  try {
    const res = await sendCommand(station, "feedback", payload);
    const result = res.ok ? res.body.result : null;
    const image = result && result.image ? ", with its image" : "";
    reply.textContent = !res.ok ? replyText("feedback", res)
      : result.recorded ? `recorded: seq ${r.seq} is ${labelValue} (record ${result.id}${image})`
      : `not recorded: ${result.why}`;
    reply.className = `cmd-reply ${res.ok && result.recorded ? "ok" : "refused"}`;
  } catch (err) {
    reply.textContent = `feedback: not sent (${err.message})`;
  }
}

async function capture() {
  const r = selected;
  const project = document.getElementById("cap-project").value;
  const reply = document.getElementById("cap-reply");
  if (!r || !project) return;
  const labelValue = document.getElementById("cap-label").value.trim() || "good";
  const res = await writeRequest(`/api/v1/projects/${encodeURIComponent(project)}/images/from-archive`,
                                 {station, record: r.id, label: labelValue});
  reply.textContent = !res.ok ? `not added (HTTP ${res.status}): ${res.body.detail}`
    : res.body.added ? `added to ${project} as ${labelValue}` : `${project} already holds this frame`;
}

async function start() {
  const stations = (await getJSON("/api/v1/stations")).filter((s) => s.archive);
  document.getElementById("none").hidden = stations.length > 0;
  const select = document.getElementById("station");
  select.replaceChildren(...stations.map((s) => el("option", {value: s.name}, s.name)));
  if (!stations.length) return;
  station = stations[0].name;
  select.addEventListener("change", () => { station = select.value; load().catch((e) => console.warn(e)); });
  document.getElementById("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    load().catch((err) => console.warn(err));
  });
  document.getElementById("more").addEventListener("click", () => load(true).catch((e) => console.warn(e)));
  const projects = await getJSON("/api/v1/projects");
  document.getElementById("cap-project").replaceChildren(...projects.map((p) => el("option", {value: p.name},
                                                                                     p.name)));
  document.getElementById("capture").hidden = projects.length === 0;
  document.getElementById("cap-send").addEventListener("click", () => capture().catch((e) => console.warn(e)));
  document.getElementById("fb-ok").addEventListener("click", () => feedback("OK"));
  document.getElementById("fb-ng").addEventListener("click", () => feedback("NG"));
  document.getElementById("fb-type").addEventListener("click", () => {
    document.getElementById("fb-type-box").hidden = false;
    document.getElementById("fb-type-label").focus();
  });
  document.getElementById("fb-type-send").addEventListener("click", () => {
    const value = document.getElementById("fb-type-label").value.trim();
    if (value) feedback(value);
  });
  await load();
}

document.addEventListener("DOMContentLoaded", () => start().catch((err) => console.warn(err)));
