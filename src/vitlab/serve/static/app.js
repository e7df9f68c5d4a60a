// vitlab serve's page: upload images to /v1/predict?explain=true and draw what comes back.
"use strict";
const results = document.getElementById("results");
const blockSel = document.getElementById("block");
const headSel = document.getElementById("head");
let model = null;
const shown = [];  // {card, data} for every answered image, redrawn when the view changes

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

async function loadModel() {
  const r = await fetch("/v1/model");
  model = await r.json();
  const pre = model.preprocessing;
  document.getElementById("model").textContent =
    `${model.name}: ${model.arch}, ${pre.img_size} px, ${pre.in_chans} channel(s), ` +
    `${model.num_classes} classes, ${(model.params / 1e6).toFixed(2)}M parameters`;
  const cfg = model.config;
  const blocks = cfg.depth || 0, heads = cfg.num_heads || 0;
  for (let b = 0; b < blocks; b++) blockSel.append(el("option", {value: b}, String(b)));
  for (let h = 0; h < heads; h++) headSel.append(el("option", {value: h}, String(h)));
  if (!model.can_explain) document.getElementById("views").hidden = true;
}

function view() {
  return document.querySelector("input[name=view]:checked").value;
}

function heatCanvas(grid) {  // a min-max scaled map, drawn cell by cell
  const rows = grid.length, cols = grid[0].length;
  const flat = grid.flat(), lo = Math.min(...flat), hi = Math.max(...flat);
  const c = el("canvas", {width: cols, height: rows, class: "heat"});
  const ctx = c.getContext("2d"), img = ctx.createImageData(cols, rows);
  flat.forEach((v, i) => {
    const t = hi > lo ? (v - lo) / (hi - lo) : 0;
    img.data.set([255 * Math.min(1, 2 * t), 255 * Math.max(0, 2 * t - 1), 60 * (1 - t), 255], 4 * i);
  });
  ctx.putImageData(img, 0, 0);
  c.style.imageRendering = "pixelated";
  return c;
}

function draw(card, data) {
  const pics = card.querySelector(".pics");
  pics.replaceChildren();
  const ex = data.explain;
  if (!ex) return;
  pics.append(el("img", {src: "data:image/png;base64," + ex.image_png, alt: "input"}));
  const v = view();
  if (v === "overlay") {
    pics.append(el("img", {src: "data:image/png;base64," + ex.overlay_png, alt: "overlay", class: "overlay"}));
  } else if (v === "rollout") {
    pics.append(heatCanvas(ex.rollout));
  } else {
    pics.append(heatCanvas(ex.heads[Number(blockSel.value)][Number(headSel.value)]));
  }
}

function topList(top) {
  const ol = el("ol", {class: "top"});
  for (const t of top) {
    const pct = (100 * t.probability).toFixed(1);
    const bar = el("div", {class: "bar"}, el("div", {style: `width:${pct}%`}));
    ol.append(el("li", {}, `${t.label} ${pct}%`, bar));
  }
  return ol;
}

async function predict(file) {
  const card = el("div", {class: "card"}, el("h2", {}, file.name), el("div", {class: "pics"}));
  results.prepend(card);
  const form = new FormData();
  form.append("file", file);
  const explain = model && model.can_explain;
  try {
    const t0 = performance.now();
    const r = await fetch(`/v1/predict?topk=5&explain=${explain}`, {method: "POST", body: form});
    const data = await r.json();
    if (!r.ok) {
      card.append(el("p", {class: "error"}, `${r.status}: ${data.error || JSON.stringify(data)}`));
      return;
    }
    card.append(topList(data.top));
    const wall = (performance.now() - t0).toFixed(0);
    card.append(el("p", {class: "meta"}, `${data.ms} ms on the server (batch of ${data.batch_size}), ${wall} ms here`));
    shown.push({card, data});
    draw(card, data);
  } catch (err) {
    card.append(el("p", {class: "error"}, String(err)));
  }
}

function handle(files) {
  for (const f of files) predict(f);
}

const drop = document.getElementById("drop");
document.getElementById("files").addEventListener("change", e => handle(e.target.files));
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over"); handle(e.dataTransfer.files); });
for (const input of document.querySelectorAll("#views input, #views select")) {
  input.addEventListener("change", () => shown.forEach(s => draw(s.card, s.data)));
}
loadModel();
