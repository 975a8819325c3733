// metricdepth's page: upload a photo, show metric depth, the 3-D points, measure, download.
// Talks to the JSON API of metricdepth.web.app (see /docs); nothing here is fetched elsewhere.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { file: null, camera: null, edited: false, result: null, picks: [] };
  let viewer = null;

  // ---------------------------------------------------------------- messages
  function setStatus(text) { $("status").textContent = text; }
  function showError(text) {
    const box = $("error");
    box.hidden = !text;
    box.textContent = text ? "error: " + text : "";
  }
  // The model's own warning (not meant for real photographs): a band under the header.
  function showTrust(warnings) {
    const box = $("trust");
    box.hidden = !(warnings && warnings.length);
    box.textContent = box.hidden ? "" : warnings.map((w) => "warning: " + w).join(" ");
  }
  function busy(on, fraction) {
    $("progress-box").hidden = !on;
    const bar = $("progress");
    if (fraction === undefined || fraction === null) bar.removeAttribute("value");
    else bar.value = fraction;
    $("run").disabled = on || !state.file;
  }

  // A multipart POST with upload progress; resolves with the parsed JSON or rejects with its error.
  function postForm(url, form, onUpload) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.responseType = "json";
      if (onUpload) xhr.upload.onprogress = (e) => { if (e.lengthComputable) onUpload(e.loaded / e.total); };
      xhr.upload.onload = () => onUpload && onUpload(null);
      xhr.onload = () => {
        const body = xhr.response || {};
        if (xhr.status >= 200 && xhr.status < 300) resolve(body);
        else reject(new Error(body.error || `HTTP ${xhr.status}`));
      };
      xhr.onerror = () => reject(new Error("the server did not answer"));
      xhr.send(form);
    });
  }

  async function postJSON(url, payload) {
    const response = await fetch(url, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  // ---------------------------------------------------------------- intrinsics fields
  const fovFromFocal = (focal, pixels) => (2 * Math.atan(pixels / (2 * focal)) * 180) / Math.PI;
  const focalFromFov = (fov, pixels) => pixels / (2 * Math.tan((fov * Math.PI) / 360));
  const round = (v, digits) => Number(v.toFixed(digits));

  function fillCamera(camera, source, rule) {
    state.camera = camera;
    state.edited = false;
    $("fx").value = round(camera.fx, 3);
    $("fy").value = round(camera.fy, 3);
    $("cx").value = round(camera.cx, 3);
    $("cy").value = round(camera.cy, 3);
    $("fov").value = round(fovFromFocal(camera.fx, camera.width), 2);
    $("camera-source").textContent = `source: ${source}` + (rule ? ` (${rule})` : "");
    $("camera-source").dataset.source = source;
  }

  function markEdited() {
    state.edited = true;
    $("camera-source").textContent = "source: given (edited here; press Run)";
    $("camera-source").dataset.source = "given";
  }

  $("fov").addEventListener("input", () => {
    const fov = parseFloat($("fov").value);
    if (!state.camera || !(fov > 0 && fov < 180)) return;
    const focal = focalFromFov(fov, state.camera.width);
    $("fx").value = round(focal, 3);
    $("fy").value = round(focal, 3);
    markEdited();
  });
  $("fx").addEventListener("input", () => {
    const fx = parseFloat($("fx").value);
    if (state.camera && fx > 0) $("fov").value = round(fovFromFocal(fx, state.camera.width), 2);
    markEdited();
  });
  for (const id of ["fy", "cx", "cy"]) $(id).addEventListener("input", markEdited);

  function intrinsicsText() {
    const values = ["fx", "fy", "cx", "cy"].map((id) => $(id).value.trim());
    return values.join(",");
  }

  // ---------------------------------------------------------------- a new photo
  async function choose(file) {
    if (!file) return;
    state.file = file;
    showError("");
    busy(true, 0);
    setStatus(`reading the camera of ${file.name}…`);
    try {
      const form = new FormData();
      form.append("image", file);
      const cam = await postForm("/api/camera", form, (f) => busy(true, f));
      fillCamera(cam.camera, cam.camera_source, cam.camera_rule);
      await run(false);
    } catch (error) {
      busy(false);
      setStatus("");
      showError(error.message);
    }
  }

  async function run(withIntrinsics) {
    const form = new FormData();
    form.append("image", state.file);
    if (withIntrinsics) form.append("intrinsics", intrinsicsText());
    showError("");
    busy(true, 0);
    setStatus("uploading…");
    const started = performance.now();
    try {
      const result = await postForm("/api/predict", form, (f) => {
        if (f === null) { busy(true, null); setStatus("running the model…"); } else busy(true, f);
      });
      await showResult(result);
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      setStatus(`done in ${seconds} s`);
    } catch (error) {
      setStatus("");
      showError(error.message);
    } finally {
      busy(false);
    }
  }

  // ---------------------------------------------------------------- showing a result
  function loadImage(img, url) {
    return new Promise((resolve, reject) => {
      img.onload = () => resolve();
      img.onerror = () => reject(new Error(`could not load ${url}`));
      img.src = url;
    });
  }

  function niceTicks(near, far) {
    // Depth values (m) for the colour bar's labels: the ends and round numbers between them.
    const ticks = [near, far];
    const inverse = (d) => (1 / d - 1 / far) / (1 / near - 1 / far); // 0 at far, 1 at near
    const span = far - near;
    const step = Math.pow(10, Math.floor(Math.log10(span / 3 || 1)));
    for (const mult of [1, 2, 5, 10]) {
      const inner = [];
      for (let d = Math.ceil(near / (step * mult)) * step * mult; d < far; d += step * mult) inner.push(d);
      if (inner.length <= 4) { ticks.push(...inner); break; }
    }
    const unique = [...new Set(ticks.map((d) => round(d, 2)))].sort((a, b) => b - a);
    return unique.map((d) => ({ depth: d, at: inverse(d) }))
      .filter((t, i, all) => i === 0 || i === all.length - 1 || (t.at > 0.15 && t.at < 0.85));
  }

  function drawTicks(colormap) {
    const box = $("ticks");
    box.textContent = "";
    if (!colormap.near_m || !colormap.far_m) return;
    for (const tick of niceTicks(colormap.near_m, colormap.far_m)) {
      const label = document.createElement("span");
      label.style.left = `${(tick.at * 100).toFixed(2)}%`;
      label.textContent = `${tick.depth} m`;
      box.appendChild(label);
    }
  }

  function stat(list, name, value) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }

  async function showResult(result) {
    state.result = result;
    state.picks = [];
    fillCamera(result.camera, result.camera_source, result.camera_rule);
    showTrust(result.warnings);
    const urls = result.urls;
    $("results").hidden = false;
    await Promise.all([
      loadImage($("photo"), urls.image),
      loadImage($("depth"), urls.depth_vis),
      loadImage($("colorbar"), urls.colorbar),
    ]);
    drawTicks(result.colormap);
    $("normal-panel").hidden = !urls.normal_vis;
    if (urls.normal_vis) await loadImage($("normal"), urls.normal_vis);
    $("confidence-panel").hidden = !urls.confidence_vis;
    if (urls.confidence_vis) await loadImage($("confidence"), urls.confidence_vis);

    const list = $("stats-list");
    list.textContent = "";
    const d = result.depth_m;
    stat(list, "model", result.model);
    if (result.intended_use) stat(list, "meant for", result.intended_use.text);
    stat(list, "image", `${result.image.width} × ${result.image.height} px`);
    stat(list, "depth", `${d.min.toFixed(2)} – ${d.max.toFixed(2)} m (median ${d.median.toFixed(2)})`);
    stat(list, "camera", `${result.camera_source}: fx ${result.camera.fx.toFixed(1)}, fy ${result.camera.fy.toFixed(1)} px`);
    stat(list, "field of view", `${result.fov_x_deg.toFixed(1)}° × ${result.fov_y_deg.toFixed(1)}°`);
    if (result.camera_warning) stat(list, "note", result.camera_warning);
    $("stats").hidden = false;

    const stem = result.image.name;
    for (const [id, kind, name] of [
      ["dl-depth", "depth", `${stem}.depth.npy`], ["dl-png16", "png16", `${stem}.depth.png`],
      ["dl-ply", "ply", `${stem}.ply`], ["dl-record", "record", `${stem}.json`],
    ]) {
      $(id).href = urls[kind];
      $(id).download = name;
    }
    $("downloads").hidden = false;
    $("distance").textContent = "distance: click two points";
    delete $("distance").dataset.distance;
    drawMarks();
    await showCloud(urls.points, result.points.count);
  }

  async function showCloud(url, count) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`could not load the points (${response.status})`);
    const buffer = await response.arrayBuffer();
    const positions = new Float32Array(buffer, 0, count * 3);
    const colours = new Uint8Array(buffer, count * 12, count * 3);
    if (!viewer) viewer = new window.PointViewer($("cloud"));
    viewer.show(positions, colours);
    $("cloud").dataset.mode = viewer.mode;
    $("cloud").dataset.points = String(count);
    $("cloud-info").textContent = `${count} points, ${viewer.mode === "webgl" ? "WebGL" : "2-D canvas"}`;
    document.body.dataset.resultId = state.result.id;
    document.body.dataset.ready = "1";
  }

  // ---------------------------------------------------------------- measuring
  function pixelOf(event, box) {
    const rect = box.getBoundingClientRect();
    const { width, height } = state.result.image;
    const u = Math.floor(((event.clientX - rect.left) / rect.width) * width);
    const v = Math.floor(((event.clientY - rect.top) / rect.height) * height);
    return [Math.min(Math.max(u, 0), width - 1), Math.min(Math.max(v, 0), height - 1)];
  }

  function drawMarks() {
    for (const box of [$("pick-image"), $("pick-depth")]) {
      const canvas = box.querySelector("canvas");
      const rect = box.getBoundingClientRect();
      canvas.width = Math.max(1, Math.round(rect.width));
      canvas.height = Math.max(1, Math.round(rect.height));
      const ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      if (!state.result) continue;
      const sx = canvas.width / state.result.image.width, sy = canvas.height / state.result.image.height;
      const at = ([u, v]) => [(u + 0.5) * sx, (v + 0.5) * sy];
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#ffffff";
      ctx.fillStyle = "#ff3b6b";
      if (state.picks.length === 2) {
        ctx.beginPath();
        ctx.moveTo(...at(state.picks[0]));
        ctx.lineTo(...at(state.picks[1]));
        ctx.stroke();
      }
      for (const pick of state.picks) {
        ctx.beginPath();
        ctx.arc(...at(pick), 5, 0, 2 * Math.PI);
        ctx.fill();
        ctx.stroke();
      }
    }
  }

  async function pick(event) {
    if (!state.result) return;
    const box = event.currentTarget;
    if (state.picks.length === 2) state.picks = [];
    state.picks.push(pixelOf(event, box));
    drawMarks();
    const out = $("distance");
    if (state.picks.length < 2) {
      out.textContent = "distance: click a second point";
      delete out.dataset.distance;
      return;
    }
    const [p1, p2] = state.picks;
    try {
      const m = await postJSON("/api/measure", { id: state.result.id, p1, p2 });
      out.textContent = `distance: ${m.distance_m.toFixed(3)} m ` +
        `(depths ${m.depth1_m.toFixed(2)} m and ${m.depth2_m.toFixed(2)} m; camera ${m.camera_source})`;
      out.dataset.distance = String(m.distance_m);
      out.dataset.pixels = JSON.stringify([p1, p2]);
      showError("");
    } catch (error) {
      out.textContent = "distance: —";
      showError(error.message);
    }
  }

  // ---------------------------------------------------------------- wiring
  $("pick-image").addEventListener("click", pick);
  $("pick-depth").addEventListener("click", pick);
  window.addEventListener("resize", drawMarks);
  $("file").addEventListener("change", (event) => choose(event.target.files[0]));
  $("run").addEventListener("click", () => run(state.edited));
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) choose(file);
  });

  fetch("/api/health").then((r) => r.json()).then((h) => {
    $("model").textContent = `model: ${h.model}` + (h.outputs.length ? ` (+ ${h.outputs.join(", ")})` : "");
    showTrust(h.warnings);
  }).catch(() => { $("model").textContent = "the server does not answer"; });
})();
