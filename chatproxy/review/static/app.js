// The review page. Recorded text is put into the page with textContent only (never innerHTML), so a
// conversation holding markup or script shows it as text and runs nothing.
"use strict";

const token = document.querySelector('meta[name="chatproxy-token"]').content;
const form = document.getElementById("filters");
const $ = (id) => document.getElementById(id);
const state = { rows: [], total: 0, page: 0, per: 50, selected: -1, open: null, editing: false, shown: "" };

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
  if (!reply.ok) throw new Error((await reply.text()).trim() || reply.statusText);
  return reply.json();
}

async function refreshList(keepSelection) {
  const query = params();
  history.replaceState(null, "", "?" + query.toString() + location.hash);
  const data = await api("api/list?" + query.toString());
  const fingerprint = JSON.stringify(data);
  if (keepSelection && fingerprint === state.shown) return;
  state.shown = fingerprint;
  const selectedId = state.rows[state.selected] ? state.rows[state.selected].id : null;
  state.rows = data.rows; state.total = data.total; state.per = data.per;
  renderList();
  const again = state.rows.findIndex((row) => row.id === selectedId);
  select(again >= 0 ? again : (keepSelection ? state.selected : -1), false);
}

function renderList() {
  const list = $("rows");
  list.replaceChildren();
  const first = state.page * state.per;
  $("summary").textContent = state.total
    ? `${first + 1}–${first + state.rows.length} of ${state.total} conversations`
    : "no conversations match";
  state.rows.forEach((row, index) => {
    const item = el("li", row.status || "");
    item.dataset.id = row.id;
    item.appendChild(el("div", "first", row.first || "(no user message)"));
    const facts = el("div", "facts");
    facts.appendChild(el("span", "", `${row.session} · ${row.time.replace("T", " ").slice(0, 16)} · ${row.model || "?"} · ${row.turns} turns · ${row.chars} chars `));
    const badges = [];
    if (row.tools) badges.push("tools");
    if (row.reasoning) badges.push("reasoning");
    if (row.images) badges.push("images");
    if (row.incomplete) badges.push("incomplete");
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

function select(index, load) {
  const items = $("rows").children;
  for (const item of items) item.classList.remove("selected");
  if (index < 0 || index >= state.rows.length) { state.selected = -1; return; }
  state.selected = index;
  items[index].classList.add("selected");
  items[index].scrollIntoView({ block: "nearest" });
  const row = state.rows[index];
  if (load || !state.open || state.open.id !== row.id) openConversation(row.session, row.id);
}

async function openConversation(session, id) {
  const data = await api(`api/conversation?session=${encodeURIComponent(session)}&id=${encodeURIComponent(id)}`);
  state.open = data; state.editing = false;
  location.hash = `${session}/${id}`;
  renderConversation();
}

function renderConversation() {
  const data = state.open;
  $("empty").hidden = true; $("detail").hidden = false;
  $("facts").textContent = `${data.session}/${data.id} · ${data.meta.model || "?"} · ${data.meta.endpoint || ""} · ${data.meta.time || ""}`;
  renderMarks(data.marks);
  const current = data.branches.find((branch) => branch.current);
  const differs = new Set(data.branches.filter((b) => !b.current && b.differs_at !== null).map((b) => b.differs_at));
  const branches = $("branches");
  branches.replaceChildren();
  if (data.branches.length > 1) {
    branches.appendChild(el("span", "", "branches: "));
    data.branches.forEach((branch, n) => {
      const link = el("a", branch.current ? "current" : "", `${n + 1}` + (branch.current ? "" : ` (from turn ${branch.differs_at})`));
      link.addEventListener("click", () => openConversation(data.session, branch.id));
      branches.appendChild(link);
    });
  }
  const edits = new Map(data.marks.edits.map((edit) => [edit.turn, edit]));
  const transcript = $("transcript");
  transcript.replaceChildren();
  data.messages.forEach((message, turn) => {
    const box = el("div", `msg ${message.role}` + (differs.has(turn) && current ? " differs" : "") + (edits.has(turn) ? " edited" : ""));
    box.dataset.turn = String(turn);
    box.appendChild(el("div", "role", message.role + (edits.has(turn) ? " (edited)" : "") + (message.tool_call_id ? ` [${message.tool_call_id}]` : "")));
    if (message.reasoning) {
      const details = el("details", "reasoning");
      details.appendChild(el("summary", "", "reasoning"));
      details.appendChild(el("div", "text", message.reasoning));
      box.appendChild(details);
    }
    const edit = edits.get(turn);
    box.appendChild(el("div", "text", edit ? edit.content : message.content));
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
    if (message.role === "tool") {
      try { box.querySelector(".text").textContent = JSON.stringify(JSON.parse(message.content), null, 2); } catch (e) { /* text */ }
    }
    for (const image of message.images || []) {
      if (image.name) {
        const img = el("img");
        img.alt = image.name;
        img.src = `api/image?session=${encodeURIComponent(data.session)}&name=${encodeURIComponent(image.name)}`;
        box.appendChild(img);
      } else {
        box.appendChild(el("div", "facts", "[image not stored locally: " + image.source.slice(0, 80) + "]"));
      }
    }
    transcript.appendChild(box);
  });
  $("meta-json").textContent = JSON.stringify({ meta: data.meta, tools: data.tools }, null, 2);
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
  const box = $("transcript").querySelector(`[data-turn="${turn}"]`);
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
form.addEventListener("input", () => { clearTimeout(typingTimer); typingTimer = setTimeout(() => { state.page = 0; refreshList(false); }, 200); });
form.addEventListener("submit", (event) => event.preventDefault());

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
    const [session, id] = hash.split("/");
    const index = state.rows.findIndex((row) => row.id === id && row.session === session);
    if (index >= 0) select(index, true); else openConversation(session, id).catch(() => {});
  }
  document.body.dataset.ready = "1";
  // New conversations of a live session appear without a reload.
  setInterval(() => { if (!state.editing && document.visibilityState === "visible") refreshList(true).catch(() => {}); }, 3000);
})();
