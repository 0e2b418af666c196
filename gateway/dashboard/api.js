// The gateway's API, same origin only. The session is an HttpOnly cookie (POST /api/v1/session):
// no script here ever holds the token, and no URL carries it. Errors are problem+json with a
// `code` and a `detail`; they become ApiError.

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(`${detail} (${code})`);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

// Called when a request says the session is over (401): app.js signs out and says why.
let sessionEnded = () => {};
export function onSessionEnded(handler) { sessionEnded = handler; }

export function url(path, params) {
  if (!params) return path;
  const entries = params instanceof URLSearchParams ? [...params] : Object.entries(params);
  const query = new URLSearchParams(entries.filter(([, value]) => value !== "" && value != null).map(([k, v]) => [k, String(v)]));
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

// api("/api/v1/events", {params, method, json, form, quiet}): quiet leaves a 401 to the caller.
export async function api(path, { params, method = "GET", json, form, quiet = false } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (form) {
    init.body = new URLSearchParams(form);
  }
  let response;
  try {
    response = await fetch(url(path, params), init);
  } catch {
    throw new ApiError(0, "unreachable", "the gateway did not answer: is it running, and is the network up?");
  }
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (response.ok) return body;
  const error = new ApiError(response.status, body?.code ?? `http_${response.status}`,
    body?.detail ?? (response.statusText || "request failed"));
  if (response.status === 401 && !quiet) sessionEnded(error);
  throw error;
}

// A path segment (a position's source, account or id may hold any character).
export const segment = (text) => encodeURIComponent(text);
