// A delivery's body the way a person reads it, and the curl command that sends it again.
// Everything here comes from a third party: it only ever becomes text nodes.

import { h } from "./dom.js";

const FORM = "application/x-www-form-urlencoded";

function kindOf(delivery) {
  const type = (delivery.content_type || "").toLowerCase();
  const body = delivery.body;
  if (body === null || body === undefined) return delivery.body_base64 ? "binary" : "empty";
  if (type.startsWith(FORM) && typeof body === "object" && !Array.isArray(body)) return "form";
  if (typeof body !== "string") return "json";
  if (body === "") return "empty";
  if (type.includes("xml") || (!type.includes("html") && looksLikeXml(body))) return "xml";
  return "text";
}

export function looksLikeXml(text) {
  const t = text.trim();
  return t.startsWith("<") && t.endsWith(">");
}

// Indents XML by its tags; an element holding only text stays on one line. Works on the text
// as it came (no parser that could load or run anything); a malformed document is indented as
// far as its tags go.
export function indentXml(xml) {
  const tokens = xml.trim().match(/<!\[CDATA\[[\s\S]*?\]\]>|<!--[\s\S]*?-->|<[^>]+>|[^<]+/g) || [];
  const lines = [];
  let depth = 0;
  const pad = () => "  ".repeat(depth);
  const isOpen = (t) => t && t.startsWith("<") && !/^<[/?!]/.test(t) && !t.endsWith("/>");
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i];
    if (!token.startsWith("<")) {
      if (token.trim()) lines.push(pad() + token.trim());
    } else if (token.startsWith("</")) {
      depth = Math.max(0, depth - 1);
      lines.push(pad() + token);
    } else if (isOpen(token)) {
      const next = tokens[i + 1];
      const after = tokens[i + 2];
      if (next && !next.startsWith("<") && after && after.startsWith("</")) {
        lines.push(pad() + token + next.trim() + after);
        i += 2;
      } else if (next && next.startsWith("</")) {
        lines.push(pad() + token + next);
        i += 1;
      } else {
        lines.push(pad() + token);
        depth += 1;
      }
    } else {
      lines.push(pad() + token);
    }
  }
  return lines.join("\n");
}

// JSON with its strings, numbers and literals in spans, for colour.
function jsonView(value) {
  const text = JSON.stringify(value, null, 2);
  const pre = h("pre", { class: "code json" });
  const pattern = /("(?:\\.|[^"\\])*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    pre.append(text.slice(last, match.index));
    if (match[1]) {
      pre.append(h("span", { class: match[2] ? "j-key" : "j-str" }, match[1]));
      if (match[2]) pre.append(match[2]);
    } else if (match[3]) pre.append(h("span", { class: "j-lit" }, match[3]));
    else pre.append(h("span", { class: "j-num" }, match[4]));
    last = match.index + match[0].length;
  }
  pre.append(text.slice(last));
  return pre;
}

function xmlView(text) {
  const pre = h("pre", { class: "code xml" });
  const pretty = indentXml(text);
  let last = 0;
  for (const match of pretty.matchAll(/<[^>]+>/g)) {
    pre.append(pretty.slice(last, match.index));
    pre.append(h("span", { class: "x-tag" }, match[0]));
    last = match.index + match[0].length;
  }
  pre.append(pretty.slice(last));
  return pre;
}

function valueCell(value) {
  if (Array.isArray(value)) return h("td", {}, value.map((v) => h("div", {}, String(v))));
  const text = String(value);
  if (text === "") return h("td", { class: "empty-value", title: "sent empty" });
  if (looksLikeXml(text)) return h("td", {}, xmlView(text));
  return h("td", {}, text);
}

// Two columns: field and value; what the mapping holds, in its order.
export function pairsTable(pairs, caption, className = "pairs") {
  return h(
    "table",
    { class: className },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, caption[0]), h("th", { scope: "col" }, caption[1]))),
    h(
      "tbody",
      {},
      Object.entries(pairs).map(([name, value]) => h("tr", {}, h("th", { scope: "row" }, name), valueCell(value))),
    ),
  );
}

export function renderBody(delivery) {
  switch (kindOf(delivery)) {
    case "form":
      return pairsTable(delivery.body, ["Field", "Value"], "pairs form-fields");
    case "json":
      return jsonView(delivery.body);
    case "xml":
      return xmlView(delivery.body);
    case "text":
      return h("pre", { class: "code" }, delivery.body);
    case "binary":
      return h("p", { class: "muted" }, `Binary body, ${delivery.size} bytes: open the raw body to see it.`);
    default:
      return h("p", { class: "muted" }, "No body.");
  }
}

export function bodyKind(delivery) {
  return kindOf(delivery);
}

// Request headers that curl sets itself, or that describe the connection, not the request.
const NOT_REPLAYED = new Set([
  "host",
  "content-length",
  "connection",
  "keep-alive",
  "transfer-encoding",
  "te",
  "upgrade",
  "expect",
  "accept-encoding",
]);

function shellQuote(text) {
  return "'" + text.replaceAll("'", "'\\''") + "'";
}

function queryString(query) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(query || {})) {
    for (const one of Array.isArray(value) ? value : [value]) search.append(name, one);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

function printable(bytes) {
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    return /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(text) ? null : text;
  } catch {
    return null;
  }
}

function base64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

// A shell command that sends the same request to the same URL: method, headers, query, body
// (the exact bytes, from the raw body).
export function curlCommand(callbackUrl, delivery, bytes) {
  const parts = ["curl", "-X", delivery.method, shellQuote(callbackUrl + queryString(delivery.query))];
  for (const [name, value] of Object.entries(delivery.headers || {})) {
    if (!NOT_REPLAYED.has(name.toLowerCase())) parts.push("-H", shellQuote(`${name}: ${value}`));
  }
  if (!bytes.length) return parts.join(" ");
  if (!Object.keys(delivery.headers || {}).some((name) => name.toLowerCase() === "content-type")) {
    parts.push("-H", shellQuote("Content-Type:")); // curl would otherwise add a form type
  }
  const text = printable(bytes);
  if (text !== null) return [...parts, "--data-binary", shellQuote(text)].join(" ");
  return `printf '%s' ${shellQuote(base64(bytes))} | base64 -d | ` + [...parts, "--data-binary", "@-"].join(" ");
}
