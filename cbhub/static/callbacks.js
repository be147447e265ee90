// What the page knows of each callback, by token, whichever way it learnt it (a list read, a
// stream event, its own request). Reads and events may arrive in any order: a status never
// goes back (pending, then received, then expired or cancelled), so merging is idempotent.

const RANK = { pending: 0, received: 1, expired: 2, cancelled: 2 };

export const known = new Map();

export function merge(callback) {
  const { result, ...fields } = callback; // the latest body is the delivery view's business
  const old = known.get(fields.token);
  const merged = { ...old, ...fields };
  if (old && RANK[old.status] > RANK[fields.status]) merged.status = old.status;
  // A listing leaves an expected set's missing ids out: keep those read before.
  if (fields.expected && fields.expected.missing == null && old?.expected?.missing) {
    merged.expected = { ...fields.expected, missing: old.expected.missing };
  }
  if (old?.overdue) merged.overdue = true; // it never stops having been overdue
  known.set(merged.token, merged);
  return merged;
}

// A delivery turns a pending callback received, and its outcome and error become the
// callback's; a late one (it came after the callback closed) changes nothing but its count, and
// an invalid one (it does not fit the contract) is never the result. One with an expected set
// turns received only once the set is complete: the page reads it.
export function delivered(delivery) {
  const callback = known.get(delivery.token);
  if (!callback) return null;
  if (delivery.late) callback.late_deliveries = (callback.late_deliveries || 0) + 1;
  else if ((delivery.problems || []).length || delivery.outcome === "invalid") {
    callback.invalid_deliveries = (callback.invalid_deliveries || 0) + 1;
  } else {
    if (callback.status === "pending" && !callback.expected) callback.status = "received";
    callback.deliveries = Math.max(callback.deliveries || 0, 1);
    callback.settled_at = null; // a newer delivery: settling again (the latest wins)
    callback.outcome = delivery.outcome || "unknown";
    callback.error = delivery.error || null;
  }
  return callback;
}

// A timer's event: "overdue" (still pending when expected), or "settled" (the latest delivery
// stayed the latest for the settle window).
export function timerFired(kind, { token, settled_at }) {
  const callback = known.get(token);
  if (!callback) return null;
  if (kind === "overdue") callback.overdue = true;
  else callback.settled_at = settled_at;
  return callback;
}

// How a callback shows in a group's grid: its result's outcome (ok, error, unknown); without a
// result, invalid (only refused deliveries came), late (only after it closed), pending, or
// unanswered (it closed without one).
export function gridState(callback) {
  if (callback.outcome) return callback.outcome;
  if (callback.invalid_deliveries) return "invalid";
  if (callback.late_deliveries) return "late";
  return callback.status === "pending" ? "pending" : "unanswered";
}

export function statusChanged({ token, status }) {
  const callback = known.get(token);
  if (!callback) return null;
  if (RANK[status] >= RANK[callback.status]) callback.status = status;
  return callback;
}

export function newestFirst(a, b) {
  return Date.parse(b.created_at) - Date.parse(a.created_at);
}
