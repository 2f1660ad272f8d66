// The review page. Recorded text is put into the page with textContent only (never innerHTML), so a
// conversation holding markup or script shows it as text and runs nothing.
"use strict";

const token = document.querySelector('meta[name="chatproxy-token"]').content;
const form = document.getElementById("filters");
const $ = (id) => document.getElementById(id);
const state = {
  rows: [], total: 0, page: 0, per: 50, selected: -1, open: null, editing: false, shown: "", loading: null, failure: null,
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function params() {
  const query = new URLSearchParams();
  for (const [name, value] of new FormData(form)) if (value) query.set(name, value);
  if (state.page) query.set("page", String(state.page));
  return query;
}

function loadParams() {
  const query = new URLSearchParams(location.search);
  for (const field of form.elements) if (field.name && query.has(field.name)) field.value = query.get(field.name);
  state.page = Number(query.get("page") || 0);
}

async function api(path, options) {
  const reply = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (!reply.ok) {
    const text = (await reply.text()).trim();
    let message = text || reply.statusText;
    try { message = JSON.parse(text).error || message; } catch (e) { /* a plain-text refusal */ }
    throw new Error(message);
  }
  return reply.json();
}

let loadingTimer = null;

async function refreshList(keepSelection, waitForLoading) {
  const query = params();
  history.replaceState(null, "", "?" + query.toString() + location.hash);
  let data;
  try {
    // While the sessions are read, the server holds the request until they are (0.25 s at most).
    data = await api("api/list?" + query.toString() + (waitForLoading ? "&wait=1" : ""));
  } catch (error) {
    $("summary").textContent = "cannot list: " + error.message;  // a filter the server refuses, say
    $("summary").className = "error";
    return;
  }
  const fingerprint = JSON.stringify(data);
  const wasLoading = state.loading;
  state.loading = data.loading;
  clearTimeout(loadingTimer);
  // While the sessions are still being read the list grows: look again soon, then once more when done.
  if (data.loading) loadingTimer = setTimeout(() => refreshList(true, true).catch(() => {}), 50);
  else if (wasLoading) facets().catch(() => {});
  if (keepSelection && fingerprint === state.shown) return;
  state.shown = fingerprint;
  const selectedId = state.rows[state.selected] ? state.rows[state.selected].id : null;
  state.rows = data.rows; state.total = data.total; state.per = data.per; state.failure = data.failure;
  renderList();
  highlight(state.open ? shownIndex() : state.rows.findIndex((row) => row.id === selectedId));
}

function renderList() {
  const list = $("rows");
  list.replaceChildren();
  const first = state.page * state.per;
  let summary = state.total
    ? `${first + 1}–${first + state.rows.length} of ${state.total} conversations`
    : (state.loading ? "no conversations read yet" : "no conversations match");
  if (state.loading) {
    const share = state.loading.size ? Math.floor((100 * state.loading.read) / state.loading.size) : 0;
    summary += ` · loading… ${share}% of the sessions read`;
  }
  if (state.failure) summary += " · " + state.failure;
  $("summary").textContent = summary;
  $("summary").className = state.loading ? "loading" : (state.failure ? "error" : "");
  document.body.dataset.loading = state.loading ? "1" : "";
  state.rows.forEach((row, index) => {
    const item = el("li", row.status || "");
    item.dataset.id = row.id;
    item.appendChild(el("div", "first", row.first || "(no user message)"));
    const facts = el("div", "facts");
    const about = [row.session, row.time.replace("T", " ").slice(0, 16), row.model || "?", row.api || "?", `${row.turns} turns`, `${row.chars} chars`];
    facts.appendChild(el("span", "", about.join(" · ") + " "));
    const badges = [];
    if (row.tools) badges.push("tools");
    if (row.reasoning) badges.push("reasoning");
    if (row.images) badges.push("images");
    if (row.incomplete) badges.push("incomplete");
    if (row.damaged) badges.push("damaged");
    if (row.branches > 1) badges.push(`${row.branches} branches`);
    if (row.status) badges.push(row.status === "keep" ? "kept" : "discarded");
    if (row.rating) badges.push("★" + row.rating);
    if (row.edited) badges.push("edited");
    for (const tag of row.tags) badges.push("#" + tag);
    for (const badge of badges) facts.appendChild(el("span", "badge", badge));
    item.appendChild(facts);
    item.addEventListener("click", () => select(index, true));
    list.appendChild(item);
  });
  $("page").textContent = `page ${state.page + 1} of ${Math.max(1, Math.ceil(state.total / state.per))}`;
  $("prev").disabled = state.page === 0;
  $("next").disabled = first + state.rows.length >= state.total;
}

// The list's highlight follows the conversation shown (opened from the list, a branch link or the URL).
function highlight(index) {
  const items = $("rows").children;
  for (const item of items) item.classList.remove("selected");
  state.selected = index >= 0 && index < state.rows.length ? index : -1;
  if (state.selected < 0) return;
  items[index].classList.add("selected");
  items[index].scrollIntoView({ block: "nearest" });
}

function select(index, load) {
  if (index < 0 || index >= state.rows.length) { highlight(-1); return; }
  highlight(index);
  const row = state.rows[index];
  if (load || !state.open || state.open.id !== row.id || state.open.session !== row.session) openConversation(row.session, row.id);
}

function shownIndex() {
  return state.open ? state.rows.findIndex((row) => row.id === state.open.id && row.session === state.open.session) : -1;
}

async function openConversation(session, id) {
  const data = await api(`api/conversation?session=${encodeURIComponent(session)}&id=${encodeURIComponent(id)}`);
  state.open = data; state.editing = false;
  location.hash = `${session}/${id}`;
  highlight(shownIndex());
  renderConversation();
}

function renderConversation() {
  const data = state.open;
  $("empty").hidden = true; $("detail").hidden = false;
  $("facts").textContent = `${data.session}/${data.id} · ${data.meta.model || "?"} · ${data.meta.api || data.meta.endpoint || ""} · ${data.meta.time || ""}`;
  renderMarks(data.marks);
  const edits = new Map(data.marks.edits.map((edit) => [edit.turn, edit]));
  const branches = $("branches");
  branches.replaceChildren();
  const transcript = $("transcript");
  transcript.replaceChildren();
  if (data.branches.length < 2) {
    data.messages.forEach((message, turn) => transcript.appendChild(messageBox(message, turn, edits, true)));
  } else {
    // Branches of one chat (regenerations, edits, n > 1): what they share once, then one column each from
    // the first turn where they part, that turn highlighted in every column.
    branches.appendChild(el("span", "", `${data.branches.length} branches, parting at turn ${data.shared + 1}: `));
    data.branches.forEach((branch, n) => branches.appendChild(branchLink(branch, n)));
    for (let turn = 0; turn < data.shared; turn++) transcript.appendChild(messageBox(data.messages[turn], turn, edits, true));
    const columns = el("div", "columns");
    data.branches.forEach((branch, n) => {
      const column = el("section", "branch" + (branch.current ? " current" : ""));
      column.dataset.branch = branch.id;
      const head = el("div", "branch-head");
      head.appendChild(branchLink(branch, n));
      const about = [branch.model, branch.time.replace("T", " ").slice(0, 16), `${branch.turns} turns`];
      const status = branch.current ? data.marks.status : branch.status;
      const rating = branch.current ? data.marks.rating : branch.rating;
      if (status) about.push(status === "keep" ? "kept" : "discarded");
      if (rating) about.push("★" + rating);
      head.appendChild(el("span", "facts", " " + about.filter(Boolean).join(" · ")));
      column.appendChild(head);
      // Where this column parts from the one shown (for the one shown: where the first other parts).
      const parts = branch.current ? data.shared : (branch.differs_at === null ? -1 : branch.differs_at);
      branch.messages.forEach((message, i) => {
        const turn = branch.from + i;
        const box = messageBox(message, turn, branch.current ? edits : new Map(), branch.current);
        if (turn === parts) box.classList.add("differs");
        column.appendChild(box);
      });
      if (!branch.messages.length) column.appendChild(el("div", "facts", "(ends where the others go on)"));
      columns.appendChild(column);
    });
    transcript.appendChild(columns);
  }
  $("meta-json").textContent = JSON.stringify({ meta: data.meta, tools: data.tools }, null, 2);
}

function branchLink(branch, n) {
  const link = el("a", "branch-link" + (branch.current ? " current" : ""), `branch ${n + 1}` + (branch.current ? " (shown)" : ""));
  link.href = `#${branch.session}/${branch.id}`;
  link.dataset.id = branch.id;
  link.addEventListener("click", (event) => { event.preventDefault(); openConversation(branch.session, branch.id); });
  return link;
}

// One message: role, reasoning (collapsed), text (or its edit), tool calls as JSON, images. `own` marks the
// messages of the conversation shown (their turn numbers are what `e` edits).
function messageBox(message, turn, edits, own) {
  const box = el("div", `msg ${message.role}` + (edits.has(turn) ? " edited" : ""));
  if (own) box.dataset.turn = String(turn);
  box.appendChild(el("div", "role", message.role + (edits.has(turn) ? " (edited)" : "") + (message.tool_call_id ? ` [${message.tool_call_id}]` : "")));
  if (message.reasoning) {
    const details = el("details", "reasoning");
    details.appendChild(el("summary", "", "reasoning"));
    details.appendChild(el("div", "text", message.reasoning));
    box.appendChild(details);
  }
  const edit = edits.get(turn);
  let text = edit ? edit.content : message.content;
  if (message.role === "tool") {
    try { text = JSON.stringify(JSON.parse(message.content), null, 2); } catch (e) { /* shown as recorded */ }
  }
  box.appendChild(el("div", "text", text));
  if (edit) {
    const original = el("details");
    original.appendChild(el("summary", "", "recorded reply"));
    original.appendChild(el("div", "text", edit.original));
    box.appendChild(original);
  }
  for (const call of message.tool_calls || []) {
    let args = call.arguments;
    try { args = JSON.stringify(JSON.parse(call.arguments), null, 2); } catch (e) { /* shown as recorded */ }
    box.appendChild(el("pre", "call", `${call.name}(${args})`));
  }
  for (const image of message.images || []) {
    if (image.name) {
      const img = el("img");
      img.alt = image.name;
      img.src = `api/image?session=${encodeURIComponent(image.session)}&name=${encodeURIComponent(image.name)}`;
      box.appendChild(img);
    } else {
      box.appendChild(el("div", "facts", "[image not stored locally: " + image.source.slice(0, 80) + "]"));
    }
  }
  return box;
}

function renderMarks(marks) {
  $("mark-state").textContent = marks.status ? (marks.status === "keep" ? "kept" : "discarded") : "unmarked";
  $("rating").value = String(marks.rating || 0);
  if (document.activeElement !== $("note")) $("note").value = marks.note;
  const tags = $("mark-tags");
  tags.replaceChildren();
  for (const tag of marks.tags) {
    const badge = el("span", "badge", "#" + tag + " ×");
    badge.title = "remove";
    badge.addEventListener("click", () => mark("untag", { value: tag }));
    tags.appendChild(badge);
  }
}

async function mark(op, fields) {
  if (!state.open) return;
  const body = Object.assign({ session: state.open.session, id: state.open.id, op: op }, fields || {});
  try {
    state.open.marks = await api("api/mark", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Chatproxy-Token": token },
      body: JSON.stringify(body),
    });
  } catch (error) {
    $("mark-state").textContent = "not saved: " + error.message;
    return;
  }
  renderConversation();
  refreshList(true);
}

function startEdit() {
  if (!state.open || state.editing) return;
  const turns = state.open.messages.map((m, i) => [m, i]).filter(([m]) => m.role === "assistant");
  if (!turns.length) return;
  const turn = turns[turns.length - 1][1];
  const box = $("transcript").querySelector(`.msg[data-turn="${turn}"]`);
  const text = box.querySelector(".text:not(details .text)") || box.querySelector(".text");
  const area = el("textarea");
  const edit = state.open.marks.edits.find((e) => e.turn === turn);
  area.value = edit ? edit.content : state.open.messages[turn].content;
  text.replaceWith(area);
  state.editing = true;
  area.focus();
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { state.editing = false; mark("edit", { turn: turn, content: area.value }); }
    if (event.key === "Escape") { state.editing = false; renderConversation(); }
    event.stopPropagation();
  });
}

document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if (typing) {
    // Escape leaves the field for the list keys; in a search field its default would also clear the search.
    if (event.key === "Escape") { event.preventDefault(); document.activeElement.blur(); }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const actions = {
    j: () => select(Math.min(state.selected + 1, state.rows.length - 1), false),
    k: () => select(Math.max(state.selected - 1, 0), false),
    a: () => mark("keep"),
    d: () => mark("discard"),
    u: () => mark("undo"),
    e: () => startEdit(),
    "/": () => $("q").focus(),
    "?": () => ($("keys").open ? $("keys").close() : $("keys").showModal()),
  };
  if (actions[event.key]) { event.preventDefault(); actions[event.key](); }
});

$("keep").addEventListener("click", () => mark("keep"));
$("discard").addEventListener("click", () => mark("discard"));
$("unmark").addEventListener("click", () => mark("unmark"));
$("undo").addEventListener("click", () => mark("undo"));
$("rating").addEventListener("change", () => mark("rating", { value: Number($("rating").value) }));
$("note").addEventListener("change", () => mark("note", { value: $("note").value }));
$("tag-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && $("tag-input").value.trim()) { mark("tag", { value: $("tag-input").value.trim() }); $("tag-input").value = ""; }
});
$("keys-close").addEventListener("click", () => $("keys").close());
$("prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); refreshList(false); });
$("next").addEventListener("click", () => { state.page += 1; refreshList(false); });
let typingTimer = null;
form.addEventListener("input", () => { clearTimeout(typingTimer); typingTimer = setTimeout(() => { state.page = 0; refreshList(false); refreshPanels(); }, 200); });
form.addEventListener("submit", (event) => event.preventDefault());

// -- Bulk marks on the filtered set ---------------------------------------------------------------

function filterQuery() {
  const query = params();
  query.delete("page");
  return query;
}

async function post(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Chatproxy-Token": token },
    body: JSON.stringify(body),
  });
}

const bulkDone = [];  // batches of this page's bulk actions, newest last, for undo

async function bulk(op, value) {
  const body = { filter: filterQuery().toString(), op: op };
  if (value !== undefined) body.value = value;
  try {
    const done = await post("api/bulk", body);
    bulkDone.push(done);
    $("bulk-state").textContent = `${done.op} on ${done.count} conversations`;
  } catch (error) {
    $("bulk-state").textContent = "not saved: " + error.message;
  }
  $("bulk-undo").disabled = !bulkDone.length;
  await afterBulk();
}

async function undoBulk() {
  const last = bulkDone.pop();
  if (!last) return;
  try {
    const undone = await post("api/bulk", { op: "undo", batch: last.batch });
    $("bulk-state").textContent = `undid ${last.op} on ${undone.count} conversations`;
  } catch (error) {
    $("bulk-state").textContent = "undo failed: " + error.message;
  }
  $("bulk-undo").disabled = !bulkDone.length;
  await afterBulk();
}

async function afterBulk() {
  await refreshList(false);
  if (state.open) openConversation(state.open.session, state.open.id).catch(() => {});
  refreshPanels();
}

// -- Dashboard: inline SVG built node by node -----------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// A horizontal bar chart of [label, count] pairs.
function barChart(title, pairs) {
  const shown = pairs.slice(0, 12);
  const width = 340, row = 18, top = 22, labelWidth = 130;
  const height = top + Math.max(1, shown.length) * row + 6;
  const chart = svg("svg", { class: "chart", width: width, height: height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  chart.appendChild(svg("text", { x: 6, y: 15, class: "title" }, title + (pairs.length > shown.length ? ` (top ${shown.length})` : "")));
  const most = Math.max(1, ...shown.map((pair) => pair[1]));
  shown.forEach(([label, count], n) => {
    const y = top + n * row;
    chart.appendChild(svg("text", { x: 6, y: y + 12 }, String(label).slice(0, 20)));
    const bar = svg("rect", { class: "bar", x: labelWidth, y: y + 2, height: row - 5, width: Math.max(1, ((width - labelWidth - 50) * count) / most) });
    bar.appendChild(svg("title", {}, `${label}: ${count}`));
    chart.appendChild(bar);
    chart.appendChild(svg("text", { x: labelWidth + 4 + ((width - labelWidth - 50) * count) / most, y: y + 12 }, String(count)));
  });
  return chart;
}

// A histogram: {edges, counts} as vertical bars, the range under the first and last.
function histogramChart(title, hist) {
  const width = 340, height = 150, top = 22, bottom = 20;
  const chart = svg("svg", { class: "chart", width: width, height: height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  chart.appendChild(svg("text", { x: 6, y: 15, class: "title" }, title));
  const counts = hist.counts;
  if (!counts.length) return chart;
  const most = Math.max(1, ...counts);
  const step = (width - 12) / counts.length;
  counts.forEach((count, n) => {
    const h = ((height - top - bottom) * count) / most;
    const bar = svg("rect", { class: "bar", x: 6 + n * step, y: height - bottom - h, width: Math.max(1, step - 2), height: h });
    bar.appendChild(svg("title", {}, `${hist.edges[n]}–${hist.edges[n + 1] - 1}: ${count}`));
    chart.appendChild(bar);
  });
  chart.appendChild(svg("text", { x: 6, y: height - 5 }, String(hist.min)));
  chart.appendChild(svg("text", { x: width - 6, y: height - 5, "text-anchor": "end" }, String(hist.max)));
  return chart;
}

async function refreshDashboard() {
  const data = await api("api/stats?" + filterQuery().toString());
  const percent = (share) => `${Math.round(share * 100)}%`;
  $("dash-summary").textContent = `${data.total} conversations · ${data.unique} after removing ${data.duplicates} duplicates · ` +
    `with tools ${percent(data.share.tools)} · reasoning ${percent(data.share.reasoning)} · images ${percent(data.share.images)}`;
  const charts = $("charts");
  charts.replaceChildren(
    barChart("per day", data.per_day),
    barChart("per model", data.per_model),
    barChart("per API", data.per_api),
    barChart("share of the selection (%)", [["tools", Math.round(data.share.tools * 100)], ["reasoning", Math.round(data.share.reasoning * 100)], ["images", Math.round(data.share.images * 100)]]),
    histogramChart("turns", data.turns),
    data.tokens ? histogramChart(`tokens (usage of ${data.with_usage})`, data.tokens) : histogramChart("characters", data.chars),
  );
  if (data.tokens) charts.appendChild(histogramChart("characters", data.chars));
}

// -- Export ----------------------------------------------------------------------------------------

function exportQuery() {
  const query = filterQuery();
  query.set("profile", $("export-profile").value || "messages");
  if ($("export-discarded").checked) query.set("with_discarded", "1");
  if ($("export-incomplete").checked) query.set("with_incomplete", "1");
  return query;
}

async function refreshExport() {
  if (!$("export-profile").options.length) {
    const data = await api("api/export/profiles");
    for (const name of data.profiles) $("export-profile").appendChild(el("option", "", name)).value = name;
    $("export-profile").value = data.profiles.includes("messages") ? "messages" : data.profiles[0];
  }
  const query = exportQuery();
  $("export-download").href = "api/export/file?" + query.toString();
  $("export-count").textContent = "counting…";
  $("export-command").textContent = "";
  let data;
  try {
    data = await api("api/export?" + query.toString());
  } catch (error) {
    $("export-count").textContent = "export refused: " + error.message;
    return;
  }
  if (exportQuery().toString() !== query.toString()) return;  // the filters changed meanwhile: a newer count comes
  const left = [];
  if (data.discarded) left.push(`${data.discarded} discarded`);
  if (data.incomplete) left.push(`${data.incomplete} cut short`);
  $("export-count").textContent = `${data.records} records (${data.profile}) from the ${data.listed} conversations listed` +
    (left.length ? ` · left out: ${left.join(", ")} (tick below to include)` : "") +
    ` · ${data.duplicates} duplicates, ${data.skipped} refused by the validator`;
  const refused = $("export-refused");
  refused.replaceChildren();
  for (const item of data.refused) refused.appendChild(el("li", "", `${item.count} × ${item.reason} (${item.examples.join(", ")})`));
  $("export-command").textContent = data.command;
}

async function copyCommand() {
  const text = $("export-command").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("export-copy").textContent = "copied";
  } catch (error) {
    const range = document.createRange();  // no clipboard (plain http, no permission): select it instead
    range.selectNodeContents($("export-command"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    $("export-copy").textContent = "selected: Ctrl+C";
  }
}

function showPanel(name) {
  for (const panel of ["dashboard", "export"]) {
    const open = panel === name && $(panel).hidden;
    $(panel).hidden = !open;
    $("show-" + panel).classList.toggle("active", open);
  }
  if (!$("dashboard").hidden) refreshDashboard().catch(() => {});
  if (!$("export").hidden) refreshExport().catch(() => {});
}

let exportTimer = null;

function refreshPanels() {
  if (!$("dashboard").hidden) refreshDashboard().catch(() => {});
  // An export reads every chosen conversation: counted once typing pauses, not on every key.
  clearTimeout(exportTimer);
  if (!$("export").hidden) exportTimer = setTimeout(() => refreshExport().catch(() => {}), 600);
}

$("bulk-keep").addEventListener("click", () => bulk("keep"));
$("bulk-discard").addEventListener("click", () => bulk("discard"));
$("bulk-undo").addEventListener("click", () => undoBulk());
$("bulk-tag").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && $("bulk-tag").value.trim()) { bulk("tag", $("bulk-tag").value.trim()); $("bulk-tag").value = ""; }
});
$("show-dashboard").addEventListener("click", () => showPanel("dashboard"));
$("show-export").addEventListener("click", () => showPanel("export"));
$("export-check").addEventListener("click", () => refreshExport());
$("export-profile").addEventListener("change", () => refreshExport());
$("export-discarded").addEventListener("change", () => refreshExport());
$("export-incomplete").addEventListener("change", () => refreshExport());
$("export-copy").addEventListener("click", () => copyCommand());

async function facets() {
  const data = await api("api/facets");
  const fill = (id, values) => {
    const select = $(id);
    const wanted = new URLSearchParams(location.search).get(select.name) || select.value;
    for (const value of values) if (![...select.options].some((o) => o.value === value)) select.appendChild(el("option", "", value)).value = value;
    select.value = wanted;
  };
  fill("f-session", data.sessions); fill("f-model", data.models); fill("f-api", data.apis); fill("f-tag", data.tags);
}

(async function start() {
  loadParams();
  await facets();
  loadParams();
  await refreshList(false);
  const hash = decodeURIComponent(location.hash.slice(1));
  if (hash.includes("/")) {
    const session = hash.slice(0, hash.indexOf("/")), id = hash.slice(hash.indexOf("/") + 1);
    const index = state.rows.findIndex((row) => row.id === id && row.session === session);
    if (index >= 0) select(index, true); else openConversation(session, id).catch(() => {});
  }
  document.body.dataset.ready = "1";
  // New conversations of a live session appear without a reload.
  setInterval(() => { if (!state.editing && document.visibilityState === "visible") refreshList(true).catch(() => {}); }, 3000);
})();
