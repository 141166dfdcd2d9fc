// The MegaSR web page: pick an image, see what it will become, queue it, follow the job,
// compare before and after, download. Plain browser JavaScript modules against the public v1
// API; no framework and no build step.

import { ApiError, api, apiKey, setApiKey } from "./api.js";
import { ProgressView } from "./progress.js";
import { downloadName, forgetAll, remember, renderRecent } from "./recent.js";
import { describeRequest, outputSize } from "./sizing.js";
import { CompareViewer } from "./viewer.js";

const POLL_MS = 500;
const ENGINE_REFRESH_MS = 3000; // while an engine is still loading
const ENDED = ["failed", "canceled", "expired"];
const TRANSIENT = [0, 429, 502, 503, 504]; // 0: no answer at all
const POLL_ATTEMPTS = 8; // about a minute of trying before giving up
const $ = (id) => document.getElementById(id);

const state = {
  file: null, // the File picked
  fileUrl: null, // its object URL: thumbnail, preview and the "before" side
  dims: null, // {width, height} when the browser could decode it
  busy: false, // from the upload until the job ends
  jobId: null, // the job being followed
  resultUrl: null,
  catalog: null, // GET /v1/engines
};

let progress;
let viewer;
const coarse = window.matchMedia("(pointer: coarse)");
const reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)");

// ---- choosing an image -------------------------------------------------------------------

function pick(file) {
  if (!file || state.busy) return;
  if (state.fileUrl) URL.revokeObjectURL(state.fileUrl);
  state.file = file;
  state.fileUrl = URL.createObjectURL(file);
  state.dims = null;
  $("thumb").src = state.fileUrl;
  $("thumb").hidden = false;
  $("drop-zone").classList.add("has-image");
  $("drop-text").textContent = file.name;
  $("preview-image").src = state.fileUrl;
  const probe = new Image();
  probe.onload = () => {
    state.dims = { width: probe.naturalWidth, height: probe.naturalHeight };
    updateSizes();
  };
  probe.onerror = () => updateSizes();
  probe.src = state.fileUrl;
  showStage("preview");
  updateSizes();
}

// Touch screens have nothing to drop and nowhere to click.
function dropText() {
  $("empty-text").textContent = coarse.matches
    ? "Choose an image above to start."
    : "Drop an image anywhere on this page, or paste one.";
  if (state.file) return;
  $("drop-text").textContent = coarse.matches
    ? "Tap to choose an image"
    : "Drop an image here or click to choose";
}

// {scale} or {width, height} from the size controls.
function sizeRequest() {
  const choice = document.querySelector("input[name=scale]:checked").value;
  if (choice !== "custom") return { scale: Number(choice) };
  const side = (id) => {
    const value = Number.parseInt($(id).value, 10);
    return value >= 1 && value <= 65535 ? value : null;
  };
  return { width: side("width"), height: side("height") };
}

function updateSizes() {
  const request = sizeRequest();
  const custom = !request.scale;
  $("custom-size").hidden = !custom;
  const valid = !custom || request.width || request.height;
  const file = state.file;
  const kib = file ? `${Math.max(1, Math.round(file.size / 1024)).toLocaleString()} KiB` : "";
  if (file && state.dims) {
    const { width, height } = state.dims;
    const [outWidth, outHeight] = valid ? outputSize(request, width, height) : [null, null];
    $("picked-info").textContent = `${width} × ${height} px · ${kib}`;
    $("output-size").textContent = valid ? `${outWidth} × ${outHeight} px` : describeRequest(request);
    caption(`${width} × ${height}`, valid ? `${outWidth} × ${outHeight} px` : "?");
    $("width").placeholder = outWidth && !request.width ? String(outWidth) : "";
    $("height").placeholder = outHeight && !request.height ? String(outHeight) : "";
  } else {
    if (file) $("picked-info").textContent = `${kib} · no preview of this format here`;
    $("output-size").textContent = describeRequest(request);
    if (file) caption("the original", describeRequest(request));
  }
  $("submit").disabled = !file || !valid || state.busy;
}

function caption(input, output) {
  const figcaption = $("preview-caption");
  const strong = (text) => Object.assign(document.createElement("strong"), { textContent: text });
  figcaption.replaceChildren(strong(input), " → ", strong(output));
}

// ---- the stage: empty, preview (+ progress or error), result ------------------------------

function showStage(which) {
  $("empty").hidden = which !== "empty";
  $("preview").hidden = which !== "preview";
  $("result").hidden = which !== "result";
  if (which !== "preview") {
    $("error").hidden = true;
    progress.stop();
  }
}

function showError(title, detail, { choose = false, neutral = false } = {}) {
  progress.stop();
  $("error").classList.toggle("neutral", neutral);
  $("error-title").textContent = title;
  $("error-detail").textContent = detail;
  $("error-detail").hidden = !detail;
  $("retry").textContent = choose ? "Choose another image" : "Try again";
  $("retry").dataset.action = choose ? "choose" : "retry";
  $("error").hidden = false;
  if (focusWasLost()) $("retry").focus();
  reveal($("error"));
}

// Keyboard users keep their place: when the focused control went away (the form is busy or
// hidden), focus moves to the next thing to do.
function focusWasLost() {
  const active = document.activeElement;
  return !active || active === document.body || active.hidden || active.disabled ||
    active.closest("[hidden]") !== null || active === $("submit") || active === $("cancel");
}

function reveal(element) {
  const rect = element.getBoundingClientRect();
  if (rect.top >= 0 && rect.bottom <= window.innerHeight) return;
  element.scrollIntoView({
    behavior: reducedMotion.matches ? "auto" : "smooth",
    block: rect.height > window.innerHeight ? "start" : "nearest",
  });
}

// ---- submitting and following a job -------------------------------------------------------

async function submit(event) {
  event?.preventDefault();
  if (!state.file || state.busy) return;
  const request = sizeRequest();
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  for (const [name, value] of Object.entries(request)) if (value) form.append(name, String(value));
  form.append("engine", $("engine").value);
  if ($("format").value) form.append("output_format", $("format").value);

  showStage("preview");
  $("error").hidden = true;
  progress.start(`Uploading ${state.file.name}…`);
  busy(true);
  reveal($("stage"));
  try {
    const job = await (await api("/v1/upscale", { method: "POST", body: form })).json();
    state.jobId = job.id;
    await follow(job);
  } catch (error) {
    const choose = error instanceof ApiError && [400, 413, 415].includes(error.status);
    showError(error.title || "Something went wrong", error.message, { choose });
    if (error.status === 401) $("key-box").open = true;
  } finally {
    state.jobId = null;
    busy(false);
  }
}

function busy(on) {
  const moveFocus = on && document.activeElement === $("submit");
  state.busy = on;
  $("cancel").hidden = !on;
  $("submit").textContent = on ? "Upscaling…" : "Upscale";
  updateSizes();
  if (moveFocus) $("cancel").focus();
}

async function follow(job) {
  for (;;) {
    progress.update(job);
    if (job.status === "succeeded") {
      await progress.finish();
      return showResult(job);
    }
    if (ENDED.includes(job.status)) return showEnd(job);
    await sleep(POLL_MS);
    job = await poll(job.id);
  }
}

// The job now; a lost connection, a busy gateway or the rate limit is waited out (the job
// goes on without us), anything else ends the follow.
async function poll(id) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await (await api(`/v1/jobs/${id}`)).json();
    } catch (error) {
      if (!TRANSIENT.includes(error.status) || attempt >= POLL_ATTEMPTS) throw error;
      progress.say("Connection lost; trying again…");
      await sleep(Math.min(8000, POLL_MS * 2 ** attempt));
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function showEnd(job) {
  if (job.status === "canceled") {
    return showError("Canceled", "The job was canceled; nothing was kept.", { neutral: true });
  }
  if (job.status === "expired") return showError("Expired", "This job and its result are gone.");
  const problem = job.error || {};
  const choose = problem.status >= 400 && problem.status < 500;
  showError(problem.title || "The job failed", problem.detail || "", { choose });
}

async function showResult(job) {
  const blob = await (await api(job.output.url)).blob();
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = URL.createObjectURL(blob);
  const moveFocus = focusWasLost();
  showStage("result");
  viewer.show(state.fileUrl, state.resultUrl, job.output.width, job.output.height);
  $("download").href = state.resultUrl;
  $("download").download = downloadName(state.file.name, job.output.format);
  resultInfo(job);
  remember(job, state.file.name);
  renderRecent($("recent-box"), $("recent-list"));
  if (moveFocus) $("download").focus({ preventScroll: true });
  reveal($("result"));
}

function resultInfo(job) {
  const seconds = (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000;
  const took = seconds >= 0 ? ` · ${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s` : "";
  const sizes = document.createElement("strong");
  sizes.textContent = `${job.input.width} × ${job.input.height} → ${job.output.width} × ${job.output.height}`;
  const kib = Math.max(1, Math.round(job.output.bytes / 1024)).toLocaleString();
  $("result-info").replaceChildren(sizes, ` · ${job.output.format.toUpperCase()} · ${kib} KiB${took}`);
}

async function cancel() {
  if (state.jobId === null) return;
  try {
    await api(`/v1/jobs/${state.jobId}`, { method: "DELETE" });
  } catch (error) {
    if (error.status !== 409) progress.say(error.message); // 409: it just ended
  }
}

// ---- engines ------------------------------------------------------------------------------

async function loadEngines() {
  try {
    state.catalog = await (await api("/v1/engines")).json();
  } catch (error) {
    if (error.status === 401) {
      $("key-box").open = true;
      $("engine-description").textContent = "This server needs an API key.";
    }
    return;
  }
  const select = $("engine");
  const chosen = select.value;
  const { engines, default: fallback } = state.catalog;
  const auto = new Option(fallback ? `Automatic (${fallback})` : "Automatic", "auto");
  const options = engines.map((engine) => {
    const label = engine.state === "ready" ? engine.name : `${engine.name} (${engine.state})`;
    const option = new Option(label, engine.name);
    option.disabled = engine.state === "failed";
    return option;
  });
  select.replaceChildren(auto, ...options);
  select.value = [...select.options].some((o) => o.value === chosen && !o.disabled) ? chosen : "auto";
  describeEngine();
  if (engines.some((engine) => engine.state === "loading")) {
    setTimeout(loadEngines, ENGINE_REFRESH_MS);
  }
}

function describeEngine() {
  const engines = state.catalog?.engines || [];
  const chosen = $("engine").value;
  const name = chosen === "auto" ? state.catalog?.default : chosen;
  const engine = engines.find((candidate) => candidate.name === name);
  // The catalog's line says what the engine is for; an engine of the deployment's own has none.
  let text = engine?.description || engine?.name || "The server's default engine";
  if (chosen === "auto" && engine && !engine.description) text = `The server's choice: ${text}`;
  if (engine?.state === "loading") text += " (loading; jobs wait until it is ready)";
  $("engine-description").textContent = text;
}

// ---- wiring -------------------------------------------------------------------------------

function setUpDropping() {
  const zone = $("drop-zone");
  zone.addEventListener("click", () => $("file-input").click());
  $("file-input").addEventListener("change", (event) => {
    pick(event.target.files[0]);
    event.target.value = ""; // choosing the same file again still fires "change"
  });
  const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  let depth = 0;
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    document.body.classList.add("dragging");
    zone.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) {
      document.body.classList.remove("dragging");
      zone.classList.remove("dragging");
    }
  });
  document.addEventListener("dragover", (event) => {
    if (hasFiles(event)) event.preventDefault();
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth = 0;
    document.body.classList.remove("dragging");
    zone.classList.remove("dragging");
    pick(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) pick(file);
  });
}

function setUpViewer() {
  viewer = new CompareViewer($("viewer"), { slider: $("compare-slider"), zoomLabel: $("zoom-level") });
  $("compare-slider").addEventListener("input", (event) => viewer.setSplit(Number(event.target.value)));
  for (const radio of document.querySelectorAll("input[name=view-mode]")) {
    radio.addEventListener("change", () => viewer.setMode(radio.value));
  }
  $("zoom-in").addEventListener("click", () => viewer.zoomBy(1.5));
  $("zoom-out").addEventListener("click", () => viewer.zoomBy(1 / 1.5));
  $("zoom-fit").addEventListener("click", () => viewer.fit());
}

document.addEventListener("DOMContentLoaded", () => {
  progress = new ProgressView({
    box: $("progress-box"),
    bar: $("progress"),
    fill: $("progress-fill"),
    status: $("status"),
    detail: $("progress-detail"),
    eta: $("eta"),
  });
  setUpDropping();
  setUpViewer();
  dropText();
  coarse.addEventListener("change", dropText);
  $("upload-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("retry").addEventListener("click", () => {
    if ($("retry").dataset.action === "choose") $("file-input").click();
    else submit();
  });
  for (const radio of document.querySelectorAll("input[name=scale]")) {
    radio.addEventListener("change", updateSizes);
  }
  $("width").addEventListener("input", updateSizes);
  $("height").addEventListener("input", updateSizes);
  $("engine").addEventListener("change", describeEngine);
  $("api-key").value = apiKey();
  $("api-key").addEventListener("change", (event) => {
    setApiKey(event.target.value.trim());
    loadEngines();
  });
  $("recent-clear").addEventListener("click", () => {
    forgetAll();
    renderRecent($("recent-box"), $("recent-list"));
  });
  renderRecent($("recent-box"), $("recent-list"));
  loadEngines();
});
