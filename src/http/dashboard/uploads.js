/* Uploads from the drop zone: one XHR per file (fetch has no upload progress), a few at a
 * time, each with its entry in the upload list; an accepted one shows its job in the
 * list at once.
 */

import { session, ApiError, errorFrom, networkError, describe, handleError, pool } from "./api.js";
import { hasJob, upsertJob } from "./jobs.js";
import { $, el, short, fmtSize } from "./ui.js";

const MAX_UPLOAD_ENTRIES = 40;   // finished upload entries kept on screen
const UPLOAD_CONCURRENCY = 4;

const uploads = pool(UPLOAD_CONCURRENCY);
const xhrs = new Set();          // uploads in flight, aborted on sign-out

export function addFiles(fileList) {
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

/** Signed out: drop the queued uploads, abort those in flight, clear their entries. */
export function abortUploads() {
  uploads.clear();
  for (const xhr of xhrs) xhr.abort();
  xhrs.clear();
  $("uploads").replaceChildren();
}

function trimUploads() {
  const finished = [...$("uploads").children].filter((li) => li.dataset.state !== "uploading");
  for (const li of finished.slice(MAX_UPLOAD_ENTRIES)) li.remove();
}

/** One upload via XHR. Always resolves. */
function upload(u) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    const finish = () => { xhrs.delete(xhr); resolve(); };
    xhrs.add(xhr);
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
      xhr.setRequestHeader("Authorization", `Bearer ${session.token}`);
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
  if (!hasJob(body.id)) {
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
