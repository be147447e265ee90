// The group view: every callback of one group as a small cell coloured by how it went (its
// result's outcome, or pending, late, invalid, unanswered), with the counts and a summary line
// on top and the errors below, so that 500 callbacks of 500 asynchronous calls can be watched
// filling in, and the three that failed found at a glance.

import { api, query } from "./api.js";
import { gridState, known, merge } from "./callbacks.js";
import { OUTCOME_TEXT, STATUS_TEXT, clear, errorText, fill, h, shortToken, toast } from "./dom.js";

// The grid's states, in the order the summary line tells them.
const STATES = ["ok", "error", "unknown", "invalid", "pending", "late", "unanswered"];
const MAX_ERRORS = 100;

const PAGE = 500;
const MAX_PAGES = 40; // 20 000 cells: more than a screen can say anything with

export class GroupView {
  constructor({ onSelect }) {
    this.el = document.getElementById("group-view");
    this.nameEl = document.getElementById("group-name");
    this.countsEl = document.getElementById("group-counts");
    this.gridEl = document.getElementById("grid");
    this.summaryEl = document.getElementById("group-summary");
    this.errorsEl = document.getElementById("group-errors");
    this.showEl = document.getElementById("group-show");
    this.showEl.addEventListener("change", () => (this.gridEl.dataset.show = this.showEl.value));
    this.onSelect = onSelect;
    this.group = null;
    this.cells = new Map(); // token -> cell, oldest first
    this.pending = null;
    this.countQueued = false;
  }

  async show(group) {
    this.group = group;
    this.nameEl.textContent = group;
    clear(this.gridEl);
    clear(this.countsEl);
    clear(this.summaryEl);
    clear(this.errorsEl);
    this.cells = new Map();
    await this.load();
  }

  reload() {
    if (this.group !== null) return this.load();
  }

  hide() {
    this.group = null;
    this.pending = null;
  }

  async load() {
    const group = this.group;
    const held = [];
    this.pending = held;
    const tokens = [];
    try {
      let before;
      for (let page = 0; page < MAX_PAGES; page++) {
        const found = await api("/v1/callbacks" + query({ group, limit: PAGE, before }));
        for (const callback of found.callbacks) tokens.push(merge(callback).token);
        if (found.next_before === null) break;
        before = found.next_before;
      }
    } catch (err) {
      if (this.group === group) this.pending = null;
      toast(`Could not read the group: ${err.message}`);
      return;
    }
    if (this.group !== group || this.pending !== held) return;
    this.pending = null;
    this.cells = new Map();
    for (const token of tokens.reverse()) this.cells.set(token, this.cell(known.get(token)));
    for (const token of held) this.touch(token);
    fill(this.gridEl, ...this.cells.values());
    this.renderCounts();
  }

  // Stream events, after the shared state was updated.
  created(callback) {
    if (this.group !== null && callback.group === this.group) this.touch(callback.token);
  }

  changed(token) {
    if (this.group !== null) this.touch(token);
  }

  touch(token) {
    if (this.pending) {
      this.pending.push(token);
      return;
    }
    const callback = known.get(token);
    if (!callback || callback.group !== this.group) return;
    const cell = this.cell(callback);
    const old = this.cells.get(token);
    if (old) old.replaceWith(cell);
    else this.gridEl.append(cell);
    this.cells.set(token, cell);
    this.countSoon();
  }

  // Counted once per frame however many cells changed in it.
  countSoon() {
    if (this.countQueued) return;
    this.countQueued = true;
    requestAnimationFrame(() => {
      this.countQueued = false;
      if (this.group !== null) this.renderCounts();
    });
  }

  cell(callback) {
    const name = callback.label || shortToken(callback.token);
    const state = gridState(callback);
    const error = errorText(callback.error);
    const overdue = callback.overdue ? " (overdue)" : "";
    const text = `${name}: ${STATUS_TEXT[callback.status]}${overdue}, ${OUTCOME_TEXT[state]}${error ? ` (${error})` : ""}`;
    return h("button", {
      type: "button",
      // s-: its status; o-: how it went, which colours it.
      class: `cell s-${callback.status} o-${state}${callback.overdue ? " overdue" : ""}`,
      role: "listitem",
      title: text,
      "aria-label": text,
      dataset: { token: callback.token, status: callback.status, outcome: state },
      onclick: () => this.onSelect(callback.token),
    });
  }

  renderCounts() {
    const counts = { pending: 0, received: 0, expired: 0, cancelled: 0 };
    for (const token of this.cells.keys()) counts[known.get(token).status] += 1;
    const chip = (status, n, text) =>
      h("div", { class: `count s-${status}`, dataset: { status } }, h("span", { class: "n" }, String(n)), h("span", { class: "what" }, text));
    const done = this.cells.size - counts.pending;
    // Those still pending when expected (expect_within), whatever became of them since.
    const overdue = [...this.cells.keys()].filter((token) => known.get(token).overdue).length;
    fill(
      this.countsEl,
      chip("total", this.cells.size, "Total"),
      ...Object.entries(counts).map(([status, n]) => chip(status, n, STATUS_TEXT[status])),
      overdue ? chip("overdue", overdue, "Overdue") : null,
      h(
        "div",
        { class: "progress" },
        h("progress", { max: Math.max(1, this.cells.size), value: done, "aria-label": "Callbacks no longer awaited" }),
        h("span", {}, this.cells.size ? `${Math.round((100 * done) / this.cells.size)}% done` : "empty"),
      ),
    );
    this.renderSummary();
  }

  // "497 ok · 2 error · 1 pending", and the errors (code and message) below the grid.
  renderSummary() {
    const states = Object.fromEntries(STATES.map((state) => [state, 0]));
    const errors = [];
    for (const token of this.cells.keys()) {
      const callback = known.get(token);
      const state = gridState(callback);
      states[state] += 1;
      if (state === "error" && errors.length < MAX_ERRORS) errors.push(callback);
    }
    const parts = STATES.filter((state) => states[state]).map((state) =>
      h("span", { class: `part o-${state}`, dataset: { outcome: state } }, h("span", { class: "dot", "aria-hidden": "true" }), `${states[state]} ${state}`),
    );
    const separated = parts.flatMap((part, i) => (i ? [h("span", { class: "sep", "aria-hidden": "true" }, " · "), part] : [part]));
    fill(this.summaryEl, separated.length ? separated : "No callbacks.");
    if (!errors.length) {
      clear(this.errorsEl);
      return;
    }
    fill(
      this.errorsEl,
      h("h3", {}, "Errors ", h("span", { class: "count-pill" }, String(states.error))),
      h(
        "table",
        { class: "errors" },
        h("thead", {}, h("tr", {}, h("th", {}, "Callback"), h("th", {}, "Code"), h("th", {}, "Message"))),
        h(
          "tbody",
          {},
          errors.map((callback) =>
            h(
              "tr",
              { dataset: { token: callback.token }, tabindex: 0, onclick: () => this.onSelect(callback.token) },
              h(
                "td",
                { class: "name" },
                callback.label ? [callback.label, " ", h("code", { class: "muted" }, shortToken(callback.token))] : h("code", {}, shortToken(callback.token)),
              ),
              h("td", { class: "code" }, h("code", {}, callback.error?.code || "—")),
              h("td", { class: "message", title: callback.error?.message || "" }, callback.error?.message || "—"),
            ),
          ),
        ),
      ),
    );
  }
}
