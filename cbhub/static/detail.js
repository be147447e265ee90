// The delivery view: one callback and every request it received, latest first.

import { ApiError, api, apiKey, query, request } from "./api.js";
import { known, merge } from "./callbacks.js";
import { bodyKind, curlCommand, pairsTable, renderBody } from "./body.js";
import { clock, copyButton, errorText, fill, h, outcomeBadge, shortToken, statusBadge, timeLeft, timingBadges, toast } from "./dom.js";

const PAGE = 1000;
// The latest this many are shown: a callback posted to 100 000 times stays readable.
const KEEP = 1000;
const KIND_TEXT = { form: "Form fields", json: "JSON", xml: "XML", text: "Text", binary: "Binary", empty: "Empty" };

async function rawBytes(delivery) {
  const response = await request(`/v1/deliveries/${delivery.id}/body`);
  return new Uint8Array(await response.arrayBuffer());
}

// With a key, a plain link cannot authenticate: fetch it and hand it over as a download, never
// as a page of this origin.
async function downloadRaw(delivery) {
  const bytes = await rawBytes(delivery);
  const url = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
  const link = h("a", { href: url, download: `delivery-${delivery.id}.body` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// An expected set's progress, and the ids that have not arrived (the first 100).
function expectedProgress(callback) {
  const expected = callback.expected;
  if (!expected) return null;
  const left = expected.total - expected.arrived;
  const missing = expected.missing || [];
  return h(
    "section",
    { class: "expected" },
    h(
      "div",
      { class: "expected-row" },
      h("span", {}, `Expected: ${expected.arrived} of ${expected.total} arrived`),
      expected.unexpected ? h("span", { class: "muted" }, `${expected.unexpected} unexpected`) : null,
    ),
    h("progress", { max: expected.total, value: expected.arrived, "aria-label": "Expected ids arrived" }),
    left > 0 && missing.length
      ? h(
          "details",
          { open: true, class: "missing" },
          h("summary", {}, `Missing (${left})`),
          h("ul", {}, missing.map((id) => h("li", {}, h("code", {}, id)))),
          left > missing.length
            ? h("p", { class: "muted small-text" }, `The first ${missing.length}; GET /v1/callbacks/{token}/missing lists them all.`)
            : null,
        )
      : null,
  );
}

export class DeliveryView {
  constructor({ onClose, onCancel }) {
    this.el = document.getElementById("detail");
    this.onClose = onClose;
    this.onCancel = onCancel;
    this.token = null;
    this.deliveries = new Map(); // id -> delivery
    this.pending = null;
  }

  async show(token) {
    if (token === this.token && !this.pending) return;
    this.token = token;
    this.el.hidden = false;
    document.body.classList.add("with-detail");
    fill(this.el, h("p", { class: "muted loading" }, "Loading…"));
    await this.load();
  }

  reload() {
    if (this.token) return this.load();
  }

  hide() {
    this.token = null;
    this.pending = null;
    this.el.hidden = true;
    document.body.classList.remove("with-detail");
  }

  async load() {
    const token = this.token;
    const held = [];
    this.pending = held;
    const deliveries = new Map();
    try {
      merge(await api(`/v1/callbacks/${encodeURIComponent(token)}`));
      let after = 0;
      for (;;) {
        const found = await api("/v1/deliveries" + query({ token, after, limit: PAGE }));
        for (const delivery of found.deliveries) deliveries.set(delivery.id, delivery);
        for (const id of deliveries.keys()) {
          if (deliveries.size <= KEEP) break;
          deliveries.delete(id); // the oldest first: a Map keeps the order ids were added in
        }
        if (found.deliveries.length < PAGE || this.token !== token) break;
        after = found.next_after;
      }
    } catch (err) {
      if (this.token !== token) return;
      this.pending = null;
      const text = err instanceof ApiError && err.status === 404 ? "No callback has this token." : `Could not read it: ${err.message}`;
      fill(this.el, this.closeButton(), h("p", { class: "error" }, text));
      return;
    }
    if (this.token !== token || this.pending !== held) return;
    this.pending = null;
    this.deliveries = deliveries;
    for (const delivery of held) this.deliveries.set(delivery.id, delivery);
    this.render();
  }

  delivery(delivery) {
    if (delivery.token !== this.token) return;
    if (this.pending) {
      this.pending.push(delivery);
      return;
    }
    if (this.deliveries.has(delivery.id)) return;
    this.deliveries.set(delivery.id, delivery);
    this.render();
  }

  status(change) {
    if (change.token === this.token && !this.pending) this.render();
  }

  tick() {
    const left = this.el.querySelector(".time-left");
    const callback = known.get(this.token);
    if (left && callback) left.textContent = timeLeft(callback);
  }

  closeButton() {
    return h("button", { type: "button", class: "close", "aria-label": "Close", title: "Close", onclick: () => this.onClose() }, "×");
  }

  render() {
    const latestFirst = [...this.deliveries.values()].sort((a, b) => b.id - a.id);
    const list = latestFirst.length
      ? latestFirst.map((delivery) => this.card(delivery))
      : [
          h(
            "div",
            { class: "waiting" },
            h("span", { class: "pulse", "aria-hidden": "true" }),
            known.get(this.token)?.status === "pending"
              ? "Awaiting callback: what is sent to its URL appears here the moment it lands."
              : "Nothing was received.",
          ),
        ];
    const callback = known.get(this.token);
    const total = Math.max((callback?.deliveries || 0) + (callback?.late_deliveries || 0), latestFirst.length);
    fill(
      this.el,
      h("div", { class: "detail-head" }),
      h("h3", { class: "deliveries-title" }, "Deliveries ", h("span", { class: "count-pill" }, String(total))),
      callback?.settle != null && latestFirst.length
        ? h(
            "p",
            { class: "settle-note muted small-text" },
            callback.settled_at
              ? `Final: no newer delivery came for ${callback.settle}s.`
              : `Settling: the latest is final once no newer delivery comes for ${callback.settle}s.`,
          )
        : null,
      total > latestFirst.length ? h("p", { class: "muted small-text" }, `The latest ${latestFirst.length} are shown.`) : null,
      h("div", { class: "deliveries" }, list),
    );
    this.renderHead();
  }

  renderHead() {
    const head = this.el.querySelector(".detail-head");
    const callback = known.get(this.token);
    if (!head || !callback) return;
    const cancel =
      callback.status === "pending"
        ? h("button", { type: "button", class: "danger", onclick: () => this.onCancel(callback.token) }, "Cancel")
        : null;
    const url = h("input", { type: "text", readonly: true, class: "url", "aria-label": "Callback URL" });
    url.value = callback.callback_url;
    fill(
      head,
      h(
        "div",
        { class: "title-row" },
        h("h2", {}, callback.label || shortToken(callback.token)),
        statusBadge(callback.status),
        outcomeBadge(callback.outcome),
        timingBadges(callback),
        this.closeButton(),
      ),
      h(
        "dl",
        { class: "meta" },
        h("dt", {}, "Token"),
        h("dd", {}, h("code", {}, callback.token)),
        h("dt", {}, "Group"),
        h("dd", {}, callback.group ? h("a", { href: `#/groups/${encodeURIComponent(callback.group)}` }, callback.group) : "—"),
        h("dt", {}, "Created"),
        h("dd", {}, clock(callback.created_at)),
        h("dt", {}, "Expires"),
        h("dd", {}, clock(callback.expires_at), " ", h("span", { class: "muted" }, "(", h("span", { class: "time-left" }, timeLeft(callback)), " left)")),
        callback.outcome_rule ? [h("dt", {}, "Outcome rule"), h("dd", {}, h("code", {}, JSON.stringify(callback.outcome_rule)))] : null,
      ),
      expectedProgress(callback),
      callback.error ? errorBox(callback.error) : null,
      h(
        "div",
        { class: "url-row" },
        url,
        copyButton("Copy URL", () => callback.callback_url, (err) => toast(`Could not copy: ${err.message}`)),
        cancel,
      ),
    );
  }

  card(delivery) {
    const callback = known.get(this.token);
    const raw = `/v1/deliveries/${delivery.id}/body`;
    const rawLink = h(
      "a",
      {
        href: raw,
        target: "_blank",
        rel: "noopener noreferrer",
        class: "button small",
        onclick: (event) => {
          if (!apiKey()) return;
          event.preventDefault();
          downloadRaw(delivery).catch((err) => toast(`Could not fetch the raw body: ${err.message}`));
        },
      },
      "Raw body",
    );
    const curl = copyButton(
      "Copy as curl",
      async () => curlCommand(callback.callback_url, delivery, await rawBytes(delivery)),
      (err) => toast(`Could not copy: ${err.message}`),
    );
    const headerCount = Object.keys(delivery.headers || {}).length;
    const queryCount = Object.keys(delivery.query || {}).length;
    return h(
      "article",
      { class: "delivery", dataset: { id: delivery.id } },
      h(
        "header",
        {},
        h("span", { class: "method" }, delivery.method),
        delivery.late
          ? h("span", { class: "badge late", title: "It came after the callback closed: kept, but not its result." }, "Late")
          : null,
        outcomeBadge(delivery.outcome),
        (delivery.problems || []).length
          ? h("span", { class: "badge invalid", title: "It does not fit the callback's contract: kept, but never its result." }, "Invalid")
          : null,
        h("time", { datetime: delivery.received_at }, clock(delivery.received_at)),
        h("span", { class: "from" }, "from ", h("code", {}, delivery.remote_addr || "unknown")),
        h("span", { class: "actions" }, rawLink, curl),
      ),
      h(
        "div",
        { class: "facts" },
        h("span", {}, `#${delivery.id}`),
        h("span", {}, delivery.content_type || "no content type"),
        h("span", {}, `${delivery.size} bytes`),
        delivery.correlation_id ? h("span", {}, "correlation id ", h("code", {}, delivery.correlation_id)) : null,
      ),
      (delivery.problems || []).length
        ? h("ul", { class: "problems", "aria-label": "Contract problems" }, delivery.problems.map((problem) => h("li", {}, problem)))
        : null,
      delivery.error ? errorBox(delivery.error) : null,
      delivery.parse_error ? h("p", { class: "parse-error" }, "Parse error: ", delivery.parse_error) : null,
      h("section", { class: "body" }, h("h4", {}, "Body ", h("span", { class: "kind" }, KIND_TEXT[bodyKind(delivery)])), renderBody(delivery)),
      h(
        "details",
        { open: true },
        h("summary", {}, `Headers (${headerCount})`),
        pairsTable(delivery.headers || {}, ["Header", "Value"], "pairs headers"),
      ),
      queryCount
        ? h("details", { open: true }, h("summary", {}, `Query (${queryCount})`), pairsTable(delivery.query, ["Parameter", "Value"]))
        : h("p", { class: "muted small-text" }, "No query string."),
      answeredView(delivery.answered),
    );
  }
}

// What the sender was answered: a response spec's answer, or (null) cbhub's JSON receipt.
function answeredView(answered) {
  if (!answered) {
    return h("p", { class: "answered muted small-text" }, "Answered ", h("code", {}, "200"), " with cbhub's JSON receipt.");
  }
  const headerCount = Object.keys(answered.headers || {}).length;
  return h(
    "details",
    { open: true, class: "answered" },
    h(
      "summary",
      {},
      "Answered ",
      h("code", { class: "answered-status" }, String(answered.status)),
      " ",
      h("code", { class: "answered-type" }, answered.content_type),
      headerCount ? ` · ${headerCount} header${headerCount === 1 ? "" : "s"}` : "",
    ),
    answered.body
      ? h("pre", { class: "answered-body" }, answered.body)
      : h("p", { class: "muted small-text" }, "An empty body."),
    headerCount ? pairsTable(answered.headers, ["Header", "Value"], "pairs headers") : null,
  );
}

// What the sender said went wrong: its code and message, as text.
function errorBox(error) {
  return h(
    "p",
    { class: "error-box", role: "note" },
    h("strong", {}, "Error"),
    error.code ? [" ", h("code", {}, error.code)] : null,
    error.message ? [" ", h("span", { class: "message" }, error.message)] : null,
    !errorText(error) ? " (no code or message given)" : null,
  );
}
