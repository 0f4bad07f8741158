// Brushwork web studio: a client of the HTTP API (/api/v1) and nothing else.
// No build step: one module, plain DOM.

const $ = (id) => document.getElementById(id);
const API = "/api/v1";
const STORE_KEY = "brushwork.form.v1";
const FIELDS = ["prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "steps", "cfg_scale", "distilled_cfg_scale", "sampler", "schedule", "width", "height", "clip_skip", "vae", "batch_size", "batch_count", "styles"];

const state = {
  options: null,       // /api/v1/options
  lastImage: null,     // image record shown large
  jobs: new Map(),     // id -> job (queued or running, this page's and others')
  watching: new Set(), // job ids with an open event stream
  historyBefore: null,
  dirty: new Set(),    // fields the user changed (kept over model defaults)
};

// ------------------------------------------------------------------ HTTP

async function api(path, opts = {}) {
  const init = { headers: { "Content-Type": "application/json", "X-Brushwork-Client": clientId() }, ...opts };
  if (init.body && typeof init.body !== "string") init.body = JSON.stringify(init.body);
  let res;
  try {
    res = await fetch(API + path, init);
  } catch (err) {
    throw Object.assign(new Error("The Brushwork server is not reachable. Is `brushwork serve` still running?"), { status: 0 });
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (!res.ok) throw errorFrom(res.status, data);
  return data;
}

function errorFrom(status, data) {
  const err = new Error("");
  err.status = status;
  err.fields = {};
  if (status === 422 && Array.isArray(data?.detail)) {
    for (const d of data.detail) {
      const field = (d.loc || []).filter((x) => x !== "body").join(".") || "form";
      err.fields[field] = `${d.msg}`;
    }
    err.message = data.message || "Some values are not valid.";
  } else {
    err.message = (data && (data.detail || data.message)) || `The server answered ${status}.`;
    if (data?.field) err.fields[data.field] = err.message;
  }
  return err;
}

function clientId() {
  let id = sessionStorage.getItem("brushwork.client");
  if (!id) {
    id = "web-" + Math.random().toString(36).slice(2, 10);
    sessionStorage.setItem("brushwork.client", id);
  }
  return id;
}

// ------------------------------------------------------------------ errors next to controls

function clearErrors() {
  document.querySelectorAll(".error").forEach((e) => (e.textContent = ""));
}

function showError(err) {
  clearErrors();
  const fields = err.fields || {};
  let placed = false;
  for (const [field, msg] of Object.entries(fields)) {
    // "outpaint.left" goes next to the outpaint buttons
    const key = field === "model" ? null : $(`${field}-error`) ? field : field.split(".")[0];
    const el = key && $(`${key}-error`);
    if (el) {
      el.textContent = msg;
      placed = true;
      const input = $(key);
      if (input) input.setAttribute("aria-invalid", "true");
    }
  }
  if (!placed || !Object.keys(fields).length || fields.model) $("form-error").textContent = err.message;
  else if (Object.keys(fields).length > 1) $("form-error").textContent = err.message;
}

// ------------------------------------------------------------------ form state (never lose the prompt)

function readForm() {
  const v = {};
  for (const f of FIELDS) v[f] = $(f).value;
  return v;
}

function saveForm() {
  localStorage.setItem(STORE_KEY, JSON.stringify({ values: readForm(), dirty: [...state.dirty] }));
}

function restoreForm() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
    if (!saved) return;
    for (const f of FIELDS) if (saved.values?.[f] !== undefined) setField(f, saved.values[f]);
    state.dirty = new Set(saved.dirty || []);
  } catch { /* a damaged entry: start fresh */ }
}

function setField(f, value) {
  const el = $(f);
  if (!el) return;
  if (el.tagName === "SELECT" && value !== "" && ![...el.options].some((o) => o.value === String(value))) {
    el.add(new Option(String(value), String(value)));
  }
  el.value = value;
  syncOutputs();
}

function syncOutputs() {
  $("steps-value").textContent = $("steps").value;
  $("cfg-value").textContent = $("cfg_scale").value;
  $("distilled-value").textContent = $("distilled_cfg_scale").value;
}

// what applies to the loaded model's family (options.applies): a Flux model shows its
// Distilled CFG scale and hides clip skip, the hires fix and image to image
function applies(field) { return state.options?.applies?.[field] !== false; }

function applyFamily(o) {
  const a = o.applies || {};
  $("distilled-field").hidden = !a.distilled_cfg_scale;
  if (o.ranges.distilled_cfg_scale) {
    const r = o.ranges.distilled_cfg_scale;
    $("distilled_cfg_scale").min = r.min; $("distilled_cfg_scale").max = r.max; $("distilled_cfg_scale").step = r.step;
    $("distilled-hint").textContent = capital(r.hint) + ".";
  }
  $("clip-skip-field").hidden = !applies("clip_skip");
  $("mode-img2img").hidden = !applies("refine");
  $("send-img2img").hidden = !applies("refine");
  if (!applies("refine") && refine.mode === "img2img") setMode("txt2img", false);
  $("hires-fix").hidden = refine.mode === "img2img" || !applies("hires");
  for (const f of ["width", "height"]) $(f).step = o.ranges[f].step;
}

function requestBody() {
  const v = readForm();
  const num = (x) => (x === "" ? null : Number(x));
  return {
    prompt: v.prompt,
    negative_prompt: v.negative_prompt,
    seed: v.seed === "" ? -1 : Math.trunc(Number(v.seed)),
    subseed: v.subseed === "" ? -1 : Math.trunc(Number(v.subseed)),
    subseed_strength: v.subseed_strength === "" ? 0 : Number(v.subseed_strength),
    steps: num(v.steps),
    cfg_scale: num(v.cfg_scale),
    distilled_cfg_scale: state.options?.applies?.distilled_cfg_scale ? num(v.distilled_cfg_scale) : null,
    sampler: v.sampler || null,
    schedule: v.schedule || null,
    width: num(v.width),
    height: num(v.height),
    clip_skip: applies("clip_skip") ? num(v.clip_skip) : null,
    vae: v.vae || null,
    batch_size: num(v.batch_size) ?? 1,
    batch_count: num(v.batch_count) ?? 1,
    styles: chosenStyles(),
    ...hiresFields(),
  };
}

// ------------------------------------------------------------------ options, models, LoRAs

async function loadOptions() {
  const o = await api("/options");
  state.options = o;
  fillSelect($("sampler"), o.samplers);
  fillSelect($("schedule"), o.schedules);
  fillSelect($("vae"), o.vaes || ["Automatic", "None"]);
  if (!$("vae").value) $("vae").value = "Automatic";
  $("steps").min = o.ranges.steps.min; $("steps").max = o.ranges.steps.max;
  $("cfg_scale").min = o.ranges.cfg_scale.min; $("cfg_scale").max = o.ranges.cfg_scale.max; $("cfg_scale").step = o.ranges.cfg_scale.step;
  $("steps-hint").textContent = capital(o.ranges.steps.hint) + ".";
  $("cfg-hint").textContent = capital(o.ranges.cfg_scale.hint) + ".";
  const presets = $("size-preset");
  presets.innerHTML = "";
  presets.add(new Option("Custom", ""));
  for (const p of o.size_presets) presets.add(new Option(`${p.width} × ${p.height}`, `${p.width}x${p.height}`));
  // the model's defaults, except where the user chose something
  const d = o.defaults;
  applyFamily(o);
  const defaults = { steps: d.steps, cfg_scale: d.cfg_scale, sampler: d.sampler, schedule: d.schedule, width: d.width, height: d.height, clip_skip: d.clip_skip ?? 1 };
  if (d.distilled_cfg_scale != null) defaults.distilled_cfg_scale = d.distilled_cfg_scale;
  for (const [k, val] of Object.entries(defaults)) if (!state.dirty.has(k) || $(k).value === "" || !validValue(k)) setField(k, val);
  for (const k of ["seed", "batch_size", "batch_count"]) if (!validValue(k)) { setField(k, k === "seed" ? -1 : 1); state.dirty.delete(k); }
  syncModelHint(o);
  syncPreset();
  saveForm();
  fillHires(o);
  scheduleEstimate();
}

function validValue(k) {
  // a value restored from local storage that the form cannot send (out of range, not a
  // whole multiple of the step, a sampler this server lacks) is replaced, not kept
  const el = $(k);
  if (!el) return true;
  if (el.tagName === "SELECT") return [...el.options].some((o) => o.value === el.value);
  if (el.type !== "number" && el.type !== "range") return true;
  const v = Number(el.value);
  if (el.value === "" || !Number.isFinite(v)) return false;
  if (el.min !== "" && v < Number(el.min)) return false;
  if (el.max !== "" && v > Number(el.max)) return false;
  const step = Number(el.step);
  return !(el.step && el.step !== "any" && Number.isFinite(step) && Math.abs(v / step - Math.round(v / step)) > 1e-9);
}

function capital(s) { return s ? s[0].toUpperCase() + s.slice(1) : s; }

function fillSelect(sel, values) {
  const keep = sel.value;
  sel.innerHTML = "";
  for (const v of values) sel.add(new Option(v, v));
  if (keep && values.includes(keep)) sel.value = keep;
}

function syncPreset() {
  const key = `${$("width").value}x${$("height").value}`;
  const sel = $("size-preset");
  sel.value = [...sel.options].some((o) => o.value === key) ? key : "";
  syncSizeHint();
  syncResizeField();
}

// a size far from the model's own (under half or over twice its pixels) draws badly
function syncSizeHint() {
  const n = state.options?.native_size, hint = $("size-hint");
  const area = Number($("width").value) * Number($("height").value);
  const ratio = n ? area / (n.width * n.height) : 1;
  hint.hidden = !n || !area || (ratio >= 0.5 && ratio <= 2);
  hint.textContent = hint.hidden ? "" : n.hint;
}

function syncModelHint(o) {
  const hint = $("model-hint");
  hint.hidden = !o.demo;
  hint.textContent = o.demo ? `Built-in ${o.native_size.width} px demo model. Put your own checkpoints in ${o.folders.checkpoints} in the data folder.` : "";
}

async function loadModels() {
  const models = await api("/models");
  state.models = models;
  const sel = $("model");
  sel.innerHTML = "";
  for (const m of models) {
    const opt = new Option(m.name, m.name);
    opt.selected = m.current;
    sel.add(opt);
  }
}

async function switchModel() {
  const name = $("model").value;
  $("model-status").textContent = `Loading ${name}…`;
  $("model").disabled = true;
  try {
    const job = await api("/models/current", { method: "POST", body: { name } });
    await watchJob(job.id, { quiet: true });
    const done = await api(`/jobs/${job.id}`);
    if (done.state !== "done") throw Object.assign(new Error(done.error || `Loading ${name} failed.`), { fields: {} });
    state.dirty = new Set([...state.dirty].filter((f) => ["prompt", "negative_prompt", "seed", "batch_size", "batch_count"].includes(f)));
    await loadOptions();  // the new model's defaults first, then say it is ready
    $("model-status").textContent = `${name} loaded`;
  } catch (err) {
    $("model-status").textContent = "";
    showError(err);
    await loadModels();
  } finally {
    $("model").disabled = false;
  }
}

async function loadLoras() {
  const list = $("loras");
  list.innerHTML = "";
  const loras = await api("/loras");
  if (!loras.length) {
    list.innerHTML = '<li class="muted">No LoRAs installed.</li>';
    return;
  }
  for (const l of loras) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.lora = l.name;
    b.title = [l.family, l.base_model ? "base model: " + l.base_model : "", l.weight != null ? "recommended weight: " + l.weight : "",
      l.triggers.length ? "trigger words: " + l.triggers.join(", ") : ""].filter(Boolean).join(" · ");
    b.innerHTML = `${l.preview ? `<img class="lora-preview" src="${escapeHtml(l.preview)}" alt="">` : ""}${escapeHtml(l.name)} <small>${escapeHtml(l.base_model || l.family)}</small>`;
    // the tag (at the recommended weight) and the trigger words that wake it up
    b.addEventListener("click", () => insertAtCursor($("prompt"), l.insert_with_triggers || l.insert));
    li.append(b);
    list.append(li);
  }
}

// ------------------------------------------------------------------ prompt styles

function chosenStyles() {
  try {
    const v = JSON.parse($("styles").value || "[]");
    return Array.isArray(v) ? v.filter((x) => typeof x === "string") : [];
  } catch { return []; }
}

function setStyles(names) {
  $("styles").value = JSON.stringify(names);
  state.dirty.add("styles");
  renderStyles();
  saveForm();
}

function toggleStyle(name) {
  const names = chosenStyles();
  const at = names.indexOf(name);
  if (at >= 0) names.splice(at, 1); else names.push(name);
  setStyles(names);
}

function renderStyles() {
  const chosen = chosenStyles();
  const saved = state.styles || [];
  const list = $("style-list");
  list.innerHTML = "";
  $("styles-summary").textContent = chosen.length ? `(${chosen.join(", ")})` : "";
  const missing = chosen.filter((n) => !saved.some((s) => s.name === n));
  if (!saved.length) {
    list.innerHTML = '<li class="muted">No styles saved yet: add rows <code>name,prompt,negative_prompt</code> to styles.csv, or run <code>brushwork styles --add NAME --prompt "{prompt}, watercolor"</code>.</li>';
  }
  for (const st of saved) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.style = st.name;
    const on = chosen.includes(st.name);
    b.setAttribute("aria-pressed", on ? "true" : "false");
    b.title = [st.prompt && "prompt: " + st.prompt, st.negative_prompt && "negative: " + st.negative_prompt].filter(Boolean).join("\n");
    b.textContent = on ? `${chosen.indexOf(st.name) + 1}. ${st.name}` : st.name;
    b.addEventListener("click", () => toggleStyle(st.name));
    li.append(b);
    list.append(li);
  }
  $("styles-error").textContent = missing.length ? `Not saved on this server (skipped): ${missing.join(", ")}` : "";
}

async function loadStyles() {
  try {
    state.styles = await api("/styles");
  } catch (err) {
    state.styles = [];
    $("styles-error").textContent = err.message;
    return;
  }
  renderStyles();
}

function insertAtCursor(area, text) {
  const start = area.selectionStart ?? area.value.length;
  const end = area.selectionEnd ?? area.value.length;
  const before = area.value.slice(0, start);
  const sep = before && !/[\s,]$/.test(before) ? ", " : "";
  area.value = before + sep + text + area.value.slice(end);
  const pos = (before + sep + text).length;
  area.focus();
  area.setSelectionRange(pos, pos);
  area.dispatchEvent(new Event("input", { bubbles: true }));
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// ------------------------------------------------------------------ token counters

const counters = { prompt: "prompt-count", negative_prompt: "negative-count" };
const countTimers = {};

function scheduleCount(field) {
  clearTimeout(countTimers[field]);
  countTimers[field] = setTimeout(async () => {
    try {
      const r = await api("/tokens", { method: "POST", body: { text: $(field).value } });
      const el = $(counters[field]);
      el.textContent = `${r.tokens}/${r.limit}`;
      el.classList.toggle("over", r.chunks > 1);
      el.title = r.chunks > 1 ? `${r.chunks} chunks of 75 tokens: nothing is cut off` : "";
    } catch { /* the counter is a nicety */ }
  }, 250);
}

// ------------------------------------------------------------------ expected time

let estimateTimer = null;
function scheduleEstimate() {
  clearTimeout(estimateTimer);
  estimateTimer = setTimeout(async () => {
    try {
      const body = requestBody();
      delete body.styles;
      // img2img runs the steps its strength picks: the estimate needs the picture too
      if (refine.mode === "img2img" && refine.init) Object.assign(body, refineFields());
      const r = await api("/estimate", { method: "POST", body });
      const e = r.estimate;
      $("estimate").textContent = !e ? "" : e.seconds < 1 ? `under a second on ${e.device}` : `about ${e.text} on ${e.device}`;
      $("estimate").classList.toggle("long", !!(e && e.long));
      $("estimate").title = e ? "From this device's measured speed" : "";
    } catch { $("estimate").textContent = ""; }  // an invalid value: its error shows on Generate
  }, 300);
}

// ------------------------------------------------------------------ generating

async function generate(ev) {
  ev?.preventDefault();
  clearErrors();
  document.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  let job;
  try {
    job = await api("/jobs", { method: "POST", body: generateBody() });
  } catch (err) {
    showError(err);
    return;
  }
  state.jobs.set(job.id, job);
  renderQueue();
  watchJob(job.id).catch(showError);
}

function watchJob(id, { quiet = false } = {}) {
  if (state.watching.has(id)) return Promise.resolve();
  state.watching.add(id);
  return new Promise((resolve) => {
    const es = new EventSource(`${API}/jobs/${id}/events`);
    const finish = () => { es.close(); state.watching.delete(id); resolve(); };
    es.addEventListener("state", (e) => {
      const d = JSON.parse(e.data);
      const job = state.jobs.get(id);
      if (job) { job.state = d.state; job.position = d.position; }
      if (!quiet && d.state === "running") startProgress(id);
      renderQueue();
    });
    es.addEventListener("progress", (e) => {
      if (quiet) return;
      const d = JSON.parse(e.data);
      showProgress(id, d);
    });
    es.addEventListener("image", (e) => {
      if (quiet) return;
      const d = JSON.parse(e.data);
      if (isCompareJob(id)) compareImage(id, d); else addBatchThumb(d.image);
    });
    es.addEventListener("done", (e) => {
      const d = JSON.parse(e.data);
      state.jobs.delete(id);
      renderQueue();
      if (!quiet) jobDone(id, d);
      finish();
    });
    es.onerror = () => {
      // the stream broke (server restart?): ask for the job's state instead
      es.close();
      state.watching.delete(id);
      setTimeout(async () => {
        try {
          const j = await api(`/jobs/${id}`);
          if (["done", "failed", "cancelled", "interrupted"].includes(j.state)) {
            state.jobs.delete(id);
            renderQueue();
            if (!quiet) jobDone(id, { state: j.state, error: j.error, images: j.images, warnings: j.warnings });
            resolve();
          } else {
            watchJob(id, { quiet }).then(resolve);
          }
        } catch (err) { showError(err); resolve(); }
      }, 1000);
    };
  });
}

let progressJob = null;

function startProgress(id) {
  progressJob = id;
  $("progress").hidden = false;
  // the last picture's settings are not this job's: hide them until its first image
  $("params").hidden = true;
  $("stopped-note").hidden = true;
  $("image-actions").hidden = true;
  if (window.matchMedia("(max-width: 760px)").matches) {
    // on a phone the result is below the form: bring the progress bar into view
    $("progress").scrollIntoView({ block: "start", behavior: "smooth" });
  }
  $("interrupt").disabled = false;
  $("batch").innerHTML = "";
  setProgress(0, "Starting…");
}

function showProgress(id, d) {
  if (progressJob !== id) startProgress(id);
  const pct = Math.round((100 * d.step) / d.total);
  const eta = d.eta != null ? ` · ETA ${d.eta < 1 ? "<1" : Math.round(d.eta)} s` : "";
  setProgress(pct, `Step ${d.step}/${d.total}${eta}`);
  if (d.preview) {
    const p = $("preview");
    p.src = d.preview;
    p.hidden = false;
    $("image").hidden = true;
    $("placeholder").hidden = true;
  }
}

function setProgress(pct, text) {
  $("progress-fill").style.width = pct + "%";
  document.querySelector(".progress .track").setAttribute("aria-valuenow", String(pct));
  $("progress-text").textContent = text;
}

function jobDone(id, d) {
  if (progressJob === id) {
    progressJob = null;
    $("interrupt").disabled = true;
    $("preview").hidden = true;
    const label = { done: "Done", cancelled: "Interrupted", interrupted: "Interrupted", failed: "Failed" }[d.state] || d.state;
    setProgress(d.state === "done" ? 100 : 0, label);
  }
  if (d.state === "failed") {
    showError(Object.assign(new Error(d.error || "The job failed."), { fields: {} }));
  } else if (d.warnings?.length) {
    $("form-error").textContent = d.warnings.join(" ");
  }
  if (compare.jobs.has(id)) {
    compareDone(id, d);
  } else if (d.images?.length) {
    showImage(d.images[0]);
    $("batch").innerHTML = "";
    if (d.images.length > 1) for (const im of d.images) addBatchThumb(im);
  }
  outpaintDone(id, d);
  refreshHistory();
}

function addBatchThumb(im) {
  if ([...$("batch").querySelectorAll("button")].some((b) => b.dataset.id === String(im.id))) return;
  $("batch").append(thumb(im));
}

function showImage(im) {
  state.lastImage = im;
  const img = $("image");
  img.src = im.url;
  img.alt = `Generated image: ${im.prompt || "(no prompt)"}, seed ${im.seed}`;
  img.hidden = false;
  img.dataset.id = im.id;
  $("preview").hidden = true;
  $("placeholder").hidden = true;
  $("image-actions").hidden = false;
  $("open-image").href = im.url;
  $("params").textContent = im.infotext;
  $("params").hidden = false;
  const note = $("stopped-note");
  note.hidden = !im.stopped_at;
  if (im.stopped_at) note.textContent = `Stopped at step ${im.stopped_at}: this picture is partly denoised. Reuse settings re-creates it the same way.`;
}

async function interrupt() {
  if (!progressJob) return;
  try { await api(`/jobs/${progressJob}/cancel`, { method: "POST" }); } catch (err) { showError(err); }
}

// ------------------------------------------------------------------ queue

async function refreshQueue() {
  try {
    const jobs = await api("/jobs?state=queued,running&limit=50");
    for (const j of jobs) if (!state.jobs.has(j.id)) state.jobs.set(j.id, j);
    for (const id of [...state.jobs.keys()]) if (!jobs.some((j) => j.id === id) && !state.watching.has(id)) state.jobs.delete(id);
    renderQueue();
  } catch { /* shown elsewhere */ }
}

function renderQueue() {
  const ul = $("queue");
  ul.innerHTML = "";
  const jobs = [...state.jobs.values()].filter((j) => j.kind !== "load");
  if (!jobs.length) {
    ul.innerHTML = '<li class="muted">Nothing waiting.</li>';
    return;
  }
  for (const j of jobs) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    const up = j.kind === "upscale" ? j.request?.upscale : null;
    const prompt = up ? `Upscale ×${up.scale} (${up.upscaler})` : j.request?.prompt || "(no prompt)";
    label.textContent = `${j.state === "running" ? "▶" : "…"} ${prompt}`;
    label.title = prompt;
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = "Cancel";
    b.setAttribute("aria-label", `Cancel: ${prompt}`);
    b.addEventListener("click", async () => {
      try { await api(`/jobs/${j.id}/cancel`, { method: "POST" }); } catch (err) { showError(err); }
      refreshQueue();
    });
    li.append(label, b);
    ul.append(li);
  }
}

// ------------------------------------------------------------------ history

function thumb(im) {
  const b = document.createElement("button");
  b.type = "button";
  b.dataset.id = im.id;
  b.title = `${im.prompt}\nseed ${im.seed}` + (im.stopped_at ? `\nstopped at step ${im.stopped_at}` : "");
  if (im.stopped_at) b.classList.add("stopped");
  const img = document.createElement("img");
  img.loading = "lazy";
  img.decoding = "async";
  img.src = `${API}/images/${im.id}/thumb`;
  img.alt = `${im.prompt || "(no prompt)"}, seed ${im.seed}`;
  img.width = 96; img.height = 96;
  b.append(img);
  if (im.stopped_at) {
    const mark = document.createElement("span");
    mark.className = "badge";
    mark.textContent = `stopped ${im.stopped_at}`;
    b.append(mark);
  }
  b.addEventListener("click", () => showImage(im));
  const li = document.createElement("li");
  li.append(b);
  return li;
}

async function loadHistory(more = false) {
  const q = more && state.historyBefore ? `&before=${state.historyBefore}` : "";
  const images = await api(`/images?limit=60${q}`);
  const ul = $("history");
  if (!more) ul.innerHTML = "";
  for (const im of images) ul.append(thumb(im));
  if (images.length) state.historyBefore = images[images.length - 1].id;
  $("history-more").hidden = images.length < 60;
  if (!more && images.length && !state.lastImage && $("image").hidden) showImage(images[0]);
}

async function refreshHistory() {
  // prepend what is new since the newest thumbnail
  const ul = $("history");
  const newest = Number(ul.querySelector("button")?.dataset.id || 0);
  const images = await api("/images?limit=60");
  const fresh = images.filter((im) => im.id > newest).reverse();
  for (const im of fresh) ul.prepend(thumb(im));
}

// ------------------------------------------------------------------ reuse and drop

function applyParameters(p, unstyled) {
  if (unstyled) {
    // the picture's prompts hold its styles' words: show them without, and pick the styles
    p = { ...p, Prompt: unstyled.prompt, "Negative prompt": unstyled.negative_prompt };
    setStyles(unstyled.styles);
  } else if (p.Prompt !== undefined) {
    setStyles([]);
  }
  const map = { Prompt: "prompt", "Negative prompt": "negative_prompt", Steps: "steps", "CFG scale": "cfg_scale", "Distilled CFG Scale": "distilled_cfg_scale", Seed: "seed", "Size-1": "width", "Size-2": "height",
    "Variation seed": "subseed", "Variation seed strength": "subseed_strength" };
  // a picture without a variation seed was made from its seed alone
  if (p.Seed !== undefined && p["Variation seed strength"] === undefined) { p = { ...p, "Variation seed strength": "0" }; }
  for (const [k, f] of Object.entries(map)) if (p[k] !== undefined) { setField(f, p[k]); state.dirty.add(f); }
  if (p["Denoising strength"] !== undefined && Number.isFinite(Number(p["Denoising strength"]))) {
    $("denoising_strength").value = p["Denoising strength"];
    syncRefineOutputs();
    saveRefine();
  }
  if (p.Sampler) {
    let sampler = p.Sampler;
    let schedule = p["Schedule type"];
    for (const s of state.options?.schedules || []) {
      if (sampler.endsWith(" " + s) && !state.options.samplers.includes(sampler)) { sampler = sampler.slice(0, -s.length - 1); schedule = schedule || s; }
    }
    setField("sampler", sampler); state.dirty.add("sampler");
    if (schedule) { setField("schedule", schedule); state.dirty.add("schedule"); }
  }
  if (p.Steps !== undefined) {  // a picture's settings: its VAE file, else the checkpoint's own; its clip skip
    setField("vae", p.VAE || "None"); state.dirty.add("vae");
    setField("clip_skip", p["Clip skip"] || 1); state.dirty.add("clip_skip");
  }
  syncPreset();
  scheduleCount("prompt");
  scheduleCount("negative_prompt");
  saveForm();
  switchToModelOf(p).catch(showError);
}

async function switchToModelOf(p) {
  // the picture's checkpoint, by hash first, then by name; say so when it is not here
  if (!p.Model && !p["Model hash"]) return;
  const hash = (p["Model hash"] || "").toLowerCase();
  const models = await api("/models");  // fresh: hashes are known once a file was hashed
  state.models = models;
  const found = models.find((m) => hash && m.hash && m.hash.toLowerCase().startsWith(hash)) || models.find((m) => p.Model && m.name === p.Model);
  if (!found) {
    if (p.Model) $("model-status").textContent = `Made with ${p.Model}, which is not among your checkpoints; the current one is kept.`;
    return;
  }
  if (found.name !== $("model").value) {
    $("model").value = found.name;
    switchModel();
  }
}

async function reuseSettings() {
  if (!state.lastImage) return;
  const r = await api("/png-info", { method: "POST", body: { image: await urlToBase64(state.lastImage.url) } });
  applyParameters(r.parameters, r.unstyled);
}

function reuseSeed() {
  if (!state.lastImage) return;
  setField("seed", state.lastImage.seed);
  state.dirty.add("seed");
  saveForm();
}

async function urlToBase64(url) {
  const blob = await (await fetch(url)).blob();
  return fileToBase64(blob);
}

function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result).split(",", 2)[1]);
    r.onerror = () => reject(new Error("could not read the file"));
    r.readAsDataURL(file);
  });
}

async function dropFile(file) {
  clearErrors();
  if (!file) return;
  try {
    const r = await api("/png-info", { method: "POST", body: { image: await fileToBase64(file) } });
    if (!r.infotext) {
      $("form-error").textContent = `${file.name} has no generation parameters in it (it was not made by Brushwork or AUTOMATIC1111, or they were stripped).`;
      return;
    }
    applyParameters(r.parameters, r.unstyled);
    $("model-status").textContent = r.parameters.Model ? `Settings restored from ${file.name} (made with ${r.parameters.Model})` : `Settings restored from ${file.name}`;
  } catch (err) {
    showError(err);
  }
}

// ------------------------------------------------------------------ image to image, inpaint, outpaint

const REFINE_KEY = "brushwork.refine.v1";
// kept in local storage like the form (the image and the mask are not: too big)
const REFINE_FIELDS = ["denoising_strength", "brush_size", "resize_mode", "mask_blur", "masked_content", "inpaint_area", "only_masked_padding", "invert_mask", "outpaint_amount", "outpaint_fill"];

const refine = {
  mode: "txt2img",
  init: null,          // {dataUrl, width, height}: the picture sent as init_image
  strokes: [],         // painted strokes and clears, in order (Undo pops the last)
  current: null,       // the stroke being drawn
  erase: false,
  outpaintJobs: new Set(),
};

function saveRefine() {
  const values = {};
  for (const f of REFINE_FIELDS) values[f] = $(f).type === "checkbox" ? $(f).checked : $(f).value;
  localStorage.setItem(REFINE_KEY, JSON.stringify({ mode: refine.mode, values }));
}

function restoreRefine() {
  try {
    const saved = JSON.parse(localStorage.getItem(REFINE_KEY) || "null");
    if (!saved) return;
    for (const f of REFINE_FIELDS) {
      const v = saved.values?.[f];
      if (v === undefined) continue;
      const el = $(f);
      if (el.type === "checkbox") { el.checked = !!v; continue; }
      const before = el.value;
      el.value = v;
      if (!validValue(f) || el.value === "") el.value = before;  // a stale or damaged value: keep the default
    }
    setMode(saved.mode === "img2img" ? "img2img" : "txt2img", false);
  } catch { /* start fresh */ }
}

function setMode(mode, save = true) {
  refine.mode = mode;
  $("hires-fix").hidden = mode === "img2img" || !applies("hires");  // hires fix is a txt2img option (not for Flux yet)
  $("mode-txt2img").setAttribute("aria-pressed", String(mode === "txt2img"));
  $("mode-img2img").setAttribute("aria-pressed", String(mode === "img2img"));
  $("img2img").hidden = mode !== "img2img";
  syncResizeField();
  if (save) saveRefine();
  if (state.options) scheduleEstimate();
}

function syncRefineOutputs() {
  $("strength-value").textContent = Number($("denoising_strength").value).toFixed(2);
  $("brush-value").textContent = $("brush_size").value + " px";
}

// the picture, from a Blob (a file, a drop, a result fetched by its URL)
async function setInitFromBlob(blob) {
  if (!blob || !/^image\//.test(blob.type || "image/png")) throw Object.assign(new Error("That is not an image (PNG, JPEG or WebP)."), { fields: { init_image: "That is not an image (PNG, JPEG or WebP)." } });
  let bitmap;
  try { bitmap = await createImageBitmap(blob); } catch {
    throw Object.assign(new Error("not a readable image"), { fields: { init_image: "The file is not a readable PNG, JPEG or WebP image." } });
  }
  const canvas = $("init-canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close?.();
  // a PNG goes as its own bytes (exact pixels, transparency kept); others as a PNG of the canvas
  const dataUrl = blob.type === "image/png" ? "data:image/png;base64," + await fileToBase64(blob) : canvas.toDataURL("image/png");
  refine.init = { dataUrl, width: canvas.width, height: canvas.height };
  const mask = $("mask-canvas");
  mask.width = canvas.width;
  mask.height = canvas.height;
  refine.strokes = [];
  refine.current = null;
  redrawMask();
  $("canvas-wrap").hidden = false;
  $("init-placeholder").hidden = true;
  $("init-remove").disabled = false;
  $("init-size").textContent = `${canvas.width} × ${canvas.height}`;
  $("init_image-error").textContent = "";
  syncResizeField();
}

function removeInit() {
  refine.init = null;
  refine.strokes = [];
  $("canvas-wrap").hidden = true;
  $("init-placeholder").hidden = false;
  $("init-remove").disabled = true;
  $("init-size").textContent = "";
  redrawMask();
  syncResizeField();
}

// the form's size follows the picture (multiples of 8, as the server rounds it)
function sizeFormToInit() {
  if (!refine.init) return;
  const r8 = (x) => Math.max(64, Math.round(x / 8) * 8);
  setField("width", r8(refine.init.width));
  setField("height", r8(refine.init.height));
  state.dirty.add("width"); state.dirty.add("height");
  syncPreset();
  saveForm();
  scheduleEstimate();
}

async function sendToImg2img() {
  if (!state.lastImage) return;
  const blob = await (await fetch(state.lastImage.url)).blob();
  await setInitFromBlob(blob);
  setMode("img2img");
  sizeFormToInit();
  $("img2img").scrollIntoView({ block: "nearest" });
}

function syncResizeField() {
  const field = $("resize-field");
  const init = refine.init;
  const w = Number($("width").value), h = Number($("height").value);
  const r8 = (x) => Math.round(x / 8) * 8;
  const differs = !!init && refine.mode === "img2img" && w > 0 && h > 0 && (w !== r8(init.width) || h !== r8(init.height));
  field.hidden = !differs;
  $("resize-hint").textContent = differs ? `The picture is ${init.width} × ${init.height}; the result will be ${w} × ${h}.` : "";
}

// ---- mask painting: strokes in the picture's own pixels, shown half transparent

function maskPoint(ev) {
  const c = $("mask-canvas");
  const r = c.getBoundingClientRect();
  return [((ev.clientX - r.left) * c.width) / r.width, ((ev.clientY - r.top) * c.height) / r.height];
}

function drawStroke(ctx, s) {
  ctx.save();
  ctx.globalCompositeOperation = s.erase ? "destination-out" : "source-over";
  ctx.fillStyle = ctx.strokeStyle = "#ffffff";
  ctx.lineWidth = s.size;
  ctx.lineCap = ctx.lineJoin = "round";
  const [x0, y0] = s.points[0];
  if (s.points.length === 1) {
    ctx.beginPath();
    ctx.arc(x0, y0, s.size / 2, 0, 2 * Math.PI);
    ctx.fill();
  } else {
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    for (const [x, y] of s.points.slice(1)) ctx.lineTo(x, y);
    ctx.stroke();
  }
  ctx.restore();
}

function redrawMask() {
  const c = $("mask-canvas");
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  for (const s of refine.current ? [...refine.strokes, refine.current] : refine.strokes) {
    if (s.clear) ctx.clearRect(0, 0, c.width, c.height); else drawStroke(ctx, s);
  }
  syncMaskButtons();
}

function maskPainted() {
  const c = $("mask-canvas");
  if (!refine.init || !refine.strokes.some((s) => !s.clear && !s.erase) || !c.width) return false;
  const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  for (let i = 3; i < data.length; i += 4) if (data[i] >= 128) return true;
  return false;
}

function syncMaskButtons() {
  const painted = maskPainted();
  $("mask-canvas").dataset.painted = String(painted);
  $("mask-undo").disabled = !refine.strokes.length;
  $("mask-clear").disabled = !painted;
}

// the mask as the server wants it: black and white, the picture's size, white = repaint
function maskDataUrl() {
  if (!maskPainted()) return null;
  const c = $("mask-canvas");
  const out = document.createElement("canvas");
  out.width = c.width; out.height = c.height;
  const octx = out.getContext("2d");
  const src = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const img = octx.createImageData(c.width, c.height);
  for (let i = 0; i < src.length; i += 4) {
    const v = src[i + 3] >= 128 ? 255 : 0;
    img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
    img.data[i + 3] = 255;
  }
  octx.putImageData(img, 0, 0);
  return out.toDataURL("image/png");
}

function wireMask() {
  const c = $("mask-canvas");
  c.addEventListener("pointerdown", (ev) => {
    if (!refine.init || (ev.pointerType === "mouse" && ev.button !== 0)) return;
    ev.preventDefault();
    try { c.setPointerCapture(ev.pointerId); } catch { /* a synthetic pointer: nothing to capture */ }
    refine.current = { erase: refine.erase, size: Number($("brush_size").value), points: [maskPoint(ev)], pointer: ev.pointerId };
    redrawMask();
  });
  c.addEventListener("pointermove", (ev) => {
    const s = refine.current;
    if (!s || s.pointer !== ev.pointerId) return;
    const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [];
    for (const e of events.length ? events : [ev]) s.points.push(maskPoint(e));
    redrawMask();
  });
  const end = (ev) => {
    const s = refine.current;
    if (!s || s.pointer !== ev.pointerId) return;
    refine.current = null;
    delete s.pointer;
    refine.strokes.push(s);
    redrawMask();
  };
  c.addEventListener("pointerup", end);
  c.addEventListener("pointercancel", end);
  $("mask-undo").addEventListener("click", () => { refine.strokes.pop(); redrawMask(); });
  $("mask-clear").addEventListener("click", () => { if (maskPainted()) refine.strokes.push({ clear: true }); redrawMask(); });
  const tool = (erase) => {
    refine.erase = erase;
    $("brush-paint").setAttribute("aria-pressed", String(!erase));
    $("brush-erase").setAttribute("aria-pressed", String(erase));
  };
  $("brush-paint").addEventListener("click", () => tool(false));
  $("brush-erase").addEventListener("click", () => tool(true));
}

// ---- the request

function refineFields() {
  const num = (f) => Number($(f).value);
  return {
    init_image: refine.init.dataUrl,
    denoising_strength: num("denoising_strength"),
    resize_mode: $("resize_mode").value,
    mask_blur: Math.trunc(num("mask_blur")),
    masked_content: $("masked_content").value,
    inpaint_area: $("inpaint_area").value,
    only_masked_padding: Math.trunc(num("only_masked_padding")),
    invert_mask: $("invert_mask").checked,
  };
}

// the body for Generate: txt2img as before, or the picture, its mask and options
function generateBody() {
  const body = requestBody();
  if (refine.mode !== "img2img") return body;
  if (!refine.init) {
    throw Object.assign(new Error("Choose an image first."), { fields: { init_image: "Choose an image first: drop one here, pick a file, or press Send to img2img under a result." } });
  }
  Object.assign(body, refineFields());
  const mask = maskDataUrl();
  if (mask) body.mask = mask;
  return body;
}

async function outpaint(side) {
  clearErrors();
  if (!refine.init) {
    showError(Object.assign(new Error("Choose an image first."), { fields: { init_image: "Choose an image first: outpainting extends the init image." } }));
    return;
  }
  const body = { ...requestBody(), ...refineFields(), width: null, height: null, batch_size: 1, batch_count: 1 };
  body.outpaint = { [side]: Number($("outpaint_amount").value) };
  body.outpaint_fill = $("outpaint_fill").value;
  let job;
  try {
    job = await api("/jobs", { method: "POST", body });
  } catch (err) {
    showError(err);
    return;
  }
  refine.outpaintJobs.add(job.id);
  state.jobs.set(job.id, job);
  renderQueue();
  watchJob(job.id).catch(showError);
}

// an outpaint job's picture becomes the new init image (so pressing again extends further)
async function outpaintDone(id, d) {
  if (!refine.outpaintJobs.delete(id) || d.state !== "done" || !d.images?.length) return;
  try {
    const blob = await (await fetch(d.images[0].url)).blob();
    await setInitFromBlob(blob);
    sizeFormToInit();
  } catch (err) { showError(err); }
}

function wireRefine() {
  $("mode-txt2img").addEventListener("click", () => setMode("txt2img"));
  $("mode-img2img").addEventListener("click", () => setMode("img2img"));
  $("send-img2img").addEventListener("click", () => sendToImg2img().catch(showError));
  $("init-pick").addEventListener("click", () => $("init-file").click());
  $("init-file").addEventListener("change", () => {
    const f = $("init-file").files[0];
    if (f) setInitFromBlob(f).then(sizeFormToInit).catch(showError);
    $("init-file").value = "";
  });
  $("init-remove").addEventListener("click", removeInit);
  for (const f of REFINE_FIELDS) {
    $(f).addEventListener($(f).tagName === "SELECT" || $(f).type === "checkbox" ? "change" : "input", () => {
      $(f).removeAttribute("aria-invalid");
      const err = $(`${f}-error`);
      if (err) err.textContent = "";
      syncRefineOutputs();
      saveRefine();
      if (f === "denoising_strength" || f === "resize_mode") scheduleEstimate();
    });
  }
  for (const b of document.querySelectorAll("button.extend")) b.addEventListener("click", () => outpaint(b.dataset.side));
  for (const f of ["width", "height"]) $(f).addEventListener("input", syncResizeField);
  $("size-preset").addEventListener("change", syncResizeField);
  // a picture dropped on the init area becomes the init image; elsewhere a drop restores settings
  const area = $("init-area");
  area.addEventListener("dragover", (e) => { e.preventDefault(); area.classList.add("over"); $("drop").textContent = "Drop the picture to use it as the init image"; });
  area.addEventListener("dragleave", () => { area.classList.remove("over"); $("drop").textContent = "Drop a PNG to restore its settings"; });
  area.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation();
    area.classList.remove("over");
    endDrag();
    const f = e.dataTransfer.files[0];
    if (f) setInitFromBlob(f).then(sizeFormToInit).catch(showError);
  });
  wireMask();
  syncRefineOutputs();
}

// ------------------------------------------------------------------ compare (POST /api/v1/compare)

const COMPARE_KEY = "brushwork.compare.v1";
const AXIS_KEYS = ["x", "y", "z"];
const COMPARE_CHECKS = ["compare_vary_x", "compare_vary_y", "compare_vary_z", "compare_keep_random"];
// the axes whose values come from the server's lists: a chip per value appends it
const CHOICE_AXES = { "Sampler": () => state.options?.samplers || [], "Schedule type": () => state.options?.schedules || [], "Checkpoint name": () => (state.models || []).map((m) => m.name),
  "Hires sampler": () => state.options?.samplers || [], "Hires upscaler": () => [...(state.options?.latent_upscale_modes || []), ...(state.options?.upscalers || []).filter((n) => n !== "None")],
  "VAE": () => state.options?.vaes || ["Automatic", "None"] };
const NUMBER_AXES = ["Seed", "Steps", "CFG Scale", "Clip skip", "Var. seed", "Var. strength", "Denoising", "Hires steps"];

const compare = {
  jobs: new Map(),  // job id -> {axes, cells: Map "x,y,z" -> image, grid}
};

function saveCompare() {
  const values = { open: $("compare").open, legend: $("compare_legend").checked, margin: $("compare_margin").value };
  for (const id of COMPARE_CHECKS) values[id] = $(id).checked;
  for (const k of AXIS_KEYS) { values[`${k}_type`] = $(`compare_${k}_type`).value; values[k] = $(`compare_${k}`).value; }
  localStorage.setItem(COMPARE_KEY, JSON.stringify(values));
}

function restoreCompare() {
  try {
    const saved = JSON.parse(localStorage.getItem(COMPARE_KEY) || "null");
    if (!saved) return;
    for (const k of AXIS_KEYS) {
      const sel = $(`compare_${k}_type`);
      if ([...sel.options].some((o) => o.value === saved[`${k}_type`])) sel.value = saved[`${k}_type`];
      if (typeof saved[k] === "string") $(`compare_${k}`).value = saved[k];
    }
    if (typeof saved.legend === "boolean") $("compare_legend").checked = saved.legend;
    for (const id of COMPARE_CHECKS) if (typeof saved[id] === "boolean") $(id).checked = saved[id];
    if (typeof saved.margin === "string") $("compare_margin").value = saved.margin;
    if (saved.open) $("compare").open = true;
  } catch { /* start fresh */ }
}

// the chips under an axis whose values are names from the server's lists
function renderAxisChoices(k) {
  const type = $(`compare_${k}_type`).value;
  const list = $(`compare_${k}-choices`);
  const none = type === "Nothing";
  $(`compare_${k}`).disabled = none;
  list.innerHTML = "";
  list.hidden = !CHOICE_AXES[type];
  if (!CHOICE_AXES[type]) return;
  for (const name of CHOICE_AXES[type]()) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = name;
    b.title = `Add ${name} to the ${k.toUpperCase()} values`;
    b.addEventListener("click", () => appendAxisValue(k, name));
    li.append(b);
    list.append(li);
  }
}

function renderAllAxisChoices() { for (const k of AXIS_KEYS) renderAxisChoices(k); }

function appendAxisValue(k, name) {
  const input = $(`compare_${k}`);
  const item = /[,"]/.test(name) ? `"${name.replace(/"/g, '""')}"` : name;
  const have = splitValues(input.value).map((v) => v.trim());
  if (have.includes(name)) return;
  input.value = input.value.trim() ? input.value.replace(/[\s,]*$/, "") + "," + item : item;
  input.dispatchEvent(new Event("input", { bubbles: true }));
}

// "a, b, \"c,d\"" -> ["a", "b", "c,d"] (A1111's values are CSV)
function splitValues(text) {
  const out = [];
  let cur = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { cur += '"'; i++; } else if (c === '"') quoted = false; else cur += c;
    } else if (c === '"' && !cur.trim()) { quoted = true; cur = ""; } else if (c === ",") { out.push(cur.trim()); cur = ""; } else cur += c;
  }
  if (cur.trim() || out.length) out.push(cur.trim());
  return out.filter((v) => v !== "");
}

// the values as headers for the live grid; the server parses them for real (a value
// this cannot expand is shown as written, a cell past the list gets "#n")
function headerValues(type, text) {
  const items = splitValues(text);
  if (!NUMBER_AXES.includes(type)) return items;
  const num = "([+-]?\\d+(?:\\.\\d+)?)";
  const range = new RegExp(`^${num}\\s*-\\s*${num}\\s*(?:\\(\\s*${num}\\s*\\)|\\[\\s*(\\d+)\\s*\\])?$`);
  const round = (v) => String(Math.round(v * 1e6) / 1e6);
  const out = [];
  for (const item of items) {
    const m = item.match(range);
    if (!m) { out.push(item); continue; }
    const a = Number(m[1]), b = Number(m[2]);
    if (m[4]) {
      const n = Number(m[4]);
      for (let i = 0; i < n && out.length < 1024; i++) out.push(round(n === 1 ? a : a + ((b - a) * i) / (n - 1)));
    } else {
      const step = m[3] ? Number(m[3]) : (b >= a ? 1 : -1);
      if (!step || (b - a) * step < 0) { out.push(item); continue; }
      for (let v = a; (step > 0 ? v <= b + 1e-9 : v >= b - 1e-9) && out.length < 1024; v += step) out.push(round(v));
    }
  }
  return out;
}

function compareAxes() {
  return AXIS_KEYS.map((k) => {
    const type = $(`compare_${k}_type`).value;
    const values = $(`compare_${k}`).value.trim();
    return type === "Nothing" ? null : { key: k, type, text: values, values: headerValues(type, values) };
  });
}

function compareError(field, msg) {
  showError(Object.assign(new Error(msg), { fields: { [field]: msg } }));
}

async function runCompare() {
  clearErrors();
  document.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  const axes = compareAxes();
  for (const a of axes) if (a && !a.text) return compareError(`compare_${a.key}`, `Type the ${a.type} values, e.g. ${a.type === "Sampler" ? "Euler,DPM++ 2M" : "1,2,3"}.`);
  if (!axes[0]) return compareError("compare_x", "Pick what changes across (the X axis).");
  let body;
  try {
    body = { ...generateBody(), batch_size: 1, batch_count: 1 };
  } catch (err) { showError(err); return; }
  for (const a of axes) if (a) body[a.key] = `${a.type}: ${a.text}`;
  body.draw_legend = $("compare_legend").checked;
  body.vary_seeds = ["x", "y", "z"].map((a) => $(`compare_vary_${a}`).checked);
  body.keep_random_seeds = $("compare_keep_random").checked;
  body.margin = Math.trunc(Number($("compare_margin").value) || 0);
  let job;
  try {
    job = await api("/compare", { method: "POST", body });
  } catch (err) {
    // the server names the axis as x, y or z: its message goes beside that field
    const fields = {};
    for (const [f, msg] of Object.entries(err.fields || {})) fields[AXIS_KEYS.includes(f) || f === "margin" ? `compare_${f}` : f] = msg;
    err.fields = fields;
    showError(err);
    return;
  }
  compare.jobs.set(job.id, { axes, cells: new Map(), grid: null });
  startCompareGrid(job.id);
  state.jobs.set(job.id, job);
  renderQueue();
  watchJob(job.id).catch(showError);
}

// a compare job this page did not start (a reload): its axes from the job's request
function compareJob(id) {
  let c = compare.jobs.get(id);
  if (c) return c;
  const spec = state.jobs.get(id)?.request?.compare || {};
  const axes = AXIS_KEYS.map((k) => {
    const text = spec[k];
    if (!text) return null;
    const at = text.indexOf(":");
    const type = text.slice(0, at).trim(), values = text.slice(at + 1).trim();
    return { key: k, type, text: values, values: headerValues(type, values) };
  });
  c = { axes, cells: new Map(), grid: null };
  compare.jobs.set(id, c);
  startCompareGrid(id);
  return c;
}

function isCompareJob(id) {
  return compare.jobs.has(id) || state.jobs.get(id)?.kind === "compare";
}

let shownCompare = null;

function startCompareGrid(id) {
  shownCompare = id;
  const c = compare.jobs.get(id);
  $("compare-result").hidden = false;
  $("compare-grid-link").hidden = true;
  $("compare-tables").innerHTML = "";
  const [x, y, z] = c.axes;
  const count = (a) => (a ? Math.max(1, a.values.length) : 1);
  $("compare-cells").textContent = `${count(x) * count(y) * count(z)} cells`;
  for (let iz = 0; iz < count(z); iz++) ensureTable(c, iz);
}

function axisLabel(a, i) {
  return a.values[i] !== undefined ? a.values[i] : `#${i + 1}`;
}

function ensureTable(c, iz) {
  const tables = $("compare-tables");
  let table = tables.querySelector(`table[data-z="${iz}"]`);
  if (!table) {
    const [x, y, z] = c.axes;
    table = document.createElement("table");
    table.className = "compare-grid";
    table.dataset.z = iz;
    if (z) {
      const cap = document.createElement("caption");
      cap.textContent = `${z.type}: ${axisLabel(z, iz)}`;
      table.append(cap);
    }
    const head = document.createElement("thead");
    const hr = document.createElement("tr");
    const corner = document.createElement("th");
    corner.className = "corner";
    corner.textContent = y ? `${y.type} \\ ${x.type}` : x.type;
    hr.append(corner);
    head.append(hr);
    table.append(head, document.createElement("tbody"));
    // tables in Z order
    const after = [...tables.querySelectorAll("table")].find((t) => Number(t.dataset.z) > iz);
    tables.insertBefore(table, after || null);
    const nx = x ? Math.max(1, x.values.length) : 1, ny = y ? Math.max(1, y.values.length) : 1;
    for (let iy = 0; iy < ny; iy++) for (let ix = 0; ix < nx; ix++) ensureCell(c, table, ix, iy);
  }
  return table;
}

function ensureCell(c, table, ix, iy) {
  const [x, y] = c.axes;
  const hr = table.tHead.rows[0];
  while (hr.cells.length <= ix + 1) {
    const i = hr.cells.length - 1;
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = axisLabel(x, i);
    hr.append(th);
    for (const row of table.tBodies[0].rows) row.append(emptyCell(table, i, Number(row.dataset.y)));
  }
  const body = table.tBodies[0];
  while (body.rows.length <= iy) {
    const j = body.rows.length;
    const tr = document.createElement("tr");
    tr.dataset.y = j;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = y ? axisLabel(y, j) : "";
    tr.append(th);
    for (let i = 0; i < hr.cells.length - 1; i++) tr.append(emptyCell(table, i, j));
    body.append(tr);
  }
  return body.rows[iy].cells[ix + 1];
}

function emptyCell(table, ix, iy) {
  const td = document.createElement("td");
  td.dataset.x = ix;
  td.dataset.y = iy;
  td.dataset.z = table.dataset.z;
  td.className = "pending";
  td.innerHTML = '<span class="muted">…</span>';
  return td;
}

function compareImage(id, d) {
  const c = compareJob(id);
  if (shownCompare !== id) { shownCompare = id; startCompareGrid(id); }
  if (d.grid) {
    c.grid = d.image;
    const link = $("compare-grid-link");
    link.href = d.image.url;
    link.hidden = false;
    return;
  }
  if (!d.cell) return;
  const { x: ix, y: iy, z: iz } = d.cell;
  c.cells.set(`${ix},${iy},${iz}`, d.image);
  const td = ensureCell(c, ensureTable(c, iz), ix, iy);
  const [xa, ya, za] = c.axes;
  const what = [xa && `${xa.type} ${axisLabel(xa, ix)}`, ya && `${ya.type} ${axisLabel(ya, iy)}`, za && `${za.type} ${axisLabel(za, iz)}`].filter(Boolean).join(", ");
  const b = document.createElement("button");
  b.type = "button";
  b.className = "cell";
  b.title = `${what}\nseed ${d.image.seed}\nClick to load its settings`;
  b.setAttribute("aria-label", `Load the settings of ${what}`);
  const img = document.createElement("img");
  img.src = d.image.url;
  img.alt = what;
  img.decoding = "async";
  b.append(img);
  b.addEventListener("click", () => {
    showImage(d.image);
    reuseSettings().catch(showError);
  });
  td.className = "";
  td.innerHTML = "";
  td.append(b);
  if (d.cells) $("compare-cells").textContent = `${c.cells.size}/${d.cells} cells`;
}

function compareDone(id, d) {
  const c = compare.jobs.get(id);
  if (!c) return;
  if (d.state !== "done") $("compare-cells").textContent = `${c.cells.size} cells (${d.state})`;
  const grid = c.grid || d.images?.find((im) => im.grid);
  if (grid) {
    c.grid = grid;
    $("compare-grid-link").href = grid.url;
    $("compare-grid-link").hidden = false;
    showImage(grid);
  }
}

function wireCompare() {
  restoreCompare();
  for (const k of AXIS_KEYS) {
    $(`compare_${k}_type`).addEventListener("change", () => { renderAxisChoices(k); $(`compare_${k}-error`).textContent = ""; saveCompare(); });
    $(`compare_${k}`).addEventListener("input", () => {
      $(`compare_${k}`).removeAttribute("aria-invalid");
      $(`compare_${k}-error`).textContent = "";
      saveCompare();
    });
    $(`compare_${k}`).addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.ctrlKey && !e.metaKey) { e.preventDefault(); runCompare(); } });
  }
  $("compare_legend").addEventListener("change", saveCompare);
  for (const id of COMPARE_CHECKS) $(id).addEventListener("change", saveCompare);
  $("compare_margin").addEventListener("input", saveCompare);
  $("compare").addEventListener("toggle", () => { saveCompare(); if ($("compare").open) renderAllAxisChoices(); });
  $("compare-run").addEventListener("click", runCompare);
  renderAllAxisChoices();
}

// ------------------------------------------------------------------ wiring

let endDrag = () => {};

// ------------------------------------------------------------------ a model's own defaults

async function saveDefaults() {
  clearErrors();
  const b = requestBody();
  const body = { model: $("model").value, steps: b.steps, cfg_scale: b.cfg_scale, sampler: b.sampler, schedule: b.schedule, width: b.width, height: b.height, clip_skip: b.clip_skip };
  const view = await api("/models/defaults", { method: "PUT", body });
  for (const k of ["steps", "cfg_scale", "sampler", "schedule", "width", "height", "clip_skip"]) state.dirty.delete(k);
  saveForm();
  const v = view.values;
  $("defaults-status").textContent = `Saved for ${view.model}: ${v.steps} steps, CFG ${v.cfg_scale}, ${v.sampler} ${v.schedule}, ${v.width}×${v.height}, clip skip ${v.clip_skip}.`;
  if (state.modelsOpen) loadInstalled().catch(showModelsError);
}

// ------------------------------------------------------------------ the Models page

const downloads = new Map();  // id -> download view

function showModelsError(err) { $("installed-error").textContent = err.message || String(err); }

function bytes(n) {
  if (n == null) return "";
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MB`;
  return `${Math.max(1, Math.round(n / 1024))} KB`;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text ?? "";
  if (cls) td.className = cls;
  return td;
}

async function openModels() {
  state.modelsOpen = true;
  $("models-page").showModal();
  await Promise.all([loadInstalled(), loadStarter(), loadDownloads()]).catch(showModelsError);
}

async function loadInstalled() {
  const data = await api("/models/installed");
  const body = $("installed").tBodies[0];
  body.innerHTML = "";
  for (const m of data.models) {
    const row = body.insertRow();
    row.dataset.kind = m.kind; row.dataset.name = m.name;
    cell(row, m.name + (m.where === "linked" ? " (linked)" : m.where === "built-in" ? " (built in)" : ""));
    cell(row, m.kind);
    cell(row, m.family || "");
    cell(row, bytes(m.size), "num");
    cell(row, m.hash || "");
    const saved = m.saved_defaults || {};
    cell(row, Object.entries(saved).map(([k, v]) => `${k} ${v}`).join(", "), "defaults");
    const act = row.insertCell();
    if (m.removable) {
      const b = document.createElement("button");
      b.type = "button"; b.className = "remove"; b.textContent = "Remove";
      b.setAttribute("aria-label", `Remove ${m.name}`);
      b.addEventListener("click", () => removeModel(m).catch(showModelsError));
      act.append(b);
    }
  }
  $("installed-hint").textContent = `Files live in the data folder (${data.folders.checkpoint}, ${data.folders.lora} ...). Removed files go to ${data.trash}, never straight to deletion.`;
}

async function removeModel(m) {
  if (!confirm(`Remove ${m.name} (${m.kind}, ${bytes(m.size)})? It goes to the trash folder in the data home, with its preview and info files.`)) return;
  $("installed-error").textContent = "";
  await api("/models/remove", { method: "POST", body: { kind: m.kind, name: m.name, confirm: true } });
  await Promise.all([loadInstalled(), loadStarter(), loadModels(), loadLoras()]);
}

async function loadStarter() {
  const list = await api("/models/starter");
  const body = $("starter").tBodies[0];
  body.innerHTML = "";
  for (const s of list) {
    const row = body.insertRow();
    row.dataset.name = s.name;
    cell(row, s.name).title = s.description || s.source;
    cell(row, s.kind);
    cell(row, s.family || "");
    cell(row, bytes(s.size), "num");
    const act = row.insertCell();
    if (s.installed) {
      act.textContent = "installed";
    } else {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = "Download";
      b.setAttribute("aria-label", `Download ${s.name}`);
      b.addEventListener("click", () => startPull(s.name).catch((err) => { $("pull-error").textContent = err.message; }));
      act.append(b);
    }
  }
}

async function loadDownloads() {
  for (const d of await api("/downloads")) {
    downloads.set(d.id, d);
    if (!["done", "failed", "cancelled"].includes(d.state)) watchDownload(d.id);
  }
  renderDownloads();
}

async function startPull(source, kind = null, token = null) {
  $("pull-error").textContent = "";
  const d = await api("/models/pull", { method: "POST", body: { source, kind: kind || null, token: token || null } });
  downloads.set(d.id, d);
  renderDownloads();
  watchDownload(d.id);
  return d;
}

function watchDownload(id) {
  const es = new EventSource(`${API}/downloads/${id}/events`);
  const update = (e) => { Object.assign(downloads.get(id) || {}, JSON.parse(e.data)); renderDownloads(); };
  es.addEventListener("state", update);
  es.addEventListener("progress", update);
  es.addEventListener("done", async (e) => {
    es.close();
    update(e);
    const d = downloads.get(id);
    if (d?.state === "done") await Promise.all([loadInstalled(), loadStarter(), loadModels(), loadLoras()]).catch(showModelsError);
  });
  es.onerror = () => { es.close(); setTimeout(async () => { const d = await api(`/downloads/${id}`).catch(() => null); if (d) { downloads.set(id, d); renderDownloads(); if (!["done", "failed", "cancelled"].includes(d.state)) watchDownload(id); } }, 1000); };
}

function downloadLine(d) {
  const name = d.file_name || d.source;
  if (d.state === "done") return d.already_installed ? `${name}: already installed` : `${name}: done, ${bytes(d.total_bytes)} in ${d.path}` + (d.model_kind === "lora" ? ` (use it as <lora:${d.name}:1>)` : "");
  if (d.state === "failed") return `${name}: ${d.error}`;
  if (d.state === "cancelled") return `${name}: cancelled (pull it again to continue where it stopped)`;
  if (d.state === "queued") return `${name}: waiting`;
  if (d.phase === "verifying") return `${name}: checking the SHA256`;
  if (!d.total_bytes) return `${name}: ${d.phase}${d.done_bytes ? ", " + bytes(d.done_bytes) : ""}`;
  const speed = d.speed ? `, ${bytes(d.speed)}/s` : "";
  const eta = d.eta != null ? `, ${Math.ceil(d.eta)} s left` : "";
  return `${name}: ${bytes(d.done_bytes)} of ${bytes(d.total_bytes)}${speed}${eta}`;
}

function renderDownloads() {
  const list = $("downloads");
  list.innerHTML = "";
  for (const d of [...downloads.values()].reverse()) {
    const li = document.createElement("li");
    li.dataset.id = d.id; li.dataset.state = d.state;
    const pct = d.total_bytes ? Math.min(100, Math.round((100 * d.done_bytes) / d.total_bytes)) : (d.state === "done" ? 100 : 0);
    const text = document.createElement("span");
    text.textContent = downloadLine(d);
    if (d.state === "failed") text.className = "failed";
    li.append(text);
    if (!["done", "failed", "cancelled"].includes(d.state)) {
      const track = document.createElement("div");
      track.className = "track"; track.setAttribute("role", "progressbar"); track.setAttribute("aria-label", `Download of ${d.file_name || d.source}`);
      track.setAttribute("aria-valuemin", "0"); track.setAttribute("aria-valuemax", "100"); track.setAttribute("aria-valuenow", String(pct));
      const fill = document.createElement("div"); fill.className = "fill"; fill.style.width = pct + "%";
      track.append(fill); li.append(track);
      const b = document.createElement("button");
      b.type = "button"; b.textContent = "Cancel"; b.setAttribute("aria-label", `Cancel the download of ${d.file_name || d.source}`);
      b.addEventListener("click", () => api(`/downloads/${d.id}/cancel`, { method: "POST" }).catch(showModelsError));
      li.append(b);
    }
    list.append(li);
  }
}

function wireModels() {
  $("models-open").addEventListener("click", () => openModels().catch(showModelsError));
  $("models-close").addEventListener("click", () => { state.modelsOpen = false; $("models-page").close(); });
  $("models-page").addEventListener("close", () => { state.modelsOpen = false; });
  $("pull-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const source = $("pull-source").value.trim();
    if (!source) { $("pull-error").textContent = "Paste a civitai or Hugging Face link (or a starter model's name) first."; return; }
    startPull(source, $("pull-kind").value, $("pull-token").value).then(() => { $("pull-source").value = ""; $("pull-token").value = ""; })
      .catch((err) => { $("pull-error").textContent = err.message; });
  });
  $("save-defaults").addEventListener("click", () => saveDefaults().catch(showError));
}

function wire() {
  $("form").addEventListener("submit", generate);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(e);
  });
  for (const f of FIELDS) {
    $(f).addEventListener("input", () => {
      state.dirty.add(f);
      $(f).removeAttribute("aria-invalid");
      const err = $(`${f}-error`);
      if (err) err.textContent = "";
      syncOutputs();
      if (f === "width" || f === "height") syncPreset();
      if (counters[f]) scheduleCount(f);
      if (["steps", "width", "height", "batch_size", "batch_count", "cfg_scale", "sampler", "schedule"].includes(f)) scheduleEstimate();
      saveForm();
    });
  }
  $("size-preset").addEventListener("change", () => {
    const v = $("size-preset").value;
    if (!v) return;
    const [w, h] = v.split("x");
    setField("width", w); setField("height", h);
    state.dirty.add("width"); state.dirty.add("height");
    syncSizeHint();
    saveForm();
  });
  $("seed-random").addEventListener("click", () => { setField("seed", -1); state.dirty.add("seed"); saveForm(); });
  $("seed-reuse").addEventListener("click", reuseSeed);
  $("reuse-seed").addEventListener("click", reuseSeed);
  $("reuse-settings").addEventListener("click", () => reuseSettings().catch(showError));
  $("interrupt").addEventListener("click", interrupt);
  $("model").addEventListener("change", switchModel);
  $("history-more").addEventListener("click", () => loadHistory(true).catch(showError));
  $("style-picker").addEventListener("toggle", () => { if ($("style-picker").open) loadStyles(); });
  let depth = 0;
  document.addEventListener("dragenter", (e) => { if ([...e.dataTransfer.types].includes("Files")) { depth++; $("drop").hidden = false; } });
  document.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) $("drop").hidden = true; });
  document.addEventListener("dragover", (e) => e.preventDefault());
  endDrag = () => { depth = 0; $("drop").hidden = true; $("drop").textContent = "Drop a PNG to restore its settings"; };
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    endDrag();
    dropFile(e.dataTransfer.files[0]);
  });
  wireRefine();
  wireCompare();
  wireHires();
  wireModels();
}

// ------------------------------------------------------------------ hires fix and Upscale

const HIRES_KEY = "brushwork.hires.v1";
const HIRES_FIELDS = ["hires", "hires_scale", "hires_upscaler", "hires_steps", "hires_strength"];
const hires = { dirty: new Set() };  // hires fields the user changed (kept over the model's defaults)

function hiresOn() { return refine.mode !== "img2img" && applies("hires") && $("hires").checked; }

// the hires fields of a generation body: none when it is off (or in img2img mode)
function hiresFields() {
  if (!hiresOn()) return {};
  const num = (f) => ($(f).value === "" ? null : Number($(f).value));
  return {
    hires: true,
    hires_scale: num("hires_scale"),
    hires_upscaler: $("hires_upscaler").value || null,
    hires_steps: $("hires_steps").value === "" ? null : Math.trunc(Number($("hires_steps").value)),
    hires_strength: num("hires_strength"),
  };
}

function saveHires() {
  const values = {};
  for (const f of HIRES_FIELDS) values[f] = f === "hires" ? $(f).checked : $(f).value;
  localStorage.setItem(HIRES_KEY, JSON.stringify({ values, dirty: [...hires.dirty] }));
}

function restoreHires() {
  try {
    const saved = JSON.parse(localStorage.getItem(HIRES_KEY) || "null");
    if (!saved) return;
    for (const f of HIRES_FIELDS) {
      const v = saved.values?.[f];
      if (v === undefined) continue;
      if (f === "hires") $(f).checked = !!v; else setField(f, v);
    }
    hires.dirty = new Set(saved.dirty || []);
    if ($("hires").checked) $("hires-fix").open = true;
  } catch { /* a damaged entry: start fresh */ }
  syncHiresSize();
}

// the model's hires defaults and the upscaler lists (options), except what the user chose
function fillHires(o) {
  const names = [...(o.latent_upscale_modes || []), ...(o.upscalers || []).filter((n) => n !== "None")];
  const keep = $("hires_upscaler").value;
  fillSelect($("hires_upscaler"), names);
  if (keep && names.includes(keep)) $("hires_upscaler").value = keep;
  const upKeep = $("upscale-with").value;
  fillSelect($("upscale-with"), (o.upscalers || []).filter((n) => n !== "None"));
  $("upscale-with").value = upKeep && (o.upscalers || []).includes(upKeep) ? upKeep : "Lanczos";
  const d = o.hires || {};
  const defaults = { hires_scale: d.scale, hires_steps: d.steps, hires_strength: d.strength, hires_upscaler: d.upscaler };
  for (const [k, v] of Object.entries(defaults)) if (v !== undefined && (!hires.dirty.has(k) || $(k).value === "")) setField(k, v);
  syncHiresSize();
  saveHires();
}

// "64x64 → 128x128": the size the hires fix makes (multiples of 8, as the server rounds)
function syncHiresSize() {
  const el = $("hires-size");
  if (!el) return;
  if (!$("hires").checked) { el.textContent = "Off"; return; }
  const w = Number($("width").value), h = Number($("height").value), scale = Number($("hires_scale").value);
  if (!w || !h || !scale) { el.textContent = ""; return; }
  const side = (v) => Math.max(8, Math.floor(Math.floor(v * scale) / 8) * 8);
  el.textContent = `${w}x${h} → ${side(w)}x${side(h)}`;
}

function wireHires() {
  for (const f of HIRES_FIELDS) {
    const el = $(f);
    el.addEventListener(el.tagName === "SELECT" || el.type === "checkbox" ? "change" : "input", () => {
      if (f !== "hires") hires.dirty.add(f);
      syncHiresSize();
      saveHires();
      scheduleEstimate();
    });
  }
  for (const f of ["width", "height"]) $(f).addEventListener("input", syncHiresSize);
  $("size-preset").addEventListener("change", syncHiresSize);
  $("upscale").addEventListener("click", () => upscaleShown().catch(showError));
}

// Upscale the picture shown now (a result or a history picture) as a job of its own
async function upscaleShown() {
  clearErrors();
  const im = state.lastImage;
  if (!im) return;
  const job = await api("/upscale", { method: "POST", body: { image_id: im.id, upscaler: $("upscale-with").value, scale: Number($("upscale-by").value) } });
  state.jobs.set(job.id, job);
  renderQueue();
  watchJob(job.id).catch(showError);
}

// ------------------------------------------------------------------ cluster (serve --cluster)

// "Cluster: 3 workers (2 busy), 5 waiting" with each worker's device and model in the
// tooltip; hidden on one machine (status.cluster is null)
function clusterLine(c) {
  if (!c) return null;
  const n = c.workers.length;
  const text = n ? `Cluster: ${n} worker${n === 1 ? "" : "s"} (${c.running} busy), ${c.waiting} waiting`
                 : "Cluster: no worker yet; jobs wait until one joins (brushwork worker)";
  const detail = c.workers.map((w) => `${w.name}: ${w.device}, ${w.model || "no model yet"}${w.job ? ", running " + w.job : ""}${(w.queue || []).length ? `, ${w.queue.length} next` : ""}`).join("\n");
  return { text, detail };
}

async function refreshCluster() {
  const s = await api("/status");
  const line = clusterLine(s.cluster);
  const el = $("cluster-status");
  el.hidden = !line;
  if (line) { el.textContent = line.text; el.title = line.detail; }
  return line;
}

async function main() {
  wire();
  restoreForm();
  restoreRefine();
  restoreHires();
  try {
    await Promise.all([loadModels(), loadOptions(), loadLoras(), loadStyles()]);
    renderAllAxisChoices();
    await loadHistory();
    await refreshQueue();
    for (const j of state.jobs.values()) if (j.client === clientId()) watchJob(j.id).catch(showError);
  } catch (err) {
    showError(err);
  }
  scheduleCount("prompt");
  scheduleCount("negative_prompt");
  setInterval(refreshQueue, 3000);
  refreshCluster().then((line) => { if (line) setInterval(() => refreshCluster().catch(() => {}), 5000); }).catch(() => {});
  document.body.dataset.ready = "true";
}

main();
