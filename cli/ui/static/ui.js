// Shared by every page: the sidebar (one list of the pages) and API calls that ask for a token when one is needed.
"use strict";

const PAGES = [
  ["stations", "Stations / live"], ["review", "Review"], ["project", "Project & data"],
  ["training", "Training"], ["models", "Models"], ["trends", "Trends"],
];
const TOKEN_COOKIE = "linesight_token";
const WRITE_TOKEN = "linesight_write_token";  // sessionStorage: this tab only, sent as a header, never a cookie

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);  // strings become text nodes: never parsed as HTML
  return node;
}

function sidebar() {
  const here = document.body.dataset.page;
  const nav = document.getElementById("sidebar");
  nav.append(el("div", {class: "brand"}, "linesight"));
  const list = el("ul");
  for (const [path, title] of PAGES) {
    const a = el("a", {href: "/" + path}, title);
    if (path === here) a.className = "current";
    list.append(el("li", {}, a));
  }
  nav.append(list);
}

// The pages' own requests (fetch, EventSource, <img>) carry the token as a cookie; reading only (docs/ui.md).
function askToken(why) {
  const box = document.getElementById("auth");
  if (!box || !box.hidden) return;
  box.hidden = false;
  box.replaceChildren(
    el("p", {}, why),
    el("form", {id: "auth-form"}, el("input", {type: "password", id: "token", placeholder: "token",
                                                 autocomplete: "current-password"}),
       el("button", {type: "submit"}, "Use token")));
  document.getElementById("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = document.getElementById("token").value.trim();
    document.cookie = `${TOKEN_COOKIE}=${encodeURIComponent(token)}; path=/; SameSite=Strict`;
    location.reload();
  });
}

async function getJSON(url) {
  const r = await fetch(url, {cache: "no-store"});
  if (r.status === 401) {
    askToken("This UI needs a token to read (auth.read_open is false).");
    throw new Error("token needed");
  }
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

document.addEventListener("DOMContentLoaded", sidebar);

// Actions (commands to a station) need a token in the Authorization header: asked once, kept for this tab only.
let tokenAsked = null;  // one question at a time, however many buttons wait for it
function writeToken() {
  const saved = sessionStorage.getItem(WRITE_TOKEN);
  if (saved) return Promise.resolve(saved);
  if (tokenAsked) return tokenAsked;
  tokenAsked = new Promise((resolve, reject) => {
    const box = document.getElementById("write-auth");
    const input = el("input", {type: "password", id: "write-token", placeholder: "token",
                               autocomplete: "current-password"});
    const cancel = el("button", {type: "button", id: "write-cancel"}, "Cancel");
    const form = el("form", {id: "write-auth-form"}, input, el("button", {type: "submit"}, "Use token"), cancel);
    box.replaceChildren(el("p", {}, "Actions need a token (kept in this tab only, sent as Authorization: Bearer)."),
                        form);
    box.hidden = false;
    input.focus();
    const done = (token) => {
      box.hidden = true;
      tokenAsked = null;
      if (token) { sessionStorage.setItem(WRITE_TOKEN, token); resolve(token); } else reject(new Error("no token"));
    };
    form.addEventListener("submit", (e) => { e.preventDefault(); if (input.value.trim()) done(input.value.trim()); });
    cancel.addEventListener("click", () => done(null));
  });
  return tokenAsked;
}

// A write (POST) with the header token: {ok, status, body}. A FormData `payload` goes as multipart, else as JSON.
async function writeRequest(url, payload = {}) {
  const form = payload instanceof FormData;
  for (let attempt = 0; ; attempt++) {
    const token = await writeToken();
    const headers = {"Authorization": `Bearer ${token}`};
    if (!form) headers["Content-Type"] = "application/json";
    const r = await fetch(url, {method: "POST", cache: "no-store", headers,
                                body: form ? payload : JSON.stringify(payload)});
    const body = await r.json().catch(() => ({detail: `HTTP ${r.status}`}));
    if (r.status === 401) {  // a wrong or revoked token: forget it, ask once more
      sessionStorage.removeItem(WRITE_TOKEN);
      if (attempt === 0) continue;
    }
    return {ok: r.ok, status: r.status, body};
  }
}

// POST /api/v1/stations/NAME/commands/CMD: {ok, status, body} (the station's reply, or the UI's {detail}).
function sendCommand(station, cmd, payload = {}) {
  return writeRequest(`/api/v1/stations/${encodeURIComponent(station)}/commands/${cmd}`, payload);
}

// The configured projects into a <select>, the choice kept in the URL (?project=NAME); returns the chosen name.
async function chooseProject(select, onChange) {
  const projects = await getJSON("/api/v1/projects");
  const wanted = new URLSearchParams(location.search).get("project");
  select.replaceChildren(...projects.map((p) => el("option", {value: p.name}, `${p.name} (${p.title})`)));
  if (projects.some((p) => p.name === wanted)) select.value = wanted;
  select.addEventListener("change", () => {
    history.replaceState(null, "", `?project=${encodeURIComponent(select.value)}`);
    onChange(select.value);
  });
  return projects.length ? select.value : null;
}

function fmt(x, digits = 3) {
  return x === null || x === undefined ? "–" : (typeof x === "number" ? Number(x.toFixed(digits)).toString() : String(x));
}

function replyText(cmd, res) {
  if (res.ok) return `${cmd}: done ${JSON.stringify(res.body.result)}`;
  return `${cmd}: refused (HTTP ${res.status}): ${res.body.detail || JSON.stringify(res.body)}`;
}
