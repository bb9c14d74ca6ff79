/* The page's small helpers: finding and making elements, formatting sizes and times,
 * and the toasts. Nothing here talks to the server.
 */

export const $ = (id) => document.getElementById(id);

/** A job id's first 8 characters, as the list shows it. */
export const short = (id) => id.slice(0, 8);

/** Element helper: tag, class list, text, then any extra properties/data-* ({ data: {...} }). */
export function el(tag, cls, text, props = {}) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  const { data, ...rest } = props;
  Object.assign(node, rest);
  Object.assign(node.dataset, data || {});
  return node;
}

/** "just now", "12 s ago", "3 min ago", "2 h ago", then the date. */
export function relTime(iso) {
  const ts = Date.parse(iso);
  if (!Number.isFinite(ts)) return "—";
  const s = Math.round((Date.now() - ts) / 1000);
  if (s < 3) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(ts).toLocaleDateString();
}

export function fmtSize(bytes) {
  if (!Number.isFinite(bytes)) return "—";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

/** A message in the corner for 7 s (the same one is not shown twice at once; 4 at most). */
export function toast(message, kind = "error") {
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
