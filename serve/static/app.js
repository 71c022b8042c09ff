// The nmt web page: translate or align a text with a model of this server, and show how the
// words align. Plain JavaScript talking to this server only (/info, /translate, /align).
"use strict";

const state = { models: [], alignment: null };
const $ = (id) => document.getElementById(id);

function requestHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value;
  if (key) headers["X-API-Key"] = key;
  return headers;
}

// JSON from the server, or an Error carrying the server's own message and status.
async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: requestHeaders(),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch (ignored) {
    data = null;
  }
  if (!response.ok) {
    const detail = data && (data.detail || data.error);
    const error = new Error(`${response.status} ${detail || response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function busy(on) {
  for (const id of ["translate", "align"]) $(id).disabled = on;
}

// ------------------------------------------------------------------ models

async function loadModels() {
  try {
    const info = await call("GET", "/info");
    state.models = info.models && info.models.length ? info.models : [info.model];
  } catch (error) {
    if (error.status === 503) {  // the models are still loading
      setTimeout(loadModels, 1000);
      return;
    }
    showError(`Could not load the models: ${error.message}`);
    return;
  }
  const select = $("model");
  select.replaceChildren();
  for (const model of state.models) {
    const option = document.createElement("option");
    option.value = model.id;
    option.textContent = `${model.id}: ${model.src_lang} → ${model.tgt_lang} (${model.name})`;
    select.append(option);
  }
  showModel();
}

function currentModel() {
  return state.models.find((m) => m.id === $("model").value) || state.models[0];
}

function showModel() {
  const model = currentModel();
  const list = $("model-info");
  list.replaceChildren();
  if (!model) return;
  const bleu = model.valid_bleu === null || model.valid_bleu === undefined
    ? "not recorded" : model.valid_bleu.toFixed(2);
  const facts = [
    ["Languages", `${model.src_lang} → ${model.tgt_lang}`],
    ["Architecture", model.architecture],
    ["Validation BLEU", bleu],
    ["Parameters", model.parameters.toLocaleString("en")],
    ["Version", model.version],
  ];
  for (const [term, value] of facts) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }
  if (model.decode && model.decode.beam_size) $("beam").value = model.decode.beam_size;
}

// ------------------------------------------------------------------ requests

async function translate(event) {
  if (event) event.preventDefault();
  showError("");
  const text = $("source").value;
  if (!text.trim()) {
    showError("Type a text to translate.");
    return;
  }
  const beam = Math.max(1, parseInt($("beam").value, 10) || 1);
  const nBest = Math.min(beam, Math.max(1, parseInt($("n-best").value, 10) || 1));
  busy(true);
  try {
    const data = await call("POST", "/translate", {
      text, model: $("model").value, beam_size: beam, n_best: nBest, alignment: true,
    });
    const result = data.translations[0];
    render(result.source, result.translation, result.alignment,
      `score ${result.score.toFixed(3)} · ${data.timing.total_ms.toFixed(0)} ms · ${data.model.id}`);
    renderNBest(result.n_best);
  } catch (error) {
    showError(`Translation failed: ${error.message}`);
  } finally {
    busy(false);
  }
}

async function alignGiven() {
  showError("");
  const text = $("source").value;
  const translation = $("given").value;
  if (!text.trim() || !translation.trim()) {
    showError("Type a source text and your translation of it to align them.");
    return;
  }
  busy(true);
  try {
    const data = await call("POST", "/align", { text, translation, model: $("model").value });
    const result = data.alignments[0];
    render(result.source, result.translation, result.alignment,
      `given translation · log-probability ${result.log_prob.toFixed(2)} · ${data.model.id}`);
    renderNBest(null);
  } catch (error) {
    showError(`Alignment failed: ${error.message}`);
  } finally {
    busy(false);
  }
}

// ------------------------------------------------------------------ rendering

function render(source, target, alignment, summary) {
  $("result").hidden = false;
  $("output").textContent = target;
  $("score").textContent = summary;
  state.alignment = alignment && alignment.words ? alignment.words : null;
  const words = state.alignment;
  renderWords($("src-words"), source, words ? words.src_offsets : [], "src");
  renderWords($("tgt-words"), target, words ? words.tgt_offsets : [], "tgt");
  renderHeatmap(words);
}

// The original text with each aligned word in a focusable span, placed by its character
// offsets (Unicode code points, hence Array.from). Words without characters (a model's
// stray word-start pieces) get no span.
function renderWords(container, text, offsets, side) {
  container.replaceChildren();
  const chars = Array.from(text);
  let at = 0;
  offsets.forEach(([start, end], index) => {
    if (end <= start) return;
    if (start > at) container.append(chars.slice(at, start).join(""));
    const span = document.createElement("span");
    span.className = "word";
    span.tabIndex = 0;
    span.dataset.side = side;
    span.dataset.index = String(index);
    span.textContent = chars.slice(start, end).join("");
    span.addEventListener("mouseenter", () => highlight(side, index));
    span.addEventListener("focus", () => highlight(side, index));
    span.addEventListener("mouseleave", clearHighlight);
    span.addEventListener("blur", clearHighlight);
    container.append(span);
    at = Math.max(at, end);
  });
  if (at < chars.length) container.append(chars.slice(at).join(""));
}

function wordsOf(side) {
  return Array.from(document.querySelectorAll(`.word[data-side="${side}"]`));
}

function wordAt(side, index) {
  return document.querySelector(`.word[data-side="${side}"][data-index="${index}"]`);
}

// Shade the other side's words by their attention weight; mark the hard links.
function highlight(side, index) {
  const words = state.alignment;
  if (!words) return;
  clearHighlight();
  const weights = side === "tgt" ? words.matrix[index] : words.matrix.map((row) => row[index]);
  const linked = side === "tgt"
    ? words.links.filter(([, t]) => t === index).map(([s]) => s)
    : words.links.filter(([s]) => s === index).map(([, t]) => t);
  const largest = Math.max(...weights, 1e-9);
  for (const element of wordsOf(side === "tgt" ? "src" : "tgt")) {
    const i = Number(element.dataset.index);
    element.style.setProperty("--weight", (0.7 * weights[i] / largest).toFixed(3));
    element.classList.toggle("linked", linked.includes(i));
  }
  const self = wordAt(side, index);
  if (self) self.classList.add("active");
  for (const cell of document.querySelectorAll(`#heatmap [data-${side}="${index}"]`)) {
    cell.classList.add("active");
  }
}

function clearHighlight() {
  for (const element of document.querySelectorAll(".word, #heatmap .active")) {
    element.classList.remove("active", "linked");
    if (element.classList.contains("word")) element.style.removeProperty("--weight");
  }
}

function renderHeatmap(words) {
  const table = $("heatmap");
  table.replaceChildren();
  if (!words) {
    table.textContent = "This model has no attention: no alignment to show.";
    return;
  }
  const head = table.createTHead().insertRow();
  head.append(document.createElement("th"));
  words.src_words.forEach((word, s) => {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = word || "▁";
    th.dataset.src = String(s);
    head.append(th);
  });
  const body = table.createTBody();
  words.matrix.forEach((row, t) => {
    const tr = body.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = words.tgt_words[t] || "▁";
    th.dataset.tgt = String(t);
    tr.append(th);
    row.forEach((weight, s) => {
      const cell = tr.insertCell();
      cell.style.setProperty("--weight", weight.toFixed(3));
      cell.dataset.tgt = String(t);
      cell.dataset.src = String(s);
      cell.title = `${words.tgt_words[t]} ← ${words.src_words[s]}: ${weight.toFixed(2)}`;
      cell.addEventListener("mouseenter", () => highlight("tgt", t));
      cell.addEventListener("mouseleave", clearHighlight);
    });
  });
}

function renderNBest(hypotheses) {
  const list = $("nbest");
  list.replaceChildren();
  $("nbest-block").hidden = !hypotheses || hypotheses.length < 2;
  for (const hypothesis of hypotheses || []) {
    const item = document.createElement("li");
    item.textContent = hypothesis.translation;
    const score = document.createElement("span");
    score.className = "hyp-score";
    score.textContent = hypothesis.score.toFixed(3);
    item.append(score);
    list.append(item);
  }
}

// ------------------------------------------------------------------ start

document.addEventListener("DOMContentLoaded", () => {
  $("translate-form").addEventListener("submit", translate);
  $("align").addEventListener("click", alignGiven);
  $("model").addEventListener("change", showModel);
  $("source").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) translate(event);
  });
  $("api-key").addEventListener("change", loadModels);
  loadModels();
});
