// The clipforge search page: talks to the service's native JSON API only (/indices, /search, /items/ID/image).
// Plain script, no build step, no inline handlers: the page is served with "default-src 'self'", so everything
// here is wired with addEventListener and every text from the server is set with textContent, never parsed as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "clipforge.token"; // sessionStorage: gone when the tab closes, never sent to another origin
  const INDEX_KEY = "clipforge.index";
  const DEFAULT_K = 24;

  const $ = (id) => document.getElementById(id);
  const els = {
    index: $("index"), indexInfo: $("index-info"), form: $("search-form"), q: $("q"), k: $("k"),
    modalityField: $("modality-field"), modality: $("modality"), button: $("search-button"),
    drop: $("drop"), file: $("file"), queryImage: $("query-image"),
    tokenBox: $("token-box"), tokenForm: $("token-form"), token: $("token"),
    error: $("error"), status: $("status"), results: $("results"),
  };

  let indices = [];       // GET /indices answer
  let lastSearch = null;  // {kind: "text", q} or {kind: "image", image, name}: what a token or index change re-runs
  let searchSeq = 0;      // answers of superseded searches are dropped
  let objectUrls = [];    // blob: URLs of thumbnails fetched with the token, revoked on the next render

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    if (token()) headers.Authorization = "Bearer " + token();
    return headers;
  }

  // fetch + the API's error shape: every refusal is {"error": "..."}; its message is what the user sees.
  async function api(path, options) {
    const opts = Object.assign({ cache: "no-store" }, options || {});
    opts.headers = authHeaders(opts.headers);
    let response;
    try {
      response = await fetch(path, opts);
    } catch (err) {
      throw new ApiError(0, "The server cannot be reached (" + err.message + "). Is `clipforge serve` still running?");
    }
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const message = body && typeof body.error === "string" ? body.error : "HTTP " + response.status + " " + response.statusText;
      throw new ApiError(response.status, message);
    }
    if (body === null) throw new ApiError(response.status, "The server's answer is not JSON.");
    return body;
  }

  function showError(err) {
    if (err.status === 401) {
      els.tokenBox.hidden = false;
      if (token()) sessionStorage.removeItem(TOKEN_KEY); // it was refused: ask again rather than resend it
      els.token.focus();
    }
    els.error.textContent = err.message;
    els.error.hidden = false;
  }

  function clearError() {
    els.error.textContent = "";
    els.error.hidden = true;
  }

  const currentIndex = () => indices.find((entry) => entry.name === els.index.value) || indices[0] || null;

  function describeIndex() {
    const entry = currentIndex();
    if (!entry) {
      els.indexInfo.textContent = "";
      return;
    }
    const model = entry.model && entry.model.name ? ", " + entry.model.name : "";
    let text = entry.live.toLocaleString() + " items, " + entry.dim + "-d" + model;
    if (!entry.text_queries) text += " (no query model: search by id: only)";
    els.indexInfo.textContent = text;
    const both = entry.modalities.includes("image") && entry.modalities.includes("text");
    els.modalityField.hidden = !both;
    if (!entry.modalities.includes(els.modality.value)) els.modality.value = entry.modalities[0];
  }

  async function loadIndices() {
    let body;
    try {
      body = await api("/indices");
    } catch (err) {
      showError(err);
      return false;
    }
    indices = Array.isArray(body.indices) ? body.indices : [];
    const wanted = new URLSearchParams(location.search).get("index") || sessionStorage.getItem(INDEX_KEY);
    els.index.replaceChildren(
      ...indices.map((entry) => {
        const option = document.createElement("option");
        option.value = entry.name;
        option.textContent = entry.name;
        return option;
      })
    );
    if (wanted && indices.some((entry) => entry.name === wanted)) els.index.value = wanted;
    describeIndex();
    return true;
  }

  function resultsWanted() {
    const k = parseInt(els.k.value, 10);
    return Number.isFinite(k) && k > 0 ? k : DEFAULT_K;
  }

  function setBusy(busy) {
    els.button.disabled = busy;
    els.results.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function captionOf(result) {
    const meta = result.metadata || {};
    for (const column of ["caption", "title", "name", "text"]) {
      if (typeof meta[column] === "string" && meta[column].trim()) return meta[column];
    }
    if (typeof meta.image_path === "string" && meta.image_path) return meta.image_path.split(/[\\/]/).pop();
    return "item " + result.id;
  }

  // Thumbnails: a plain <img src> when no token is needed; with a token, fetched with its header (an <img> cannot
  // send one) and shown from a blob: URL.
  async function showThumbnail(img, url, seq) {
    if (!token()) {
      img.src = url;
      return;
    }
    try {
      const response = await fetch(url, { headers: authHeaders(), cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const blob = await response.blob();
      if (seq !== searchSeq) return;
      const objectUrl = URL.createObjectURL(blob);
      objectUrls.push(objectUrl);
      img.src = objectUrl;
    } catch (err) {
      img.closest(".thumb").classList.add("broken");
    }
  }

  function renderResults(body, label, seq) {
    objectUrls.forEach((url) => URL.revokeObjectURL(url));
    objectUrls = [];
    const results = Array.isArray(body.results) ? body.results : [];
    const items = results.map((result, rank) => {
      const item = document.createElement("li");
      item.className = "card";
      item.dataset.id = String(result.id);
      item.dataset.score = String(result.score);
      const caption = captionOf(result);

      const thumb = document.createElement("div");
      thumb.className = "thumb";
      if (result.image) {
        const img = document.createElement("img");
        img.alt = caption;
        img.loading = rank < 12 ? "eager" : "lazy";
        img.decoding = "async";
        img.addEventListener("error", () => thumb.classList.add("broken"));
        thumb.append(img);
        showThumbnail(img, result.image, seq);
      } else {
        thumb.classList.add("none");
        thumb.textContent = "no image file";
      }

      const text = document.createElement("p");
      text.className = "caption";
      text.textContent = caption;
      text.title = JSON.stringify(result.metadata || {}, null, 1);

      const meta = document.createElement("p");
      meta.className = "meta";
      const score = typeof result.score === "number" ? result.score.toFixed(3) : "n/a";
      meta.textContent = "score " + score + " \u00b7 #" + result.id;

      const more = document.createElement("button");
      more.type = "button";
      more.className = "more secondary";
      more.dataset.id = String(result.id);
      more.textContent = "More like this";
      more.setAttribute("aria-label", "More like " + caption);

      item.append(thumb, text, meta, more);
      return item;
    });
    els.results.replaceChildren(...items);
    const n = results.length;
    const took = typeof body.took_ms === "number" ? " (" + body.took_ms.toFixed(1) + " ms)" : "";
    els.status.textContent = n + (n === 1 ? " result" : " results") + " for " + label + " in " + body.index + took;
  }

  async function runSearch(search) {
    clearError();
    const entry = currentIndex();
    if (!entry) {
      showError(new ApiError(0, "No index to search: the server's /indices list did not load."));
      return;
    }
    lastSearch = search;
    const seq = ++searchSeq;
    setBusy(true);
    els.status.textContent = "Searching\u2026";
    const common = { k: resultsWanted(), index: entry.name, modality: els.modality.value };
    let request;
    let label;
    if (search.kind === "text") {
      const params = new URLSearchParams({ q: search.q, k: String(common.k), index: common.index });
      if (common.modality !== "image") params.set("modality", common.modality);
      request = api("/search?" + params.toString());
      label = "\u201c" + search.q + "\u201d";
      const here = new URLSearchParams({ q: search.q, index: common.index });
      history.replaceState(null, "", "?" + here.toString());
    } else {
      const payload = Object.assign({ image: search.image }, common);
      request = api("/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(payload),
      });
      label = "image " + search.name;
    }
    try {
      const body = await request;
      if (seq === searchSeq) renderResults(body, label, seq);
    } catch (err) {
      if (seq === searchSeq) {
        els.status.textContent = "";
        showError(err);
      }
    } finally {
      if (seq === searchSeq) setBusy(false);
    }
  }

  function readBase64(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.addEventListener("load", () => resolve(String(reader.result).split(",", 2)[1] || ""));
      reader.addEventListener("error", () => reject(reader.error));
      reader.readAsDataURL(file);
    });
  }

  async function searchImage(file) {
    clearError();
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showError(new ApiError(0, file.name + " is not an image file (" + file.type + "); choose a JPEG, PNG, WebP, GIF, BMP or TIFF."));
      return;
    }
    if (els.queryImage.src.startsWith("blob:")) URL.revokeObjectURL(els.queryImage.src);
    els.queryImage.src = URL.createObjectURL(file);
    els.queryImage.alt = "Query image " + file.name;
    els.queryImage.hidden = false;
    let image;
    try {
      image = await readBase64(file);
    } catch (err) {
      showError(new ApiError(0, file.name + " cannot be read: " + (err && err.message ? err.message : err)));
      return;
    }
    await runSearch({ kind: "image", image: image, name: file.name });
  }

  // ---------------------------------------------------------------------------------------------- wiring

  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = els.q.value.trim();
    if (!q) {
      showError(new ApiError(0, "Type something to search for, or choose an image."));
      els.q.focus();
      return;
    }
    runSearch({ kind: "text", q: q });
  });

  els.results.addEventListener("click", (event) => {
    const button = event.target.closest("button.more");
    if (!button) return;
    els.q.value = "id:" + button.dataset.id;
    runSearch({ kind: "text", q: els.q.value }).then(() => {
      const first = els.results.querySelector("button.more");
      if (first) first.focus(); // keyboard users stay in the grid
    });
  });

  els.file.addEventListener("change", () => {
    const file = els.file.files && els.file.files[0];
    searchImage(file).finally(() => {
      els.file.value = ""; // choosing the same file again searches again
    });
  });

  // Drag and drop anywhere on the page; the drop zone highlights while a file is over the window.
  let dragDepth = 0;
  const hasFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth += 1;
    els.drop.classList.add("over");
  });
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) els.drop.classList.remove("over");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    els.drop.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files && event.dataTransfer.files[0];
    if (file) searchImage(file);
  });

  els.index.addEventListener("change", () => {
    sessionStorage.setItem(INDEX_KEY, els.index.value);
    describeIndex();
    if (lastSearch) runSearch(lastSearch);
  });

  els.modality.addEventListener("change", () => {
    if (lastSearch) runSearch(lastSearch);
  });

  els.tokenForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = els.token.value.trim();
    if (!value) {
      els.token.focus();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, value);
    els.token.value = "";
    clearError();
    if (await loadIndices()) {
      els.tokenBox.hidden = true;
      if (lastSearch) runSearch(lastSearch);
      else els.q.focus();
    }
  });

  async function start() {
    const ok = await loadIndices();
    const q = new URLSearchParams(location.search).get("q");
    if (q) els.q.value = q;
    if (q && q.trim()) {
      if (ok) runSearch({ kind: "text", q: q.trim() });
      else lastSearch = { kind: "text", q: q.trim() }; // run once a token is given
    }
    document.body.dataset.ready = "true"; // the browser test waits for this
  }

  start();
})();
