// Training: start `project fit` / `project learn` as a job, follow it live (GET /api/v1/jobs/events): progress
// per stage with ETA, the self-supervised loss curve, the log, and the result; cancel.
"use strict";

let project = null;
let shown = null;  // the job id in the job panel
const jobs = new Map();

function showProblem(text) {
  const p = document.getElementById("problem");
  p.textContent = text;
  p.hidden = !text;
}

function mmss(s) {
  s = Math.max(0, Math.round(s));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

async function loadConfig(name) {
  project = name;
  const d = await getJSON(`/api/v1/projects/${encodeURIComponent(name)}/train-config`);
  document.getElementById("config").value = JSON.stringify(d.config, null, 2);
  const rows = [];
  const describe = (props, prefix) => {
    for (const [k, v] of Object.entries(props || {})) {
      const ref = v.$ref || (v.anyOf || []).map((a) => a.$ref).find(Boolean);
      const def = ref ? d.schema.$defs[ref.split("/").pop()] : null;
      if (def && def.properties) describe(def.properties, `${prefix}${k}.`);
      else rows.push(el("tr", {}, el("td", {}, el("code", {}, prefix + k)), el("td", {}, v.description || "")));
    }
  };
  describe(d.schema.properties, "");
  document.getElementById("fields").replaceChildren(el("tr", {}, el("th", {}, "field"), el("th", {}, "meaning")),
                                                    ...rows);
}

async function start(kind) {
  const status = document.getElementById("start-status");
  const body = {kind};
  if (kind === "fit") {
    try { body.config = JSON.parse(document.getElementById("config").value); } catch (e) {
      status.textContent = `the train config is not JSON: ${e.message}`; return;
    }
  }
  status.textContent = `starting ${kind}…`;
  const res = await writeRequest(`/api/v1/projects/${encodeURIComponent(project)}/jobs`, body);
  if (!res.ok) { status.textContent = `refused (HTTP ${res.status}): ${res.body.detail}`; return; }
  status.textContent = `job ${res.body.id} started`;
  shown = res.body.id;
  update(res.body);
}

function lossChart(points) {
  const svg = document.getElementById("loss-chart");
  document.getElementById("loss").hidden = points.length === 0;
  if (!points.length) return;
  const w = 480, h = 160, pad = 24;
  const xs = points.map((p) => p.step), ys = points.map((p) => p.loss);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
  const pts = points.map((p) => `${pad + (p.step - x0) / (x1 - x0) * (w - 2 * pad)},` +
                                `${h - pad - (p.loss - y0) / (y1 - y0) * (h - 2 * pad)}`).join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts);
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#2563eb");
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", pad);
  label.setAttribute("y", 14);
  label.textContent = `loss ${fmt(ys[ys.length - 1], 4)} at step ${xs[xs.length - 1]} (from ${fmt(ys[0], 4)})`;
  svg.replaceChildren(line, label);
}

function showJob(j) {
  document.getElementById("job-panel").hidden = false;
  document.getElementById("job-id").textContent = `${j.id} · ${j.kind} of ${j.project}`;
  const state = document.getElementById("job-state");
  state.textContent = j.state;
  state.className = "conn " + (j.state === "done" ? "live" : j.state === "running" ? "" : "stale");
  document.getElementById("job-facts").textContent =
    `started ${j.started} by ${j.by || "an unnamed token"} · ${mmss(j.seconds)} elapsed` +
    (j.progress && j.state === "running" ? ` · ${j.progress.stage}: ETA ${mmss(j.progress.eta_s)}` : "");
  document.getElementById("stages").replaceChildren(
    el("tr", {}, el("th", {}, "stage"), el("th", {}, "progress"), el("th", {}, "done"), el("th", {}, "elapsed"),
       el("th", {}, "ETA")),
    ...j.stages.map((s) => {
      const bar = el("div", {class: "bar"}, el("div", {style: `width:${Math.round(100 * s.done / s.total)}%`}));
      return el("tr", {}, el("td", {}, s.stage), el("td", {}, bar), el("td", {}, `${s.done}/${s.total}`),
                el("td", {}, mmss(s.elapsed_s)), el("td", {}, s.done >= s.total ? "–" : mmss(s.eta_s)));
    }));
  lossChart(j.loss);
  const err = document.getElementById("job-error");
  err.textContent = j.error || "";
  err.hidden = !j.error;
  const v = j.result && j.result.version;  // fit and tune print a number, learn "vN"
  const n = typeof v === "number" ? v : (typeof v === "string" ? Number(v.replace(/^v/, "")) : null);
  const report = document.getElementById("job-report");
  report.hidden = !(j.state === "done" && n);
  if (n && j.state === "done") {
    const base = `/api/v1/projects/${encodeURIComponent(j.project)}`;
    const models = el("a", {href: `/models?project=${encodeURIComponent(j.project)}`}, "compare and activate it on Models");
    report.replaceChildren(`v${n} is ready: `, models);
    getJSON(`${base}/versions`).then((rows) => {  // a version evaluated on labeled images has a report
      const row = rows.find((r) => r.info.version === n);
      if (row && row.report) {
        report.replaceChildren(`v${n} is ready: `, el("a", {href: `${base}/versions/${n}/report/report.html`,
                                                            target: "_blank"}, "its evaluation report"), " · ", models);
      }
    }).catch((e) => console.warn(e));
  }
  const result = document.getElementById("job-result");
  result.textContent = j.result ? JSON.stringify(j.result, null, 2) : "";
  result.hidden = !j.result;
  document.getElementById("job-log").textContent = j.log.join("\n");
  document.getElementById("cancel").hidden = j.state !== "running";
}

function update(j) {
  jobs.set(j.id, j);
  if (shown === null || shown === j.id) { shown = j.id; showJob(j); }
  const list = [...jobs.values()].sort((a, b) => (a.started < b.started ? 1 : -1));
  document.getElementById("jobs").replaceChildren(
    el("tr", {}, el("th", {}, "job"), el("th", {}, "project"), el("th", {}, "kind"), el("th", {}, "state"),
       el("th", {}, "started"), el("th", {}, "result")),
    ...list.map((x) => {
      const a = el("a", {href: "#"}, x.id);
      a.addEventListener("click", (e) => { e.preventDefault(); shown = x.id; showJob(x); });
      const v = x.result && x.result.version;
      const version = v ? (typeof v === "number" ? `v${v}` : v) : (x.error || "");
      return el("tr", {"data-job": x.id}, el("td", {}, a), el("td", {}, x.project), el("td", {}, x.kind),
                el("td", {}, x.state), el("td", {}, x.started), el("td", {}, version));
    }));
}

document.getElementById("fit").addEventListener("click", () => start("fit"));
document.getElementById("learn").addEventListener("click", () => start("learn"));
document.getElementById("cancel").addEventListener("click", async () => {
  if (!shown || !confirm(`Cancel job ${shown}? Its half-built version is dropped.`)) return;
  const res = await writeRequest(`/api/v1/jobs/${shown}/cancel`);
  if (!res.ok) showProblem(`cancel refused (HTTP ${res.status}): ${res.body.detail}`);
});

document.addEventListener("DOMContentLoaded", async () => {
  const select = document.getElementById("project");
  const name = await chooseProject(select, loadConfig).catch((e) => { showProblem(e.message); return null; });
  document.getElementById("none").hidden = !!name;
  if (name) loadConfig(name).catch((e) => showProblem(e.message));
  const events = new EventSource("/api/v1/jobs/events");
  events.addEventListener("job", (e) => update(JSON.parse(e.data)));
});
