// The page of `phenaki serve`: write a story (or pick a COMMIT task), submit it to /v1/videos, follow the job's
// events, play the video. Plain JS, no build; every URL is relative, so the page works behind any prefix.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "phenaki.apiKey";
const GALLERY_STORE = "phenaki.gallery";
const GALLERY_MAX = 50;
const FINISHED = ["succeeded", "failed", "cancelled"];
const TASK_NAMES = { fp: "frame prediction", fi: "frame interpolation", opc: "central outpainting",
  opv: "vertical outpainting", oph: "horizontal outpainting", opd: "dynamic outpainting", ipc: "central inpainting",
  ipd: "dynamic inpainting", cg: "class-conditional generation", cfp: "class-conditional frame prediction" };

let card = null; // the loaded model's entry of GET v1/models
let jobId = null; // the job this page is following
let objectUrl = null; // the blob URL the player shows

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// ---- HTTP ---------------------------------------------------------------------------------------------------
function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = $("api-key").value.trim();
  if (key) h["X-API-Key"] = key;
  return h;
}

async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers(body !== undefined) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw new ApiError(response.status, await errorText(response));
  return response;
}

// The server's words: `detail` is a string, or for 422 a list of {loc, msg} naming each field.
async function errorText(response) {
  let detail = response.statusText || "request failed";
  try { detail = (await response.json()).detail ?? detail; } catch { /* not JSON: keep the status text */ }
  if (Array.isArray(detail)) {
    detail = detail
      .map((d) => `${(d.loc || []).filter((part) => part !== "body").join(".")}: ${d.msg}`)
      .join("\n");
  } else if (typeof detail !== "string") {
    detail = JSON.stringify(detail);
  }
  return `${detail} (HTTP ${response.status})`;
}

// Server-sent events over fetch (EventSource cannot send an API key): calls onEvent(name, data) per event.
async function readEvents(path, onEvent) {
  const response = await api(path);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    const blocks = buffer.split(/\r?\n\r?\n/);
    buffer = done ? "" : blocks.pop();
    for (const block of blocks) {
      let name = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length && onEvent(name, JSON.parse(data.join("\n")))) {
        reader.cancel();
        return;
      }
    }
    if (done) return;
  }
}

// ---- the story editor ---------------------------------------------------------------------------------------
function addPrompt(text = "") {
  const row = document.createElement("li");
  row.className = "prompt-row";
  row.innerHTML = `<input class="prompt" type="text" placeholder="a red circle moving left">
    <button type="button" class="up icon" title="Move up">↑</button>
    <button type="button" class="down icon" title="Move down">↓</button>
    <button type="button" class="remove icon" title="Remove">✕</button>`;
  const input = Object.assign(row.querySelector(".prompt"), { value: text });
  if (card) input.maxLength = card.limits.max_prompt_chars;
  $("prompts").append(row);
  updateRows();
  return input;
}

const maxPrompts = () => (!card ? 8 : card.family === "commit" ? 1 : card.limits.max_prompts);

function updateRows() {
  const rows = [...$("prompts").children];
  rows.forEach((row, i) => {
    row.querySelector(".prompt").setAttribute("aria-label", `Prompt ${i + 1}`);
    for (const [cls, verb] of [["up", "Move up"], ["down", "Move down"], ["remove", "Remove"]]) {
      row.querySelector(`.${cls}`).setAttribute("aria-label", `${verb} prompt ${i + 1}`);
    }
    row.querySelector(".up").disabled = i === 0;
    row.querySelector(".down").disabled = i === rows.length - 1;
    row.querySelector(".remove").disabled = rows.length === 1;
  });
  $("add-prompt").disabled = rows.length >= maxPrompts();
}

$("prompts").addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (!button) return;
  const row = button.closest(".prompt-row");
  if (button.classList.contains("up") && row.previousElementSibling) row.previousElementSibling.before(row);
  else if (button.classList.contains("down") && row.nextElementSibling) row.nextElementSibling.after(row);
  else if (button.classList.contains("remove")) {
    (row.nextElementSibling || row.previousElementSibling)?.querySelector(".prompt").focus();
    row.remove();
  }
  updateRows();
  if (row.isConnected) (button.disabled ? row.querySelector(".prompt") : button).focus();
});

$("add-prompt").addEventListener("click", () => addPrompt().focus());

const prompts = () => [...document.querySelectorAll("#prompts .prompt")].map((input) => input.value);

// ---- the model and its controls -----------------------------------------------------------------------------
async function loadModel() {
  try {
    card = (await (await api("v1/models")).json()).data[0];
    showError("");
  } catch (error) {
    card = null;
    $("model").textContent = "No model information.";
    const hint = error.status === 401 ? "An API key is needed: enter it under “API key”. " : "";
    if (error.status === 401) $("api-key").closest("details").open = true;
    showError(hint + error.message);
    return;
  }
  const { info, limits } = card;
  const commit = card.family === "commit";
  const defaults = info.defaults || {};
  $("model").textContent = `${card.title} (${card.id}): ` + (commit
    ? `${card.tasks.length} tasks on ${info.num_frames}-frame clips at ${info.fps} fps, ${info.image_size}px`
    : `up to ${limits.max_prompts} prompts, ${info.num_frames} frames a segment at ${info.fps} fps, `
      + `${info.image_size}px`);
  $("steps").placeholder = defaults.steps ?? "";
  $("steps").max = limits.max_steps;
  $("guidance").placeholder = defaults.guidance_scale ?? "";
  const format = $("format").value;
  $("format").replaceChildren(...card.formats.map((f) => new Option(f, f, false, f === format)));
  $("commit-box").hidden = !commit;
  $("image-field").hidden = commit;
  $("story-box").hidden = commit && !info.text;
  $("story-help").hidden = commit;
  while ($("prompts").children.length > maxPrompts()) $("prompts").lastElementChild.remove();
  if (!$("prompts").children.length) addPrompt();
  document.querySelectorAll("#prompts .prompt").forEach((input) => (input.maxLength = limits.max_prompt_chars));
  updateRows();
  if (commit) setupCommit(info);
}

function setupCommit(info) {
  $("task").replaceChildren(...card.tasks.map((t) => new Option(TASK_NAMES[t] ? `${t}: ${TASK_NAMES[t]}` : t, t)));
  const names = info.class_names || [];
  let classControl;
  if (names.length) {
    classControl = document.createElement("select");
    classControl.append(new Option("(none)", ""), new Option("null class", "-1"));
    names.forEach((name, i) => classControl.append(new Option(`${i}: ${name}`, String(i))));
  } else {
    classControl = document.createElement("input");
    Object.assign(classControl, { type: "number", min: -1, step: 1, placeholder: "none" });
    if (info.num_classes) classControl.max = info.num_classes - 1;
  }
  classControl.id = "class-id";
  $("class-slot").replaceChildren(classControl);
  $("task").onchange = () => {
    const task = $("task").value;
    $("condition-field").hidden = !(info.video_tasks || []).includes(task);
    $("class-field").hidden = !(info.class_tasks || []).includes(task);
  };
  $("task").onchange();
}

// ---- a job --------------------------------------------------------------------------------------------------
const readFile = (file) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(reader.result);
  reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
  reader.readAsDataURL(file);
});

const number = (id) => ($(id).value.trim() === "" ? undefined : Number($(id).value));

async function requestBody() {
  const body = { seed: number("seed") ?? 0, steps: number("steps"), guidance_scale: number("guidance"),
                 format: $("format").value };
  if (card && card.family === "commit") {
    body.task = $("task").value;
    const file = $("condition").files[0];
    if (file && !$("condition-field").hidden) body.video_b64 = await readFile(file);
    const classId = $("class-id").value.trim();
    if (classId !== "" && !$("class-field").hidden) body.class_id = Number(classId);
    const text = prompts().filter((p) => p.trim());
    if (card.info.text && text.length) body.prompt = text[0];
  } else {
    body.prompts = prompts();
    const image = $("image").files[0];
    if (image) body.image_b64 = await readFile(image);
  }
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
  if (message) $("error").scrollIntoView({ block: "nearest" });
}

function showJob(job) {
  const pct = Math.round(job.progress * 100);
  $("progress").value = job.progress;
  const text = {
    queued: "Queued…",
    running: `Running: ${pct}% of the sampling steps`,
    succeeded: `Done in ${(job.run_seconds ?? 0).toFixed(1)} s: ${job.frames} frames at ${job.fps} fps.`,
    cancelled: "Cancelled.",
    failed: `Failed: ${job.error ? job.error.message : "unknown error"}`,
  }[job.status];
  $("status").textContent = text + (job.warnings && job.warnings.length ? ` (${job.warnings.join("; ")})` : "");
  Object.assign($("status").dataset, { status: job.status, job: job.id });
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("cancel").disabled = !busy;
}

async function generate(event) {
  event.preventDefault();
  showError("");
  setBusy(true);
  $("progress").value = 0;
  $("status").textContent = "Submitting…";
  let job = null;
  try {
    job = await (await api("v1/videos", { method: "POST", body: await requestBody() })).json();
    jobId = job.id;
    showJob(job);
    await readEvents(`v1/videos/${job.id}/events`, (name, data) => {
      if (name === "error") throw new ApiError(404, data.detail);
      job = data;
      showJob(job);
      return FINISHED.includes(job.status);
    });
    if (!FINISHED.includes(job.status)) job = await (await api(`v1/videos/${job.id}`)).json();
    showJob(job);
    if (job.status === "succeeded") {
      const entry = { id: job.id, prompts: job.prompts, task: job.task, format: job.format, time: Date.now() };
      saveGallery([entry, ...loadGallery()].slice(0, GALLERY_MAX));
      await play(entry, job);
    } else if (job.status === "failed") {
      showError(job.error ? `${job.error.code}: ${job.error.message}` : "The job failed.");
    }
  } catch (error) {
    showError(error.message);
    if (!job) $("status").textContent = "Not submitted.";
    else if (!FINISHED.includes(job.status)) $("status").textContent = "Lost track of the job (it may still run).";
  } finally {
    jobId = null;
    setBusy(false);
  }
}

async function cancel() {
  if (!jobId) return;
  $("cancel").disabled = true;
  try {
    showJob(await (await api(`v1/videos/${jobId}`, { method: "DELETE" })).json());
  } catch (error) {
    showError(error.message);
    $("cancel").disabled = false;
  }
}

// ---- the player and the gallery -----------------------------------------------------------------------------
async function play(entry, job) {
  const blob = await (await api(`v1/videos/${entry.id}/content`)).blob();
  if (objectUrl) URL.revokeObjectURL(objectUrl);
  objectUrl = URL.createObjectURL(blob);
  const gif = entry.format === "gif";
  const player = document.createElement(gif ? "img" : "video");
  if (!gif) Object.assign(player, { controls: true, autoplay: true, loop: true, muted: true, playsInline: true });
  player.id = "player";
  player.src = objectUrl;
  const what = entry.task ? `COMMIT task ${entry.task}` : entry.prompts.join(" → ");
  player.setAttribute(gif ? "alt" : "aria-label", `Generated video: ${what}`);
  $("player").replaceWith(player);
  const name = `phenaki-${entry.id.slice(0, 8)}.${entry.format}`;
  Object.assign($("download"), { href: objectUrl, download: name, hidden: false });
  const segments = (job && job.segments) || [];
  $("caption").textContent = segments.length > 1
    ? segments.map((s, i) => `${i + 1}. “${s.prompt}” (frames ${s.start}–${s.end - 1})`).join("\n")
    : what;
}

function loadGallery() {
  try { return JSON.parse(localStorage.getItem(GALLERY_STORE) || "[]"); } catch { return []; }
}

function saveGallery(entries) {
  localStorage.setItem(GALLERY_STORE, JSON.stringify(entries));
  renderGallery();
}

function renderGallery() {
  const entries = loadGallery();
  $("gallery-empty").hidden = entries.length > 0;
  $("clear-gallery").hidden = !entries.length;
  $("gallery").replaceChildren(...entries.map((entry) => {
    const item = document.createElement("li");
    item.className = entry.expired ? "expired" : "";
    const button = Object.assign(document.createElement("button"), { type: "button", className: "entry" });
    button.dataset.id = entry.id;
    const title = document.createElement("span");
    title.textContent = entry.task ? `task ${entry.task}` : entry.prompts.join(" → ");
    const meta = document.createElement("small");
    const when = new Date(entry.time).toLocaleString();
    meta.textContent = `${entry.format} · ${when}${entry.expired ? " · expired" : ""}`;
    button.append(title, meta);
    button.addEventListener("click", () => reopen(entry));
    item.append(button);
    return item;
  }));
}

async function reopen(entry) {
  showError("");
  try {
    const job = await (await api(`v1/videos/${entry.id}`)).json();
    await play(entry, job);
    if (!jobId) $("status").textContent = `From the gallery: made ${new Date(entry.time).toLocaleString()}.`;
  } catch (error) {
    if ([404, 409, 410].includes(error.status)) {
      saveGallery(loadGallery().map((e) => (e.id === entry.id ? { ...e, expired: true } : e)));
      showError(`This video has expired on the server: ${error.message}`);
    } else {
      showError(error.message);
    }
  }
}

// ---- start --------------------------------------------------------------------------------------------------
$("api-key").value = localStorage.getItem(KEY_STORE) || "";
$("api-key").addEventListener("change", () => {
  const key = $("api-key").value.trim();
  if (key) localStorage.setItem(KEY_STORE, key);
  else localStorage.removeItem(KEY_STORE);
  loadModel();
});
$("form").addEventListener("submit", generate);
$("cancel").addEventListener("click", cancel);
$("clear-gallery").addEventListener("click", () => saveGallery([]));
if ($("api-key").value) $("api-key").closest("details").open = true;
addPrompt();
renderGallery();
loadModel();
