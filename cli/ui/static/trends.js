// Trends: the daemon's trend charts as the UI runs them on one station's verdict feed
// (GET /api/v1/stations/NAME/trends), drawn as SVG; every 2 s the page asks for the parts it does not have yet.
"use strict";

const NS = "http://www.w3.org/2000/svg";
const POLL_MS = 2000;
const WINDOW = 100;  // parts in the moving NG share
const W = 960, LEFT = 56, RIGHT = 56, TOP = 10, BOTTOM = 26;  // chart geometry (viewBox units)
const KIND = {score: "scores", ng_rate: "NG rate", type: "type"};
let station = null;
let points = [];  // oldest first, at most answer.kept
let received = 0;  // n of the newest point the page has
let generation = 0;  // a new station choice ends the previous polling loop

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function pct(x) { return `${fmt(100 * x, 2)} %`; }
function utc(ts) { return ts.replace("T", " ").replace("Z", " UTC"); }
function chartName(kind, type) { return kind === "type" ? `type: ${type}` : KIND[kind]; }

// One chart over the points' n: `y` maps a value to its height (linear or log), layers are drawn in order.
function frame(node, height, lo, hi, log) {
  const f = log ? Math.log10 : (v) => v;
  const n0 = points.length ? points[0].n : 0, n1 = points.length ? Math.max(points[points.length - 1].n, n0 + 1) : 1;
  const c = {
    node, height, n0, n1,
    x: (n) => LEFT + (n - n0) / (n1 - n0) * (W - LEFT - RIGHT),
    y: (v) => TOP + (1 - (f(v) - f(lo)) / (f(hi) - f(lo))) * (height - TOP - BOTTOM),
  };
  node.replaceChildren(svg("rect", {x: LEFT, y: TOP, width: W - LEFT - RIGHT, height: height - TOP - BOTTOM,
                                    class: "plot"}));
  let start = null;  // burn-in stretches shaded
  points.forEach((p, i) => {
    if (p.burn_in && start === null) start = p.n;
    const last = i === points.length - 1;
    if (start !== null && (!p.burn_in || last)) {
      const end = p.burn_in ? p.n : points[i - 1].n;
      node.append(svg("rect", {x: c.x(start), y: TOP, width: Math.max(1, c.x(end) - c.x(start)),
                               height: height - TOP - BOTTOM, class: "burn-in"}));
      node.append(svg("text", {x: c.x(start) + 4, y: TOP + 12, class: "faint"}, "burn-in"));
      start = null;
    }
  });
  for (let i = 0; i <= 4 && points.length; i++) {  // x axis: seq of the parts at five places
    const p = points[Math.round(i / 4 * (points.length - 1))];
    node.append(svg("text", {x: c.x(p.n), y: height - 8, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle",
                             class: "tick"}, `seq ${p.seq}`));
  }
  return c;
}

function hline(c, v, cls, label, right = false) {
  c.node.append(svg("line", {x1: LEFT, x2: W - RIGHT, y1: c.y(v), y2: c.y(v), class: cls}));
  if (label) {
    c.node.append(svg("text", {x: right ? W - RIGHT + 4 : LEFT - 4, y: c.y(v) + 4,
                               "text-anchor": right ? "start" : "end", class: "tick"}, label));
  }
}

function line(c, pairs, cls) {  // pairs [n, value|null]; a null breaks the line
  let run = [];
  const flush = () => {
    if (run.length > 1) c.node.append(svg("polyline", {points: run.join(" "), class: cls}));
    run = [];
  };
  for (const [n, v] of pairs) {
    if (v === null || v === undefined) flush(); else run.push(`${c.x(n).toFixed(1)},${c.y(v).toFixed(1)}`);
  }
  flush();
}

function markers(c, alarms) {  // the alarms raised on this chart, where their part is still in view
  for (const a of alarms) {
    if (a.n < c.n0 || a.n > c.n1) continue;
    const x = c.x(a.n);
    c.node.append(svg("line", {x1: x, x2: x, y1: TOP, y2: c.height - BOTTOM, class: "alarm-marker"}));
    c.node.append(svg("text", {x: x + 3, y: TOP + 24, class: "alarm-text"}, `alarm seq ${a.seq}`));
  }
}

const NICE = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];

function scoreChart(alarms) {
  const vals = points.flatMap((p) => [p.score_ratio, p.lower, p.upper]).filter((v) => v > 0);
  const lo = Math.max(1e-3, Math.min(0.5, ...vals) / 1.2), hi = Math.min(1e3, Math.max(2, ...vals) * 1.2);
  const c = frame(document.getElementById("score-chart"), 260, lo, hi, true);
  for (const t of NICE.filter((t) => t >= lo && t <= hi)) hline(c, t, t === 1 ? "threshold" : "grid", fmt(t));
  c.node.append(svg("text", {x: W - RIGHT + 4, y: c.y(1) + 4, class: "tick"}, "threshold"));
  for (const p of points) {
    if (p.score_ratio > 0) {
      c.node.append(svg("circle", {cx: c.x(p.n).toFixed(1), cy: c.y(p.score_ratio).toFixed(1), r: 1.8,
                                   class: p.ng ? "dot ng" : "dot ok"}));
    }
  }
  line(c, points.map((p) => [p.n, p.lower]), "limit");
  line(c, points.map((p) => [p.n, p.upper]), "limit");
  line(c, points.map((p) => [p.n, p.centre]), "centre");
  line(c, points.map((p) => [p.n, p.ewma]), "ewma");
  markers(c, alarms.filter((a) => a.kind === "score"));
}

function ngChart(alarms, designed) {
  const share = [];  // NG share of the last WINDOW parts
  let ng = 0;
  points.forEach((p, i) => {
    ng += p.ng ? 1 : 0;
    if (i >= WINDOW) ng -= points[i - WINDOW].ng ? 1 : 0;
    share.push([p.n, i + 1 >= Math.min(WINDOW, points.length) ? ng / Math.min(i + 1, WINDOW) : null]);
  });
  const top = Math.max(1.2, ...points.map((p) => p.ng_chart || 0)) * 1.05;
  const needed = Math.max(designed || 0, ...share.map(([, s]) => s || 0)) * 1.15;
  const rateTop = NICE.find((t) => t >= needed && t >= 0.02) || 1;  // the right axis: NG share, a round top
  const c = frame(document.getElementById("ng-chart"), 200, 0, top, false);
  for (const t of [0, 0.5]) hline(c, t, "grid", fmt(t));
  hline(c, 1, "threshold", "limit 1");
  for (const f of [0.5, 1]) {
    c.node.append(svg("text", {x: W - RIGHT + 4, y: c.y(f * top) + 4, class: "tick"}, `${pct(f * rateTop)} NG`));
  }
  const scale = top / rateTop;
  if (designed) line(c, points.map((p) => [p.n, p.burn_in ? null : designed * scale]), "designed");
  line(c, share.map(([n, s]) => [n, s === null ? null : s * scale]), "share");
  line(c, points.map((p) => [p.n, p.ng_chart]), "cusum");
  markers(c, alarms.filter((a) => a.kind === "ng_rate"));
}

function typeCharts(alarms, state) {
  const names = new Set(state ? state.charts.filter((ch) => ch.kind === "type").map((ch) => ch.defect_type) : []);
  points.forEach((p) => Object.keys(p.type_charts).forEach((t) => names.add(t)));
  document.getElementById("no-types").hidden = names.size > 0;
  const box = document.getElementById("type-charts");
  box.replaceChildren();
  for (const t of [...names].sort()) {
    const now = state && state.charts.find((ch) => ch.kind === "type" && ch.defect_type === t);
    const node = svg("svg", {class: "chart", viewBox: `0 0 ${W} 120`, "data-type": t});
    box.append(el("figure", {class: "type-chart"}, node,
                  el("figcaption", {}, `type ${t}: designed for ${now ? pct(now.in_control) : "–"} of the parts` +
                     (now && now.alarmed ? " · ALARM" : ""))));
    const top = Math.max(1.2, ...points.map((p) => p.type_charts[t] || 0)) * 1.05;
    const c = frame(node, 120, 0, top, false);
    hline(c, 1, "threshold", "limit 1");
    for (const p of points) {
      if (p.types.includes(t)) {
        c.node.append(svg("line", {x1: c.x(p.n), x2: c.x(p.n), y1: 120 - BOTTOM, y2: 120 - BOTTOM - 6, class: "seen"}));
      }
    }
    line(c, points.map((p) => [p.n, p.burn_in ? null : (p.type_charts[t] ?? 0)]), "cusum");
    markers(c, alarms.filter((a) => a.kind === "type" && a.defect_type === t));
  }
}

function nowTable(state) {
  const rows = state ? state.charts : [];
  document.getElementById("now").replaceChildren(
    el("tr", {}, el("th", {}, "chart"), el("th", {}, "now (1 = limit)"), el("th", {}, "state"),
       el("th", {}, "in control")),
    ...rows.map((ch) => el("tr", {class: ch.alarmed ? "alarmed" : "", "data-chart": chartName(ch.kind, ch.defect_type)},
      el("td", {}, chartName(ch.kind, ch.defect_type)), el("td", {}, fmt(ch.ratio, 2)),
      el("td", {}, ch.alarmed ? "ALARM" : "in control"),
      el("td", {}, ch.kind === "score" ? `median score/threshold ${fmt(Math.exp(ch.in_control))}`
                                       : `${pct(ch.in_control)} of the parts`))),
    ...(rows.length ? [] : [el("tr", {}, el("td", {colspan: "4"}, state ? "No chart armed yet: the burn-in is running."
                                                                          : "Trend charts are off for this station."))]));
}

function alarmTable(alarms) {
  document.getElementById("no-alarms").hidden = alarms.length > 0;
  document.getElementById("alarms").replaceChildren(
    el("tr", {}, el("th", {}, "raised"), el("th", {}, "seq (run)"), el("th", {}, "chart"), el("th", {}, "at"),
       el("th", {}, "what it says")),
    ...[...alarms].reverse().map((a) => el("tr", {class: "alarm", "data-code": a.code},
      el("td", {}, utc(a.received)), el("td", {}, `${a.seq} (${a.run})`),
      el("td", {}, chartName(a.kind, a.defect_type)), el("td", {}, `${fmt(a.ratio, 2)} × limit`),
      el("td", {}, a.message))));
}

function show(d) {
  document.getElementById("disabled").hidden = d.enabled;
  document.getElementById("source").textContent =
    `Computed by this UI from the ${d.received} decided parts it received from ${d.station} since ` +
    `${utc(d.started)}, with the station's trend settings as given in the UI config; it has its own burn-in of ${d.burn_in} ` +
    "parts after it starts and after every model change, and a verdict lost on the way is not charted here. The " +
    "station's own trend alarms are its MQTT alarm messages and the linesight_trend_ratio gauge (docs/trends.md).";
  const s = d.state;
  const learning = s !== null && s.burn_in_left > 0;
  document.getElementById("burn-in").hidden = !learning;
  if (learning) {
    document.getElementById("burn-in-bar").style.width = `${Math.round(100 * s.parts / d.burn_in)}%`;
    document.getElementById("burn-in-text").textContent =
      `${s.parts} of ${d.burn_in} parts: the charts learn the scores and the NG and defect-type rates of the line ` +
      "as it runs now (it is taken as in control); no alarm before the burn-in ends. It starts again with every " +
      "model change.";
  }
  nowTable(s);
  scoreChart(d.alarms);
  const ngNow = s && s.charts.find((ch) => ch.kind === "ng_rate");
  ngChart(d.alarms, ngNow ? ngNow.in_control : null);
  typeCharts(d.alarms, s);
  alarmTable(d.alarms);
}

async function poll() {
  const feed = document.getElementById("feed");
  try {
    const asked = station;
    const url = `/api/v1/stations/${encodeURIComponent(asked)}/trends` + (received ? `?after=${received}` : "");
    const d = await getJSON(url);
    if (asked !== station) return;
    if (d.received < received) {  // the UI restarted: its charts began again
      points = [];
      received = 0;
      return poll();
    }
    points = points.concat(d.points).slice(-d.kept);
    received = d.received;
    show(d);
    feed.textContent = "live";
    feed.className = "conn live";
    document.getElementById("problem").hidden = true;
  } catch (err) {
    feed.textContent = "no answer";
    feed.className = "conn stale";
    const p = document.getElementById("problem");
    p.textContent = err.message;
    p.hidden = false;
  }
}

function choose(name) {
  station = name;
  points = [];
  received = 0;
  history.replaceState(null, "", `?station=${encodeURIComponent(name)}`);
  const mine = ++generation;
  const loop = async () => {
    if (mine !== generation) return;
    await poll();
    setTimeout(loop, POLL_MS);
  };
  loop();
}

document.addEventListener("DOMContentLoaded", async () => {
  const select = document.getElementById("station");
  const stations = await getJSON("/api/v1/stations").catch((e) => {
    document.getElementById("problem").textContent = e.message;
    document.getElementById("problem").hidden = false;
    return [];
  });
  document.getElementById("none").hidden = stations.length > 0;
  if (!stations.length) return;
  select.replaceChildren(...stations.map((s) => el("option", {value: s.name}, s.name)));
  const wanted = new URLSearchParams(location.search).get("station");
  if (stations.some((s) => s.name === wanted)) select.value = wanted;
  select.addEventListener("change", () => choose(select.value));
  choose(select.value);
});
