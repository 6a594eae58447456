// The REST API, as the UI uses it. Errors are the server's {error, detail} as ApiError.

export class ApiError extends Error {
  constructor(status, code, detail, retryAfter = null) {
    super(detail);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

async function check(response) {
  if (response.ok) return response;
  let code = `http_${response.status}`;
  let detail = response.statusText || "request failed";
  try {
    const body = await response.json();
    code = body.error || code;
    detail = body.detail || detail;
  } catch {
    // not JSON: keep the status line
  }
  throw new ApiError(response.status, code, detail, response.headers.get("Retry-After"));
}

export async function getJSON(url) {
  return (await check(await fetch(url, { headers: { Accept: "application/json" } }))).json();
}

/** Keep a photo on the server for this edit session: {id, width, height}. */
export async function uploadImage(blob, name = "photo") {
  const form = new FormData();
  form.append("image", blob, name);
  return (await check(await fetch("/v1/images", { method: "POST", body: form }))).json();
}

export async function fetchImage(imageId) {
  return (await check(await fetch(`/v1/images/${encodeURIComponent(imageId)}`))).blob();
}

/** Queue a job on a stored image: {id, state, position}. */
export async function submitJob(imageId, maskBlob, model, settings) {
  const form = new FormData();
  form.append("image_id", imageId);
  form.append("mask", maskBlob, "mask.png");
  if (model) form.append("model", model);
  for (const [name, value] of Object.entries(settings)) form.append(name, String(value));
  return (await check(await fetch("/v1/jobs", { method: "POST", body: form }))).json();
}

export async function fetchResult(jobId) {
  return (await check(await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/result`))).blob();
}

export async function cancelJob(jobId) {
  await check(await fetch(`/v1/jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" }));
}

/**
 * Follow a job's server-sent events. `handlers` has one function per event name (queued,
 * running, step, done, error, cancelled), each given the event's data. The stream is closed
 * after a final event; returns a function that closes it early.
 */
export function followJob(jobId, handlers) {
  const source = new EventSource(`/v1/jobs/${encodeURIComponent(jobId)}/events`);
  const final = new Set(["done", "error", "cancelled"]);
  for (const name of ["queued", "running", "step", "done", "error", "cancelled"]) {
    source.addEventListener(name, (event) => {
      if (event.data === undefined) {
        // EventSource's own "error": a dropped connection, which it retries (resuming after
        // the last event it saw) unless the server refused it, e.g. the job is gone
        if (source.readyState === EventSource.CLOSED) handlers.lost?.();
        return;
      }
      if (final.has(name)) source.close();
      handlers[name]?.(JSON.parse(event.data));
    });
  }
  return () => source.close();
}
