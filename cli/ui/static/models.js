// Models: the project's versions with their figures, reports, activate / roll back, and a diff of two versions.
"use strict";

let project = null;

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
