// The jobs this browser finished, kept in local storage, to download again while the server
// still keeps their results (a day by default, MEGASR_RESULT_TTL_S). Only what is needed to
// fetch and name a result is kept: the job id, the file name and the sizes; no pictures.

import { ApiError, api } from "./api.js";

const KEY = "megasr-recent";
const MAX_ENTRIES = 12;

export function recentJobs() {
  try {
    const entries = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(entries) ? entries.filter((entry) => entry && entry.id) : [];
  } catch {
    return []; // a damaged entry is not worth an error: start again
  }
}

function save(entries) {
  localStorage.setItem(KEY, JSON.stringify(entries.slice(0, MAX_ENTRIES)));
}

// A succeeded job, newest first.
export function remember(job, fileName) {
  const entry = {
    id: job.id,
    name: downloadName(fileName, job.output.format),
    input: [job.input.width, job.input.height],
    output: [job.output.width, job.output.height],
    format: job.output.format,
    bytes: job.output.bytes,
    finished: job.finished_at || new Date().toISOString(),
  };
  save([entry, ...recentJobs().filter((other) => other.id !== job.id)]);
}

export function forgetAll() {
  localStorage.removeItem(KEY);
}

function forget(id) {
  save(recentJobs().filter((entry) => entry.id !== id));
}

export function downloadName(fileName, format) {
  const base = fileName.replace(/\.[^.]+$/, "") || "image";
  return `${base}-megasr.${format === "jpeg" ? "jpg" : format}`;
}

// Draw the list into `list` (a <ul>); `box` is hidden while it is empty.
export function renderRecent(box, list) {
  const entries = recentJobs();
  box.hidden = entries.length === 0;
  list.replaceChildren(...entries.map((entry) => item(entry, () => renderRecent(box, list))));
}

function item(entry, changed) {
  const li = document.createElement("li");
  const what = document.createElement("span");
  what.className = "what";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = entry.name;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = `${entry.output[0]} × ${entry.output[1]} · ${ago(entry.finished)}`;
  what.append(name, meta);
  const button = document.createElement("button");
  button.type = "button";
  button.className = "secondary small";
  button.textContent = "Download";
  button.setAttribute("aria-label", `Download ${entry.name}`);
  button.addEventListener("click", () => download(entry, li, changed));
  li.append(what, button);
  return li;
}

async function download(entry, li, changed) {
  try {
    const blob = await (await api(`/v1/jobs/${entry.id}/result`)).blob();
    saveBlob(blob, entry.name);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 409)) {
      forget(entry.id);
      const gone = document.createElement("span");
      gone.className = "gone";
      gone.textContent = "no longer on the server";
      li.querySelector("button").replaceWith(gone);
      setTimeout(changed, 4000);
      return;
    }
    li.querySelector(".meta").textContent = error.message;
  }
}

export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function ago(iso) {
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  if (!(seconds >= 0)) return "";
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}
