/* imagejobs dashboard — vanilla JS, no build step.
 *
 * The page is served under a strict CSP (script-src/style-src 'self'), so every
 * behaviour lives in this file and every style in style.css: no inline handlers,
 * no style attributes. The API token travels only in the Authorization header
 * (never in a URL), which is why the event stream is read with fetch() rather
 * than EventSource, and thumbnails are fetched into blob: URLs.
 */
"use strict";

(() => {
  const TOKEN_KEY = "imagejobs.token";
  const STATUSES = ["QUEUED", "RUNNING", "RETRYING", "SUCCESS", "FAILED", "CANCELLED"];
  const CANCELLABLE = new Set(["QUEUED", "RETRYING", "RUNNING"]);
  const PAGE_SIZE = 50;
  const MAX_ROWS = 400;            // live inserts trim the list's tail beyond this
  const MAX_UPLOAD_ENTRIES = 40;   // finished upload entries kept on screen
  const UPLOAD_CONCURRENCY = 4, THUMB_CONCURRENCY = 4;
  const STATS_EVERY_MS = 5000;
  const BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 10000;
  const STREAM_IDLE_MS = 75000;    // no bytes (not even a heartbeat) for this long: reconnect
  const STABLE_STREAM_MS = 5000;   // a stream that lived this long resets the backoff

  const $ = (id) => document.getElementById(id);
  const short = (id) => id.slice(0, 8);

  /** Element helper: tag, class list, text, then any extra properties/data-* ({ data: {...} }). */
  function el(tag, cls, text, props = {}) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    const { data, ...rest } = props;
    Object.assign(node, rest);
    Object.assign(node.dataset, data || {});
    return node;
  }

  // All mutable state in one place. `session` is bumped on every sign-in and
  // sign-out so that async work started for an old session can tell it is stale.
  const S = {
    token: null, session: 0,
    rows: new Map(),          // job id -> { job, li }
    next: null,               // cursor for "Load more"
    listSeq: 0,               // newest list request; older responses are dropped
    thumbs: new Map(),        // job id -> object URL
    thumbPending: new Set(),  // job ids whose thumbnail is queued or loading
    cancelRequested: new Set(),
    xhrs: new Set(),          // uploads in flight, aborted on sign-out
    stream: null,             // AbortController of the tenant event stream
    statsTimer: 0, clockTimer: 0, statsFailing: false,
  };

  /** A tiny concurrency limiter for promise-returning tasks; clear() drops queued ones. */
  function pool(limit) {
    const queue = [];
    let active = 0;
    const pump = () => {
      while (active < limit && queue.length) {
        active++;
        queue.shift()().catch(() => {}).finally(() => { active--; pump(); });
      }
    };
    return { add(task) { queue.push(task); pump(); }, clear() { queue.length = 0; } };
  }
  const uploads = pool(UPLOAD_CONCURRENCY);
  const thumbs = pool(THUMB_CONCURRENCY);

  /* ------------------------------------------------------------------ API */

  class ApiError extends Error {
    constructor(status, message, details, retryAfter) {
      super(message);
      Object.assign(this, { status, details: details || "", retryAfter: retryAfter || "" });
    }
  }

  function errorFrom(status, body, retryAfter) {
    const message = (body && typeof body.error === "string" && body.error) || `HTTP ${status}`;
    return new ApiError(status, message, body && typeof body.details === "string" ? body.details : "", retryAfter);
  }

  const networkError = (details) => new ApiError(0, "Network error", details);

  /** One line for the user: the server's error, its details, and any Retry-After. */
  function describe(err) {
    if (!err) return "Unknown error";
    let text = err.message || String(err);
    if (err.details && err.details !== err.message) text += ` — ${err.details}`;
    if (err.retryAfter) text += ` (retry in ${err.retryAfter} s)`;
    return text;
  }

  const authHeaders = (token = S.token) => ({ Authorization: `Bearer ${token}` });

  /** fetch() with the token; throws ApiError for network failures (status 0) and non-2xx answers. */
  async function request(path, { method = "GET", token = S.token, accept = "application/json", signal, redirect = "follow" } = {}) {
    let res;
    try {
      res = await fetch(path, { method, signal, redirect, cache: "no-store", headers: { ...authHeaders(token), Accept: accept } });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw networkError("the server could not be reached");
    }
    if (res.type === "opaqueredirect") return res;   // redirect: "manual" asked to see it
    if (!res.ok) throw errorFrom(res.status, await res.json().catch(() => null), res.headers.get("Retry-After"));
    return res;
  }

  async function api(path, opts) {
    const res = await request(path, opts);
    return (await res.json().catch(() => null)) || {};
  }

  /** Common failure path: a 401 anywhere means the token is no good any more. */
  function handleError(err, what) {
    if (err && err.status === 401) signOut(`Your token was rejected: ${describe(err)}`);
    else toast(`${what}: ${describe(err)}`);
  }

  /* --------------------------------------------------------- sign in/out */

  function setSignedIn(yes) {
    $("token-form").hidden = yes;
    $("app").hidden = !yes;
    $("sign-out").hidden = !yes;
  }

  /** Verify a token with a first page of jobs; on success enter the app. */
  async function signIn(token) {
    const btn = $("token-save");
    btn.disabled = true;
    btn.textContent = "Checking…";
    $("token-error").textContent = "";
    try {
      enterApp(token, await api(listUrl(null), { token }));
    } catch (err) {
      // Only a 401 condemns the token; after a network error keep it for a retry.
      if (err.status === 401) sessionStorage.removeItem(TOKEN_KEY);
      else $("token").value = token;
      const prefix = err.status === 401 ? "Token rejected" : "Could not verify the token";
      $("token-error").textContent = `${prefix}: ${describe(err)}`;
    } finally {
      btn.disabled = false;
      btn.textContent = "Continue";
    }
  }

  function enterApp(token, page) {
    S.token = token;
    const session = ++S.session;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    setSignedIn(true);
    replaceList(page);
    runStream(session);
    pollStats(session);
    S.clockTimer = setInterval(refreshTimes, 1000);
  }

  /** Forget the token and everything derived from it; back to the form. */
  function signOut(message) {
    S.session++;
    S.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    if (S.stream) S.stream.abort();
    S.stream = null;
    clearTimeout(S.statsTimer);
    clearInterval(S.clockTimer);
    uploads.clear();
    thumbs.clear();
    for (const xhr of S.xhrs) xhr.abort();
    S.xhrs.clear();
    S.thumbPending.clear();
    $("uploads").replaceChildren();
    clearList();
    setLive("offline");
    setSignedIn(false);
    $("token-error").textContent = message || "";
    $("token").focus();
  }

  /* ------------------------------------------------------------ job list */

  function listUrl(after) {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    const status = $("status-filter").value;
    if (status) q.set("status", status);
    if (after) q.set("after", after);
    return `/api/v1/jobs?${q}`;
  }

  function setNext(cursor) {
    S.next = typeof cursor === "string" && cursor ? cursor : null;
    $("more").hidden = !S.next;
  }

  function updateEmpty() {
    const filter = $("status-filter").value;
    $("jobs-empty").hidden = S.rows.size > 0;
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
  async function reloadList() {
    const seq = ++S.listSeq, session = S.session;
    try {
      const page = await api(listUrl(null));
      if (seq === S.listSeq && session === S.session) replaceList(page);
    } catch (err) {
      if (seq === S.listSeq && session === S.session) handleError(err, "Could not load jobs");
    }
  }

  /** Swap the whole list in one go; keep cached thumbnails of jobs still listed. */
  function replaceList(page) {
    const jobs = pageJobs(page);
    const old = S.rows, keep = new Set(jobs.map((j) => j.id));
    for (const id of old.keys()) if (!keep.has(id)) dropThumb(id);
    S.rows = new Map();
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

  function clearList() {
    for (const id of S.rows.keys()) dropThumb(id);
    S.rows.clear();
    S.cancelRequested.clear();
    S.listSeq++;
    $("jobs").replaceChildren();
    setNext(null);
    updateEmpty();
  }

  async function loadMore() {
    if (!S.next) return;
    const btn = $("more"), seq = S.listSeq, session = S.session;
    btn.disabled = true;
    try {
      const page = await api(listUrl(S.next));
      if (seq !== S.listSeq || session !== S.session) return;   // list was replaced meanwhile
      const frag = document.createDocumentFragment();
      for (const job of pageJobs(page)) if (!S.rows.has(job.id)) frag.append(makeRow(job));
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
  function upsertJob(job) {
    if (!validJob(job)) return;
    const filter = $("status-filter").value;
    const row = S.rows.get(job.id);
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
      const other = S.rows.get(li.dataset.jobId);
      if (other && (Date.parse(other.job.created_at) || 0) < created) { before = li; break; }
    }
    if (!before && S.next) return;   // it belongs to a page not loaded yet
    $("jobs").insertBefore(makeRow(job), before);
    while (S.rows.size > MAX_ROWS && $("jobs").lastElementChild) {
      removeRow($("jobs").lastElementChild.dataset.jobId);
    }
    updateEmpty();
  }

  function removeRow(id) {
    const row = S.rows.get(id);
    if (row) row.li.remove();
    S.rows.delete(id);
    S.cancelRequested.delete(id);
    dropThumb(id);
    updateEmpty();
  }

  function makeRow(job) {
    const li = el("li", "job", null, { data: { jobId: job.id } });
    S.rows.set(job.id, { job, li });
    fillRow(li, job);
    return li;
  }

  /** (Re)build a row's cells from a job; the <li> itself stays in place. */
  function fillRow(li, job) {
    const id = job.id, status = String(job.status || "UNKNOWN");
    li.dataset.status = status;
    if (status !== "RUNNING") S.cancelRequested.delete(id);

    const thumb = el("div", "job-thumb");
    if (status === "SUCCESS") {
      const img = el("img", "thumb", null, { alt: `Thumbnail of job ${short(id)}`, decoding: "async" });
      if (S.thumbs.has(id)) img.src = S.thumbs.get(id); else queueThumb(id);
      thumb.append(img);
    }
    const statusCell = el("div", "job-status");
    const known = STATUSES.includes(status) ? status.toLowerCase() : "unknown";
    statusCell.append(el("span", `badge badge-${known}`, status));
    if (S.cancelRequested.has(id)) statusCell.append(el("span", "job-note", "cancel requested"));

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
      action.append(el("button", "btn btn-small cancel", "Cancel", { type: "button", disabled: S.cancelRequested.has(id) }));
    }
    const cells = [thumb, el("code", "job-id", short(id), { title: id }), statusCell, meta, action];
    if (status === "FAILED" || (status === "RETRYING" && job.error)) {
      cells.push(el("p", "job-error", job.error || "failed (no error message)"));
    }
    li.replaceChildren(...cells);
  }

  /** Refresh the "12 s ago" texts. */
  function refreshTimes() {
    for (const t of $("jobs").querySelectorAll("time.job-created")) t.textContent = relTime(t.dateTime);
  }

  function relTime(iso) {
    const ts = Date.parse(iso);
    if (!Number.isFinite(ts)) return "—";
    const s = Math.round((Date.now() - ts) / 1000);
    if (s < 3) return "just now";
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return new Date(ts).toLocaleDateString();
  }

  function fmtSize(bytes) {
    if (!Number.isFinite(bytes)) return "—";
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
    return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
  }

  /* ------------------------------------------------------------- cancel */

  async function cancelJob(id, btn) {
    btn.disabled = true;
    btn.textContent = "Cancelling…";
    const session = S.session;
    try {
      const r = await api(`/api/v1/job/${encodeURIComponent(id)}`, { method: "DELETE" });
      if (session !== S.session) return;
      if (r.cancel_requested) S.cancelRequested.add(id);
      const row = S.rows.get(id);
      // Keep the old updated_at so the stream's next event for this job still wins.
      if (row) upsertJob({ ...row.job, status: r.status || row.job.status });
      if (r.cancel_requested) toast(`Cancel requested for running job ${short(id)}`, "info");
    } catch (err) {
      if (session !== S.session) return;
      if (err.status === 404) removeRow(id);
      handleError(err, `Cancel failed for ${short(id)}`);
      if (btn.isConnected) { btn.disabled = false; btn.textContent = "Cancel"; }
    }
  }

  /* --------------------------------------------------------- thumbnails */

  function queueThumb(id) {
    if (S.thumbs.has(id) || S.thumbPending.has(id)) return;
    S.thumbPending.add(id);
    const session = S.session;
    thumbs.add(() => loadThumb(id, session).finally(() => S.thumbPending.delete(id)));
  }

  /**
   * Fetch with the header (an <img> can't send it), then show it as a blob: URL. An
   * ingress with RESULT_REDIRECT answers 307 to where the result is served (a CDN, an
   * object store): the token must not follow it there, so the redirect is not followed;
   * the <img> loads the result's own URL, which the job carries, without the token.
   */
  async function loadThumb(id, session) {
    const img = () => S.rows.has(id) && S.rows.get(id).li.querySelector("img.thumb");
    if (session !== S.session || !S.rows.has(id)) return;   // row went away while queued
    try {
      const res = await request(`/api/v1/job/${encodeURIComponent(id)}/result`, { accept: "image/*", redirect: "manual" });
      if (res.type === "opaqueredirect") {
        const loc = S.rows.has(id) && S.rows.get(id).job.payload_location;
        if (!loc || !/^https?:\/\//.test(loc)) throw networkError("the result is served elsewhere, at no absolute URL");
        S.thumbs.set(id, loc);
        if (img()) img().src = loc;
        return;
      }
      const blob = await res.blob();
      if (session !== S.session || !S.rows.has(id)) return;   // row went away meanwhile
      S.thumbs.set(id, URL.createObjectURL(blob));
      if (img()) img().src = S.thumbs.get(id);
    } catch (err) {
      if (session !== S.session) return;
      if (err.status === 401) return handleError(err, "");
      if (img()) { img().classList.add("broken"); img().title = `Thumbnail unavailable: ${describe(err)}`; }
    }
  }

  function dropThumb(id) {
    if (S.thumbs.has(id) && S.thumbs.get(id).startsWith("blob:")) URL.revokeObjectURL(S.thumbs.get(id));
    S.thumbs.delete(id);
  }

  /* ------------------------------------------------------------ uploads */

  function addFiles(fileList) {
    const frag = document.createDocumentFragment();   // newest batch on top, in chosen order
    for (const file of Array.from(fileList || [])) {
      const li = el("li", "upload", null, { data: { file: file.name, state: "uploading" } });
      const prog = el("progress", "upload-progress", null, { max: 1 });   // no value = indeterminate
      const msg = el("span", "upload-msg", "waiting…");
      li.append(el("span", "upload-name", file.name, { title: file.name }),
        el("span", "upload-size", fmtSize(file.size)), prog, msg);
      frag.append(li);
      uploads.add(() => upload({ file, li, prog, msg }));
    }
    $("uploads").prepend(frag);
    trimUploads();
  }

  function trimUploads() {
    const finished = [...$("uploads").children].filter((li) => li.dataset.state !== "uploading");
    for (const li of finished.slice(MAX_UPLOAD_ENTRIES)) li.remove();
  }

  /** One upload via XHR (fetch has no upload progress). Always resolves. */
  function upload(u) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      const finish = () => { S.xhrs.delete(xhr); resolve(); };
      S.xhrs.add(xhr);
      u.prog.max = u.file.size || 1;
      u.prog.value = 0;
      u.msg.textContent = "uploading…";
      xhr.upload.onprogress = (e) => {
        if (!e.lengthComputable) return;
        u.prog.max = e.total || 1;
        u.prog.value = e.loaded;
        u.msg.textContent = e.loaded >= e.total ? "processing…" : `${Math.floor((100 * e.loaded) / (e.total || 1))}%`;
      };
      xhr.onload = () => {
        finish();
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
        if (xhr.status >= 200 && xhr.status < 300 && body && typeof body.id === "string") return uploadDone(u, body);
        const err = errorFrom(xhr.status, body, xhr.getResponseHeader("Retry-After"));
        uploadFailed(u, err);
        if (xhr.status === 401) handleError(err, "");
      };
      xhr.onerror = xhr.ontimeout = () => { finish(); uploadFailed(u, networkError("the upload did not reach the server")); };
      xhr.onabort = finish;
      try {
        xhr.open("POST", "/api/v1/job");
        xhr.setRequestHeader("Authorization", `Bearer ${S.token}`);
        xhr.setRequestHeader("Content-Type", u.file.type || "application/octet-stream");
        xhr.send(u.file);
      } catch (err) {
        finish();
        uploadFailed(u, new ApiError(0, "Upload failed", String(err && err.message)));
      }
    });
  }

  function uploadDone(u, body) {
    Object.assign(u.li.dataset, { state: "done", jobId: body.id });
    u.prog.value = u.prog.max;
    u.msg.textContent = `job ${short(body.id)}`;
    u.msg.title = body.id;
    trimUploads();
    // Show the job at once; the stream's events replace this provisional copy.
    if (!S.rows.has(body.id)) {
      upsertJob({
        id: body.id, status: body.status || "QUEUED", attempts: 0, payload_size: u.file.size,
        content_type: u.file.type, created_at: new Date().toISOString(), updated_at: "",
      });
    }
  }

  function uploadFailed(u, err) {
    u.li.dataset.state = "error";
    u.prog.value = 0;
    u.msg.textContent = u.msg.title = describe(err);
    trimUploads();
  }

  /* --------------------------------------------------------- live stream */

  function setLive(state) {
    $("live").dataset.state = state;
    $("live").querySelector(".live-label").textContent =
      { connected: "Live", reconnecting: "Reconnecting…", offline: "Offline" }[state] || state;
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  /** Keep the tenant event stream open for this session, reconnecting with backoff. */
  async function runStream(session) {
    let delay = BACKOFF_MIN_MS, failures = 0;
    while (session === S.session) {
      const ctl = new AbortController();
      S.stream = ctl;
      let idle = 0, openedAt = 0;
      const kick = () => { clearTimeout(idle); idle = setTimeout(() => ctl.abort(), STREAM_IDLE_MS); };
      try {
        kick();
        const res = await request("/api/v1/jobs/events", { accept: "text/event-stream", signal: ctl.signal });
        if (!res.body) throw networkError("no stream body");
        openedAt = Date.now();
        failures = 0;
        setLive("connected");
        reloadList();   // anything may have changed while we were not listening
        await readSse(res.body, kick, onStreamEvent);
      } catch (err) {
        // A 401 ends the session; network errors, idle aborts and ends fall through to reconnect.
        if (err && err.status === 401 && session === S.session) { clearTimeout(idle); return handleError(err, ""); }
      }
      clearTimeout(idle);
      if (session !== S.session) return;
      if (openedAt && Date.now() - openedAt > STABLE_STREAM_MS) delay = BACKOFF_MIN_MS;
      failures++;
      setLive(failures >= 4 || !navigator.onLine ? "offline" : "reconnecting");
      await sleep(delay);
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    }
  }

  /** Minimal text/event-stream parser: `event:` and `data:` fields, `:` comments. */
  async function readSse(body, onActivity, onEvent) {
    const reader = body.getReader(), decoder = new TextDecoder();
    let buf = "", type = "", data = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        onActivity();
        buf += decoder.decode(value, { stream: true });
        // A trailing \r may be the first half of \r\n: keep it for the next chunk.
        const cut = buf.endsWith("\r") ? buf.length - 1 : buf.length;
        const lines = buf.slice(0, cut).split(/\r\n|\r|\n/);
        buf = lines.pop() + buf.slice(cut);
        for (const line of lines) {
          if (line === "") {                    // blank line: dispatch the event
            if (data.length) onEvent(type || "message", data.join("\n"));
            type = "";
            data = [];
          } else if (!line.startsWith(":")) {   // ":" lines are heartbeats
            const i = line.indexOf(":");
            const field = i < 0 ? line : line.slice(0, i);
            const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
            if (field === "event") type = val;
            else if (field === "data") data.push(val);
          }
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  function onStreamEvent(type, data) {
    if (type === "resync") return reloadList();
    if (type !== "status") return;
    try { upsertJob(JSON.parse(data)); } catch (_) { /* ignore a malformed event */ }
  }

  /* -------------------------------------------------------------- stats */

  async function pollStats(session) {
    try {
      const s = await api("/api/v1/stats");
      if (session !== S.session) return;
      S.statsFailing = false;
      renderStats(s);
    } catch (err) {
      if (session !== S.session) return;
      if (err.status === 401) return handleError(err, "");
      if (!S.statsFailing) toast(`Stats unavailable: ${describe(err)}`);   // once, not every 5 s
      S.statsFailing = true;
    }
    S.statsTimer = setTimeout(() => pollStats(session), STATS_EVERY_MS);
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

  /* -------------------------------------------------------------- toast */

  function toast(message, kind = "error") {
    const box = $("toast");
    for (const t of box.children) if (t.dataset.msg === message) return;   // no duplicates
    const item = el("div", `toast-item toast-${kind}`, null, { data: { msg: message } });
    item.setAttribute("role", kind === "error" ? "alert" : "status");
    const close = el("button", "toast-close", "×", { type: "button" });
    close.setAttribute("aria-label", "Dismiss");
    item.append(el("span", "toast-text", message), close);
    box.append(item);
    while (box.children.length > 4) box.firstElementChild.remove();
    setTimeout(() => item.remove(), 7000);
  }

  /* --------------------------------------------------------------- wire */

  function wire() {
    const on = (id, type, fn) => $(id).addEventListener(type, fn);
    on("token-form", "submit", (e) => {
      e.preventDefault();
      const token = $("token").value.trim();
      if (token) signIn(token); else $("token-error").textContent = "Please paste a token.";
    });
    // Ctrl/Cmd+Enter submits from the textarea, where Enter is a newline.
    on("token", "keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("token-form").requestSubmit();
    });
    on("sign-out", "click", () => signOut(""));
    on("status-filter", "change", () => { clearList(); reloadList(); });
    on("more", "click", loadMore);
    on("jobs", "click", (e) => {
      const btn = e.target.closest("button.cancel"), li = btn && btn.closest(".job");
      if (li && !btn.disabled) cancelJob(li.dataset.jobId, btn);
    });
    on("toast", "click", (e) => {
      if (e.target.closest(".toast-close")) e.target.closest(".toast-item").remove();
    });
    on("file-input", "change", () => {
      const input = $("file-input"), files = Array.from(input.files || []);
      input.value = "";   // so choosing the same file again fires "change" again
      addFiles(files);
    });

    const zone = $("drop-zone");
    const hasFiles = (e) => !!e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
    const over = (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
      zone.classList.add("dragover");
    };
    on("drop-zone", "dragenter", over);
    on("drop-zone", "dragover", over);
    on("drop-zone", "dragleave", (e) => { if (!zone.contains(e.relatedTarget)) zone.classList.remove("dragover"); });
    on("drop-zone", "drop", (e) => {
      e.preventDefault();
      zone.classList.remove("dragover");
      if (S.token) addFiles(e.dataTransfer.files);
    });
    // A file dropped just outside the zone must not navigate away from the page.
    window.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
    window.addEventListener("drop", (e) => { if (hasFiles(e)) e.preventDefault(); });
    window.addEventListener("offline", () => { if (S.token) setLive("offline"); });
    // Last-resort net: surface unexpected failures as a toast, not a console error.
    window.addEventListener("unhandledrejection", (e) => {
      e.preventDefault();
      toast(`Unexpected error: ${describe(e.reason)}`);
    });
  }

  function boot() {
    wire();
    setSignedIn(false);
    setLive("offline");
    updateEmpty();
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
