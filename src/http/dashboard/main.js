/* imagejobs dashboard: native ES modules, no build step. This one signs in and out and
 * wires the page's controls; the others hold the rest:
 *
 *   api.js      the token and session, requests and errors, the event-stream reader
 *   jobs.js     the job list, thumbnails, cancelling
 *   uploads.js  uploads from the drop zone
 *   live.js     the caller's event stream and the "Live" indicator
 *   stats.js    the figure cards
 *   ui.js       element helpers, formats, toasts
 *
 * The page is served under a strict CSP (script-src/style-src 'self'), so every
 * behaviour lives in these files and every style in style.css: no inline handlers, no
 * style attributes. The API token travels only in the Authorization header.
 */

import { session, api, describe, savedToken, keepToken, forgetToken, onUnauthorized } from "./api.js";
import { listUrl, replaceList, reloadList, loadMore, clearList, resetJobs, cancelJob, refreshTimes, updateEmpty } from "./jobs.js";
import { runStream, stopStream, setLive } from "./live.js";
import { startStats, stopStats } from "./stats.js";
import { addFiles, abortUploads } from "./uploads.js";
import { $, toast } from "./ui.js";

let clockTimer = 0;

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
    if (err.status === 401) forgetToken();
    else $("token").value = token;
    const prefix = err.status === 401 ? "Token rejected" : "Could not verify the token";
    $("token-error").textContent = `${prefix}: ${describe(err)}`;
  } finally {
    btn.disabled = false;
    btn.textContent = "Continue";
  }
}

function enterApp(token, page) {
  session.token = token;
  const id = ++session.id;
  keepToken(token);
  $("token").value = "";
  setSignedIn(true);
  replaceList(page);
  runStream(id);
  startStats(id);
  clockTimer = setInterval(refreshTimes, 1000);
}

/** Forget the token and everything derived from it; back to the form. */
function signOut(message) {
  session.id++;
  session.token = null;
  forgetToken();
  stopStream();
  stopStats();
  clearInterval(clockTimer);
  abortUploads();
  resetJobs();
  setLive("offline");
  setSignedIn(false);
  $("token-error").textContent = message || "";
  $("token").focus();
}

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
    if (session.token) addFiles(e.dataTransfer.files);
  });
  // A file dropped just outside the zone must not navigate away from the page.
  window.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  window.addEventListener("drop", (e) => { if (hasFiles(e)) e.preventDefault(); });
  window.addEventListener("offline", () => { if (session.token) setLive("offline"); });
  // Last-resort net: surface unexpected failures as a toast, not a console error.
  window.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    toast(`Unexpected error: ${describe(e.reason)}`);
  });
}

function boot() {
  onUnauthorized(signOut);
  wire();
  setSignedIn(false);
  setLive("offline");
  updateEmpty();
  const saved = savedToken();
  if (saved) signIn(saved);
}

// A module script runs once the document is parsed (it is deferred); the check keeps
// that true should the tag ever become async.
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
else boot();
