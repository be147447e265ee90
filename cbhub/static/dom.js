// Building the page: elements from text only (never markup), times, the clipboard.

// h("td", {class: "x"}, "text", child): an element whose strings become text nodes, so
// whatever a callback carries is shown, never interpreted.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

// fill(el, ...children): el's children replaced, leaving out null, undefined and false as h()
// does (the DOM's own append would show them as the words "null" and "false").
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const STATUS_TEXT = {
  pending: "Awaiting callback",
  received: "Received",
  expired: "Expired",
  cancelled: "Cancelled",
};

export function statusBadge(status) {
  return h("span", { class: `badge s-${status}` }, STATUS_TEXT[status] || status);
}

// What a callback's timers say beside its status: "Overdue" (still pending when it was
// expected), and with a settle window, "Settling" until its latest delivery stayed the latest
// for the window, then "Final".
export function timingBadges(callback) {
  const badges = [];
  if (callback.overdue) {
    badges.push(h("span", { class: "badge overdue", title: `Still pending ${callback.expect_within}s after it was minted.` }, "Overdue"));
  }
  if (callback.settle != null && callback.deliveries > 0) {
    badges.push(
      callback.settled_at
        ? h("span", { class: "badge final", title: `No newer delivery came for ${callback.settle}s: the latest is final.` }, "Final")
        : h("span", { class: "badge settling", title: `Final once no newer delivery comes for ${callback.settle}s.` }, "Settling"),
    );
  }
  return badges;
}

// How a delivery went (its outcome), and how a callback looks in a group's grid: its result's
// outcome, else why it has none.
export const OUTCOME_TEXT = {
  ok: "OK",
  error: "Error",
  unknown: "Unknown",
  invalid: "Invalid",
  pending: "Pending",
  late: "Late",
  unanswered: "Unanswered",
};

export function outcomeBadge(outcome) {
  if (!outcome) return null;
  return h("span", { class: `badge o-${outcome}`, dataset: { outcome } }, OUTCOME_TEXT[outcome] || outcome);
}

// "12014: Invalid data extension"; "" when the sender said nothing.
export function errorText(error) {
  if (!error) return "";
  return [error.code, error.message].filter(Boolean).join(": ");
}

// "42s", "5m", "3h 12m", "2d 4h": short enough for a table cell.
export function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const hours = Math.floor(m / 60);
  if (hours < 24) return m % 60 ? `${hours}h ${m % 60}m` : `${hours}h`;
  const days = Math.floor(hours / 24);
  return hours % 24 ? `${days}d ${hours % 24}h` : `${days}d`;
}

export function age(callback, now = Date.now()) {
  return duration(now - Date.parse(callback.created_at));
}

// Time before a callback stops accepting deliveries; "—" once it accepts no more.
export function timeLeft(callback, now = Date.now()) {
  const left = Date.parse(callback.expires_at) - now;
  if (left <= 0 || callback.status === "expired" || callback.status === "cancelled") return "—";
  return duration(left);
}

export function clock(iso) {
  const when = new Date(iso);
  const day = when.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
  return `${day} ${when.toLocaleTimeString(undefined, { hour12: false })}.${String(when.getMilliseconds()).padStart(3, "0")}`;
}

export function shortToken(token) {
  return token.slice(0, 8) + "…";
}

// The Clipboard API exists only in secure contexts (https, localhost); a cbhub reached over
// plain http on another host still copies, the old way.
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = h("textarea", { readonly: true, class: "offscreen" });
  area.value = text;
  document.body.append(area);
  area.select();
  try {
    if (!document.execCommand("copy")) throw new Error("the browser refused to copy");
  } finally {
    area.remove();
  }
}

// A button that copies what `text()` gives and says so for a moment.
export function copyButton(label, text, onError) {
  const button = h("button", { type: "button", class: "small" }, label);
  button.addEventListener("click", async () => {
    try {
      await copyText(await text());
      button.textContent = "Copied";
      setTimeout(() => (button.textContent = label), 1500);
    } catch (err) {
      onError(err);
    }
  });
  return button;
}

let toastTimer = null;
export function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 6000);
}
