// dashboard.js - the script of the dashboard page (GET /dashboard.js).
//
// The page is served with a Content-Security-Policy that forbids inline script and
// style, so everything lives here: no on* attributes, no style="" (styles are set through
// the CSSOM, el.style.x = …, which the policy allows). Text from the server goes into the
// DOM through textContent or esc().
"use strict";
(function () {
const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(["succeeded", "failed", "timed_out", "canceled"]);
const KEY = "jobpool.token";
const SVG_NS = "http://www.w3.org/2000/svg";
const batches = new Map();        // id -> batch object
let order = [];                   // batch ids, newest first
let selected = null;              // batch id shown in the detail view
let view = null;                  // the jobs of the selected batch (newView)
let jobSel = null;                // job id shown in the job view
let lastId = null;                // last SSE id seen
let streamAbort = null;
let needAuth = false;
let token = sessionStorage.getItem(KEY) || "";
$("token").value = token;

function setStatus(state, text) {
  const s = $("status");
  s.dataset.state = state;
  s.textContent = text;
}
function esc(v) {
  return String(v).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function ms(v) {
  if (v === null || v === undefined || isNaN(v)) return "–";
  if (v < 1000) return v.toFixed(v < 10 ? 2 : 0) + " ms";
  if (v < 60000) return (v / 1000).toFixed(2) + " s";
  return (v / 60000).toFixed(1) + " min";
}
function time(ts) {
  if (!ts) return "–";
  const d = new Date(ts);
  return isNaN(d) ? ts : d.toLocaleTimeString();
}
function badge(state) {
  return '<span class="badge st-' + esc(state) + '">' + esc(String(state).replace("_", " ")) + "</span>";
}
function json(v) { return v === null || v === undefined ? "" : JSON.stringify(v, null, 2); }

// api sends one request with the token; a 401 flags the page as needing one.
async function api(path, opts = {}) {
  const headers = Object.assign({Accept: "application/json"}, opts.headers || {});
  if (token) headers.Authorization = "Bearer " + token;
  const res = await fetch(path, Object.assign({}, opts, {headers}));
  if (res.status === 401) { await res.text().catch(() => ""); authNeeded(); throw new Error("unauthorized"); }
  let body = null;
  const ct = res.headers.get("Content-Type") || "";
  if (res.status !== 204 && ct.includes("json")) body = await res.json();
  else if (opts.text && res.ok) return res.text();
  else await res.text().catch(() => "");
  if (!res.ok) {
    const e = new Error(body && (body.detail || body.title) || "HTTP " + res.status);
    e.status = res.status;
    e.body = body;
    throw e;
  }
  return body;
}
function authNeeded() {
  if (!needAuth) {
    needAuth = true;
    $("auth-msg").hidden = false;
    setStatus("unauthorized", token ? "token rejected (401): enter the right token" : "token required (401): enter it");
    stopStream();
    $("token").focus();
  }
}
function report(where, e) {
  if (e && e.message === "unauthorized") return;
  const el = $(where);
  el.textContent = String(e && e.message || e);
  el.classList.add("err");
}
// reportErrors shows an API 400's errors[] (path and message), else the error itself.
function reportErrors(where, e) {
  const errs = e.body && e.body.errors ? e.body.errors.map((x) => x.path + " " + x.message).join("; ") : "";
  report(where, errs ? new Error(errs) : e);
}
// act runs an action of a button: disabled while it runs; a 409 shows conflict (then runs
// onConflict) when given, any other error goes to where.
async function act(btn, where, fn, conflict, onConflict) {
  btn.disabled = true;
  try {
    await fn();
  } catch (e) {
    if (conflict && e.status === 409) { note(where, conflict); if (onConflict) onConflict(); } else reportErrors(where, e);
  } finally { btn.disabled = false; }
}
function note(where, text) {
  const el = $(where);
  el.textContent = text;
  el.classList.remove("err");
}

// ---- pool ----
let poolSizeTouched = false;
async function loadPool() {
  const p = await api("/v1/pool");
  $("pool").dataset.size = p.size;
  $("pool").dataset.busy = p.busy;
  $("pool-summary").textContent = "size " + p.size + " · busy " + p.busy + " · idle " + p.idle +
    (p.paused ? " · dispatch paused: no job starts" : "");
  showPaused(p.paused);
  const input = $("pool-size-input");
  if (!poolSizeTouched && document.activeElement !== input) input.value = p.size;
  $("pool-body").innerHTML = p.workers.map((w) =>
    '<tr data-slot="' + w.slot + '" data-state="' + esc(w.state) + '"><td>' + w.slot + "</td><td class=mono>" +
    (w.pid ?? "–") + "</td><td>" + badge(w.state) + "</td><td class=mono>" + esc(w.job_id ?? "–") +
    '</td><td class="num">' + w.jobs_done + '</td><td class="num">' +
    (w.rss_kb == null ? "–" : (w.rss_kb / 1024).toFixed(1) + " MiB") + "</td></tr>").join("");
}
$("pool-size-input").addEventListener("input", () => { poolSizeTouched = true; });
// showPaused shows the server's pause (GET /v1/pool "paused") on the pool and its button.
function showPaused(paused) {
  const btn = $("pause-server");
  $("pool").dataset.paused = paused ? "true" : "false";
  btn.hidden = false;
  btn.textContent = paused ? "Resume dispatch" : "Pause dispatch";
  btn.setAttribute("aria-pressed", paused ? "true" : "false");
}
$("pause-server").addEventListener("click", async () => {
  const btn = $("pause-server"), pause = $("pool").dataset.paused !== "true";
  btn.disabled = true;
  try {
    const p = await api(pause ? "/v1/pause" : "/v1/resume", {method: "POST"});
    note("resize-msg", p.paused ? "Dispatch paused: running jobs finish, no new job starts." : "Dispatch resumed.");
    await loadPool();
  } catch (e) {
    report("resize-msg", e);
  } finally { btn.disabled = false; }
});
$("resize-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const size = parseInt($("pool-size-input").value, 10);
  await act($("resize"), "resize-msg", async () => {
    const p = await api("/v1/pool", {method: "PUT", headers: {"Content-Type": "application/json"}, body: JSON.stringify({size})});
    poolSizeTouched = false;
    note("resize-msg", "Pool resized to " + p.size + (p.size < p.workers.length ? " (busy workers leave after their job)" : "") + ".");
    await loadPool();
  });
});

// ---- batches ----
function progressOf(b) {
  const c = b.counts || {};
  if (typeof b.progress === "number") return b.progress;
  return c.total ? (c.succeeded + c.failed + c.timed_out + c.canceled) / c.total : 0;
}
function newBatchRow(b) {
  const tr = document.createElement("tr");
  tr.dataset.batchId = b.id;
  const td = document.createElement("td");
  const btn = document.createElement("button");
  btn.type = "button";
  btn.className = "link open-batch";
  btn.addEventListener("click", () => select(b.id));
  td.appendChild(btn);
  const sub = document.createElement("div");
  sub.className = "bname muted";
  td.appendChild(sub);
  tr.appendChild(td);
  for (let i = 0; i < 5; i++) tr.appendChild(document.createElement("td"));
  tr.cells[4].className = tr.cells[5].className = "num";
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-label", "progress of " + b.id);
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.appendChild(document.createElement("span"));
  tr.cells[2].append(bar, document.createTextNode(""));
  return tr;
}
function renderBatchRow(b) {
  const tr = document.querySelector('tr[data-batch-id="' + CSS.escape(b.id) + '"]') || newBatchRow(b);
  const c = b.counts, pct = Math.round(progressOf(b) * 100), t = b.timings || {};
  const done = c.succeeded + c.failed + c.timed_out + c.canceled;
  tr.dataset.state = b.state;
  tr.dataset.progress = pct;
  tr.classList.toggle("sel", b.id === selected);
  const btn = tr.cells[0].firstChild;
  btn.textContent = b.id;
  btn.setAttribute("aria-label", "Show batch " + b.id + (b.name ? " " + b.name : ""));
  btn.title = b.name || "";
  tr.cells[0].lastChild.textContent = (b.name ? b.name + " · " : "") + time(b.created_at);
  // a halted batch says so under its state, with the reason on hover
  tr.cells[1].innerHTML = badge(b.state) + (b.halted ? '<div class="muted halted" title="' +
    esc(b.halted.reason || "") + '">halted</div>' : "");
  if (b.paused && !TERMINAL.has(b.state)) {
    const p = document.createElement("div");
    p.className = "muted paused-note";
    p.textContent = "paused";
    tr.cells[1].appendChild(p);
  }
  tr.dataset.paused = b.paused ? "true" : "false";
  const bar = tr.cells[2].firstChild;
  bar.setAttribute("aria-valuenow", pct);
  bar.firstChild.className = "bg-" + b.state;
  bar.firstChild.style.width = pct + "%";
  tr.cells[2].lastChild.textContent = " " + pct + "%";
  const bad = [c.running && c.running + " running", c.failed && c.failed + " failed",
    c.timed_out && c.timed_out + " timed out", c.canceled && c.canceled + " canceled"].filter(Boolean).join(", ");
  tr.cells[3].innerHTML = done + " / " + c.total + (bad ? '<div class="muted">' + esc(bad) + "</div>" : "");
  tr.cells[4].textContent = ms(t.makespan_ms);
  tr.cells[5].textContent = t.parallelism == null ? "–" : t.parallelism.toFixed(2) + "×";
  tr.dataset.parallelism = t.parallelism == null ? "" : t.parallelism;
  return tr;
}
function renderBatches() {
  const body = $("batches-body");
  const rows = order.slice(0, 50).map((id) => renderBatchRow(batches.get(id)));
  rows.forEach((tr, i) => { if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null); });
  while (body.children.length > rows.length) body.lastChild.remove();
  $("batches-empty").hidden = rows.length > 0;
  if (selected && batches.has(selected)) renderDetailInfo();
}
// putBatch keeps b.  A finished batch stays finished (b is an older answer), unless a
// retry opened it again (reopen): then the next answer is taken as it is.
function putBatch(b) {
  const old = batches.get(b.id);
  if (old && TERMINAL.has(old.state) && !TERMINAL.has(b.state) && !old.reopened) return;
  if (old) old.reopened = false;
  batches.set(b.id, old ? Object.assign(old, b) : b);
  if (!order.includes(b.id)) { order.push(b.id); order.sort((x, y) => (x < y ? 1 : -1)); }
}
async function loadBatches() {
  const list = await api("/v1/batches?limit=50");
  batches.clear();
  order = [];
  list.items.forEach(putBatch);
  if (selected && !batches.has(selected)) {
    try { putBatch(await api("/v1/batches/" + selected)); } catch (e) { if (e.status === 404) closeDetail(); }
  }
  renderBatches();
}
// refreshBatch re-reads one batch (for its timings) soon after it changed.
const pending = new Map();
// reopen: a retry put jobs of the finished batch id back in the queue.  Its answer is not
// kept (an event of the new attempts may have overtaken it); the batch is read again.
function reopen(id) {
  const b = batches.get(id);
  if (b) b.reopened = true;
  refreshBatch(id);
}
function refreshBatch(id) {
  if (pending.has(id)) return;
  pending.set(id, setTimeout(async () => {
    pending.delete(id);
    try {
      putBatch(await api("/v1/batches/" + id));
      renderBatches();
      if (view && view.id === id) { view.version++; scheduleRender(); }
    } catch (e) { /* gone or unauthorized */ }
  }, 150));
}

// ---- the selected batch: its jobs, read page by page ----
// A batch may hold 10,000 jobs and more: they are read in pages (a small first one, for
// a quick first paint), kept in submission order, and a page is read again, at most
// every 150 ms (every second for big batches), when an event says one of its jobs
// changed. The job list draws only the rows in view.
const FIRST_PAGE = 200, PAGE = 1000, ROW_H = 30;
function newView(id) {
  return {id, jobs: [], byId: new Map(), pages: [{after: null, limit: FIRST_PAGE, start: 0, end: -1, loaded: false}],
    dirty: new Set(), unknown: new Set(), busy: false, again: false, timer: null, running: 0, attempts: 0, version: 0};
}
async function loadPage(v, k) {
  const p = v.pages[k];
  const list = await api("/v1/batches/" + v.id + "/jobs?limit=" + p.limit + (p.after ? "&after=" + encodeURIComponent(p.after) : ""));
  if (view !== v) return;
  for (const j of list.items) { v.jobs[j.index] = j; v.byId.set(j.id, j.index); }
  if (list.items.length) { p.start = list.items[0].index; p.end = list.items[list.items.length - 1].index; }
  p.loaded = true;
  v.version++;
  if (k === v.pages.length - 1 && list.next_cursor)
    v.pages.push({after: list.next_cursor, limit: PAGE, start: p.end + 1, end: -1, loaded: false});
  scheduleRender();
}
// pump reads the pages not read yet, then the pages marked dirty, one request at a time.
async function pump(v) {
  if (v.busy) { v.again = true; return; }
  v.busy = true;
  try {
    let dirty = [...v.dirty];
    v.dirty.clear();
    for (;;) {
      if (view !== v) return;
      let k = v.pages.findIndex((p) => !p.loaded);
      if (k < 0) { if (!dirty.length) break; k = dirty.shift(); }
      await loadPage(v, k);
    }
    v.done = true;
    $("detail").dataset.loaded = "true";
  } catch (e) {
    report("detail-msg", e);
  } finally {
    v.busy = false;
    // A job's event may overtake the page that reads it: read such pages once more.
    for (const id of v.unknown) { const idx = v.byId.get(id); if (idx !== undefined) v.dirty.add(pageOf(v, idx)); }
    v.unknown.clear();
    if (v.again || v.dirty.size) { v.again = false; markDirty(v, -1); }
  }
}
// rereadView reads the loaded pages of the shown batch again (after an action on it).
function rereadView() {
  if (!view) return;
  view.pages.forEach((p, k) => { if (p.loaded) view.dirty.add(k); });
  markDirty(view, -1);
}
function markDirty(v, k) {
  if (k >= 0) v.dirty.add(k);
  if (!v.timer) v.timer = setTimeout(() => { v.timer = null; pump(v); }, v.jobs.length > 1000 ? 1000 : 150);
}
function pageOf(v, index) {
  for (let k = 0; k < v.pages.length; k++) if (v.pages[k].loaded && index >= v.pages[k].start && index <= v.pages[k].end) return k;
  return -1;
}

// ---- detail ----
function closeDetail() { selected = null; view = null; $("detail").hidden = true; $("detail").dataset.batchId = ""; closeJob(); go(""); }
function select(id) {
  selected = id;
  view = newView(id);
  const d = $("detail");
  d.hidden = false;
  d.dataset.batchId = id;
  d.dataset.loaded = "false";
  $("jobs-scroll").scrollTop = 0;
  note("detail-msg", "");
  closeJob();
  renderBatches();
  renderDetailInfo();
  renderNow();
  refreshBatch(id); // the batch as read whole (lists leave out its webhook)
  d.scrollIntoView({block: "nearest"});
  go("#/batches/" + id);
  pump(view);
}
function renderDetailInfo() {
  const b = batches.get(selected);
  if (!b) return;
  const t = b.timings || {};
  $("detail-h").textContent = "Batch " + b.id + (b.name ? " — " + b.name : "");
  $("detail").dataset.state = b.state;
  const rows = [["state", badge(b.state)], ["concurrency", b.concurrency ?? "pool"], ["priority", b.priority],
    ["created", esc(b.created_at || "–")], ["started", esc(b.started_at || "–")], ["finished", esc(b.finished_at || "–")],
    ["makespan", ms(t.makespan_ms)], ["total run", ms(t.total_run_ms)], ["total CPU", ms(t.total_cpu_ms)],
    ["parallelism", t.parallelism == null ? "–" : t.parallelism.toFixed(2) + "×"]];
  if (b.halt) rows.push(["halt", esc(b.halt.mode + ", " + b.halt.when + "=" +
    (b.halt.count != null ? b.halt.count : b.halt.percent + "%"))]);
  if (b.timeout_pct != null) rows.push(["timeout", esc(b.timeout_pct + "% of the median run")]);
  if (b.halted) rows.push(["halted", esc(b.halted.reason) + '<div class="muted">' + esc(b.halted.at) + "</div>"]);
  if (b.paused && !TERMINAL.has(b.state)) rows.push(["paused", "yes: no queued job starts"]);
  // where the batch reports, and the batches its end links (only a batch read shows webhook)
  if (b.webhook) rows.push(["webhook", esc(b.webhook.url) + '<div class="muted">' + esc((b.webhook.events || []).join(", ")) + "</div>"]);
  const link = (id) => '<a href="#/batches/' + esc(id) + '">' + esc(id) + "</a>";
  if (b.parent_id) rows.push(["follows", link(b.parent_id)]);
  if (b.then_state) rows.push(["then", b.then_batch_id ? link(b.then_batch_id) : esc(b.then_state)]);
  $("detail-info").innerHTML = rows.map((r) => "<div><dt>" + r[0] + "</dt><dd>" + r[1] + "</dd></div>").join("");
  const done = TERMINAL.has(b.state), c = b.counts || {};
  $("detail").dataset.paused = b.paused ? "true" : "false";
  $("cancel-batch").hidden = done;
  // Retry puts back what did not succeed (the API's default states).
  $("retry-batch").hidden = !done || !((c.failed || 0) + (c.timed_out || 0) + (c.canceled || 0));
  // PATCH: filled once per batch shown (and after a change), never while being typed in
  const pf = $("patch-form");
  pf.hidden = done;
  if (pf.dataset.batchId !== b.id) fillPatch(b);
  const pb = $("pause-batch");
  pb.hidden = done;
  pb.textContent = b.paused ? "Resume batch" : "Pause batch";
  pb.setAttribute("aria-pressed", b.paused ? "true" : "false");
}
function fillPatch(b) {
  $("patch-form").dataset.batchId = b.id;
  $("patch-conc").value = b.concurrency == null ? "" : b.concurrency;
  $("patch-prio").value = b.priority == null ? 0 : b.priority;
}
// PATCH /v1/batches/{id}: a running batch's concurrency (empty: the pool is the limit) and
// priority; a lower limit holds as running jobs end.
$("patch-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const id = selected, c = $("patch-conc").value.trim();
  const body = {concurrency: c === "" ? null : Number(c), priority: Number($("patch-prio").value)};
  await act($("patch-batch"), "detail-msg", async () => {
    const b = await api("/v1/batches/" + id, {method: "PATCH", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    putBatch(b);
    fillPatch(b);
    renderBatches();
    note("detail-msg", "Batch " + id + ": concurrency " + (b.concurrency == null ? "the pool's" : b.concurrency) + ", priority " + b.priority + ".");
  });
});
$("retry-batch").addEventListener("click", () => {
  const id = selected;
  return act($("retry-batch"), "detail-msg", async () => {
    const b = await api("/v1/batches/" + id + "/retry", {method: "POST"});
    note("detail-msg", "Retried " + b.retried + " job" + (b.retried === 1 ? "" : "s") + " of " + id + ".");
    reopen(id);
    rereadView();
  }, "The batch is still running.", () => refreshBatch(id));
});
$("pause-batch").addEventListener("click", () => {
  const id = selected, b0 = batches.get(id), pause = !(b0 && b0.paused);
  return act($("pause-batch"), "detail-msg", async () => {
    const b = await api("/v1/batches/" + id + (pause ? "/pause" : "/resume"), {method: "POST"});
    delete b.job_ids;
    const old = batches.get(id);
    if (old) old.paused = b.paused;       // the flag at once, the rest as putBatch allows
    putBatch(b);
    note("detail-msg", b.paused ? "Batch " + id + " paused: its queued jobs wait." : "Batch " + id + " resumed.");
    renderBatches();
  });
});
$("cancel-batch").addEventListener("click", async () => {
  const id = selected;
  return act($("cancel-batch"), "detail-msg", async () => {
    putBatch(await api("/v1/batches/" + id + "/cancel", {method: "POST"}));
    note("detail-msg", "Cancel requested for " + id + ".");
    renderBatches();
    refreshBatch(id);
  }, "The batch already finished.", () => refreshBatch(id));
});

// scheduleRender redraws the job rows and the timeline once per frame at most; a
// timeline of thousands of attempts at most every 800 ms.
let frame = 0, tlTimer = null, tlLast = 0;
function scheduleRender() {
  if (frame || !view) return;
  frame = requestAnimationFrame(() => { frame = 0; renderNow(); });
}
function renderNow(force) {
  if (!view) return;
  renderRows();
  if (!force && !view.running && view.tlVersion === view.version && tl && tl.v === view && tl.sel === jobSel) return;
  const gap = view.attempts > 2000 ? 800 : 0, wait = tlLast + gap - performance.now();
  if (wait <= 0) { tlLast = performance.now(); renderTimeline(); return; }
  if (!tlTimer) tlTimer = setTimeout(() => { tlTimer = null; tlLast = performance.now(); if (view) renderTimeline(); }, wait);
}

// ---- the virtualized job list ----
function outcome(j) {
  const parts = [];
  if (j.exit_code != null) parts.push("exit " + j.exit_code);
  if (j.signal) parts.push(j.signal);
  if (j.error) parts.push(j.error);
  if (!parts.length && j.result) parts.push(Object.entries(j.result).map(([k, v]) => k + ": " + JSON.stringify(v)).join(", "));
  return parts.join(" · ") || "–";
}
function jobRow(j) {
  const t = j.timings || {};
  return '<tr class="jr' + (j.id === jobSel ? " sel" : "") + '" data-job-id="' + esc(j.id) + '" data-index="' + j.index + '" data-state="' + esc(j.state) + '">' +
    '<td class="num">' + j.index + '</td><td><button type="button" class="link open-job">' + esc(j.id) + "</button>" +
    (j.name ? ' <span class="muted">' + esc(j.name) + "</span>" : "") +
    "</td><td>" + esc(j.kind) + "</td><td>" + badge(j.state) + (j.attempts > 1 ? " ×" + j.attempts : "") +
    '</td><td class="num">' + ms(t.queue_ms) + '</td><td class="num">' + ms(t.run_ms) +
    (j.state === "queued" || j.state === "running" ? '</td><td><button type="button" class="link cancel-job">Cancel</button>'
      : '</td><td title="' + esc(outcome(j)) + '">' + esc(outcome(j))) + '</td><td class="num mono">' + (j.worker ? j.worker.pid : "–") + "</td></tr>";
}
let rowsDrawn = "";
function renderRows() {
  const v = view, sc = $("jobs-scroll"), b = batches.get(v.id);
  const total = Math.max(b && b.counts ? b.counts.total : 0, v.jobs.length);
  const height = Math.min(total * ROW_H + 34, 420);
  const first = Math.max(0, Math.floor(sc.scrollTop / ROW_H) - 10);
  const last = Math.min(total, Math.ceil((sc.scrollTop + height) / ROW_H) + 10);
  const drawn = [v.id, v.version, first, last, total, jobSel].join();
  if (drawn === rowsDrawn) return;
  rowsDrawn = drawn;
  sc.style.height = height + "px";
  const rows = [];
  for (let i = first; i < last; i++) {
    const j = v.jobs[i];
    rows.push(j ? jobRow(j) : '<tr class="jr" data-index="' + i + '"><td class="num">' + i + '</td><td colspan="7" class="muted">loading…</td></tr>');
  }
  const body = $("jobs-body");
  body.innerHTML = '<tr class="spacer" aria-hidden="true"><td colspan="8"></td></tr>' + rows.join("") +
    '<tr class="spacer" aria-hidden="true"><td colspan="8"></td></tr>';
  body.firstChild.firstChild.style.height = first * ROW_H + "px";
  body.lastChild.firstChild.style.height = (total - last) * ROW_H + "px";
  $("jobs-count").textContent = "(" + total + (v.done ? "" : ", " + v.jobs.filter(Boolean).length + " loaded") + ")";
}
let scrollFrame = 0;
$("jobs-scroll").addEventListener("scroll", () => {
  if (!scrollFrame) scrollFrame = requestAnimationFrame(() => { scrollFrame = 0; if (view) renderRows(); });
}, {passive: true});
$("jobs-body").addEventListener("click", (ev) => {
  const btn = ev.target.closest("button.open-job");
  if (btn) openJob(btn.closest("tr").dataset.jobId);
  const cb = ev.target.closest("button.cancel-job");
  if (cb) cancelJob(cb.closest("tr").dataset.jobId, cb, "detail-msg");
});
// cancelJob asks the server to cancel one job (queued: at once; running: killed); its
// event then redraws the row.
function cancelJob(id, btn, where) {
  return act(btn, where, async () => {
    const j = await api("/v1/jobs/" + id + "/cancel", {method: "POST"});
    note(where, "Cancel requested for " + id + " (now " + j.state + ").");
    if (id === jobSel) refreshJob();
    rereadView();
  }, "The job already finished.");
}

// ---- the timeline: one lane per worker slot, one rect per attempt ----
// The attempts are drawn in milliseconds since the batch was created, inside a group
// whose transform maps time to pixels: when the time axis stretches (a running batch),
// only that transform changes. A rect is created once and touched again only while its
// attempt runs or when it ends, so 10,000 attempts cost 10,000 elements once, not per
// frame. Lanes are groups moved as a whole when a new slot appears.
function attemptsOf(j) {
  const out = j.history ? j.history.slice() : [];
  // running, or just ended by an event whose job has not been read again yet
  if (j.started_at && !j.finished_at && j.worker && j.state !== "queued" && !out.some((h) => h.attempt === j.attempts))
    out.push({attempt: j.attempts, state: "running", started_at: j.started_at, finished_at: null, worker: j.worker});
  return out;
}
function niceStep(span, px) {
  const raw = span / Math.max(1, px / 90), p = Math.pow(10, Math.floor(Math.log10(raw)));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) || raw;
}
function tickLabel(t, step) {
  if (step < 1000) return Math.round(t) + " ms";
  if (step < 60000) return (t / 1000).toFixed(step < 10000 && step % 1000 ? 1 : 0) + " s";
  return (t / 60000).toFixed(step % 60000 ? 1 : 0) + " min";
}
// Up to 12 lanes are roomy; more (a big pool) are thin, so the picture stays on screen.
const ROOMY = {LANE: 34, BAR_Y: 12, BAR_H: 20, WAIT: 3}, THIN = {LANE: 15, BAR_Y: 4, BAR_H: 10, WAIT: 1};
const TL = Object.assign({LEFT: 58, RIGHT: 14, TOP: 22}, ROOMY);
let tl = null;                    // what the timeline of view shows
function tlFor(v) {
  if (tl && tl.v === v) return tl;
  const svg = $("timeline");
  svg.innerHTML = '<g class="tl-grid"></g><g class="tl-data"></g><g class="tl-over"></g>';
  tl = {v, rects: new Map(), lanes: new Map(), sel: null, grid: svg.children[0], data: svg.children[1], over: svg.children[2]};
  return tl;
}
function collectBars(v, t0, now) {
  const bars = [];
  for (const j of v.jobs) {
    if (!j) continue;
    let waitFrom = Date.parse(j.created_at) || t0;
    for (const a of attemptsOf(j)) {
      if (!a.started_at || !a.worker) continue;
      const s = Date.parse(a.started_at), f = a.finished_at ? Date.parse(a.finished_at) : Math.max(now, s);
      bars.push({j, a, s, f, w: waitFrom, slot: a.worker.slot, st: a.finished_at ? a.state : "running"});
      waitFrom = f;
    }
  }
  return bars;
}
function barTitle(x, t0) {
  const {j, a} = x;
  return j.id + (j.name ? " " + j.name : "") + " (#" + j.index + ", " + j.kind + "), attempt " + a.attempt + " of " + j.max_attempts +
    ": " + x.st.replace("_", " ") + "\nslot " + x.slot + ", pid " + a.worker.pid +
    "\nqueued  +" + ((x.w - t0) / 1000).toFixed(3) + " s, waited " + ms(x.s - x.w) +
    "\nstarted " + a.started_at + " (+" + ((x.s - t0) / 1000).toFixed(3) + " s)" +
    "\nfinished " + (a.finished_at ? a.finished_at + " (+" + ((x.f - t0) / 1000).toFixed(3) + " s), ran " + ms(a.run_ms ?? x.f - x.s) : "–, still running");
}
function lane(t, slot) {
  let l = t.lanes.get(slot);
  if (!l) {
    const g = document.createElementNS(SVG_NS, "g"), path = document.createElementNS(SVG_NS, "path");
    g.setAttribute("class", "lane");
    g.dataset.slot = slot;
    path.setAttribute("class", "wait");
    g.appendChild(path);
    t.data.appendChild(g);
    l = {g, path, waits: "", adds: [], dirty: true};
    t.lanes.set(slot, l);
  }
  return l;
}
// drawBars adds the rects of new attempts and updates the ones that ran or ended.
function drawBars(t, bars, t0, minW) {
  for (const x of bars) {
    const key = x.j.id + "/" + x.a.attempt, r = t.rects.get(key), w = Math.max(x.f - x.s, minW);
    if (!r) {
      const l = lane(t, x.slot);
      l.adds.push('<rect class="att o-' + esc(x.st) + '" data-key="' + esc(key) + '" data-job-id="' + esc(x.j.id) + '" data-attempt="' + x.a.attempt +
        '" data-state="' + esc(x.st) + '" x="' + (x.s - t0) + '" y="' + TL.BAR_Y + '" width="' + w + '" height="' + TL.BAR_H + '"><title>' +
        esc(barTitle(x, t0)) + "</title></rect>");
      l.dirty = true;
    } else if (r.st === "running") {
      r.el.setAttribute("width", w);
      if (x.st !== "running") {
        r.st = x.st;
        r.el.classList.replace("o-running", "o-" + x.st);
        r.el.dataset.state = x.st;
        r.el.firstChild.textContent = barTitle(x, t0);
      }
    }
  }
  for (const l of t.lanes.values()) {
    if (!l.adds.length) continue;
    const first = l.g.childElementCount;
    l.g.insertAdjacentHTML("beforeend", l.adds.join(""));
    l.adds = [];
    for (let k = first; k < l.g.children.length; k++) {
      const el = l.g.children[k];
      t.rects.set(el.dataset.key, {el, st: el.dataset.state});
    }
  }
}
// drawWaits draws, per lane, one path of thin lines staggered over three heights, each
// from the moment an attempt entered the queue to its start, with a tick down to its bar.
function drawWaits(t, bars, t0) {
  const per = new Map();
  for (const x of bars) {
    if (!per.has(x.slot)) per.set(x.slot, []);
    per.get(x.slot).push(x);
  }
  for (const [slot, xs] of per) {
    const l = lane(t, slot);
    if (!l.dirty) continue;
    l.dirty = false;
    xs.sort((p, q) => p.s - q.s);
    const d = [];
    xs.forEach((x, k) => { if (x.s > x.w) d.push("M" + (x.w - t0) + " " + (1 + k % 3) * TL.WAIT + "H" + (x.s - t0) + "V" + TL.BAR_Y); });
    l.path.setAttribute("d", d.join(""));
  }
}
function drawGrid(t, slots, span, W, height, t0, bars, running, now) {
  const out = [], X = (ms_) => TL.LEFT + ms_ / span * W;
  slots.forEach((s, i) => {
    const y = TL.TOP + i * TL.LANE;
    out.push('<rect class="lane-bg" x="' + TL.LEFT + '" y="' + (y + 1) + '" width="' + W + '" height="' + (TL.LANE - 2) + '"/>' +
      '<text class="lane-label" x="6" y="' + (y + TL.BAR_Y + TL.BAR_H / 2 + 4) + '">slot ' + s + "</text>");
  });
  const step = niceStep(span, W);
  for (let k = 0; k * step <= span + 1e-9; k++) {
    const x = X(k * step).toFixed(1);
    out.push('<line class="tick" x1="' + x + '" x2="' + x + '" y1="' + (TL.TOP - 4) + '" y2="' + height + '"/>' +
      '<text class="tick-label" x="' + x + '" y="12" text-anchor="' + (k === 0 ? "start" : "middle") + '">' + tickLabel(k * step, step) + "</text>");
  }
  t.grid.innerHTML = out.join("");
  const over = [];
  if (!bars.length)
    over.push('<text class="empty" x="' + TL.LEFT + '" y="' + (TL.TOP + 20) + '">' + (t.v.done ? "No attempt has started." : "loading…") + "</text>");
  if (bars.length <= 300 && TL.LANE === ROOMY.LANE) {
    // the job's index on its bar, where it fits
    const laneOf = new Map(slots.map((s, i) => [s, i]));
    for (const x of bars) {
      const x0 = X(x.s - t0), x1 = X(x.f - t0);
      if (x1 - x0 < 26) continue;
      over.push('<text class="bar-label" x="' + ((x0 + x1) / 2).toFixed(1) + '" y="' + (TL.TOP + laneOf.get(x.slot) * TL.LANE + TL.BAR_Y + 14) +
        '" text-anchor="middle">#' + x.j.index + (x.a.attempt > 1 ? " ·" + x.a.attempt : "") + "</text>");
    }
  }
  if (running) { const x = X(now - t0).toFixed(1); over.push('<line class="now" x1="' + x + '" x2="' + x + '" y1="' + (TL.TOP - 4) + '" y2="' + height + '"/>'); }
  t.over.innerHTML = over.join("");
}
function markSelected(t) {
  if (t.sel === jobSel) return;
  for (const el of t.data.querySelectorAll("rect.sel")) el.classList.remove("sel");
  if (jobSel) for (const el of t.data.querySelectorAll('rect[data-job-id="' + CSS.escape(jobSel) + '"]')) el.classList.add("sel");
  t.sel = jobSel;
}
// setAttr leaves an attribute alone when it holds the value already (no relayout).
function setAttr(el, name, value) {
  if (el.getAttribute(name) !== String(value)) el.setAttribute(name, value);
}
function renderTimeline() {
  const v = view, b = batches.get(v.id), svg = $("timeline");
  if (!b) return;
  let t = tlFor(v);
  const now = Date.now(), t0 = Date.parse(b.created_at);
  v.tlVersion = v.version;
  const bars = collectBars(v, t0, now);
  let tEnd = b.finished_at ? Date.parse(b.finished_at) : t0, running = 0;
  for (const x of bars) { if (x.f > tEnd) tEnd = x.f; if (x.st === "running") running++; }
  if (running) tEnd = Math.max(tEnd, now);
  v.running = running;
  v.attempts = bars.length;
  // Read once per view and window size: reading it forces a layout of every rect.
  if (!t.width) t.width = Math.max(600, $("timeline-wrap").clientWidth - 2);
  const width = t.width;
  const slots = [...new Set(bars.map((x) => x.slot))].sort((x, y) => x - y);
  const geo = slots.length > 12 ? THIN : ROOMY;
  if (t.geo && t.geo !== geo) { tl = null; t = tlFor(v); t.width = width; }  // every rect's y and height change
  t.geo = geo;
  Object.assign(TL, geo);
  svg.classList.toggle("thin", geo === THIN);
  const span = Math.max(tEnd - t0, 1), W = width - TL.LEFT - TL.RIGHT;
  const height = TL.TOP + Math.max(1, slots.length) * TL.LANE + 4;
  drawBars(t, bars, t0, 0.75 * span / W);
  drawWaits(t, bars, t0);
  slots.forEach((s, i) => setAttr(lane(t, s).g, "transform", "translate(0 " + (TL.TOP + i * TL.LANE) + ")"));
  setAttr(t.data, "transform", "translate(" + TL.LEFT + " 0) scale(" + W / span + " 1)");
  drawGrid(t, slots, span, W, height, t0, bars, running, now);
  markSelected(t);
  setAttr(svg, "viewBox", "0 0 " + width + " " + height);
  setAttr(svg, "width", width);
  setAttr(svg, "height", height);
  svg.classList.toggle("dense", bars.length > 2000);
  svg.dataset.rects = bars.length;
  svg.dataset.lanes = slots.length;
  svg.dataset.running = running;
  let sum = 0, max = 0;
  for (const x of bars) { const q = x.s - x.w; sum += q; if (q > max) max = q; }
  const tm = b.timings || {};
  $("timeline-summary").textContent = bars.length ? bars.length + " attempt" + (bars.length === 1 ? "" : "s") + " on " + slots.length +
    " slot" + (slots.length === 1 ? "" : "s") + " · queue wait mean " + ms(sum / bars.length) + ", max " + ms(max) +
    " · makespan " + ms(tm.makespan_ms) + (tm.parallelism == null ? "" : " · parallelism " + tm.parallelism.toFixed(2) + "×") +
    (running ? " · " + running + " running" : "") : "";
}
$("timeline").addEventListener("click", (ev) => {
  const r = ev.target.closest("rect[data-job-id]");
  if (r) openJob(r.dataset.jobId);
});
// Running attempts grow: redraw while any runs (a batch's own events only mark ends).
setInterval(() => { if (view && view.running && !document.hidden) renderNow(); }, 250);
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => { if (tl) tl.width = 0; if (view) { tlLast = 0; renderNow(true); } }, 100);
});

// ---- the job view ----
function closeJob() { jobSel = null; $("job").hidden = true; $("job").dataset.jobId = ""; note("job-msg", ""); }
$("job-close").addEventListener("click", () => { closeJob(); go(selected ? "#/batches/" + selected : ""); scheduleRender(); });
$("cancel-job").addEventListener("click", () => { if (jobSel) cancelJob(jobSel, $("cancel-job"), "job-msg"); });
$("retry-job").addEventListener("click", () => {
  const id = jobSel;
  if (!id) return;
  return act($("retry-job"), "job-msg", async () => {
    const j = await api("/v1/jobs/" + id + "/retry", {method: "POST"});
    note("job-msg", "Job " + id + " is queued again (now " + j.state + ").");
    refreshJob();
    reopen(j.batch_id);
    rereadView();
  }, "The job is queued or running: nothing to retry yet.");
});
async function openJob(id) {
  jobSel = id;
  const sec = $("job");
  sec.hidden = false;
  sec.dataset.jobId = id;
  sec.dataset.loaded = "false";
  $("job-h").textContent = "Job " + id;
  note("job-msg", "");
  go("#/jobs/" + id);
  scheduleRender();
  await loadJob();
  sec.scrollIntoView({block: "nearest"});
}
let jobTimer = null;
async function loadJob() {
  const id = jobSel;
  if (!id) return;
  try {
    const j = await api("/v1/jobs/" + id);
    // A command job's output, read from GET .../output: while it runs that is what it
    // printed so far (re-read every second, below); when it ended, its latest attempt's.
    let out = null;
    if (j.kind === "command") {
      const read = (stream) => api("/v1/jobs/" + id + "/output?stream=" + stream, {text: true, headers: {Accept: "text/plain"}});
      const [stdout, stderr] = await Promise.all([read("stdout"), read("stderr")]);
      out = {stdout, stderr};
    }
    if (id === jobSel) renderJob(j, out);
  } catch (e) {
    if (e.status === 404) closeJob(); else report("detail-msg", e);
  }
}
function refreshJob() {
  if (jobTimer) return;
  jobTimer = setTimeout(() => { jobTimer = null; loadJob(); }, 150);
}
// A running job's output grows without events: read it again every second.
setInterval(() => { if (jobSel && $("job").dataset.state === "running" && !document.hidden) loadJob(); }, 1000);
function fill(id, text, empty) {
  const el = $(id);
  el.textContent = text || empty;
  el.classList.toggle("empty", !text);
}
function renderJob(j, out) {
  const sec = $("job"), t = j.timings || {};
  sec.dataset.state = j.state;
  sec.dataset.attempts = j.attempts;
  sec.dataset.loaded = "true";
  $("job-h").textContent = "Job " + j.id + " — #" + j.index + " " + j.kind + (j.name ? " · " + j.name : "");
  const rows = [["state", badge(j.state)], ["attempts", j.attempts + " of " + j.max_attempts],
    ["batch", '<span class="mono">' + esc(j.batch_id) + "</span>"],
    ["worker", j.worker ? "slot " + j.worker.slot + ", pid " + j.worker.pid : "–"],
    ["exit code", j.exit_code ?? "–"], ["signal", esc(j.signal ?? "–")],
    ["queue", ms(t.queue_ms)], ["run", ms(t.run_ms)], ["user CPU", ms(t.user_cpu_ms)], ["sys CPU", ms(t.sys_cpu_ms)],
    ["max RSS", t.max_rss_kb == null ? "–" : (t.max_rss_kb / 1024).toFixed(1) + " MiB"],
    ["created", esc(j.created_at || "–")], ["started", esc(j.started_at || "–")], ["finished", esc(j.finished_at || "–")],
    ["timeout", j.timeout_s == null ? "none" : j.timeout_s + " s"]];
  $("job-info").innerHTML = rows.map((r) => '<div data-field="' + r[0] + '"><dt>' + r[0] + "</dt><dd>" + r[1] + "</dd></div>").join("");
  $("job-error").hidden = !j.error;
  $("job-error").textContent = j.error || "";
  fill("job-args", json(j.args), "(none)");
  fill("job-result", json(j.result), TERMINAL.has(j.state) ? "(none)" : "(not yet)");
  const o = j.output || {}, shown = out || o, prints = !!(out || j.output);
  fill("job-stdout", shown.stdout, prints ? "(empty)" : "(this kind prints nothing)");
  fill("job-stderr", shown.stderr, prints ? "(empty)" : "(this kind prints nothing)");
  $("cancel-job").hidden = !(j.state === "queued" || j.state === "running");
  $("retry-job").hidden = !TERMINAL.has(j.state);
  $("job-trunc").textContent = o.truncated ? "(truncated)" : "";
  const hist = attemptsOf(j);
  $("job-history-body").innerHTML = hist.length ? hist.map((h) => {
    const st = h.finished_at ? h.state : "running";
    return '<tr data-attempt="' + h.attempt + '" data-state="' + esc(st) + '"><td class="num">' + h.attempt + "</td><td>" + badge(st) +
      '</td><td class="num">' + (h.worker ? h.worker.slot : "–") + '</td><td class="num mono">' + (h.worker ? h.worker.pid : "–") +
      "</td><td class=mono>" + esc(h.started_at || "–") + "</td><td class=mono>" + esc(h.finished_at || "–") +
      '</td><td class="num">' + ms(h.run_ms) + "</td><td>" + esc([h.exit_code != null ? "exit " + h.exit_code : "", h.signal || ""].filter(Boolean).join(" ") || "–") +
      '</td><td class="wrap">' + esc(h.error || "–") + "</td></tr>";
  }).join("") : '<tr><td colspan="9" class="muted">No attempt has started.</td></tr>';
}

// ---- URLs: #/batches/b_… and #/jobs/j_… name what is shown, and survive a reload ----
let routing = false;
// go records the view in the URL (a history entry of its own), unless the view is
// being restored from the URL.
function go(hash) {
  if (routing || (location.hash || "") === hash) return;
  history.pushState(null, "", hash || location.pathname + location.search);
}
// route shows what the URL names: a batch, or a job inside its batch.
async function route() {
  const m = /^#\/(batches|jobs)\/([A-Za-z0-9_]+)$/.exec(location.hash || "");
  routing = true;
  try {
    if (!m) { if (selected) closeDetail(); return; }
    if (m[1] === "batches") {
      if (selected === m[2] && !jobSel) return;
      if (!batches.has(m[2])) putBatch(await api("/v1/batches/" + m[2]));
      if (selected === m[2]) { closeJob(); scheduleRender(); } else select(m[2]);
      return;
    }
    if (jobSel === m[2]) return;
    const j = await api("/v1/jobs/" + m[2]);
    if (!batches.has(j.batch_id)) putBatch(await api("/v1/batches/" + j.batch_id));
    if (selected !== j.batch_id) select(j.batch_id);
    await openJob(m[2]);
  } catch (e) {
    if (e.status === 404) setStatus("error", "not found: " + m[2]);
    else if (e.message !== "unauthorized") setStatus("error", "could not load " + m[2] + ": " + e.message);
  } finally { routing = false; }
}
window.addEventListener("popstate", route);
window.addEventListener("hashchange", route);
let routed = false;

// ---- the JSON editor ----
const SEED_SECONDS = [2.92, 1.08, 1.83, 1.67, 3.21, 3.03, 3.68, 1.26, 2.27, 1.09, 1.66, 2.52, 1.08, 1.60, 2.95];
const SEED = '{"name": "seed", "concurrency": 5, "jobs": [\n' +
  SEED_SECONDS.map((s) => '  {"kind": "sleep", "args": {"seconds": ' + s.toFixed(2) + "}}").join(",\n") + "\n]}\n";
$("editor").value = SEED;
$("editor").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); $("editor-form").requestSubmit(); }
});
$("editor-reset").addEventListener("click", () => { $("editor").value = SEED; showProblems(null, []); });
// locate finds the span of the value at a JSON Pointer in text (valid JSON), or of its
// nearest ancestor that exists, so that a field error can select what it is about.
function locate(text, pointer) {
  const want = pointer && pointer !== "/" ? pointer.slice(1).split("/").map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~")) : [];
  let i = 0, best = [0, text.length], bestDepth = -1;
  const ws = () => { while (i < text.length && " \t\r\n".includes(text[i])) i++; };
  const str = () => { const s = i++; while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1; i++; return JSON.parse(text.slice(s, i)); };
  function value(depth, onPath) {
    ws();
    const s = i, c = text[i];
    if (i >= text.length) throw new Error("end");
    if (c === "{" || c === "[") {
      const close = c === "{" ? "}" : "]";
      let n = 0;
      i++; ws();
      if (text[i] === close) i++;
      else for (;;) {
        let key = String(n++);
        if (c === "{") { ws(); key = str(); ws(); i++; }
        value(depth + 1, onPath && want[depth] === key);
        ws();
        if (text[i++] !== ",") break;
      }
    } else if (c === '"') str();
    else while (i < text.length && !",]} \t\r\n".includes(text[i])) i++;
    if (onPath && depth > bestDepth) { bestDepth = depth; best = [s, i]; }
  }
  try { value(0, true); } catch (e) { /* keep the best so far */ }
  return best;
}
function selectPointer(pointer) {
  const ed = $("editor"), [s, e] = locate(ed.value, pointer);
  ed.focus();
  ed.setSelectionRange(s, e);
  const line = ed.value.slice(0, s).split("\n").length - 1;
  ed.scrollTop = Math.max(0, line * parseFloat(getComputedStyle(ed).lineHeight) - ed.clientHeight / 3);
}
function showProblems(msg, errors, isErr) {
  const m = $("editor-msg");
  m.textContent = msg || "The server checks the body; every invalid field is listed here.";
  m.classList.toggle("err", !!isErr);
  $("editor").setAttribute("aria-invalid", errors.length ? "true" : "false");
  $("editor-errors").innerHTML = errors.map((x) => '<li data-path="' + esc(x.path) + '"><button type="button" class="link">' +
    esc(x.path) + "</button> " + esc(x.message) + "</li>").join("");
}
$("editor-errors").addEventListener("click", (ev) => {
  const li = ev.target.closest("li[data-path]");
  if (li && ev.target.closest("button")) selectPointer(li.dataset.path);
});
$("editor-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("editor").value, btn = $("editor-submit");
  try {
    JSON.parse(text);
  } catch (e) {
    // Caught here, with the browser's line and column; the server would only say "/".
    showProblems("Not sent: the text is not valid JSON.", [{path: "/", message: e.message}], true);
    return;
  }
  btn.disabled = true;
  showProblems("submitting…", []);
  try {
    const b = await api("/v1/batches", {method: "POST", headers: {"Content-Type": "application/json"}, body: text});
    delete b.job_ids;
    putBatch(b);
    renderBatches();
    showProblems("Submitted " + b.id + " (" + b.counts.total + " jobs).", []);
    select(b.id);
  } catch (e) {
    if (e.message === "unauthorized") { showProblems("The server needs the token (401).", [], true); return; }
    const errs = e.body && Array.isArray(e.body.errors) ? e.body.errors : [];
    showProblems((e.status ? e.status + " " : "") + (e.body && e.body.title ? e.body.title + ": " : "") + e.message, errs, true);
  } finally { btn.disabled = false; }
});

// ---- events: fetch + ReadableStream, so the token can be sent ----
function stopStream() { if (streamAbort) { streamAbort.abort(); streamAbort = null; } }
let reconnectTimer = null;
function scheduleReconnect() {
  if (reconnectTimer || needAuth) return;
  setStatus("reconnecting", "connection lost; reconnecting…");
  reconnectTimer = setTimeout(() => { reconnectTimer = null; connect(); }, 1000);
}
async function connect() {
  stopStream();
  const ctl = new AbortController();
  streamAbort = ctl;
  const headers = {Accept: "text/event-stream"};
  if (token) headers.Authorization = "Bearer " + token;
  if (lastId) headers["Last-Event-ID"] = lastId;
  let res;
  try {
    res = await fetch("/v1/events", {headers, signal: ctl.signal, cache: "no-store"});
  } catch (e) {
    if (!ctl.signal.aborted) scheduleReconnect();
    return;
  }
  if (res.status === 401 || !res.ok || !res.body) {
    await res.text().catch(() => "");           // finish the answer; aborting it would log a failed request
    if (streamAbort === ctl) streamAbort = null;
  }
  if (res.status === 401) { authNeeded(); return; }
  if (!res.ok || !res.body) {
    if (res.status === 400 && lastId) lastId = null;  // our id is not acceptable: start over
    setStatus("error", "events: HTTP " + res.status);
    scheduleReconnect();
    return;
  }
  const fresh = !lastId;
  setStatus("live", "live");
  if (fresh) refreshAll();
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "", raw = "";
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      raw += dec.decode(value, {stream: true});
      const cut = raw.endsWith("\r") ? raw.length - 1 : raw.length;  // a CR may pair with the next LF
      buf += raw.slice(0, cut).replace(/\r\n?/g, "\n");
      raw = raw.slice(cut);
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        dispatch(block);
      }
    }
  } catch (e) { /* dropped or aborted */ }
  if (!ctl.signal.aborted) scheduleReconnect();
}
function dispatch(block) {
  let id = null, type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line[0] === ":") continue;
    const k = line.indexOf(":");
    const field = k < 0 ? line : line.slice(0, k);
    let val = k < 0 ? "" : line.slice(k + 1);
    if (val[0] === " ") val = val.slice(1);
    if (field === "id") id = val;
    else if (field === "event") type = val;
    else if (field === "data") data.push(val);
  }
  if (id !== null) { lastId = id; $("last-event").textContent = id; }
  if (type === "reset") { refreshAll(); return; }
  if (!data.length) return;
  let d;
  try { d = JSON.parse(data.join("\n")); } catch (e) { return; }
  if (type === "batch") onBatch(d);
  else if (type === "job") onJob(d);
}
function onBatch(d) {
  const b = batches.get(d.id);
  if (b) {
    b.state = d.state;
    if (d.counts) { b.counts = d.counts; b.progress = undefined; }
    if (d.halted !== undefined) b.halted = d.halted;
    renderBatches();
  }
  refreshBatch(d.id);
  refreshPool();
}
function onJob(d) {
  refreshBatch(d.batch_id);  // counts, progress and timings
  const v = view;
  if (v && d.batch_id === v.id) {
    const idx = v.byId.get(d.id);
    if (idx === undefined) v.unknown.add(d.id);
    else {
      const j = v.jobs[idx];
      j.state = d.state;
      j.attempts = d.attempts ?? j.attempts;
      markDirty(v, pageOf(v, idx));
      v.version++;
      if (v.jobs.length <= PAGE) scheduleRender();  // a big batch waits for its pages
    }
  }
  if (d.id === jobSel) refreshJob();
  refreshPool();
}
let poolTimer = null;
function refreshPool() {
  if (poolTimer) return;
  poolTimer = setTimeout(() => { poolTimer = null; loadPool().catch(() => {}); }, 200);
}
async function refreshAll() {
  try {
    await Promise.all([loadPool(), loadBatches()]);
    if (!routed) { routed = true; await route(); }
    if (view) { view.pages.forEach((p, k) => { if (p.loaded) view.dirty.add(k); }); pump(view); }
    if (jobSel) loadJob();
  } catch (e) {
    if (e.message !== "unauthorized") setStatus("error", "could not load: " + e.message);
  }
}

// ---- forms ----
$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  if (token) sessionStorage.setItem(KEY, token); else sessionStorage.removeItem(KEY);
  needAuth = false;
  $("auth-msg").hidden = true;
  setStatus("connecting", "connecting…");
  lastId = null;
  connect();
});
$("demo-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const n = parseInt($("demo-n").value, 10), s = parseFloat($("demo-s").value), c = parseInt($("demo-c").value, 10);
  const btn = $("submit-demo");
  btn.disabled = true;
  note("demo-msg", "submitting…");
  const jobsIn = [];
  for (let i = 0; i < n; i++) jobsIn.push({kind: "sleep", args: {seconds: s}});
  try {
    const b = await api("/v1/batches", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({name: "demo " + n + " × " + s + " s", concurrency: c, jobs: jobsIn})});
    delete b.job_ids;
    putBatch(b);
    renderBatches();
    note("demo-msg", "Submitted " + b.id + ".");
    select(b.id);
  } catch (e) {
    const errs = e.body && e.body.errors && e.body.errors.length ? ": " + e.body.errors.map((x) => x.path + " " + x.message).join("; ") : "";
    report("demo-msg", e.message === "unauthorized" ? e : new Error(e.message + errs));
  } finally { btn.disabled = false; }
});
setInterval(() => { if (!needAuth && !document.hidden) loadPool().catch(() => {}); }, 5000);
connect();
})();
