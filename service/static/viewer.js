// The before/after comparison: one view (a zoom and a pan) shown in two panes, so the two
// pictures stay locked together whatever the user does.
//
// Each pane holds a "canvas" the size of the result fitted into the pane; the view is one CSS
// transform, translate(x, y) scale(zoom), applied to both canvases (the original is stretched
// to the result's box, so a pixel of one lies over the same place in the other). In slider mode
// the panes are stacked and the top one (before) is clipped at the split; side by side each
// pane has half the width and the same transform. Wheel and pinch zoom around the pointer,
// dragging pans, the keyboard does both when the viewer has focus (at fit, in slider mode, the
// left and right arrows move the split).

const MAX_PIXEL_ZOOM = 8; // at most 8 screen pixels per output pixel
const WHEEL_SPEED = 0.0015;
const KEY_ZOOM = 1.25;
const KEY_PAN = 0.1; // of the pane, per arrow key press
const SPLIT_STEP = 5; // percent, per arrow key press at fit

export class CompareViewer {
  constructor(root, { slider, zoomLabel }) {
    this.root = root;
    this.slider = slider;
    this.zoomLabel = zoomLabel;
    this.panes = [...root.querySelectorAll(".pane")];
    this.canvases = [...root.querySelectorAll(".canvas")];
    this.divider = root.querySelector(".divider");
    this.before = root.querySelector(".pane.before");
    this.natural = { width: 1, height: 1 };
    this.view = { zoom: 1, x: 0, y: 0 };
    this.fitBox = { width: 0, height: 0, x: 0, y: 0 };
    this.pointers = new Map(); // pointerId -> {x, y} in client coordinates
    this.splitting = null;
    this.listen();
    new ResizeObserver(() => this.layout(true)).observe(root);
  }

  // Show a pair: the result's size is what both pictures are fitted and zoomed by.
  show(beforeUrl, afterUrl, width, height) {
    this.natural = { width, height };
    this.root.querySelector(".pane.after img").src = afterUrl;
    this.before.querySelector("img").src = beforeUrl;
    this.setSplit(Number(this.slider.value));
    this.layout(false);
  }

  setMode(mode) {
    this.root.classList.toggle("slider", mode === "slider");
    this.root.classList.toggle("side", mode === "side");
    this.layout(false);
  }

  // Where the slider splits the stacked panes, in percent of the width (style.css clips the
  // before pane there, in slider mode only).
  setSplit(percent) {
    this.root.style.setProperty("--split", `${percent}%`);
  }

  fit() {
    this.view = { zoom: 1, x: this.fitBox.x, y: this.fitBox.y };
    this.apply();
  }

  // Zoom by `factor` around (px, py) in pane coordinates (the pane's centre by default).
  zoomBy(factor, px = this.paneSize().width / 2, py = this.paneSize().height / 2) {
    const { zoom, x, y } = this.view;
    const next = Math.min(Math.max(zoom * factor, 1), this.maxZoom());
    const ratio = next / zoom;
    this.view = { zoom: next, x: px - (px - x) * ratio, y: py - (py - y) * ratio };
    this.apply();
  }

  panBy(dx, dy) {
    this.view.x += dx;
    this.view.y += dy;
    this.apply();
  }

  paneSize() {
    const pane = this.panes[0];
    return { width: pane.clientWidth, height: pane.clientHeight };
  }

  maxZoom() {
    return Math.max(1, (MAX_PIXEL_ZOOM * this.natural.width) / Math.max(1, this.fitBox.width));
  }

  // Fit the result into a pane; with `keep`, keep the zoom and the point in the middle.
  layout(keep) {
    const { width, height } = this.paneSize();
    if (!width || !height) return;
    const scale = Math.min(width / this.natural.width, height / this.natural.height);
    const old = this.fitBox;
    const fitted = { width: this.natural.width * scale, height: this.natural.height * scale };
    this.fitBox = { ...fitted, x: (width - fitted.width) / 2, y: (height - fitted.height) / 2 };
    for (const canvas of this.canvases) {
      canvas.style.width = `${fitted.width}px`;
      canvas.style.height = `${fitted.height}px`;
    }
    if (keep && old.width) {
      const ratio = fitted.width / old.width;
      this.view.x = this.fitBox.x + (this.view.x - old.x) * ratio;
      this.view.y = this.fitBox.y + (this.view.y - old.y) * ratio;
      this.apply();
    } else {
      this.fit();
    }
  }

  // Keep the picture over the pane (centred on an axis where it is smaller), then draw.
  apply() {
    const pane = this.paneSize();
    const { zoom } = this.view;
    const clamp = (offset, size, room) =>
      size <= room ? (room - size) / 2 : Math.min(0, Math.max(room - size, offset));
    this.view.x = clamp(this.view.x, this.fitBox.width * zoom, pane.width);
    this.view.y = clamp(this.view.y, this.fitBox.height * zoom, pane.height);
    const transform = `translate(${this.view.x}px, ${this.view.y}px) scale(${zoom})`;
    for (const canvas of this.canvases) canvas.style.transform = transform;
    this.root.classList.toggle("zoomed", zoom > 1.001);
    const percent = Math.round(((this.fitBox.width * zoom) / this.natural.width) * 100);
    this.zoomLabel.textContent = zoom > 1.001 ? `${percent}%` : "Fit";
  }

  // Pane coordinates of a client point: within the pane under it (side by side, the two panes
  // have their own origins; stacked, they share one).
  local(event, pane = this.paneAt(event)) {
    const rect = pane.getBoundingClientRect();
    return { x: event.clientX - rect.left, y: event.clientY - rect.top };
  }

  paneAt(event) {
    return event.target.closest?.(".pane") || this.panes[0];
  }

  listen() {
    const root = this.root;
    root.addEventListener("wheel", (event) => this.onWheel(event), { passive: false });
    root.addEventListener("pointerdown", (event) => this.onDown(event));
    root.addEventListener("pointermove", (event) => this.onMove(event));
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      root.addEventListener(type, (event) => this.onUp(event));
    }
    root.addEventListener("keydown", (event) => this.onKey(event));
    root.addEventListener("dblclick", (event) => {
      if (this.view.zoom > 1.001) this.fit();
      else this.zoomBy(2, this.local(event).x, this.local(event).y);
    });
  }

  onWheel(event) {
    event.preventDefault();
    // a trackpad pinch arrives as a wheel event with ctrlKey and small deltas
    const speed = event.ctrlKey ? WHEEL_SPEED * 6 : WHEEL_SPEED;
    const lines = event.deltaMode === WheelEvent.DOM_DELTA_LINE ? 16 : 1;
    const { x, y } = this.local(event);
    this.zoomBy(Math.exp(-event.deltaY * lines * speed), x, y);
  }

  onDown(event) {
    if (event.button !== 0) return;
    if (event.target === this.divider) {
      this.splitting = event.pointerId;
    } else {
      if (!this.pointers.size) this.gesturePane = this.paneAt(event);
      this.pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
      this.root.classList.add("panning");
    }
    this.root.setPointerCapture(event.pointerId);
  }

  onMove(event) {
    if (this.splitting === event.pointerId) {
      const rect = this.root.getBoundingClientRect();
      const percent = Math.min(100, Math.max(0, ((event.clientX - rect.left) / rect.width) * 100));
      this.slider.value = String(Math.round(percent));
      this.setSplit(percent);
      return;
    }
    const last = this.pointers.get(event.pointerId);
    if (!last) return;
    if (this.pointers.size >= 2) {
      const [a, b] = [...this.pointers.values()];
      const before = { mid: midpoint(a, b), span: distance(a, b) };
      this.pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
      const [c, d] = [...this.pointers.values()];
      const after = { mid: midpoint(c, d), span: distance(c, d) };
      const pane = this.gesturePane.getBoundingClientRect();
      this.panBy(after.mid.x - before.mid.x, after.mid.y - before.mid.y);
      if (before.span > 0) {
        this.zoomBy(after.span / before.span, after.mid.x - pane.left, after.mid.y - pane.top);
      }
      return;
    }
    this.pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
    this.panBy(event.clientX - last.x, event.clientY - last.y);
  }

  onUp(event) {
    if (this.splitting === event.pointerId) this.splitting = null;
    this.pointers.delete(event.pointerId);
    if (!this.pointers.size) this.root.classList.remove("panning");
  }

  onKey(event) {
    const sideways = { ArrowLeft: -SPLIT_STEP, ArrowRight: SPLIT_STEP }[event.key];
    if (sideways && this.view.zoom <= 1.001 && this.root.classList.contains("slider")) {
      // nothing to pan at fit: the arrows move the split instead
      const split = Math.min(100, Math.max(0, Number(this.slider.value) + sideways));
      this.slider.value = String(split);
      this.setSplit(split);
      event.preventDefault();
      return;
    }
    const pane = this.paneSize();
    const moves = {
      ArrowLeft: [pane.width * KEY_PAN, 0],
      ArrowRight: [-pane.width * KEY_PAN, 0],
      ArrowUp: [0, pane.height * KEY_PAN],
      ArrowDown: [0, -pane.height * KEY_PAN],
    };
    if (moves[event.key]) this.panBy(...moves[event.key]);
    else if (event.key === "+" || event.key === "=") this.zoomBy(KEY_ZOOM);
    else if (event.key === "-" || event.key === "_") this.zoomBy(1 / KEY_ZOOM);
    else if (event.key === "0") this.fit();
    else return;
    event.preventDefault();
  }
}

function midpoint(a, b) {
  return { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
}

function distance(a, b) {
  return Math.hypot(a.x - b.x, a.y - b.y);
}
