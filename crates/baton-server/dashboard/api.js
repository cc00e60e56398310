// The HTTP API as the dashboard uses it: JSON requests with the bearer token, and the live
// event stream read with fetch() (EventSource cannot send an Authorization header, and the
// token stays out of URLs), resumed with Last-Event-ID after a reconnect.

const TOKEN_KEY = "baton.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/**
 * Who the token says its holder is (`{ sub, role, exp }`), read from its payload for display
 * only: the server checks the signature and decides what the holder may do.
 */
export function tokenClaims() {
  const bearer = token();
  if (!bearer) return null;
  try {
    const payload = bearer.split(".")[1].replaceAll("-", "+").replaceAll("_", "/");
    return JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, "=")));
  } catch {
    return null;
  }
}

/** An error the API answered with: its status, its code and its message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra = {}) {
  const result = { ...extra };
  const bearer = token();
  if (bearer) result.authorization = `Bearer ${bearer}`;
  return result;
}

const listeners = { unauthorized: [] };

/** Called with the error whenever the API answers 401 (no token, or a bad or expired one). */
export function onUnauthorized(callback) {
  listeners.unauthorized.push(callback);
}

async function failure(response) {
  let code = `http_${response.status}`;
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch {
    // Not JSON: keep the status line.
  }
  const error = new ApiError(response.status, code, message);
  if (response.status === 401) listeners.unauthorized.forEach((callback) => callback(error));
  return error;
}

/**
 * Where an API path is, from the page's own address: the dashboard works behind a proxy that
 * serves it under a path prefix (`https://host/baton/`), as at the root. Outside a page (the
 * browser test reads this module in Node) the path as given.
 */
export function at(path) {
  if (typeof document === "undefined") return path;
  return new URL(path.replace(/^\//, ""), document.baseURI).href;
}

/** `method path` with an optional JSON body; the answer's JSON, or text for text answers. */
export async function request(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "content-type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(at(path), init);
  } catch (error) {
    throw new ApiError(0, "unreachable", `the server did not answer: ${error.message}`);
  }
  if (!response.ok) throw await failure(response);
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export const get = (path) => request("GET", path);
export const post = (path, body = {}) => request("POST", path, body);
export const put = (path, body) => request("PUT", path, body);
export const del = (path) => request("DELETE", path);

/** A query string from the entries of `params` that have a value. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/**
 * Follows `/events` from after `since`: calls `onEvent(event)` for each event in order, and
 * `onState("live" | "reconnecting" | "stopped", detail)` as the connection changes. Reconnects
 * by itself with backoff (0.5 s doubling to 15 s), resuming after the last event seen with
 * `Last-Event-ID`, so no event is missed or repeated. Returns a function that stops it.
 */
export function followEvents({ since, onEvent, onState }) {
  let lastId = since;
  let stopped = false;
  let controller = null;
  let delay = 500;

  async function connect() {
    while (!stopped) {
      controller = new AbortController();
      try {
        const extra = { accept: "text/event-stream" };
        if (lastId !== null && lastId !== undefined) extra["last-event-id"] = String(lastId);
        const response = await fetch(at("/events"), { headers: headers(extra), signal: controller.signal });
        if (!response.ok) {
          const error = await failure(response);
          if (response.status === 401 || response.status === 403) {
            onState("stopped", error.message);
            return;
          }
          throw error;
        }
        onState("live");
        await read(response.body);
      } catch (error) {
        if (stopped) return;
        onState("reconnecting", error.message);
      }
      if (stopped) return;
      onState("reconnecting", `reconnecting in ${Math.round(delay / 100) / 10} s`);
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 15000);
    }
  }

  async function read(body) {
    await readServerSentEvents(body, dispatch);
  }

  function dispatch(event) {
    let parsed;
    try {
      parsed = JSON.parse(event.data.join("\n"));
    } catch {
      return;
    }
    if (event.id !== null) lastId = Number(event.id);
    // Events flow again: the next drop is retried soon (a connection that drops before any
    // event keeps backing off).
    delay = 500;
    onEvent(parsed);
  }

  connect();
  return () => {
    stopped = true;
    if (controller) controller.abort();
  };
}

/**
 * Reads Server-Sent Events from `body` as the specification parses them — lines of
 * `field: value`, an event ends at an empty line, comments (`:`) keep the connection alive —
 * calling `onEvent({ id, type, data: [lines] })` for each. Resolves when the stream ends.
 */
export async function readServerSentEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { id: null, type: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
      if (line === "") {
        if (event.data.length > 0) onEvent(event);
        event = { id: null, type: "message", data: [] };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") event.id = value;
      else if (field === "event") event.type = value;
      else if (field === "data") event.data.push(value);
    }
  }
}

/**
 * Follows agent `name`'s log from its last `tailBytes`: `onLine(text)` for each line as it is
 * written, `onEnd(error?)` when the stream ends. Returns a function that stops it.
 */
export function followLog(name, tailBytes, onLine, onEnd) {
  const controller = new AbortController();
  (async () => {
    try {
      const path = `/agents/${encodeURIComponent(name)}/logs${query({ follow: true, tail_bytes: tailBytes })}`;
      const response = await fetch(at(path), { headers: headers({ accept: "text/event-stream" }), signal: controller.signal });
      if (!response.ok) throw await failure(response);
      await readServerSentEvents(response.body, (event) => onLine(event.data.join("\n")));
      onEnd();
    } catch (error) {
      if (!controller.signal.aborted) onEnd(error);
    }
  })();
  return () => controller.abort();
}
