// The MegaSR web page: pick an image, queue it, follow the job, compare and download.
// Plain browser JavaScript against the public v1 API; no build step.
"use strict";

const POLL_MS = 500;
const $ = (id) => document.getElementById(id);

let picked = null;       // the File the user chose
let beforeUrl = null;    // object URL of the original
let resultUrl = null;    // object URL of the result
let currentJob = null;   // id of the job being followed

function headers() {
  const key = $("api-key").value.trim() || localStorage.getItem("megasr-api-key") || "";
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// A failed response's problem+json detail, or its status line.
async function problemText(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status} ${response.statusText}`;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...options.headers } });
  if (response.status === 401) $("key-box").open = true;
  if (!response.ok) throw new Error(await problemText(response));
  return response;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function pick(file) {
  if (!file) return;
  picked = file;
  $("drop-text").textContent = `${file.name} (${Math.round(file.size / 1024)} KiB)`;
  $("submit").disabled = false;
  showError("");
}

async function loadEngines() {
  try {
    const catalog = await (await api("/v1/engines")).json();
    const select = $("engine");
    select.replaceChildren(new Option("auto", "auto"));
    for (const engine of catalog.engines) {
      const option = document.createElement("option");
      option.value = engine.name;
      option.textContent = engine.state === "ready" ? engine.name : `${engine.name} (${engine.state})`;
      select.append(option);
    }
    if (catalog.default) select.options[0].textContent = `auto (${catalog.default})`;
  } catch (error) {
    console.warn("engines:", error.message);
  }
}

function logStatus(job) {
  const text = describe(job);
  $("status").textContent = text;
  const log = $("log");
  const last = log.lastElementChild;
  if (!last || last.dataset.status !== job.status) {
    const item = document.createElement("li");
    item.dataset.status = job.status;
    item.textContent = text;
    log.append(item);
  } else {
    last.textContent = text;
  }
}

function describe(job) {
  const percent = Math.round((job.progress || 0) * 100);
  switch (job.status) {
    case "queued":
      return job.queue_position ? `queued (${job.queue_position} ahead)` : "queued";
    case "running":
      return `running${job.stage ? ` (${job.stage})` : ""}: ${percent}%`;
    default:
      return job.status;
  }
}

async function submit(event) {
  event.preventDefault();
  if (!picked) return;
  showError("");
  $("result").hidden = true;
  $("log").replaceChildren();
  $("progress").value = 0;
  $("progress-box").hidden = false;
  $("submit").disabled = true;
  const form = new FormData();
  form.append("image", picked, picked.name);
  form.append("scale", $("scale").value);
  if ($("format").value) form.append("output_format", $("format").value);
  form.append("engine", $("engine").value);
  try {
    const job = await (await api("/v1/upscale", { method: "POST", body: form })).json();
    currentJob = job.id;
    $("cancel").hidden = false;
    await follow(job);
  } catch (error) {
    showError(error.message);
  } finally {
    currentJob = null;
    $("cancel").hidden = true;
    $("submit").disabled = false;
  }
}

async function follow(job) {
  for (;;) {
    logStatus(job);
    $("progress").value = job.status === "succeeded" ? 1 : job.progress || 0;
    if (job.status === "succeeded") return showResult(job);
    if (["failed", "canceled", "expired"].includes(job.status)) {
      if (job.error) showError(job.error.detail || job.error.title);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    job = await (await api(`/v1/jobs/${job.id}`)).json();
  }
}

async function showResult(job) {
  const blob = await (await api(job.output.url)).blob();
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = URL.createObjectURL(blob);
  if (beforeUrl) URL.revokeObjectURL(beforeUrl);
  beforeUrl = URL.createObjectURL(picked);
  $("result-image").src = resultUrl;
  $("before-image").src = beforeUrl;
  const base = picked.name.replace(/\.[^.]+$/, "");
  const extension = job.output.format === "jpeg" ? "jpg" : job.output.format;
  $("download").href = resultUrl;
  $("download").download = `${base}-megasr.${extension}`;
  $("result-info").textContent =
    `${job.input.width}×${job.input.height} → ${job.output.width}×${job.output.height} ` +
    `${job.output.format.toUpperCase()}, ${Math.round(job.output.bytes / 1024)} KiB`;
  $("result").hidden = false;
}

async function cancel() {
  if (!currentJob) return;
  try {
    await api(`/v1/jobs/${currentJob}`, { method: "DELETE" });
  } catch (error) {
    showError(error.message);
  }
}

function setUpDropZone() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    pick(event.dataTransfer.files[0]);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpDropZone();
  $("file-input").addEventListener("change", (event) => pick(event.target.files[0]));
  $("upload-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("compare-slider").addEventListener("input", (event) => {
    $("before-image").style.clipPath = `inset(0 ${100 - event.target.value}% 0 0)`;
    $("divider").style.left = `${event.target.value}%`;
  });
  $("api-key").addEventListener("change", (event) => {
    localStorage.setItem("megasr-api-key", event.target.value.trim());
    loadEngines();
  });
  loadEngines();
});
