// Brushwork web studio: a client of the HTTP API (/api/v1) and nothing else.
// No build step: one module, plain DOM.

const $ = (id) => document.getElementById(id);
const API = "/api/v1";
const STORE_KEY = "brushwork.form.v1";
const FIELDS = ["prompt", "negative_prompt", "seed", "steps", "cfg_scale", "sampler", "schedule", "width", "height", "batch_size", "batch_count", "styles"];

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
    const key = field === "model" ? null : field;
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
}

function requestBody() {
  const v = readForm();
  const num = (x) => (x === "" ? null : Number(x));
  return {
    prompt: v.prompt,
    negative_prompt: v.negative_prompt,
    seed: v.seed === "" ? -1 : Math.trunc(Number(v.seed)),
    steps: num(v.steps),
    cfg_scale: num(v.cfg_scale),
    sampler: v.sampler || null,
    schedule: v.schedule || null,
    width: num(v.width),
    height: num(v.height),
    batch_size: num(v.batch_size) ?? 1,
    batch_count: num(v.batch_count) ?? 1,
    styles: chosenStyles(),
  };
}

// ------------------------------------------------------------------ options, models, LoRAs

async function loadOptions() {
  const o = await api("/options");
  state.options = o;
  fillSelect($("sampler"), o.samplers);
  fillSelect($("schedule"), o.schedules);
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
  const defaults = { steps: d.steps, cfg_scale: d.cfg_scale, sampler: d.sampler, schedule: d.schedule, width: d.width, height: d.height };
  for (const [k, val] of Object.entries(defaults)) if (!state.dirty.has(k) || $(k).value === "" || !validValue(k)) setField(k, val);
  for (const k of ["seed", "batch_size", "batch_count"]) if (!validValue(k)) { setField(k, k === "seed" ? -1 : 1); state.dirty.delete(k); }
  syncModelHint(o);
  syncPreset();
  saveForm();
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
    b.title = [l.family, l.triggers.length ? "trigger words: " + l.triggers.join(", ") : ""].filter(Boolean).join(" · ");
    b.innerHTML = `${escapeHtml(l.name)} <small>${escapeHtml(l.family)}</small>`;
    b.addEventListener("click", () => insertAtCursor($("prompt"), l.insert));
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
    job = await api("/jobs", { method: "POST", body: requestBody() });
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
      addBatchThumb(d.image);
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
  if (d.images?.length) {
    showImage(d.images[0]);
    $("batch").innerHTML = "";
    if (d.images.length > 1) for (const im of d.images) addBatchThumb(im);
  }
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
    const prompt = j.request?.prompt || "(no prompt)";
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
  const map = { Prompt: "prompt", "Negative prompt": "negative_prompt", Steps: "steps", "CFG scale": "cfg_scale", Seed: "seed", "Size-1": "width", "Size-2": "height" };
  for (const [k, f] of Object.entries(map)) if (p[k] !== undefined) { setField(f, p[k]); state.dirty.add(f); }
  if (p.Sampler) {
    let sampler = p.Sampler;
    let schedule = p["Schedule type"];
    for (const s of state.options?.schedules || []) {
      if (sampler.endsWith(" " + s) && !state.options.samplers.includes(sampler)) { sampler = sampler.slice(0, -s.length - 1); schedule = schedule || s; }
    }
    setField("sampler", sampler); state.dirty.add("sampler");
    if (schedule) { setField("schedule", schedule); state.dirty.add("schedule"); }
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

// ------------------------------------------------------------------ wiring

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
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    $("drop").hidden = true;
    dropFile(e.dataTransfer.files[0]);
  });
}

async function main() {
  wire();
  restoreForm();
  try {
    await Promise.all([loadModels(), loadOptions(), loadLoras(), loadStyles()]);
    await loadHistory();
    await refreshQueue();
    for (const j of state.jobs.values()) if (j.client === clientId()) watchJob(j.id).catch(showError);
  } catch (err) {
    showError(err);
  }
  scheduleCount("prompt");
  scheduleCount("negative_prompt");
  setInterval(refreshQueue, 3000);
  document.body.dataset.ready = "true";
}

main();
