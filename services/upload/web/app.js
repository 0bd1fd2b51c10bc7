// imagepipe's web page: upload (and your recent requests) at "/", one request's live progress at "/r/{id}"
// (bookmarkable). Plain ES module, no build step. It uses the public API: POST /upload, GET /requests,
// GET /status/{id}/events (SSE), GET /output/{id}, POST /requests/{id}/cancel, DELETE /requests/{id}.
// Text from the server is always set as text, never as HTML.

const FINAL = ["COMPLETED", "CANCELLED"]; // states after which nothing changes; the stream then ends
const KEY_STORE = "imagepipe.apiKey"; // sessionStorage: the API key lives as long as the tab
const RECENT_SHOWN = 10; // requests per page of the recent list

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function formatBytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10 * 1024 ? 1 : 0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function saving(before, after) {
  return before ? Math.round((100 * (before - after)) / before) : 0;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

// --- the API key (only when the server sets IMAGEPIPE_API_KEYS) --------------------------------------------
const apiKey = () => sessionStorage.getItem(KEY_STORE) || "";
const authHeaders = () => (apiKey() ? { "X-API-Key": apiKey() } : {});

function showKeyPanel(hint) {
  $("key-panel").hidden = false;
  if (hint) $("key-hint").textContent = hint;
  $("key-input").focus();
}

function setUpKeyPanel() {
  $("key-button").addEventListener("click", () => {
    $("key-panel").hidden = !$("key-panel").hidden;
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("key-input").value.trim());
    $("key-panel").hidden = true;
    route();
  });
  $("key-clear").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    $("key-input").value = "";
  });
}

// --- recent requests (GET /requests: with an API key, that key's own) ---------------------------------------
async function renderRecent(cursor = null) {
  const list = $("recent");
  const more = $("recent-more");
  const query = new URLSearchParams({ limit: String(RECENT_SHOWN), ...(cursor ? { cursor } : {}) });
  const response = await fetch(`/requests?${query}`, { headers: authHeaders() }).catch(() => null);
  const body = response ? await response.json().catch(() => null) : null;
  if (!response || !response.ok) {
    const why = response && response.status === 401 ? "Set your API key to see your requests." : "Could not load your requests.";
    list.replaceChildren(el("li", { class: "empty" }, why));
    more.hidden = true;
    return;
  }
  const entries = body.requests.map((r) =>
    el(
      "li",
      { "data-status": r.status },
      el("span", {}, el("a", { href: `/r/${r.request_id}` }, r.request_id), el("div", { class: "when" }, `${r.total_images} images · ${Math.floor(r.progress)}%`)),
      el("span", { class: "when" }, r.status, el("br"), when(r.created_at)),
    ),
  );
  if (cursor) list.append(...entries);
  else list.replaceChildren(...(entries.length ? entries : [el("li", { class: "empty" }, "Nothing yet: your uploads appear here.")]));
  more.hidden = !body.next_cursor;
  more.onclick = () => renderRecent(body.next_cursor);
}

// --- upload -----------------------------------------------------------------------------------------------
function uploadForm() {
  const data = new FormData();
  data.append("file", $("file").files[0]);
  data.append("email", $("email").value.trim());
  const webhook = $("webhook_url").value.trim();
  if (webhook) data.append("webhook_url", webhook);
  // Image options: every named input in the fieldset, sent when it has a value and is enabled.
  for (const input of optionInputs()) {
    const value = input.type === "checkbox" ? (input.checked ? "true" : "") : input.value.trim();
    if (value && !input.disabled) data.append(input.name, value);
  }
  return data;
}

const optionInputs = () => $("image-options").querySelectorAll("[name]");

function unreadableOptions() {
  // A number field holding what is not a number has the value "": it would silently send nothing.
  return [...optionInputs()]
    .filter((input) => input.validity.badInput)
    .map((input) => ({ field: input.name, reason: `${input.name} is not a number` }));
}

function setUpOptions() {
  // `target` applies to quality=auto only (the server refuses it otherwise).
  const toggle = () => ($("target").disabled = $("quality").value.trim().toLowerCase() !== "auto");
  $("quality").addEventListener("input", toggle);
  toggle();
}

function describeOptions(options) {
  const given = Object.entries(options || {}).filter(([, value]) => value !== null && value !== undefined);
  return given.length ? given.map(([name, value]) => `${name}=${value}`).join(" · ") : "defaults";
}

function showProblems(box, body, fallback) {
  const problems = (body && body.problems) || [];
  box.replaceChildren(
    el("strong", {}, (body && body.error) || fallback),
    problems.length
      ? el(
          "ul",
          {},
          problems.map((p) => {
            const where = [p.row && `row ${p.row}`, p.column && `column ${p.column}`, p.field].filter(Boolean);
            return el("li", {}, where.length ? `${where.join(", ")}: ` : "", p.reason);
          }),
        )
      : null,
  );
  box.hidden = false;
}

async function upload(event) {
  event.preventDefault();
  const box = $("upload-error");
  box.hidden = true;
  if (!$("file").files.length) {
    showProblems(box, { error: "Choose a CSV file first." });
    return;
  }
  const unreadable = unreadableOptions();
  if (unreadable.length) {
    showProblems(box, { error: "Some image options are not valid.", problems: unreadable });
    return;
  }
  const button = $("upload-button");
  button.disabled = true;
  button.textContent = "Uploading…";
  try {
    const response = await fetch("/upload", { method: "POST", body: uploadForm(), headers: authHeaders() });
    const body = await response.json().catch(() => null);
    if (response.status === 401) showKeyPanel("This server needs an API key for uploads.");
    if (!response.ok) {
      showProblems(box, body, `The upload was refused (HTTP ${response.status}).`);
      return;
    }
    justUploaded = body.webhook_secret ? { id: body.request_id, secret: body.webhook_secret } : null;
    history.pushState({}, "", `/r/${body.request_id}`);
    route();
  } catch (error) {
    showProblems(box, { error: `Could not reach the server: ${error.message}` });
  } finally {
    button.disabled = false;
    button.textContent = "Upload and compress";
  }
}

function setUpUpload() {
  const file = $("file");
  const drop = $("drop");
  file.addEventListener("change", () => {
    $("file-label").textContent = file.files.length ? file.files[0].name : "Choose a CSV or drop it here";
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    file.files = e.dataTransfer.files;
    file.dispatchEvent(new Event("change"));
  });
  $("upload-form").addEventListener("submit", upload);
}

// --- one request, live ------------------------------------------------------------------------------------
let stream = null;
const shownThumbs = new Map(); // index -> what its card shows, so an unchanged card is not rebuilt

function follow(id) {
  if (stream) stream.close();
  shownThumbs.clear();
  $("thumbs").replaceChildren();
  $("request-id").textContent = id;
  $("request-error").hidden = true;
  $("request-deleted").hidden = true;
  $("delete-button").disabled = false;
  $("json-link").href = `/status/${id}`;
  $("json-link").hidden = Boolean(apiKey()); // a plain link cannot send the key
  const key = apiKey();
  // EventSource cannot send headers: this route alone takes the key as a query parameter.
  stream = new EventSource(`/status/${encodeURIComponent(id)}/events${key ? `?api_key=${encodeURIComponent(key)}` : ""}`);
  stream.addEventListener("open", () => ($("live").hidden = false));
  stream.addEventListener("progress", (event) => {
    const snapshot = JSON.parse(event.data);
    render(snapshot);
    if (FINAL.includes(snapshot.status)) {
      stream.close();
      $("live").hidden = true;
    }
  });
  stream.addEventListener("gone", (event) => {
    stream.close();
    $("live").hidden = true;
    showProblems($("request-error"), JSON.parse(event.data), "This request no longer exists.");
  });
  stream.addEventListener("error", () => {
    $("live").hidden = true;
    if (stream.readyState === EventSource.CLOSED) explainClosed(id);
  });
}

async function explainClosed(id) {
  // The stream was refused (EventSource does not say why): ask the status route, which does.
  const response = await fetch(`/status/${encodeURIComponent(id)}?view=summary`, { headers: authHeaders() }).catch(() => null);
  if (response && response.ok) return follow(id); // a transient failure: follow again
  const body = response ? await response.json().catch(() => null) : null;
  if (response && response.status === 401) showKeyPanel("This server needs an API key to show requests.");
  showProblems($("request-error"), body, "The server cannot be reached; reload to try again.");
}

function render(s) {
  const final = FINAL.includes(s.status);
  const state = $("state");
  state.textContent = s.status;
  state.className = `state${final ? (s.status === "COMPLETED" ? " final" : " failed") : ""}`;
  const bar = $("bar");
  bar.style.width = `${s.progress}%`;
  bar.classList.toggle("done", final);
  bar.parentElement.setAttribute("aria-valuenow", String(s.progress));
  $("progress-pct").textContent = `${Math.floor(s.progress)}%`;
  $("count-compressed").textContent = s.no_img_compressed;
  $("count-failed").textContent = s.no_img_failed;
  $("count-skipped").textContent = s.no_img_skipped;
  $("skipped-stat").hidden = !s.no_img_skipped;
  // Only a running request can be cancelled; once asked, the button stays off.
  $("cancel-button").hidden = s.status !== "PENDING";
  $("count-total").textContent = s.total_images;
  $("saving").textContent = s.bytes_in ? `\u2212${saving(s.bytes_in, s.bytes_out)}%` : "–";
  $("saving-label").textContent = s.bytes_in ? `${formatBytes(s.bytes_in)} → ${formatBytes(s.bytes_out)}` : "saved";
  const times = [`started ${when(s.created_at)}`];
  if (s.completed_at) times.push(`finished ${when(s.completed_at)}`);
  $("request-times").textContent = `${s.total_products} products · ${times.join(" · ")}`;
  $("request-options").textContent = `image options: ${describeOptions(s.options)}`;
  renderOutputLink(s);
  renderFailures(s);
  renderThumbs(s);
}

function renderOutputLink(s) {
  const link = $("output-link");
  const ready = Boolean(s.output_csv_url);
  link.classList.toggle("disabled", !ready);
  link.setAttribute("aria-disabled", String(!ready));
  if (ready) {
    link.href = `/output/${encodeURIComponent(s.request_id)}`;
    link.setAttribute("download", `imagepipe-${s.request_id}.csv`);
  } else link.removeAttribute("href");
}

async function cancelRequest() {
  // Images not started are skipped (never fetched); those in flight finish; then it ends CANCELLED.
  const id = $("request-id").textContent;
  if (!confirm("Cancel this request? Images not started yet are skipped.")) return;
  const button = $("cancel-button");
  button.disabled = true;
  const response = await fetch(`/requests/${encodeURIComponent(id)}/cancel`, { method: "POST", headers: authHeaders() }).catch(() => null);
  button.disabled = false;
  const body = response ? await response.json().catch(() => null) : null;
  if (!response || !response.ok) return showProblems($("request-error"), body, "The cancel was refused.");
  button.hidden = true;
  $("state").textContent = body.status; // the stream shows the rest as it settles
}

async function deleteRequest() {
  const id = $("request-id").textContent;
  if (!confirm(`Delete request ${id}, its output CSV and all its images? This cannot be undone.`)) return;
  $("delete-button").disabled = true;
  const response = await fetch(`/requests/${encodeURIComponent(id)}`, { method: "DELETE", headers: authHeaders() }).catch(() => null);
  if (!response || !response.ok) {
    $("delete-button").disabled = false;
    const body = response ? await response.json().catch(() => null) : null;
    return showProblems($("request-error"), body, "The server cannot be reached; nothing was deleted.");
  }
  if (stream) stream.close();
  $("live").hidden = true;
  $("state").textContent = "DELETED";
  $("state").className = "state failed";
  $("cancel-button").hidden = true;
  for (const link of [$("output-link"), $("json-link")]) {
    link.classList.add("disabled");
    link.removeAttribute("href");
  }
  $("thumbs").replaceChildren();
  $("request-error").hidden = true;
  $("request-deleted").hidden = false;
}

async function downloadWithKey(event) {
  // With an API key the CSV is fetched with it, then saved; without one the plain link does it.
  const link = event.currentTarget;
  if (!apiKey() || !link.href) return;
  event.preventDefault();
  const response = await fetch(link.href, { headers: authHeaders() });
  if (!response.ok) return showProblems($("request-error"), await response.json().catch(() => null), "Download refused.");
  const url = URL.createObjectURL(await response.blob());
  const save = el("a", { href: url, download: link.getAttribute("download") });
  save.click();
  URL.revokeObjectURL(url);
}

function renderFailures(s) {
  $("failures-card").hidden = !s.no_img_failed;
  $("failures").replaceChildren(
    ...s.failures.map((f) => el("tr", {}, el("td", {}, el("a", { href: f.url, rel: "noreferrer noopener", target: "_blank" }, f.url)), el("td", { class: "reason" }, f.reason))),
  );
  const more = s.no_img_failed - s.failures.length;
  $("failures-more").hidden = more <= 0;
  $("failures-more").textContent = `… and ${more} more: the output CSV lists every one.`;
}

function figure(caption, src, placeholder, bad) {
  const box = (text, isBad) => el("div", { class: `placeholder${isBad ? " bad" : ""}` }, text);
  let content = box(placeholder, bad);
  if (src) {
    content = el("img", { src, alt: caption, loading: "lazy", referrerpolicy: "no-referrer" });
    content.addEventListener("error", () => content.replaceWith(box("not available")), { once: true });
  }
  return el("figure", {}, content, el("figcaption", {}, caption));
}

function thumb(image) {
  let after;
  if (image.status === "FAILED") after = figure("after", null, `failed: ${image.reason}`, true);
  else if (image.status === "SKIPPED") after = figure("after", null, "skipped: cancelled");
  else if (image.output_url) after = figure("after", image.output_url);
  else after = figure("after", null, "compressing…");
  const sizes = image.output_bytes !== null && image.input_bytes
    ? el("span", { class: "sizes" }, `${formatBytes(image.input_bytes)} → ${formatBytes(image.output_bytes)} `, el("b", {}, `−${saving(image.input_bytes, image.output_bytes)}%`))
    : el("span", { class: "sizes" }, { FAILED: "failed", SKIPPED: "skipped" }[image.status] || "waiting");
  return el(
    "div",
    { class: "thumb", "data-status": image.status || "PENDING" },
    el("div", { class: "pair" }, figure("before", image.input_url), after),
    el(
      "div",
      { class: "meta" },
      el("span", { class: "name", title: image.product }, image.product),
      el("span", { class: "file", title: image.input_url }, image.input_url.split("/").pop() || image.input_url),
      sizes,
      outputDetails(image.output_details),
    ),
  );
}

function outputDetails(d) {
  // What the image became: format, size, and the quality chosen (and its score, with quality=auto).
  if (!d) return null;
  const parts = [d.kept_original ? `original ${(d.format || "").toUpperCase()}` : (d.format || "").toUpperCase()];
  if (d.width && d.height) parts.push(`${d.width}×${d.height}`);
  if (d.quality !== null && d.quality !== undefined) parts.push(`q ${d.quality}`);
  if (d.score !== null && d.score !== undefined) parts.push(`score ${d.score}`);
  return el("span", { class: "details" }, parts.filter(Boolean).join(" · "));
}

function renderThumbs(s) {
  const grid = $("thumbs");
  s.images.forEach((image, index) => {
    const shown = JSON.stringify(image);
    if (shownThumbs.get(index) === shown) return;
    const card = thumb(image);
    if (grid.children[index]) grid.children[index].replaceWith(card);
    else grid.append(card);
    shownThumbs.set(index, shown);
  });
  $("thumbs-note").textContent =
    s.total_images > s.images.length ? `The first ${s.images.length} of ${s.total_images} images.` : "Every image of the request.";
}

// --- routing ----------------------------------------------------------------------------------------------
// The webhook secret of the request just uploaded: the server shows it in the upload's answer only.
let justUploaded = null;

function showWebhookSecret(id) {
  const shown = justUploaded !== null && justUploaded.id === id;
  $("webhook-secret").hidden = !shown;
  $("webhook-secret-value").textContent = shown ? justUploaded.secret : "";
}

function route() {
  const match = location.pathname.match(/^\/r\/([A-Za-z0-9_-]+)$/);
  $("upload-view").hidden = Boolean(match);
  $("request-view").hidden = !match;
  showWebhookSecret(match ? match[1] : null);
  if (match) {
    document.title = `imagepipe · ${match[1]}`;
    follow(match[1]);
  } else {
    if (stream) stream.close();
    document.title = "imagepipe";
    renderRecent();
  }
}

setUpKeyPanel();
setUpUpload();
setUpOptions();
$("output-link").addEventListener("click", downloadWithKey);
$("cancel-button").addEventListener("click", cancelRequest);
$("delete-button").addEventListener("click", deleteRequest);
window.addEventListener("popstate", route);
route();
