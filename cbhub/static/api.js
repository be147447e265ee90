// The client API, as this page uses it, and the API key when the server asks for one.
//
// The key lives in sessionStorage (this tab only; never a cookie, never the address bar). It
// goes out as "Authorization: Bearer"; an EventSource cannot send headers, so the event stream
// carries it as ?access_token=, which the server accepts on event-stream requests only.

const KEY_ITEM = "cbhub.apiKey";
const keyListeners = [];
const promptListeners = [];
let asking = null;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM);
}

export function onKeyChange(listener) {
  keyListeners.push(listener);
}

export function onKeyPrompt(listener) {
  promptListeners.push(listener);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_ITEM);
}

// Ask once, however many requests were refused meanwhile: they all wait for the same answer.
function askForKey(refused) {
  if (!asking) {
    asking = new Promise((resolve) => {
      const dialog = document.getElementById("key-dialog");
      const form = document.getElementById("key-form");
      const input = document.getElementById("key-input");
      const error = document.getElementById("key-error");
      error.textContent = refused ? "The server refused that key. Try another." : "";
      error.hidden = !refused;
      input.value = "";
      const submit = (event) => {
        event.preventDefault();
        const key = input.value.trim();
        if (!key) return;
        form.removeEventListener("submit", submit);
        sessionStorage.setItem(KEY_ITEM, key);
        dialog.close();
        asking = null;
        resolve(key);
        for (const listener of keyListeners) listener(key);
      };
      form.addEventListener("submit", submit);
      dialog.addEventListener("cancel", (event) => event.preventDefault()); // nothing works without one
      if (!dialog.open) dialog.showModal();
      input.focus();
      for (const listener of promptListeners) listener();
    });
  }
  return asking;
}

async function errorOf(response) {
  try {
    const { error } = await response.json();
    return new ApiError(response.status, error.code, error.message);
  } catch {
    return new ApiError(response.status, `http_${response.status}`, response.statusText);
  }
}

// fetch() with the key; a 401 asks for a key and tries again. Other errors throw ApiError.
export async function request(path, { method = "GET", json } = {}) {
  for (;;) {
    const key = apiKey();
    const headers = {};
    if (key) headers.Authorization = `Bearer ${key}`;
    if (json !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: json === undefined ? undefined : JSON.stringify(json),
      cache: "no-store",
    });
    if (response.status === 401) {
      await askForKey(Boolean(key));
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

export async function api(path, options) {
  return (await request(path, options)).json();
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export function eventsUrl(after) {
  return "/v1/events" + query({ after, access_token: apiKey() });
}

// Called when the event stream failed outright: a cheap request that asks for a key if that
// is why.
export async function checkAccess() {
  await request("/v1/callbacks?limit=1");
}
