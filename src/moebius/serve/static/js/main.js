// The app: opening photos, running jobs with live progress, the history of results,
// downloads and keyboard shortcuts, around the canvas editor.

import * as api from "./api.js";
import { Editor } from "./editor.js";
import { SettingsPanel } from "./settings.js";

const $ = (selector) => document.querySelector(selector);
const TOOLS = { b: "brush", e: "eraser", r: "rect", l: "lasso" };
const BRUSH_STEP = 1.15; // [ and ] scale the brush by this
const ZOOM_STEP = 1.25;
const TOAST_SECONDS = 5;
const SERVER_POLL_MS = 2000;

const editor = new Editor($("#viewport"));
const state = {
  name: "photo", // the opened file's name, for downloads
  versions: [], // every version of the photo in this session: the original, then results
  job: null, // {id, stop} while a job runs
  settings: null,
  models: [],
};

// ------------------------------------------------------------------ small helpers
function toast(message, kind = "info") {
  const node = document.createElement("div");
  node.className = `toast ${kind}`;
  node.textContent = message;
  $("#toasts").append(node);
  setTimeout(() => node.remove(), TOAST_SECONDS * 1000);
}

function setStatus(text) {
  $("#status").textContent = text;
}

function download(blob, filename) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

function stem() {
  return state.name.replace(/\.[^.]+$/, "") || "photo";
}

function describeError(error) {
  if (error instanceof api.ApiError) {
    if (error.code === "queue_full") return `The server is busy; try again in ${error.retryAfter ?? "a few"} s.`;
    return error.message;
  }
  return `Cannot reach the server (${error.message}).`;
}

// ------------------------------------------------------------------ opening a photo
async function openFile(file) {
  if (!file || !(file.type.startsWith("image/") || /\.(png|jpe?g|webp|bmp|tiff?|gif)$/i.test(file.name))) {
    toast("That is not an image.", "error");
    return;
  }
  stopJob();
  setStatus(`Opening ${file.name}…`);
  try {
    // the photo goes to the server once; runs then name it by id
    const stored = await api.uploadImage(file, file.name);
    let bitmap = await createImageBitmap(file, { imageOrientation: "from-image" }).catch(() => null);
    if (!bitmap || bitmap.width !== stored.width || bitmap.height !== stored.height) {
      // a format this browser cannot show (TIFF), or orientation read differently: use the
      // server's decoding, which is what the model sees
      bitmap = await createImageBitmap(await api.fetchImage(stored.id));
    }
    const original = { bitmap, blob: file, serverId: stored.id, width: stored.width, height: stored.height, label: "Original", parent: null };
    state.name = file.name;
    state.versions = [original];
    editor.open(original);
    editor.setBrushSize(Math.max(8, Math.round(Math.min(stored.width, stored.height) / 16)));
    $("#image-info").textContent = `${stored.width} × ${stored.height}`;
    setStatus("Paint over what should be removed, then press Remove (Shift+R).");
    renderHistory();
  } catch (error) {
    toast(describeError(error), "error");
    setStatus("");
  }
}

async function openMask(file) {
  if (!file || !editor.hasImage) return;
  try {
    const bitmap = await createImageBitmap(file);
    if (bitmap.width !== editor.width || bitmap.height !== editor.height) {
      toast(`The mask is ${bitmap.width} × ${bitmap.height}; it was scaled to the photo.`);
    }
    editor.loadMask(bitmap);
  } catch {
    toast("Cannot read that mask image.", "error");
  }
}

// ------------------------------------------------------------------ running a job
async function ensureUploaded(version) {
  if (!version.serverId) version.serverId = (await api.uploadImage(version.blob, state.name)).id;
  return version.serverId;
}

async function submit(version, mask) {
  const model = $("#model").value;
  const settings = state.settings.values();
  try {
    return await api.submitJob(await ensureUploaded(version), mask, model, settings);
  } catch (error) {
    if (!(error instanceof api.ApiError) || error.code !== "unknown_image") throw error;
    // the server let the photo expire: send it again, once
    version.serverId = null;
    return api.submitJob(await ensureUploaded(version), mask, model, settings);
  }
}

function showProgress(label, step = 0, steps = 0, indeterminate = false) {
  const box = $("#progress");
  box.hidden = false;
  box.dataset.step = String(step);
  box.dataset.steps = String(steps);
  box.classList.toggle("indeterminate", indeterminate);
  $("#progress-label").textContent = label;
  $("#progress-bar").style.width = steps ? `${(100 * step) / steps}%` : "0";
}

function endJob() {
  state.job?.stop();
  state.job = null;
  $("#progress").hidden = true;
  $("#run").disabled = !editor.hasImage;
}

function stopJob() {
  if (!state.job) return;
  api.cancelJob(state.job.id).catch(() => {});
  endJob();
  setStatus("Cancelled.");
}

async function run() {
  if (!editor.hasImage || state.job) return;
  if (editor.maskIsEmpty()) {
    toast("Paint over what should be removed first.");
    return;
  }
  const version = editor.current;
  // leave the settings field, so that the shortcuts act on the picture again
  if (document.activeElement instanceof HTMLInputElement) document.activeElement.blur();
  $("#run").disabled = true;
  setStatus("Removing… Esc cancels.");
  showProgress("Sending the mask…", 0, 0, true);
  let created;
  try {
    created = await submit(version, await editor.maskBlob());
  } catch (error) {
    toast(describeError(error), "error");
    endJob();
    return;
  }
  const started = performance.now();
  const job = { id: created.id, stop: () => {} };
  state.job = job;
  const current = () => state.job === job;
  job.stop = api.followJob(created.id, {
    queued: ({ position }) => current() && showProgress(position > 1 ? `Queued: ${position - 1} ahead` : "Queued: next", 0, 0, true),
    running: ({ steps }) => current() && showProgress(`Step 0 of ${steps}`, 0, steps),
    step: ({ step, steps }) => current() && showProgress(`Step ${step} of ${steps}`, step, steps),
    done: (result) => current() && finish(job, version, result, started),
    error: ({ detail }) => {
      if (!current()) return;
      toast(detail, "error");
      endJob();
    },
    cancelled: () => {
      if (!current()) return;
      setStatus("Cancelled.");
      endJob();
    },
    lost: () => {
      if (!current()) return;
      toast("Lost the connection to the server.", "error");
      endJob();
    },
  });
}

async function finish(job, parent, result, started) {
  try {
    const blob = await api.fetchResult(job.id);
    const bitmap = await createImageBitmap(blob);
    const number = state.versions.length;
    const version = {
      bitmap,
      blob,
      serverId: result.image_id,
      width: result.width,
      height: result.height,
      label: `Result ${number}`,
      seed: result.seed,
      model: $("#model").value,
      parent,
    };
    state.versions.push(version);
    editor.applyResult(version);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const warning = result.warnings.length ? ` (${result.warnings.join("; ")})` : "";
    setStatus(`Done in ${seconds} s, seed ${result.seed}${warning}. The next stroke edits this result; Ctrl+Z goes back.`);
    showProgress("Done", 1, 1);
  } catch (error) {
    toast(describeError(error), "error");
  }
  state.job = null;
  setTimeout(() => state.job === null && endJob(), 600);
  renderHistory();
}

// ------------------------------------------------------------------ history of results
function renderHistory() {
  const list = $("#history");
  list.replaceChildren();
  for (const version of state.versions) {
    const item = document.createElement("li");
    item.className = version === editor.current ? "current" : "";
    item.title = version.seed === undefined ? "The photo as opened" : `seed ${version.seed} · ${version.model}`;
    const image = document.createElement("img");
    version.thumbnail ??= URL.createObjectURL(version.blob);
    image.src = version.thumbnail;
    image.alt = version.label;
    const caption = document.createElement("div");
    caption.className = "caption";
    const name = document.createElement("b");
    name.textContent = version.label;
    const detail = document.createElement("span");
    detail.textContent = version.seed === undefined ? "" : `seed ${version.seed}`;
    caption.append(name, detail);
    item.append(image, caption);
    item.addEventListener("click", () => editor.switchTo(version));
    list.append(item);
  }
  $("#history-empty").hidden = state.versions.length > 1;
}

// ------------------------------------------------------------------ keeping the UI in step
function refresh() {
  const hasImage = editor.hasImage;
  $("#undo").disabled = !editor.canUndo;
  $("#redo").disabled = !editor.canRedo;
  $("#run").disabled = !hasImage || state.job !== null;
  for (const id of ["#load-mask", "#download-result", "#download-mask"]) $(id).disabled = !hasImage;
  for (const id of ["#grow", "#shrink", "#invert", "#clear"]) $(id).disabled = !hasImage;
  $("#compare").disabled = !editor.canCompare;
  $("#compare").setAttribute("aria-pressed", String(editor.comparing));
  for (const item of $("#history").children) item.classList.remove("current");
  const index = state.versions.indexOf(editor.current);
  if (index >= 0) $("#history").children[index]?.classList.add("current");
}

function refreshTool() {
  for (const button of document.querySelectorAll("[data-tool]")) {
    const active = button.dataset.tool === editor.tool;
    button.classList.toggle("active", active);
    button.setAttribute("aria-checked", String(active));
  }
}

function refreshBrush() {
  const slider = $("#brush-size");
  slider.max = String(Math.max(200, Math.round(Math.min(editor.width, editor.height) / 3)));
  slider.value = String(editor.brushSize);
  $("#brush-size-value").textContent = `${editor.brushSize} px`;
}

function refreshModel() {
  const model = state.models.find((m) => m.name === $("#model").value);
  if (!model) return;
  $("#model-note").textContent = model.description + (model.state === "ready" ? "" : ` (${model.state})`);
  state.settings?.useOnly(model.settings);
  if (model.defaults) state.settings?.useDefaults(model.defaults);
}

async function watchServer() {
  const badge = $("#server");
  try {
    const { models } = await api.getJSON("/v1/models");
    const chosen = $("#model").value;
    state.models = models;
    const select = $("#model");
    select.replaceChildren(
      ...models.map((m) => {
        const option = document.createElement("option");
        option.value = m.name;
        option.textContent = `${m.name}${m.kind === "classical" ? " (instant)" : ""}${m.state === "ready" ? "" : ` — ${m.state}`}`;
        option.disabled = m.state !== "ready";
        return option;
      }),
    );
    const fallback = models.find((m) => m.default)?.name;
    select.value = models.some((m) => m.name === chosen && m.state === "ready") ? chosen : fallback;
    refreshModel();
    const main = models.find((m) => m.default);
    const loading = models.some((m) => m.state === "loading");
    badge.className = `server ${main.state === "failed" ? "failed" : loading ? "" : "ready"}`;
    badge.querySelector("span").textContent = loading ? `loading ${main.name}…` : main.state === "failed" ? `${main.name} failed to load` : `${main.name} ready`;
    if (loading) setTimeout(watchServer, SERVER_POLL_MS);
  } catch {
    badge.className = "server failed";
    badge.querySelector("span").textContent = "server unreachable";
    setTimeout(watchServer, SERVER_POLL_MS);
  }
}

// ------------------------------------------------------------------ wiring
function bind() {
  $("#open").addEventListener("click", () => $("#file-input").click());
  $("#open-big").addEventListener("click", () => $("#file-input").click());
  $("#file-input").addEventListener("change", (event) => {
    openFile(event.target.files[0]);
    event.target.value = "";
  });
  $("#load-mask").addEventListener("click", () => $("#mask-input").click());
  $("#mask-input").addEventListener("change", (event) => {
    openMask(event.target.files[0]);
    event.target.value = "";
  });
  $("#download-result").addEventListener("click", downloadImage);
  $("#download-mask").addEventListener("click", async () => download(await editor.maskBlob(), `${stem()}-mask.png`));
  $("#run").addEventListener("click", run);
  $("#cancel").addEventListener("click", stopJob);
  $("#undo").addEventListener("click", () => editor.undo());
  $("#redo").addEventListener("click", () => editor.redo());
  $("#grow").addEventListener("click", () => editor.growMask(1));
  $("#shrink").addEventListener("click", () => editor.growMask(-1));
  $("#invert").addEventListener("click", () => editor.invertMask());
  $("#clear").addEventListener("click", () => editor.clearMask());
  $("#compare").addEventListener("click", () => editor.setComparing(!editor.comparing));
  $("#help").addEventListener("click", () => $("#help-dialog").showModal());
  $("#zoom-in").addEventListener("click", () => editor.zoomBy(ZOOM_STEP));
  $("#zoom-out").addEventListener("click", () => editor.zoomBy(1 / ZOOM_STEP));
  $("#zoom-fit").addEventListener("click", () => editor.fit());
  $("#zoom-reset").addEventListener("click", () => (Math.abs(editor.view.scale - 1) < 1e-3 ? editor.fit() : editor.actualSize()));
  $("#brush-size").addEventListener("input", (event) => editor.setBrushSize(Number(event.target.value)));
  $("#model").addEventListener("change", refreshModel);
  $("#reset-settings").addEventListener("click", () => state.settings.reset());
  for (const button of document.querySelectorAll("[data-tool]")) {
    button.addEventListener("click", () => editor.setTool(button.dataset.tool));
  }
  editor.addEventListener("change", () => {
    refresh();
    if (editor.comparing && !editor.canCompare) editor.setComparing(false);
  });
  editor.addEventListener("compare", refresh);
  editor.addEventListener("tool", refreshTool);
  editor.addEventListener("brush", refreshBrush);
  editor.addEventListener("view", () => ($("#zoom-value").textContent = `${Math.round(editor.view.scale * 100)}%`));
  bindFiles();
  bindKeys();
}

function downloadImage() {
  const version = editor.current;
  if (!version) return;
  const name = version.parent ? `${stem()}-${version.label.toLowerCase().replace(" ", "-")}.png` : state.name;
  download(version.blob, name);
}

function bindFiles() {
  const viewport = $("#viewport");
  let depth = 0;
  window.addEventListener("dragenter", (event) => {
    if (!event.dataTransfer?.types.includes("Files")) return;
    depth += 1;
    viewport.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) viewport.classList.remove("dragging");
  });
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    viewport.classList.remove("dragging");
    const file = [...(event.dataTransfer?.files ?? [])].find((f) => f.type.startsWith("image/")) ?? event.dataTransfer?.files[0];
    if (file) openFile(file);
  });
  window.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData?.items ?? [])].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    const file = item?.getAsFile();
    if (!file) return;
    event.preventDefault();
    openFile(new File([file], file.name || "pasted.png", { type: file.type }));
  });
}

function typing(event) {
  const target = event.target;
  if (target instanceof HTMLInputElement) return !["range", "checkbox", "radio", "button"].includes(target.type);
  return target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement;
}

function bindKeys() {
  window.addEventListener("keydown", (event) => {
    if ($("#help-dialog").open) return; // the dialog closes itself on Esc
    const key = event.key.toLowerCase();
    const command = event.ctrlKey || event.metaKey;
    if (command && key === "z") {
      if (typing(event)) return;
      event.preventDefault();
      if (event.shiftKey) editor.redo();
      else editor.undo();
      return;
    }
    if (command && key === "y") {
      event.preventDefault();
      editor.redo();
      return;
    }
    if (command && key === "o") {
      event.preventDefault();
      $("#file-input").click();
      return;
    }
    if (command && key === "s") {
      event.preventDefault();
      downloadImage();
      return;
    }
    // Shift+R and Esc also work from the settings fields, where they type nothing
    const inText = event.target instanceof HTMLInputElement && event.target.type === "text";
    if (event.shiftKey && key === "r" && !command && !inText) {
      event.preventDefault();
      run();
      return;
    }
    if (event.key === "Escape" && typing(event)) {
      event.target.blur();
      return;
    }
    if (command || event.altKey || typing(event)) return;
    if (event.key === " ") {
      event.preventDefault();
      editor.setSpaceHeld(true);
      return;
    }
    if (event.key === "Escape") {
      if (!editor.abortEdit()) stopJob();
      return;
    }
    if (event.key === "?") {
      $("#help-dialog").showModal();
      return;
    }
    if (event.shiftKey) return;
    if (TOOLS[key]) editor.setTool(TOOLS[key]);
    else if (key === "[") editor.setBrushSize(editor.brushSize / BRUSH_STEP);
    else if (key === "]") editor.setBrushSize(Math.max(editor.brushSize + 1, editor.brushSize * BRUSH_STEP));
    else if (key === "g") editor.growMask(1);
    else if (key === "s") editor.growMask(-1);
    else if (key === "i") editor.invertMask();
    else if (key === "c") editor.setComparing(!editor.comparing);
    else if (key === "delete" || key === "backspace") editor.clearMask();
    else if (key === "+" || key === "=") editor.zoomBy(ZOOM_STEP);
    else if (key === "-") editor.zoomBy(1 / ZOOM_STEP);
    else if (key === "0") editor.fit();
    else if (key === "1") editor.actualSize();
  });
  window.addEventListener("keyup", (event) => {
    if (event.key === " ") editor.setSpaceHeld(false);
  });
  window.addEventListener("blur", () => editor.setSpaceHeld(false));
}

async function start() {
  bind();
  refreshTool();
  refreshBrush();
  refresh();
  try {
    const { settings } = await api.getJSON("/v1/settings");
    state.settings = new SettingsPanel($("#settings"), $("#settings-advanced"), settings);
  } catch (error) {
    toast(describeError(error), "error");
  }
  await watchServer();
  document.body.dataset.ready = "true";
}

start();
