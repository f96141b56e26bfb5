// Project & data: what a project holds (images by label, pending feedback, active version) and its history;
// uploads go through POST /api/v1/projects/NAME/images (content-addressed, like `linesight project add`).
"use strict";

let current = null;

function showProblem(text) {
  const p = document.getElementById("problem");
  p.textContent = text;
  p.hidden = !text;
}

async function load(name) {
  current = name;
  showProblem("");
  let d;
  try { d = await getJSON(`/api/v1/projects/${encodeURIComponent(name)}`); } catch (e) { showProblem(e.message); return; }
  const m = d.metadata;
  document.getElementById("facts").replaceChildren(
    el("h2", {}, d.title),
    el("p", {}, d.description || "(no description)"),
    el("table", {class: "grid"},
       ...[["folder", d.dir], ["created", m.created], ["modified", m.modified],
           ["active version", d.active ? `v${d.active}` : "none (stations running it give no_model)"],
           ["versions", String(d.versions)], ["feedback not learned yet", String(d.feedback_pending)],
           ["train config", `${d.train_config.preset} preset, ${Math.round(d.train_config.test_fraction * 100)} % ` +
                            "of good images held out"]]
         .map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v)))));
  const counts = Object.entries(d.images).sort();
  document.getElementById("counts").replaceChildren(
    el("tr", {}, el("th", {}, "label"), el("th", {}, "images")),
    ...counts.map(([k, v]) => el("tr", {"data-label": k}, el("td", {}, k), el("td", {}, String(v)))));
  document.getElementById("history").replaceChildren(
    el("tr", {}, el("th", {}, "time"), el("th", {}, "action"), el("th", {}, "detail")),
    ...m.history.slice().reverse().slice(0, 100).map((h) =>
      el("tr", {}, el("td", {}, h.time), el("td", {}, h.action), el("td", {}, h.detail))));
}

document.getElementById("upload").addEventListener("submit", async (e) => {
  e.preventDefault();
  const files = document.getElementById("files").files;
  const status = document.getElementById("upload-status");
  if (!current || !files.length) { status.textContent = "choose images first"; return; }
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  const label = document.getElementById("label").value.trim();
  status.textContent = `uploading ${files.length} image(s)…`;
  const res = await writeRequest(`/api/v1/projects/${encodeURIComponent(current)}/images?label=` +
                                 encodeURIComponent(label), form);
  status.textContent = res.ok
    ? `added ${res.body.added}, already there ${res.body.duplicates}` +
      (res.body.unreadable.length ? `, unreadable: ${res.body.unreadable.join("; ")}` : "")
    : `refused (HTTP ${res.status}): ${res.body.detail}`;
  if (res.ok) load(current);
});

document.addEventListener("DOMContentLoaded", async () => {
  const select = document.getElementById("project");
  const name = await chooseProject(select, load).catch((e) => { showProblem(e.message); return null; });
  document.getElementById("none").hidden = !!name;
  if (name) load(name);
});
