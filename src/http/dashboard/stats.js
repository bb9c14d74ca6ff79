/* The figure cards: the work queue's depth, the caller's backlog, and its throughput
 * (jobs finished per bucket of /api/v1/stats's `bucket_secs`, oldest first, the newest
 * still filling).
 *
 * Read every 5 s, and again shortly after the event stream reports a change of a job, so
 * that the cards agree with the list beside them: a job that just succeeded counts at
 * once, not at the next tick of the 5 s poll (which left "0 jobs/min · 0 done in 5 min"
 * next to jobs that had just succeeded). A burst of events makes one request, and
 * requests are at least a second apart.
 */

import { session, api, handleError, describe } from "./api.js";
import { $, el, toast } from "./ui.js";

const EVERY_MS = 5000;     // the regular refresh
const SOON_MS = 250;       // after a change: a burst of events in this time makes one request
const MIN_GAP_MS = 1000;   // between the starts of two requests, at least

const P = { timer: 0, due: Infinity, busy: false, dirty: false, last: 0, failing: false };

/** Signed in (session `id`): draw the cards now, then keep them current. */
export function startStats(id) {
  stopStats();
  P.failing = false;
  poll(id);
}

/** Signed out: no more requests. */
export function stopStats() {
  clearTimeout(P.timer);
  Object.assign(P, { timer: 0, due: Infinity, busy: false, dirty: false });
}

/** A job changed (a status event): read the figures again soon. */
export function statsChanged() {
  if (!session.token || P.failing) return;   // failing: the regular 5 s retry is enough
  if (P.busy) { P.dirty = true; return; }    // the answer on its way may predate the change
  const delay = soon();
  if (Date.now() + delay < P.due) schedule(session.id, delay);
}

const soon = () => Math.max(SOON_MS, P.last + MIN_GAP_MS - Date.now());

function schedule(id, delay) {
  clearTimeout(P.timer);
  P.due = Date.now() + delay;
  P.timer = setTimeout(() => poll(id), delay);
}

async function poll(id) {
  Object.assign(P, { timer: 0, due: Infinity, busy: true, dirty: false, last: Date.now() });
  try {
    const s = await api("/api/v1/stats");
    if (id !== session.id) return;
    P.failing = false;
    renderStats(s);
  } catch (err) {
    if (id !== session.id) return;
    if (err.status === 401) return handleError(err, "");
    if (!P.failing) toast(`Stats unavailable: ${describe(err)}`);   // once, not every 5 s
    P.failing = true;
  }
  P.busy = false;
  schedule(id, P.dirty && !P.failing ? soon() : EVERY_MS);
}

const nums = (a) => (Array.isArray(a) ? a.map((n) => (Number.isFinite(n) ? n : 0)) : []);
const sum = (a) => a.reduce((x, y) => x + y, 0);
const fmtCount = (n) => (Number.isFinite(n) ? String(n) : "—");

function renderStats(s) {
  $("queue-depth").textContent = fmtCount(s.queue_depth);
  const lanes = Number.isFinite(s.lanes) && s.lanes > 1 ? ` · ${s.lanes} lanes` : "";
  $("consumers").textContent = `consumers: ${fmtCount(s.consumers)}${lanes}`;
  // The caller's own unfinished jobs: the queue depth mixes every tenant's.
  const b = s.backlog || {};
  $("backlog").textContent = fmtCount(sum(nums([b.queued, b.running, b.retrying])));
  $("backlog-detail").textContent =
    `${fmtCount(b.queued)} queued · ${fmtCount(b.running)} running · ${fmtCount(b.retrying)} retrying`;
  // The last minute is the newest 60 s worth of buckets, the newest (still filling) included.
  const perMinute = Math.max(1, Math.round(60 / (s.bucket_secs > 0 ? s.bucket_secs : 10)));
  const done = nums(s.completed), failed = nums(s.failed);
  $("failed-rate").textContent = `${sum(failed.slice(-perMinute))} failed/min · ${sum(done)} done in 5 min`;
  // Only text nodes of the rate inside #throughput: its textContent stays "N jobs/min".
  $("throughput").replaceChildren(el("span", "tp-text", `${sum(done.slice(-perMinute))} jobs/min`), chart(done, failed));
}

/** Stacked bar chart: completed at the bottom, failed on top, one bar per bucket. */
function chart(done, failed) {
  const NS = "http://www.w3.org/2000/svg";
  const n = Math.max(done.length, failed.length, 1);
  const W = 150, H = 36, step = W / n, bar = Math.max(1, step - 1);
  const max = Math.max(1, ...done.map((d, i) => d + (failed[i] || 0)), ...failed);
  const svg = document.createElementNS(NS, "svg");
  const attrs = (node, a) => { for (const k in a) node.setAttribute(k, a[k]); return node; };
  attrs(svg, { class: "spark", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
    "aria-label": `completed jobs per bucket, oldest first: ${done.join(", ")}` });
  const rect = (x, y, h, cls) => svg.append(attrs(document.createElementNS(NS, "rect"),
    { x: x.toFixed(2), y: y.toFixed(2), width: bar.toFixed(2), height: h.toFixed(2), class: cls }));
  for (let i = 0; i < n; i++) {
    const hd = ((done[i] || 0) / max) * (H - 1), hf = ((failed[i] || 0) / max) * (H - 1);
    rect(i * step, H - 1, 1, "bar-base");
    if (hd > 0) rect(i * step, H - hd, hd, "bar-ok");
    if (hf > 0) rect(i * step, H - hd - hf, hf, "bar-fail");
  }
  return svg;
}
