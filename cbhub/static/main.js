// The inspector page: wires the live stream to the list, the group view and the delivery view,
// and routes by the address's #fragment (#/, #/callbacks/TOKEN, #/groups/NAME).

import { api, apiKey, forgetKey, onKeyChange, onKeyPrompt } from "./api.js";
import { delivered, known, merge, statusChanged, timerFired } from "./callbacks.js";
import { DeliveryView } from "./detail.js";
import { copyText, toast } from "./dom.js";
import { GroupView } from "./group.js";
import { CallbackList } from "./list.js";
import { LiveStream } from "./stream.js";

const CONNECTION_TEXT = {
  connecting: "Connecting",
  live: "Live",
  reconnecting: "Reconnecting…",
  key: "API key needed",
};

const list = new CallbackList({ onSelect: (token) => open(token), onCancel: cancel });
const detail = new DeliveryView({ onClose: closeDetail, onCancel: cancel });
const group = new GroupView({ onSelect: (token) => open(token) });
let listLoaded = false;
let shownGroup = null;

function parseRoute() {
  const decode = (part) => {
    try {
      return decodeURIComponent(part);
    } catch {
      return part; // a hand-typed address with a stray %
    }
  };
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decode);
  const route = { group: null, token: null };
  for (let i = 0; i + 1 < parts.length; i += 2) {
    if (parts[i] === "groups") route.group = parts[i + 1];
    if (parts[i] === "callbacks") route.token = parts[i + 1];
  }
  return route;
}

function routeHash({ group: name, token }) {
  let hash = "#/";
  if (name !== null) hash += `groups/${encodeURIComponent(name)}/`;
  if (token !== null) hash += `callbacks/${encodeURIComponent(token)}`;
  return hash;
}

function open(token) {
  location.hash = routeHash({ group: parseRoute().group, token });
}

function closeDetail() {
  location.hash = routeHash({ group: parseRoute().group, token: null });
}

async function route() {
  const { group: name, token } = parseRoute();
  document.getElementById("list-view").hidden = name !== null;
  document.getElementById("group-view").hidden = name === null;
  if (name === null) {
    group.hide();
    shownGroup = null;
    if (!listLoaded) {
      listLoaded = true;
      list.reload();
    }
  } else if (name !== shownGroup) {
    shownGroup = name;
    group.show(name);
  }
  list.select(token);
  if (token === null) detail.hide();
  else detail.show(token);
}

async function cancel(token) {
  try {
    const callback = merge(await api(`/v1/callbacks/${encodeURIComponent(token)}`, { method: "DELETE" }));
    onStatus({ token, status: callback.status });
  } catch (err) {
    toast(`Could not cancel: ${err.message}`);
  }
}

// A callback with an expected set: read again (once for a burst of deliveries) to learn its
// progress, and whether the set is complete.
const reading = new Map();
function readSoon(token) {
  if (reading.has(token)) return;
  reading.set(
    token,
    setTimeout(async () => {
      try {
        const callback = merge(await api(`/v1/callbacks/${encodeURIComponent(token)}`));
        onStatus({ token, status: callback.status });
      } catch {
        // gone, or the server away: the next delivery or reconnection reads it again
      } finally {
        reading.delete(token);
      }
    }, 250),
  );
}

function onStatus(change) {
  statusChanged(change);
  list.status(change);
  group.changed(change.token);
  detail.status(change);
}

const stream = new LiveStream({
  // The first time: subscribed, so the lists can be read without missing what lands meanwhile.
  // After a reconnection: read again what has no event id to be replayed by (creations, statuses).
  onOpen(again) {
    if (!again) {
      route();
      return;
    }
    if (listLoaded) list.reload();
    group.reload();
    detail.reload();
  },
  onCreated(callback) {
    merge(callback);
    list.created(callback);
    group.created(callback);
  },
  onDelivery(delivery) {
    delivered(delivery);
    if (known.get(delivery.token)?.expected) readSoon(delivery.token);
    list.delivery(delivery);
    group.changed(delivery.token);
    detail.delivery(delivery);
  },
  onStatus,
  onTimer(kind, change) {
    // Redrawn as a status change is: the badges beside the status say it.
    if (timerFired(kind, change)) onStatus({ token: change.token, status: known.get(change.token).status });
  },
  onState: showConnection,
});

function showConnection(state) {
  const el = document.getElementById("connection");
  el.dataset.state = state;
  el.textContent = CONNECTION_TEXT[state];
}

function formFields(form) {
  const fields = {};
  for (const [name, value] of new FormData(form)) if (String(value).trim()) fields[name] = String(value).trim();
  return fields;
}

document.getElementById("create").addEventListener("submit", async (event) => {
  event.preventDefault();
  const { ttl, label, group: groupName } = formFields(event.target);
  const body = { ttl: Number(ttl) };
  if (label) body.label = label;
  if (groupName) body.group = groupName;
  try {
    const callback = merge(await api("/v1/callbacks", { method: "POST", json: body }));
    list.created(known.get(callback.token));
    group.created(callback);
    document.getElementById("created-url").value = callback.callback_url;
    document.getElementById("created").hidden = false;
    open(callback.token);
  } catch (err) {
    toast(`Could not create the callback: ${err.message}`);
  }
});

document.getElementById("copy-url").addEventListener("click", async (event) => {
  const button = event.currentTarget;
  try {
    await copyText(document.getElementById("created-url").value);
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  } catch (err) {
    toast(`Could not copy: ${err.message}`);
  }
});

const filters = document.getElementById("filters");
filters.addEventListener("submit", (event) => {
  event.preventDefault();
  listLoaded = true;
  list.setFilters(formFields(filters));
});
filters.elements.status.addEventListener("change", () => filters.requestSubmit());
filters.elements.outcome.addEventListener("change", () => filters.requestSubmit());

const forget = document.getElementById("forget-key");
forget.hidden = !apiKey();
forget.addEventListener("click", () => {
  forgetKey();
  location.reload();
});
onKeyPrompt(() => showConnection("key"));
onKeyChange(() => {
  forget.hidden = false;
  stream.connect();
});

// Before the stream first opens, a read could miss what lands meanwhile: the first open routes.
window.addEventListener("hashchange", () => stream.everOpened && route());
setInterval(() => {
  list.tick();
  detail.tick();
}, 1000);
stream.connect();
