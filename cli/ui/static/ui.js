// Shared by every page: the sidebar (one list of the pages) and API calls that ask for a token when one is needed.
"use strict";

const PAGES = [
  ["stations", "Stations / live"], ["review", "Review"], ["project", "Project & data"],
  ["training", "Training"], ["models", "Models"], ["trends", "Trends"],
];
const LIVE = new Set(["stations"]);  // the others come in later slices of issue #16
const TOKEN_COOKIE = "linesight_token";

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
    if (!LIVE.has(path)) a.append(el("small", {}, " later"));
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
