// The live stream: every event the key may see, over one EventSource, resumed without a gap.
//
// The browser reconnects by itself after a drop and sends Last-Event-ID (the last delivery id),
// so the server replays the deliveries missed. When the browser gives up (the server answered
// with an error, e.g. 401 or 503) this reconnects itself with ?after= the last id. Creations,
// statuses and timers (settled, overdue) carry no id and are not replayed: after any reconnection `onOpen(true)` tells the
// page to read its lists again (rows are keyed by token, so nothing is doubled).

import { checkAccess, eventsUrl } from "./api.js";

const MAX_BACKOFF_MS = 10000;

export class LiveStream {
  constructor({ onOpen, onCreated, onDelivery, onStatus, onTimer, onState }) {
    this.handlers = { onOpen, onCreated, onDelivery, onStatus, onTimer, onState };
    this.lastId = null;
    this.source = null;
    this.everOpened = false;
    this.failures = 0;
    this.timer = null;
  }

  connect() {
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    const source = new EventSource(eventsUrl(this.lastId ?? undefined));
    this.source = source;
    const mine = (handler) => (event) => {
      if (source === this.source) handler(event);
    };
    source.addEventListener(
      "open",
      mine(() => {
        this.failures = 0;
        this.handlers.onState("live");
        const again = this.everOpened;
        this.everOpened = true;
        this.handlers.onOpen(again);
      }),
    );
    source.addEventListener("created", mine((e) => this.handlers.onCreated(JSON.parse(e.data))));
    source.addEventListener(
      "delivery",
      mine((e) => {
        const delivery = JSON.parse(e.data);
        this.lastId = Math.max(this.lastId ?? 0, delivery.id);
        this.handlers.onDelivery(delivery);
      }),
    );
    source.addEventListener("status", mine((e) => this.handlers.onStatus(JSON.parse(e.data))));
    for (const kind of ["settled", "overdue"]) {
      source.addEventListener(kind, mine((e) => this.handlers.onTimer(kind, JSON.parse(e.data))));
    }
    source.addEventListener(
      "error",
      mine(() => {
        this.handlers.onState("reconnecting");
        if (source.readyState === EventSource.CLOSED) this.retryLater();
      }),
    );
  }

  retryLater() {
    const delay = Math.min(500 * 2 ** this.failures, MAX_BACKOFF_MS);
    this.failures += 1;
    this.timer = setTimeout(async () => {
      try {
        await checkAccess(); // asks for a key if that is why the stream was refused
      } catch {
        // the server is away: try the stream again all the same
      }
      // A key given meanwhile may already have reconnected it.
      if (this.source.readyState === EventSource.CLOSED) this.connect();
    }, delay);
  }
}
