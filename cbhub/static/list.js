// The list of callbacks, newest first, filtered by group, label, status and correlation id.
//
// A read of the list happens with the live stream already open; events that arrive during
// the read are applied after it, on top of what it returned (subscribe, then read).

import { api, query } from "./api.js";
import { known, merge, newestFirst } from "./callbacks.js";
import { age, clear, errorText, h, outcomeBadge, shortToken, statusBadge, timeLeft, timingBadges, toast } from "./dom.js";

const PAGE = 50;

export class CallbackList {
  constructor({ onSelect, onCancel }) {
    this.rowsEl = document.getElementById("rows");
    this.emptyEl = document.getElementById("empty");
    this.olderEl = document.getElementById("older");
    this.onSelect = onSelect;
    this.onCancel = onCancel;
    this.filters = {};
    this.order = []; // tokens shown, newest first
    this.rows = new Map(); // token -> <tr>
    this.nextBefore = null;
    this.matchingCorrelation = new Set(); // tokens that received the filtered correlation id
    this.pending = null; // events held back while a read is running
    this.selected = null;
    this.renderQueued = false;
    this.olderEl.addEventListener("click", () => this.loadOlder());
  }

  setFilters(filters) {
    this.filters = filters;
    return this.reload();
  }

  // Read the first page again and show it, with what arrived meanwhile applied on top.
  async reload() {
    const held = [];
    this.pending = held;
    let page;
    try {
      page = await api("/v1/callbacks" + query({ ...this.filters, limit: PAGE }));
    } catch (err) {
      if (this.pending === held) this.pending = null;
      toast(`Could not read the callbacks: ${err.message}`);
      return;
    }
    if (this.pending !== held) return; // a newer reload superseded this one
    this.pending = null;
    this.matchingCorrelation.clear();
    this.order = [];
    this.add(page);
    for (const [kind, payload] of held) this.apply(kind, payload);
    this.render();
  }

  async loadOlder() {
    if (this.nextBefore === null) return;
    try {
      const page = await api("/v1/callbacks" + query({ ...this.filters, limit: PAGE, before: this.nextBefore }));
      this.add(page);
      this.render();
    } catch (err) {
      toast(`Could not read older callbacks: ${err.message}`);
    }
  }

  add(page) {
    for (const callback of page.callbacks) {
      const merged = merge(callback);
      if (this.filters.correlation_id) this.matchingCorrelation.add(merged.token);
      if (!this.order.includes(merged.token) && this.matches(merged)) this.order.push(merged.token);
    }
    this.nextBefore = page.next_before;
  }

  matches(callback) {
    const f = this.filters;
    return (
      (!f.group || callback.group === f.group) &&
      (!f.label || callback.label === f.label) &&
      (!f.status || callback.status === f.status) &&
      (!f.outcome || callback.outcome === f.outcome) &&
      (!f.correlation_id || this.matchingCorrelation.has(callback.token))
    );
  }

  // Stream events. The shared state (callbacks.js) is updated by the page first.
  created(callback) {
    this.apply("created", callback);
  }

  delivery(delivery) {
    this.apply("delivery", delivery);
  }

  status(change) {
    this.apply("status", change);
  }

  apply(kind, payload) {
    if (this.pending) {
      this.pending.push([kind, payload]);
      return;
    }
    const token = payload.token;
    const correlated =
      kind === "delivery" && Boolean(this.filters.correlation_id) && payload.correlation_id === this.filters.correlation_id;
    if (correlated) this.matchingCorrelation.add(token);
    const callback = known.get(token);
    const shown = this.order.includes(token);
    if (callback && shown) {
      if (this.matches(callback)) this.update(token);
      else this.remove(token);
    } else if (callback && kind === "created") {
      if (this.matches(callback)) this.insert(callback);
    } else if (!shown && (correlated || (kind !== "created" && (this.filters.status || this.filters.outcome)))) {
      // It may just have entered the filtered view: by its new status or outcome, or the
      // correlation id.
      // (A group or a label never changes: a callback outside the view stays outside.)
      this.fetchAndInsert(token);
    }
  }

  anyFilter() {
    return Object.values(this.filters).some(Boolean);
  }

  async fetchAndInsert(token) {
    let callback;
    try {
      callback = merge(await api(`/v1/callbacks/${encodeURIComponent(token)}`));
    } catch {
      return; // gone, or not this key's
    }
    if (this.order.includes(token) || !this.matches(callback)) return;
    const oldest = this.order.length ? known.get(this.order[this.order.length - 1]) : null;
    // Within the pages read: older ones appear when the user asks for them.
    if (this.nextBefore !== null && oldest && newestFirst(callback, oldest) > 0) return;
    this.insert(callback);
  }

  insert(callback) {
    if (this.order.includes(callback.token)) return;
    let at = this.order.findIndex((token) => newestFirst(callback, known.get(token)) < 0);
    if (at < 0) at = this.order.length;
    this.order.splice(at, 0, callback.token);
    this.renderSoon();
  }

  remove(token) {
    this.order = this.order.filter((t) => t !== token);
    this.renderSoon();
  }

  update(token) {
    const row = this.rows.get(token);
    if (row && !this.renderQueued) row.replaceWith(this.row(known.get(token)));
  }

  // A batch of 500 minted at once is drawn once, not 500 times.
  renderSoon() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => this.render());
  }

  select(token) {
    this.selected = token;
    for (const [t, row] of this.rows) row.classList.toggle("selected", t === token);
  }

  row(callback) {
    const name = callback.label
      ? h("span", { class: "label", title: callback.label }, callback.label)
      : h("code", { class: "token", title: "token" }, shortToken(callback.token));
    const group = callback.group
      ? h("a", { class: "group-link", title: callback.group, href: `#/groups/${encodeURIComponent(callback.group)}` }, callback.group)
      : h("span", { class: "muted" }, "—");
    const cancel =
      callback.status === "pending"
        ? h("button", { type: "button", class: "small danger", onclick: (e) => (e.stopPropagation(), this.onCancel(callback.token)) }, "Cancel")
        : null;
    const tr = h(
      "tr",
      {
        class: callback.token === this.selected ? "selected" : null,
        dataset: { token: callback.token },
        tabindex: 0,
        onclick: (e) => {
          if (!e.target.closest("a, button")) this.onSelect(callback.token);
        },
        onkeydown: (e) => {
          if (e.key === "Enter") this.onSelect(callback.token);
        },
      },
      h("td", { class: "name" }, name),
      h("td", { class: "group" }, group),
      h("td", { class: "age num" }, age(callback)),
      h("td", { class: "left num" }, timeLeft(callback)),
      h("td", { class: "status" }, statusBadge(callback.status), timingBadges(callback)),
      h(
        "td",
        { class: "outcome", title: errorText(callback.error) || null },
        outcomeBadge(callback.outcome),
        errorText(callback.error) ? [" ", h("span", { class: "error-text" }, errorText(callback.error))] : null,
      ),
      h("td", { class: "actions" }, cancel),
    );
    this.rows.set(callback.token, tr);
    return tr;
  }

  render() {
    this.renderQueued = false;
    this.rows.clear();
    clear(this.rowsEl).append(...this.order.map((token) => this.row(known.get(token))));
    this.emptyEl.hidden = this.order.length > 0;
    this.emptyEl.classList.toggle("filtered", this.anyFilter());
    this.olderEl.hidden = this.nextBefore === null;
  }

  // Once a second: ages and times left move on.
  tick() {
    const now = Date.now();
    for (const [token, row] of this.rows) {
      const callback = known.get(token);
      row.querySelector(".age").textContent = age(callback, now);
      row.querySelector(".left").textContent = timeLeft(callback, now);
    }
  }
}
