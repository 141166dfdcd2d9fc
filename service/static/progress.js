// A job's progress as people read it: a bar that moves smoothly, what is happening in words,
// and the time left.
//
// The page polls the job every half second, and the worker reports its engine work in counts
// (`work`: done/total tiles or denoising steps). Between polls the bar runs on at the rate those
// counts have been going, but never past the next count, so it neither jumps nor runs ahead of
// the work; when the job ends it glides to the end before the result is shown. The time left
// is the work remaining at the rate seen so far, shown once two different counts have been seen.

const EASE_S = 0.25; // how quickly the bar catches up with where the work is (time constant)
const FINISH_EASE_S = 0.12;
const FINISH_MAX_MS = 900; // never hold a finished result back longer than this

const STAGE_TEXT = {
  decode: "Reading the image…",
  preprocess: "Preparing…",
  inference: "Upscaling…",
  encode: "Saving the result…",
  upload: "Saving the result…",
  retrying: "Something failed; trying again…",
};

export class ProgressView {
  constructor(elements) {
    this.el = elements; // {box, bar, fill, status, detail, eta}
    this.frame = null;
  }

  start(text) {
    this.shown = 0;
    this.reported = 0; // the job's own progress, 0..1, as last polled
    this.work = null; // {first, last: {done, progress, at}, total}: counts as polled
    this.finishing = null;
    this.el.status.textContent = text;
    this.el.detail.textContent = "";
    this.el.eta.textContent = "";
    this.el.box.hidden = false;
    this.draw();
    this.loop();
  }

  // A poll's answer: the job as GET /v1/jobs/{id} gives it.
  update(job) {
    const now = performance.now();
    this.reported = job.progress || 0;
    this.track(job.work, job.progress || 0, now);
    this.say(statusText(job));
    setText(this.el.detail, job.work ? countText(job.work) : "");
    setText(this.el.eta, this.etaText(now));
  }

  // The status line (a live region: it is read out when it changes, so only then).
  say(text) {
    setText(this.el.status, text);
  }

  // Glide to 100 %; resolves when the bar is there.
  finish() {
    this.el.eta.textContent = "";
    if (document.hidden) this.shown = 1; // no animation frames in a hidden tab
    return new Promise((resolve) => {
      this.finishing = resolve;
      setTimeout(() => this.settle(), FINISH_MAX_MS);
      if (this.shown >= 1) this.settle();
    });
  }

  stop() {
    cancelAnimationFrame(this.frame);
    this.frame = null;
    this.el.box.hidden = true;
  }

  track(work, progress, now) {
    if (!work) return;
    const sample = { done: work.done, progress, at: now };
    const known = this.work;
    if (!known || work.done < known.last.done || work.total !== known.total) {
      // the first count, or a retry that started over: measure the rate afresh
      this.work = { first: sample, last: sample, total: work.total };
    } else if (work.done > known.last.done) {
      known.last = sample;
    }
  }

  // Units of work per millisecond, from the first count seen to the latest.
  rate() {
    const w = this.work;
    if (!w || w.last.done <= w.first.done) return 0;
    return (w.last.done - w.first.done) / Math.max(1, w.last.at - w.first.at);
  }

  etaText(now) {
    const rate = this.rate();
    if (!rate) return "";
    const w = this.work;
    const left = (w.total - w.last.done) / rate - (now - w.last.at);
    return left > 0 ? remaining(left / 1000) : "";
  }

  // Where the bar should be now: the last reported progress, run on at the work's rate up to
  // (not past) the next count.
  target(now) {
    if (this.finishing) return 1;
    const w = this.work;
    const rate = this.rate();
    if (!w || !rate || w.last.done >= w.total) return this.reported;
    const perUnit = (w.last.progress - w.first.progress) / (w.last.done - w.first.done);
    const units = Math.min(0.95, rate * (now - w.last.at)); // short of the next count
    return Math.min(w.last.progress + units * perUnit, 0.99);
  }

  loop() {
    let last = performance.now();
    const tick = (now) => {
      const dt = (now - last) / 1000;
      last = now;
      const tau = this.finishing ? FINISH_EASE_S : EASE_S;
      const goal = this.target(now);
      const next = this.shown + (goal - this.shown) * (1 - Math.exp(-dt / tau));
      this.shown = Math.max(this.shown, next);
      if (this.finishing && goal - this.shown < 0.004) this.shown = 1;
      this.draw();
      if (this.finishing && this.shown >= 1) return this.settle();
      this.frame = requestAnimationFrame(tick);
    };
    cancelAnimationFrame(this.frame);
    this.frame = requestAnimationFrame(tick);
  }

  settle() {
    if (!this.finishing) return;
    this.shown = 1;
    this.draw();
    const resolve = this.finishing;
    this.finishing = null;
    cancelAnimationFrame(this.frame);
    resolve();
  }

  draw() {
    const percent = Math.round(this.shown * 1000) / 10;
    this.el.fill.style.transform = `scaleX(${this.shown})`;
    this.el.bar.setAttribute("aria-valuenow", String(percent));
    this.el.bar.setAttribute("aria-valuetext", `${Math.floor(percent)} %`);
  }
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function statusText(job) {
  switch (job.status) {
    case "queued":
      if (job.queue_position > 0) {
        const jobs = job.queue_position === 1 ? "1 job" : `${job.queue_position} jobs`;
        return `Waiting in line: ${jobs} ahead`;
      }
      return "Waiting for a worker…";
    case "running":
      return STAGE_TEXT[job.stage] || "Starting…";
    case "succeeded":
      return "Done";
    default:
      return job.status;
  }
}

function countText(work) {
  const unit = work.unit === "steps" ? "Step" : "Tile";
  return `${unit} ${work.done} of ${work.total}`;
}

function remaining(seconds) {
  if (seconds < 1.5) return "almost done";
  if (seconds < 60) return `about ${Math.round(seconds)} s left`;
  const minutes = Math.round(seconds / 60);
  return `about ${minutes} min left`;
}
