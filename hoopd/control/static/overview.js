// The web console's overview: charts drawn with uPlot from /ui/overview/data; tables filled as text.
"use strict";
const width = () => Math.max(320, Math.min(1100, document.querySelector("main").clientWidth - 20));
const colors = {allow: "#2a7a4a", deny: "#c03030", review: "#d08a00", end: "#7030a0"};

function table(id, head, rows) {
  const t = document.getElementById(id);
  const tr = document.createElement("tr");
  head.forEach((h) => { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); });
  t.appendChild(tr);
  rows.forEach((r) => {
    const row = document.createElement("tr");
    r.forEach((v) => { const td = document.createElement("td"); td.textContent = v; row.appendChild(td); });
    t.appendChild(row);
  });
}

fetch("/ui/overview/data", {credentials: "same-origin"}).then((r) => r.json()).then((d) => {
  const names = Object.keys(d.statements);
  new uPlot({title: "Statements per minute, by policy decision", width: width(), height: 240,
             series: [{}].concat(names.map((k) => ({label: k, stroke: colors[k] || "#3060a0", width: 2})))},
            [d.t].concat(names.map((k) => d.statements[k])), document.getElementById("statements"));
  new uPlot({title: "Sessions live (most in each minute)", width: width(), height: 200,
             series: [{}, {label: "sessions", stroke: "#3060a0", width: 2}]},
            [d.t, d.sessions], document.getElementById("sessions"));
  table("denials", ["user", "connection", "refused"], d.denials.map((x) => [x.user, x.connection, x.refused]));
  table("reviews", ["user", "connection", "requests", "approved", "denied", "other"],
        d.reviews.map((x) => [x.user, x.connection, x.requests, x.approved, x.denied, x.other]));
  document.getElementById("journal").textContent = d.journal
    ? `${d.journal.segments} segments, ${(d.journal.bytes / 1048576).toFixed(1)} MiB in ${d.journal.dir}`
    : "no journal";
  document.body.dataset.drawn = "yes";
});
