/* The caller's event stream (/api/v1/jobs/events): kept open while signed in and opened
 * again with backoff, its state shown by the "Live" indicator; every status event updates
 * the list in place and the figures soon after.
 */

import { session, request, readSse, networkError, handleError } from "./api.js";
import { reloadList, upsertJob } from "./jobs.js";
import { statsChanged } from "./stats.js";
import { $ } from "./ui.js";

const BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 10000;
const STREAM_IDLE_MS = 75000;    // no bytes (not even a heartbeat) for this long: reconnect
const STABLE_STREAM_MS = 5000;   // a stream that lived this long resets the backoff

let stream = null;               // AbortController of the open stream

export function setLive(state) {
  $("live").dataset.state = state;
  $("live").querySelector(".live-label").textContent =
    { connected: "Live", reconnecting: "Reconnecting…", offline: "Offline" }[state] || state;
}

/** Signed out: close the stream. */
export function stopStream() {
  if (stream) stream.abort();
  stream = null;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Keep the tenant event stream open for session `id`, reconnecting with backoff. */
export async function runStream(id) {
  let delay = BACKOFF_MIN_MS, failures = 0;
  while (id === session.id) {
    const ctl = new AbortController();
    stream = ctl;
    let idle = 0, openedAt = 0;
    const kick = () => { clearTimeout(idle); idle = setTimeout(() => ctl.abort(), STREAM_IDLE_MS); };
    try {
      kick();
      const res = await request("/api/v1/jobs/events", { accept: "text/event-stream", signal: ctl.signal });
      if (!res.body) throw networkError("no stream body");
      openedAt = Date.now();
      failures = 0;
      setLive("connected");
      reloadList();     // anything may have changed while we were not listening
      statsChanged();
      await readSse(res.body, kick, onStreamEvent);
    } catch (err) {
      // A 401 ends the session; network errors, idle aborts and ends fall through to reconnect.
      if (err && err.status === 401 && id === session.id) { clearTimeout(idle); return handleError(err, ""); }
    }
    clearTimeout(idle);
    if (id !== session.id) return;
    if (openedAt && Date.now() - openedAt > STABLE_STREAM_MS) delay = BACKOFF_MIN_MS;
    failures++;
    setLive(failures >= 4 || !navigator.onLine ? "offline" : "reconnecting");
    await sleep(delay);
    delay = Math.min(delay * 2, BACKOFF_MAX_MS);
  }
}

function onStreamEvent(type, data) {
  if (type === "resync") {
    reloadList();
    return statsChanged();
  }
  if (type !== "status") return;
  try { upsertJob(JSON.parse(data)); } catch (_) { return; }   // ignore a malformed event
  statsChanged();   // the job may have left the backlog, or joined the throughput
}
