/* The job list: pages of /api/v1/jobs, jobs updated in place as events arrive,
 * thumbnails fetched into blob: URLs, and cancelling.
 *
 * The page is served under a strict CSP: no inline handlers, no style attributes; rows
 * are built with DOM calls and styled by their classes in style.css.
 */

import { session, api, request, handleError, describe, networkError, pool } from "./api.js";
import { $, el, short, relTime, fmtSize, toast } from "./ui.js";

const STATUSES = ["QUEUED", "RUNNING", "RETRYING", "SUCCESS", "FAILED", "CANCELLED"];
const CANCELLABLE = new Set(["QUEUED", "RETRYING", "RUNNING"]);
const PAGE_SIZE = 50;
const MAX_ROWS = 400;            // live inserts trim the list's tail beyond this
const THUMB_CONCURRENCY = 4;

const L = {
  rows: new Map(),          // job id -> { job, li }
  next: null,               // cursor for "Load more"
  listSeq: 0,               // newest list request; older responses are dropped
  thumbs: new Map(),        // job id -> object URL (or the result's own URL)
  thumbPending: new Set(),  // job ids whose thumbnail is queued or loading
  cancelRequested: new Set(),
};
const thumbs = pool(THUMB_CONCURRENCY);

/** The URL of a page of jobs, with the status filter; `after` is the cursor, or null. */
export function listUrl(after) {
  const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const status = $("status-filter").value;
  if (status) q.set("status", status);
  if (after) q.set("after", after);
  return `/api/v1/jobs?${q}`;
}

/** Whether the list shows job `id`. */
export const hasJob = (id) => L.rows.has(id);

function setNext(cursor) {
  L.next = typeof cursor === "string" && cursor ? cursor : null;
  $("more").hidden = !L.next;
}

export function updateEmpty() {
  const filter = $("status-filter").value;
  $("jobs-empty").hidden = L.rows.size > 0;
  $("jobs-empty").textContent = filter ? `No ${filter} jobs.` : "No jobs yet. Drop an image to start one.";
}
const validJob = (job) => !!job && typeof job.id === "string" && job.id.length > 0;
const pageJobs = (page) => (Array.isArray(page.jobs) ? page.jobs.filter(validJob) : []);

/** True if `a` is strictly older than `b` by updated_at (unknown times never lose). */
function isOlder(a, b) {
  const ta = Date.parse(a.updated_at), tb = Date.parse(b.updated_at);
  return Number.isFinite(ta) && Number.isFinite(tb) && ta < tb;
}

/** Reload the first page (filter change, resync, reconnect). */
export async function reloadList() {
  const seq = ++L.listSeq, id = session.id;
  try {
    const page = await api(listUrl(null));
    if (seq === L.listSeq && id === session.id) replaceList(page);
  } catch (err) {
    if (seq === L.listSeq && id === session.id) handleError(err, "Could not load jobs");
  }
}

/** Swap the whole list in one go; keep cached thumbnails of jobs still listed. */
export function replaceList(page) {
  const jobs = pageJobs(page);
  const old = L.rows, keep = new Set(jobs.map((j) => j.id));
  for (const id of old.keys()) if (!keep.has(id)) dropThumb(id);
  L.rows = new Map();
  const frag = document.createDocumentFragment();
  for (const job of jobs) {
    // A stream event may have overtaken this response: keep whichever is newer.
    const prev = old.get(job.id);
    frag.append(makeRow(prev && isOlder(job, prev.job) ? prev.job : job));
  }
  $("jobs").replaceChildren(frag);
  setNext(page.next);
  updateEmpty();
}

export function clearList() {
  for (const id of L.rows.keys()) dropThumb(id);
  L.rows.clear();
  L.cancelRequested.clear();
  L.listSeq++;
  $("jobs").replaceChildren();
  setNext(null);
  updateEmpty();
}

/** Signed out: no thumbnail loads any more, and an empty list. */
export function resetJobs() {
  thumbs.clear();
  L.thumbPending.clear();
  clearList();
}

export async function loadMore() {
  if (!L.next) return;
  const btn = $("more"), seq = L.listSeq, id = session.id;
  btn.disabled = true;
  try {
    const page = await api(listUrl(L.next));
    if (seq !== L.listSeq || id !== session.id) return;   // list was replaced meanwhile
    const frag = document.createDocumentFragment();
    for (const job of pageJobs(page)) if (!L.rows.has(job.id)) frag.append(makeRow(job));
    $("jobs").append(frag);
    setNext(page.next);
    updateEmpty();
  } catch (err) {
    handleError(err, "Could not load more jobs");
  } finally {
    btn.disabled = false;
  }
}

/** Apply a job from the stream (or an upload/cancel answer) to the list in place. */
export function upsertJob(job) {
  if (!validJob(job)) return;
  const filter = $("status-filter").value;
  const row = L.rows.get(job.id);
  if (row) {
    if (isOlder(job, row.job)) return;            // late, out-of-order event
    if (filter && job.status !== filter) return removeRow(job.id);
    row.job = job;
    return fillRow(row.li, job);
  }
  if (filter && job.status !== filter) return;
  // Newest first by created_at: find the first row older than this job.
  const created = Date.parse(job.created_at) || Date.now();
  let before = null;
  for (const li of $("jobs").children) {
    const other = L.rows.get(li.dataset.jobId);
    if (other && (Date.parse(other.job.created_at) || 0) < created) { before = li; break; }
  }
  if (!before && L.next) return;   // it belongs to a page not loaded yet
  $("jobs").insertBefore(makeRow(job), before);
  while (L.rows.size > MAX_ROWS && $("jobs").lastElementChild) {
    removeRow($("jobs").lastElementChild.dataset.jobId);
  }
  updateEmpty();
}

function removeRow(id) {
  const row = L.rows.get(id);
  if (row) row.li.remove();
  L.rows.delete(id);
  L.cancelRequested.delete(id);
  dropThumb(id);
  updateEmpty();
}

function makeRow(job) {
  const li = el("li", "job", null, { data: { jobId: job.id } });
  L.rows.set(job.id, { job, li });
  fillRow(li, job);
  return li;
}

/** (Re)build a row's cells from a job; the <li> itself stays in place. */
function fillRow(li, job) {
  const id = job.id, status = String(job.status || "UNKNOWN");
  li.dataset.status = status;
  if (status !== "RUNNING") L.cancelRequested.delete(id);

  const thumb = el("div", "job-thumb");
  if (status === "SUCCESS") {
    const img = el("img", "thumb", null, { alt: `Thumbnail of job ${short(id)}`, decoding: "async" });
    if (L.thumbs.has(id)) img.src = L.thumbs.get(id); else queueThumb(id);
    thumb.append(img);
  }
  const statusCell = el("div", "job-status");
  const known = STATUSES.includes(status) ? status.toLowerCase() : "unknown";
  statusCell.append(el("span", `badge badge-${known}`, status));
  if (L.cancelRequested.has(id)) statusCell.append(el("span", "job-note", "cancel requested"));

  const ts = Date.parse(job.created_at);
  const meta = el("div", "job-meta");
  meta.append(
    el("time", "job-created", relTime(job.created_at), {
      dateTime: job.created_at || "", title: Number.isFinite(ts) ? new Date(ts).toLocaleString() : "",
      data: { label: "Created" },
    }),
    el("span", "job-size", fmtSize(job.payload_size), { title: job.content_type || "", data: { label: "Size" } }),
    el("span", "job-attempts", Number.isFinite(job.attempts) ? job.attempts : 0, { data: { label: "Attempts" } }),
  );
  const action = el("div", "job-action");
  if (CANCELLABLE.has(status)) {
    action.append(el("button", "btn btn-small cancel", "Cancel", { type: "button", disabled: L.cancelRequested.has(id) }));
  }
  const cells = [thumb, el("code", "job-id", short(id), { title: id }), statusCell, meta, action];
  if (status === "FAILED" || (status === "RETRYING" && job.error)) {
    cells.push(el("p", "job-error", job.error || "failed (no error message)"));
  }
  li.replaceChildren(...cells);
}

/** Refresh the "12 s ago" texts. */
export function refreshTimes() {
  for (const t of $("jobs").querySelectorAll("time.job-created")) t.textContent = relTime(t.dateTime);
}

/* ------------------------------------------------------------- cancel */

export async function cancelJob(id, btn) {
  btn.disabled = true;
  btn.textContent = "Cancelling…";
  const sid = session.id;
  try {
    const r = await api(`/api/v1/job/${encodeURIComponent(id)}`, { method: "DELETE" });
    if (sid !== session.id) return;
    if (r.cancel_requested) L.cancelRequested.add(id);
    const row = L.rows.get(id);
    // Keep the old updated_at so the stream's next event for this job still wins.
    if (row) upsertJob({ ...row.job, status: r.status || row.job.status });
    if (r.cancel_requested) toast(`Cancel requested for running job ${short(id)}`, "info");
  } catch (err) {
    if (sid !== session.id) return;
    if (err.status === 404) removeRow(id);
    handleError(err, `Cancel failed for ${short(id)}`);
    if (btn.isConnected) { btn.disabled = false; btn.textContent = "Cancel"; }
  }
}

/* --------------------------------------------------------- thumbnails */

function queueThumb(id) {
  if (L.thumbs.has(id) || L.thumbPending.has(id)) return;
  L.thumbPending.add(id);
  const sid = session.id;
  thumbs.add(() => loadThumb(id, sid).finally(() => L.thumbPending.delete(id)));
}

/**
 * Fetch with the header (an <img> can't send it), then show it as a blob: URL. An
 * ingress with RESULT_REDIRECT answers 307 to where the result is served (a CDN, an
 * object store): the token must not follow it there, so the redirect is not followed;
 * the <img> loads the result's own URL, which the job carries, without the token.
 */
async function loadThumb(id, sid) {
  const img = () => L.rows.has(id) && L.rows.get(id).li.querySelector("img.thumb");
  if (sid !== session.id || !L.rows.has(id)) return;   // row went away while queued
  try {
    const res = await request(`/api/v1/job/${encodeURIComponent(id)}/result`, { accept: "image/*", redirect: "manual" });
    if (res.type === "opaqueredirect") {
      const loc = L.rows.has(id) && L.rows.get(id).job.payload_location;
      if (!loc || !/^https?:\/\//.test(loc)) throw networkError("the result is served elsewhere, at no absolute URL");
      L.thumbs.set(id, loc);
      if (img()) img().src = loc;
      return;
    }
    const blob = await res.blob();
    if (sid !== session.id || !L.rows.has(id)) return;   // row went away meanwhile
    L.thumbs.set(id, URL.createObjectURL(blob));
    if (img()) img().src = L.thumbs.get(id);
  } catch (err) {
    if (sid !== session.id) return;
    if (err.status === 401) return handleError(err, "");
    if (img()) { img().classList.add("broken"); img().title = `Thumbnail unavailable: ${describe(err)}`; }
  }
}

function dropThumb(id) {
  if (L.thumbs.has(id) && L.thumbs.get(id).startsWith("blob:")) URL.revokeObjectURL(L.thumbs.get(id));
  L.thumbs.delete(id);
}
