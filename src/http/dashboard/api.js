/* Talking to the ingress: the token and the session, requests and their errors, a
 * limiter for requests in parallel, and the reader of event streams.
 *
 * The API token travels only in the Authorization header (never in a URL), which is why
 * event streams are read with fetch() rather than EventSource.
 */

import { toast } from "./ui.js";

const TOKEN_KEY = "imagejobs.token";

/**
 * The signed-in token, and a number bumped on every sign-in and sign-out so that async
 * work started for an old session can tell it is stale.
 */
export const session = { token: null, id: 0 };

/** The token kept in this tab (sessionStorage), if any. */
export const savedToken = () => sessionStorage.getItem(TOKEN_KEY);
export const keepToken = (token) => sessionStorage.setItem(TOKEN_KEY, token);
export const forgetToken = () => sessionStorage.removeItem(TOKEN_KEY);

export class ApiError extends Error {
  constructor(status, message, details, retryAfter) {
    super(message);
    Object.assign(this, { status, details: details || "", retryAfter: retryAfter || "" });
  }
}

/** The API's error body (`{error, details}`) of a failed answer as an ApiError. */
export function errorFrom(status, body, retryAfter) {
  const message = (body && typeof body.error === "string" && body.error) || `HTTP ${status}`;
  return new ApiError(status, message, body && typeof body.details === "string" ? body.details : "", retryAfter);
}

export const networkError = (details) => new ApiError(0, "Network error", details);

/** One line for the user: the server's error, its details, and any Retry-After. */
export function describe(err) {
  if (!err) return "Unknown error";
  let text = err.message || String(err);
  if (err.details && err.details !== err.message) text += ` — ${err.details}`;
  if (err.retryAfter) text += ` (retry in ${err.retryAfter} s)`;
  return text;
}

/** fetch() with the token; throws ApiError for network failures (status 0) and non-2xx answers. */
export async function request(path, { method = "GET", token = session.token, accept = "application/json", signal, redirect = "follow" } = {}) {
  let res;
  try {
    res = await fetch(path, { method, signal, redirect, cache: "no-store", headers: { Authorization: `Bearer ${token}`, Accept: accept } });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw networkError("the server could not be reached");
  }
  if (res.type === "opaqueredirect") return res;   // redirect: "manual" asked to see it
  if (!res.ok) throw errorFrom(res.status, await res.json().catch(() => null), res.headers.get("Retry-After"));
  return res;
}

/** request() of a JSON answer ({} when the body is not JSON). */
export async function api(path, opts) {
  const res = await request(path, opts);
  return (await res.json().catch(() => null)) || {};
}

let unauthorized = () => {};

/** What to do when the server rejects the token (main.js: sign out with the message). */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

/** Common failure path: a 401 anywhere means the token is no good any more. */
export function handleError(err, what) {
  if (err && err.status === 401) unauthorized(`Your token was rejected: ${describe(err)}`);
  else toast(`${what}: ${describe(err)}`);
}

/** A tiny concurrency limiter for promise-returning tasks; clear() drops queued ones. */
export function pool(limit) {
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

/** Minimal text/event-stream parser: `event:` and `data:` fields, `:` comments. */
export async function readSse(body, onActivity, onEvent) {
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
