// Models: the project's versions with their figures, reports, activate / roll back, and a diff of two versions.
"use strict";

let project = null;
let versions = new Map();

function showProblem(text) {
  const p = document.getElementById("problem");
  p.textContent = text;
  p.hidden = !text;
}

function pct(x) { return x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`; }

async function act(url, body, what) {
  const status = document.getElementById("action-status");
  status.textContent = `${what}…`;
  const res = await writeRequest(url, body);
  status.textContent = res.ok ? `${what}: v${res.body.active} is active` : `${what} refused (HTTP ${res.status}): ` +
                                                                            res.body.detail;
  load(project);
}

async function load(name) {
  project = name;
  showProblem("");
  const base = `/api/v1/projects/${encodeURIComponent(name)}`;
  let rows;
  try { rows = await getJSON(`${base}/versions`); } catch (e) { showProblem(e.message); return; }
  document.getElementById("versions").replaceChildren(
    el("tr", {}, ...["version", "created", "how", "backbone", "trained on", "threshold", "image AUROC",
                     "pixel AUROC", "false reject", "escape", "report", ""].map((h) => el("th", {}, h))),
    ...rows.map(({info: v, active, report}) => {
      const m = v.metrics;
      const button = el("button", {type: "button", "data-activate": String(v.version)}, "Activate");
      button.addEventListener("click", () => {
        if (confirm(`Activate v${v.version}? Stations running ${name} switch to it.`)) {
          act(`${base}/activate`, {version: v.version}, `activate v${v.version}`);
        }
      });
      const link = report ? el("a", {href: `${base}/versions/${v.version}/report/report.html`, target: "_blank"},
                               "report") : "–";
      return el("tr", {class: active ? "active" : "", "data-version": String(v.version)},
                el("td", {}, `v${v.version}${active ? " (active)" : ""}`), el("td", {}, v.created),
                el("td", {}, v.how + (v.parent ? ` of v${v.parent}` : "")), el("td", {}, v.backbone),
                el("td", {}, String(v.n_train)), el("td", {}, fmt(v.image_threshold, 4)),
                el("td", {}, fmt(m.image_auroc)), el("td", {}, fmt(m.pixel_auroc)),
                el("td", {}, `${pct(m.false_reject_rate)} of ${m.n_good}`),
                el("td", {}, `${pct(m.escape_rate)} of ${m.n_defective}`), el("td", {}, link),
                el("td", {}, active ? "" : button));
    }));
  versions = new Map(rows.map((r) => [r.info.version, r]));
  const tv = document.getElementById("tune-version");
  tv.replaceChildren(...rows.map(({info: v, active}) => el("option", {value: String(v.version)},
                                                           `v${v.version}${active ? " (active)" : ""}`)));
  const first = rows.find((r) => r.active) || rows[0];
  if (first) { tv.value = String(first.info.version); tuneDefaults(); }
  const options = rows.map(({info: v}) => el("option", {value: String(v.version)}, `v${v.version}`));
  const a = document.getElementById("diff-a"), b = document.getElementById("diff-b");
  a.replaceChildren(...options.map((o) => o.cloneNode(true)));
  b.replaceChildren(...options);
  if (rows.length > 1) { a.value = String(rows[1].info.version); b.value = String(rows[0].info.version); }
  diff();
}

async function diff() {
  const a = document.getElementById("diff-a").value, b = document.getElementById("diff-b").value;
  const table = document.getElementById("diff");
  if (!a || !b || a === b) { table.replaceChildren(); return; }
  const rows = await getJSON(`/api/v1/projects/${encodeURIComponent(project)}/diff?a=${a}&b=${b}`);
  table.replaceChildren(el("tr", {}, el("th", {}, "field"), el("th", {}, `v${a}`), el("th", {}, `v${b}`)),
                        ...(rows.length ? rows.map((r) => el("tr", {}, el("td", {}, r.field),
                                                            el("td", {}, JSON.stringify(r.a)),
                                                            el("td", {}, JSON.stringify(r.b))))
                                        : [el("tr", {}, el("td", {colspan: "3"}, "no difference"))]));
}

function tuneDefaults() {
  const row = versions.get(Number(document.getElementById("tune-version").value));
  if (!row) return;
  const c = row.info.train_config.calibration;
  document.getElementById("tune-fr").value = c.max_false_reject;
  document.getElementById("tune-esc").value = c.max_escape === null ? "" : c.max_escape;
  document.getElementById("tune-threshold").value = row.info.image_threshold;
}

function target() {
  const fr = document.getElementById("tune-fr").value, esc = document.getElementById("tune-esc").value;
  const row = versions.get(Number(document.getElementById("tune-version").value));
  return {max_false_reject: Number(fr), max_escape: esc === "" ? null : Number(esc),
          max_false_pixel_area: row.info.train_config.calibration.max_false_pixel_area};
}

async function tunePreview(query) {
  const n = document.getElementById("tune-version").value;
  const summary = document.getElementById("tune-summary");
  const table = document.getElementById("tune-flips");
  let p;
  try {
    p = await getJSON(`/api/v1/projects/${encodeURIComponent(project)}/versions/${n}/tune?${query}`);
  } catch (e) { summary.textContent = e.message; table.replaceChildren(); return; }
  const rate = (r, what) => `${r.count} of ${r.n} ${what} (${pct(r.rate)}, 95 % CI ${pct(r.ci95[0])}–${pct(r.ci95[1])})`;
  summary.replaceChildren(
    el("b", {}, `threshold ${fmt(p.threshold, 5)}`), ` (${p.policy}; v${p.version} has ${fmt(p.current_threshold, 5)}): `,
    `false reject ${rate(p.false_reject, "good parts")}, escape ${rate(p.escape, "defective parts")}; ` +
    `${p.flips.length} image(s) flip. Scores: ${p.evaluation}.`,
    ...(p.refusal ? [el("br"), el("span", {class: "error", id: "tune-refusal"}, `project tune would refuse: ${p.refusal}`)]
                  : []));
  const img = (f) => el("img", {src: `/api/v1/projects/${encodeURIComponent(project)}/images/${encodeURIComponent(f)}`,
                                 loading: "lazy", height: "64"});
  table.replaceChildren(
    el("tr", {}, ...["image", "label", "score", "now", "then"].map((h) => el("th", {}, h))),
    ...p.flips.map((f) => el("tr", {"data-file": f.file}, el("td", {}, img(f.file)),
                             el("td", {}, f.label ? `defect (${f.defect_type || "?"})` : "good"),
                             el("td", {}, fmt(f.score, 5)), el("td", {}, f.now), el("td", {}, f.then))));
}

document.getElementById("tune-version").addEventListener("change", tuneDefaults);
document.getElementById("tune").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = target();
  tunePreview(`max_false_reject=${t.max_false_reject}` + (t.max_escape === null ? "" : `&max_escape=${t.max_escape}`));
});
document.getElementById("tune-preview-threshold").addEventListener("click", () =>
  tunePreview(`threshold=${encodeURIComponent(document.getElementById("tune-threshold").value)}`));
document.getElementById("tune-apply").addEventListener("click", async () => {
  const n = Number(document.getElementById("tune-version").value);
  const status = document.getElementById("action-status");
  const res = await writeRequest(`/api/v1/projects/${encodeURIComponent(project)}/jobs`,
                                 {kind: "tune", version: n, target: target()});
  status.replaceChildren(res.ok ? el("a", {href: `/training?project=${encodeURIComponent(project)}`},
                                     `tune job ${res.body.id} started (follow it on Training)`)
                                : `tune refused (HTTP ${res.status}): ${res.body.detail}`);
});
document.getElementById("diff-a").addEventListener("change", diff);
document.getElementById("diff-b").addEventListener("change", diff);
document.getElementById("rollback").addEventListener("click", () => {
  if (project && confirm(`Roll ${project} back to the version active before?`)) {
    act(`/api/v1/projects/${encodeURIComponent(project)}/rollback`, {}, "roll back");
  }
});

document.addEventListener("DOMContentLoaded", async () => {
  const select = document.getElementById("project");
  const name = await chooseProject(select, load).catch((e) => { showProblem(e.message); return null; });
  document.getElementById("none").hidden = !!name;
  if (name) load(name);
});
