// The canvas editor: the photo, the mask painted over it, the tools, zoom and pan, undo and
// redo, and the before/after wipe. It knows nothing of the server: main.js feeds it versions
// of the photo ({bitmap, width, height, parent, ...}) and asks it for the mask.

import { alphaOf, grow, invert, isEmpty, maskFromPixels, rgbaOf, shrink } from "./mask.js";

const MASK_RGB = [255, 61, 113];
const MIN_SCALE = 0.02;
const MAX_SCALE = 32;
const FIT_MARGIN = 0.94;
const HISTORY_BUDGET = 384 * 2 ** 20; // bytes of undo data kept, oldest dropped first

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A rectangle of a full-size alpha array. */
function cropAlpha(alpha, width, rect) {
  const out = new Uint8ClampedArray(rect.w * rect.h);
  for (let row = 0; row < rect.h; row++) {
    const start = (rect.y + row) * width + rect.x;
    out.set(alpha.subarray(start, start + rect.w), row * rect.w);
  }
  return out;
}

export class Editor extends EventTarget {
  constructor(viewport) {
    super();
    this.viewport = viewport;
    this.stage = viewport.querySelector("#stage");
    this.imageLayer = viewport.querySelector("#image-layer");
    this.beforeLayer = viewport.querySelector("#before-layer");
    this.maskLayer = viewport.querySelector("#mask-layer");
    this.guide = viewport.querySelector("#guide-layer");
    this.wipeBar = viewport.querySelector("#wipe");
    this.mask = this.maskLayer.getContext("2d", { willReadFrequently: true });
    this.tool = "brush";
    this.brushSize = 40;
    this.view = { scale: 1, x: 0, y: 0 };
    this.width = 0;
    this.height = 0;
    this.current = null;
    this.undoStack = [];
    this.redoStack = [];
    this.comparing = false;
    this.wipe = 0.5;
    this.pointers = new Map();
    this.gesture = null;
    this.hover = null;
    this.spaceHeld = false;
    this.#listen();
    new ResizeObserver(() => this.#resizeGuide()).observe(viewport);
  }

  get hasImage() {
    return this.current !== null;
  }

  // ------------------------------------------------------------------ the photo
  /** Start a new edit session on `version`: empty mask, no history, fitted. */
  open(version) {
    this.width = version.width;
    this.height = version.height;
    for (const canvas of [this.imageLayer, this.beforeLayer, this.maskLayer]) {
      canvas.width = this.width;
      canvas.height = this.height;
    }
    this.undoStack = [];
    this.redoStack = [];
    this.setComparing(false);
    this.#show(version);
    this.viewport.classList.remove("empty");
    this.fit();
    this.#changed();
  }

  /** Continue on a result: it becomes the photo, the mask is cleared; undo brings back both. */
  applyResult(version) {
    this.#record({ kind: "image", from: this.current, to: version, maskBefore: this.maskAlpha(), maskAfter: null });
    this.#show(version);
    this.#putAlpha({ x: 0, y: 0, w: this.width, h: this.height }, new Uint8ClampedArray(this.width * this.height));
    this.#changed();
  }

  /** Go back to another version of the photo (from the history list), keeping the mask. */
  switchTo(version) {
    if (version === this.current) return;
    const mask = this.maskAlpha();
    this.#record({ kind: "image", from: this.current, to: version, maskBefore: mask, maskAfter: mask });
    this.#show(version);
    this.#changed();
  }

  #show(version) {
    this.current = version;
    const context = this.imageLayer.getContext("2d");
    context.clearRect(0, 0, this.width, this.height);
    context.drawImage(version.bitmap, 0, 0);
    if (this.comparing && !version.parent) this.setComparing(false);
    else if (this.comparing) this.#drawBefore();
  }

  // ------------------------------------------------------------------ the mask
  maskAlpha() {
    return alphaOf(this.mask.getImageData(0, 0, this.width, this.height).data);
  }

  maskIsEmpty() {
    return !this.hasImage || isEmpty(this.maskAlpha());
  }

  /** The mask as a PNG: white = repaint, on black, at the photo's size. */
  maskBlob() {
    const canvas = document.createElement("canvas");
    canvas.width = this.width;
    canvas.height = this.height;
    const context = canvas.getContext("2d");
    context.drawImage(this.maskLayer, 0, 0);
    context.globalCompositeOperation = "source-in";
    context.fillStyle = "#fff";
    context.fillRect(0, 0, this.width, this.height);
    context.globalCompositeOperation = "destination-over";
    context.fillStyle = "#000";
    context.fillRect(0, 0, this.width, this.height);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }

  /** Replace the mask with one read from an image (scaled to the photo's size). */
  loadMask(bitmap) {
    const canvas = document.createElement("canvas");
    canvas.width = this.width;
    canvas.height = this.height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0, this.width, this.height);
    this.#replaceMask(maskFromPixels(context.getImageData(0, 0, this.width, this.height).data));
  }

  /** Grow or shrink by a step that is visible whatever the photo's size. */
  growMask(sign = 1) {
    const radius = Math.max(1, Math.round(Math.min(this.width, this.height) / 160));
    const operation = sign > 0 ? grow : shrink;
    this.#replaceMask(operation(this.maskAlpha(), this.width, this.height, radius));
  }

  invertMask() {
    this.#replaceMask(invert(this.maskAlpha()));
  }

  clearMask() {
    this.#replaceMask(new Uint8ClampedArray(this.width * this.height));
  }

  #replaceMask(alpha) {
    if (!this.hasImage) return;
    const rect = { x: 0, y: 0, w: this.width, h: this.height };
    const before = this.maskAlpha();
    if (sameBytes(before, alpha)) return;
    this.#record({ kind: "mask", rect, before, after: alpha });
    this.#putAlpha(rect, alpha);
    this.#changed();
  }

  #putAlpha(rect, alpha) {
    this.mask.putImageData(new ImageData(rgbaOf(alpha, MASK_RGB), rect.w, rect.h), rect.x, rect.y);
  }

  // ------------------------------------------------------------------ undo and redo
  get canUndo() {
    return this.undoStack.length > 0;
  }

  get canRedo() {
    return this.redoStack.length > 0;
  }

  undo() {
    this.#travel(this.undoStack, this.redoStack, false);
  }

  redo() {
    this.#travel(this.redoStack, this.undoStack, true);
  }

  #travel(from, to, forward) {
    const entry = from.pop();
    if (!entry) return;
    this.#apply(entry, forward);
    to.push(entry);
    this.#changed();
  }

  #apply(entry, forward) {
    const full = { x: 0, y: 0, w: this.width, h: this.height };
    if (entry.kind === "mask") {
      this.#putAlpha(entry.rect, forward ? entry.after : entry.before);
      return;
    }
    this.#show(forward ? entry.to : entry.from);
    const mask = forward ? entry.maskAfter : entry.maskBefore;
    this.#putAlpha(full, mask ?? new Uint8ClampedArray(this.width * this.height));
  }

  #record(entry) {
    entry.bytes = [entry.before, entry.after, entry.maskBefore, entry.maskAfter]
      .filter(Boolean)
      .reduce((sum, array) => sum + array.length, 0);
    this.undoStack.push(entry);
    this.redoStack = [];
    let total = this.undoStack.reduce((sum, item) => sum + item.bytes, 0);
    while (total > HISTORY_BUDGET && this.undoStack.length > 1) total -= this.undoStack.shift().bytes;
  }

  #changed() {
    this.dispatchEvent(new Event("change"));
  }

  // ------------------------------------------------------------------ tools
  setTool(tool) {
    this.tool = tool;
    this.#updateCursor();
    this.#drawGuide();
    this.dispatchEvent(new Event("tool"));
  }

  setBrushSize(size) {
    this.brushSize = clamp(Math.round(size), 1, 2000);
    this.#drawGuide();
    this.dispatchEvent(new Event("brush"));
  }

  #beginEdit(point, event) {
    const snapshot = this.maskAlpha();
    const subtract = this.tool === "eraser" || event.altKey;
    this.gesture = { kind: this.tool, snapshot, subtract, points: [point], start: point, last: point };
    if (this.tool === "brush" || this.tool === "eraser") this.#paint(point, point, subtract);
  }

  #paint(from, to, subtract) {
    const context = this.mask;
    context.save();
    context.globalCompositeOperation = subtract ? "destination-out" : "source-over";
    context.strokeStyle = context.fillStyle = `rgb(${MASK_RGB.join(",")})`;
    context.lineWidth = this.brushSize;
    context.lineCap = context.lineJoin = "round";
    context.beginPath();
    if (from.x === to.x && from.y === to.y) {
      context.arc(to.x, to.y, this.brushSize / 2, 0, Math.PI * 2);
      context.fill();
    } else {
      context.moveTo(from.x, from.y);
      context.lineTo(to.x, to.y);
      context.stroke();
    }
    context.restore();
  }

  #fillShape(gesture) {
    const context = this.mask;
    context.save();
    context.globalCompositeOperation = gesture.subtract ? "destination-out" : "source-over";
    context.fillStyle = `rgb(${MASK_RGB.join(",")})`;
    context.beginPath();
    if (gesture.kind === "rect") {
      const { x, y, w, h } = this.#rectOf(gesture.start, gesture.last);
      context.rect(x, y, w, h);
    } else {
      gesture.points.forEach((p, i) => (i ? context.lineTo(p.x, p.y) : context.moveTo(p.x, p.y)));
      context.closePath();
    }
    context.fill();
    context.restore();
  }

  #rectOf(a, b) {
    return { x: Math.min(a.x, b.x), y: Math.min(a.y, b.y), w: Math.abs(a.x - b.x), h: Math.abs(a.y - b.y) };
  }

  #moveEdit(point) {
    const gesture = this.gesture;
    if (gesture.kind === "brush" || gesture.kind === "eraser") this.#paint(gesture.last, point, gesture.subtract);
    else if (gesture.kind === "lasso") gesture.points.push(point);
    gesture.last = point;
  }

  #endEdit() {
    const gesture = this.gesture;
    this.gesture = null;
    if (gesture.kind === "rect" || gesture.kind === "lasso") this.#fillShape(gesture);
    // keep only the changed rectangle of the mask for undo
    const after = this.maskAlpha();
    let [x0, y0, x1, y1] = [this.width, this.height, -1, -1];
    for (let y = 0; y < this.height; y++) {
      const row = y * this.width;
      for (let x = 0; x < this.width; x++) {
        if (after[row + x] !== gesture.snapshot[row + x]) {
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          if (y < y0) y0 = y;
          y1 = y;
        }
      }
    }
    this.#drawGuide();
    if (x1 < 0) return;
    const rect = { x: x0, y: y0, w: x1 - x0 + 1, h: y1 - y0 + 1 };
    this.#record({
      kind: "mask",
      rect,
      before: cropAlpha(gesture.snapshot, this.width, rect),
      after: cropAlpha(after, this.width, rect),
    });
    this.#changed();
  }

  /** Abandon the edit in progress (a second finger turned it into a pinch, or Esc). */
  abortEdit() {
    if (!this.gesture || !this.gesture.snapshot) return false;
    this.#putAlpha({ x: 0, y: 0, w: this.width, h: this.height }, this.gesture.snapshot);
    this.gesture = null;
    this.#drawGuide();
    return true;
  }

  // ------------------------------------------------------------------ zoom and pan
  #applyView() {
    const { scale, x, y } = this.view;
    this.stage.style.transform = `translate(${x}px, ${y}px) scale(${scale})`;
    this.stage.classList.toggle("pixelated", scale >= 2);
    this.#placeWipe();
    this.#drawGuide();
    this.dispatchEvent(new Event("view"));
  }

  fit() {
    if (!this.hasImage) return;
    const { clientWidth: vw, clientHeight: vh } = this.viewport;
    const scale = clamp(Math.min(vw / this.width, vh / this.height) * FIT_MARGIN, MIN_SCALE, MAX_SCALE);
    this.view = { scale, x: (vw - this.width * scale) / 2, y: (vh - this.height * scale) / 2 };
    this.#applyView();
  }

  actualSize() {
    const { clientWidth: vw, clientHeight: vh } = this.viewport;
    this.zoomAt(1 / this.view.scale, vw / 2, vh / 2);
  }

  zoomAt(factor, sx, sy) {
    if (!this.hasImage) return;
    const scale = clamp(this.view.scale * factor, MIN_SCALE, MAX_SCALE);
    const ratio = scale / this.view.scale;
    this.view = { scale, x: sx - (sx - this.view.x) * ratio, y: sy - (sy - this.view.y) * ratio };
    this.#applyView();
  }

  zoomBy(factor) {
    this.zoomAt(factor, this.viewport.clientWidth / 2, this.viewport.clientHeight / 2);
  }

  setSpaceHeld(held) {
    this.spaceHeld = held;
    this.#updateCursor();
  }

  // ------------------------------------------------------------------ before/after wipe
  get canCompare() {
    return Boolean(this.current?.parent);
  }

  setComparing(on) {
    this.comparing = on && this.canCompare;
    this.beforeLayer.hidden = !this.comparing;
    this.wipeBar.hidden = !this.comparing;
    this.stage.classList.toggle("comparing", this.comparing);
    if (this.comparing) this.#drawBefore();
    this.#placeWipe();
    this.#updateCursor();
    this.#drawGuide();
    this.dispatchEvent(new Event("compare"));
  }

  #drawBefore() {
    const context = this.beforeLayer.getContext("2d");
    context.clearRect(0, 0, this.width, this.height);
    context.drawImage(this.current.parent.bitmap, 0, 0);
  }

  setWipe(fraction) {
    this.wipe = clamp(fraction, 0, 1);
    this.#placeWipe();
  }

  #placeWipe() {
    if (!this.comparing) return;
    this.beforeLayer.style.clipPath = `inset(0 ${((1 - this.wipe) * 100).toFixed(3)}% 0 0)`;
    const left = this.view.x + this.wipe * this.width * this.view.scale;
    this.wipeBar.style.left = `${left}px`;
  }

  // ------------------------------------------------------------------ pointer input
  #point(event) {
    const box = this.viewport.getBoundingClientRect();
    return { sx: event.clientX - box.left, sy: event.clientY - box.top };
  }

  #toImage({ sx, sy }) {
    return { x: (sx - this.view.x) / this.view.scale, y: (sy - this.view.y) / this.view.scale };
  }

  #listen() {
    const viewport = this.viewport;
    viewport.addEventListener("pointerdown", (event) => this.#down(event));
    viewport.addEventListener("pointermove", (event) => this.#move(event));
    viewport.addEventListener("pointerup", (event) => this.#up(event));
    viewport.addEventListener("pointercancel", (event) => this.#up(event, true));
    viewport.addEventListener("pointerleave", () => {
      this.hover = null;
      this.#drawGuide();
    });
    viewport.addEventListener("wheel", (event) => this.#wheel(event), { passive: false });
    viewport.addEventListener("contextmenu", (event) => event.preventDefault());
  }

  #down(event) {
    if (!this.hasImage) return;
    this.viewport.focus({ preventScroll: true });
    this.viewport.setPointerCapture(event.pointerId);
    const point = this.#point(event);
    this.pointers.set(event.pointerId, point);
    if (this.pointers.size === 2) {
      this.abortEdit();
      const [a, b] = [...this.pointers.values()];
      this.gesture = {
        kind: "pinch",
        distance: Math.hypot(a.sx - b.sx, a.sy - b.sy) || 1,
        middle: { sx: (a.sx + b.sx) / 2, sy: (a.sy + b.sy) / 2 },
        view: { ...this.view },
      };
      return;
    }
    if (this.pointers.size > 2 || this.gesture) return;
    const pan = event.button === 1 || event.button === 2 || this.spaceHeld;
    if (pan) {
      this.gesture = { kind: "pan", start: point, view: { ...this.view } };
    } else if (this.comparing) {
      this.gesture = { kind: "wipe" };
      this.setWipe(this.#toImage(point).x / this.width);
    } else if (event.button === 0) {
      this.#beginEdit(this.#toImage(point), event);
    }
    this.#updateCursor();
  }

  #move(event) {
    const point = this.#point(event);
    this.hover = point;
    if (this.pointers.has(event.pointerId)) this.pointers.set(event.pointerId, point);
    const gesture = this.gesture;
    if (gesture?.kind === "pinch" && this.pointers.size === 2) {
      const [a, b] = [...this.pointers.values()];
      const distance = Math.hypot(a.sx - b.sx, a.sy - b.sy) || 1;
      const middle = { sx: (a.sx + b.sx) / 2, sy: (a.sy + b.sy) / 2 };
      const scale = clamp(gesture.view.scale * (distance / gesture.distance), MIN_SCALE, MAX_SCALE);
      const anchor = {
        x: (gesture.middle.sx - gesture.view.x) / gesture.view.scale,
        y: (gesture.middle.sy - gesture.view.y) / gesture.view.scale,
      };
      this.view = { scale, x: middle.sx - anchor.x * scale, y: middle.sy - anchor.y * scale };
      this.#applyView();
    } else if (gesture?.kind === "pan") {
      this.view = {
        ...this.view,
        x: gesture.view.x + point.sx - gesture.start.sx,
        y: gesture.view.y + point.sy - gesture.start.sy,
      };
      this.#applyView();
    } else if (gesture?.kind === "wipe") {
      this.setWipe(this.#toImage(point).x / this.width);
    } else if (gesture?.snapshot) {
      // the browser may merge several moves into one event: draw through all of them
      const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
      for (const each of events.length ? events : [event]) this.#moveEdit(this.#toImage(this.#point(each)));
    }
    this.#drawGuide();
  }

  #up(event, cancelled = false) {
    this.pointers.delete(event.pointerId);
    const gesture = this.gesture;
    if (!gesture) return;
    if (gesture.kind === "pinch") {
      if (this.pointers.size === 0) this.gesture = null;
      return;
    }
    if (gesture.snapshot) {
      if (cancelled) this.abortEdit();
      else this.#endEdit();
    } else {
      this.gesture = null;
    }
    this.#updateCursor();
  }

  #wheel(event) {
    if (!this.hasImage) return;
    event.preventDefault();
    const { sx, sy } = this.#point(event);
    const step = event.deltaMode === 1 ? 0.05 : 0.0015;
    this.zoomAt(Math.exp(-event.deltaY * step), sx, sy);
  }

  #updateCursor() {
    let cursor = "draw";
    if (this.gesture?.kind === "pan") cursor = "grabbing";
    else if (this.spaceHeld) cursor = "grab";
    else if (this.comparing) cursor = "wipe";
    else if (this.tool === "rect" || this.tool === "lasso") cursor = "cross";
    this.viewport.dataset.cursor = cursor;
  }

  // ------------------------------------------------------------------ the guide layer
  #resizeGuide() {
    const ratio = window.devicePixelRatio || 1;
    this.guide.width = Math.round(this.viewport.clientWidth * ratio);
    this.guide.height = Math.round(this.viewport.clientHeight * ratio);
    this.#drawGuide();
  }

  #toScreen(point) {
    return { sx: this.view.x + point.x * this.view.scale, sy: this.view.y + point.y * this.view.scale };
  }

  #drawGuide() {
    const ratio = window.devicePixelRatio || 1;
    const context = this.guide.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, this.guide.width, this.guide.height);
    if (!this.hasImage || this.comparing) return;
    const gesture = this.gesture;
    context.lineWidth = 1.5;
    if (gesture?.kind === "rect" || gesture?.kind === "lasso") {
      context.beginPath();
      if (gesture.kind === "rect") {
        const a = this.#toScreen(gesture.start);
        const b = this.#toScreen(gesture.last);
        context.rect(Math.min(a.sx, b.sx), Math.min(a.sy, b.sy), Math.abs(a.sx - b.sx), Math.abs(a.sy - b.sy));
      } else {
        gesture.points.forEach((p, i) => {
          const s = this.#toScreen(p);
          if (i) context.lineTo(s.sx, s.sy);
          else context.moveTo(s.sx, s.sy);
        });
        context.closePath();
      }
      context.fillStyle = gesture.subtract ? "rgba(10, 12, 17, 0.35)" : "rgba(255, 61, 113, 0.25)";
      context.fill();
      context.setLineDash([5, 4]);
      context.strokeStyle = "#fff";
      context.stroke();
      context.setLineDash([]);
      return;
    }
    const brushing = this.tool === "brush" || this.tool === "eraser";
    if (!brushing || !this.hover || this.spaceHeld || gesture?.kind === "pan" || gesture?.kind === "pinch") return;
    const radius = Math.max(1, (this.brushSize / 2) * this.view.scale);
    context.beginPath();
    context.arc(this.hover.sx, this.hover.sy, radius, 0, Math.PI * 2);
    context.strokeStyle = "rgba(0, 0, 0, 0.6)";
    context.lineWidth = 3;
    context.stroke();
    context.strokeStyle = this.tool === "eraser" ? "#9fd3ff" : "#fff";
    context.lineWidth = 1.25;
    context.stroke();
  }
}
