// The admin page: plain DOM, no framework, no requests to anywhere but this gateway.
// Text from the server is only ever set with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let masterKey = sessionStorage.getItem("gateway-master-key") || "";

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "Authorization": "Bearer " + masterKey, "Content-Type": "application/json" },
    cache: "no-store",
  });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : response.status + " " + text;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function money(value) { return value === null || value === undefined ? "" : Number(value).toFixed(6); }
function when(iso) { return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z") : ""; }
function shortKey(token, alias) { return alias || (token ? token.slice(0, 10) + "…" : ""); }

function showError(where, error) { $(where).textContent = error ? error.message || String(error) : ""; }

async function login(event) {
  event.preventDefault();
  masterKey = $("master-key").value.trim();
  try {
    await api("/key/list?size=1");
  } catch (error) {
    masterKey = "";
    showError("login-error", error.status === 401 || error.status === 403 ? new Error("Wrong master key") : error);
    return;
  }
  sessionStorage.setItem("gateway-master-key", masterKey);
  $("master-key").value = "";
  enter();
}

function enter() {
  showError("login-error", null);
  $("login").hidden = true;
  $("app").hidden = false;
  $("nav").hidden = false;
  refresh();
}

function logout() {
  masterKey = "";
  sessionStorage.removeItem("gateway-master-key");
  $("app").hidden = true;
  $("nav").hidden = true;
  $("login").hidden = false;
}

async function refresh() {
  showError("app-error", null);
  try {
    await Promise.all([loadModels(), loadKeys(), loadSpend(), loadLogs()]);
  } catch (error) {
    if (error.status === 401) { logout(); showError("login-error", new Error("Log in again")); return; }
    showError("app-error", error);
  }
}

let keyAliases = {};

async function loadKeys() {
  const body = await api("/key/list?return_full_object=true&size=1000");
  const tbody = $("keys-table").tBodies[0];
  tbody.replaceChildren();
  keyAliases = {};
  for (const key of body.keys) {
    keyAliases[key.token] = key.key_alias;
    const row = document.createElement("tr");
    row.dataset.token = key.token;
    cell(row, key.key_alias);
    cell(row, key.key_name);
    cell(row, key.models.length ? key.models.join(", ") : "all");
    cell(row, money(key.spend), "num");
    cell(row, key.max_budget === null ? "" : money(key.max_budget) + (key.budget_duration ? " / " + key.budget_duration : ""), "num");
    const limits = [];
    if (key.rpm_limit) limits.push(key.rpm_limit + " rpm");
    if (key.tpm_limit) limits.push(key.tpm_limit + " tpm");
    if (key.max_parallel_requests) limits.push(key.max_parallel_requests + " parallel");
    cell(row, limits.join(", "));
    cell(row, when(key.expires));
    const actions = cell(row, "");
    const revoke = document.createElement("button");
    revoke.type = "button";
    revoke.className = "revoke";
    revoke.textContent = "Revoke";
    revoke.addEventListener("click", () => revokeKey(key.token, key.key_alias || key.key_name));
    actions.appendChild(revoke);
    tbody.appendChild(row);
  }
}

async function revokeKey(token, name) {
  if (!window.confirm("Revoke key " + name + "? Requests with it will fail at once.")) return;
  try {
    await api("/key/delete", { method: "POST", body: JSON.stringify({ keys: [token] }) });
    await loadKeys();
  } catch (error) { showError("app-error", error); }
}

function numberOrNull(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

async function createKey(event) {
  event.preventDefault();
  const request = {
    key_alias: $("new-alias").value.trim() || null,
    models: Array.from($("new-models").selectedOptions).map((o) => o.value),
    max_budget: numberOrNull("new-budget"),
    budget_duration: $("new-budget-duration").value.trim() || null,
    duration: $("new-duration").value.trim() || null,
    rpm_limit: numberOrNull("new-rpm"),
    tpm_limit: numberOrNull("new-tpm"),
    max_parallel_requests: numberOrNull("new-parallel"),
  };
  try {
    const body = await api("/key/generate", { method: "POST", body: JSON.stringify(request) });
    $("new-key-value").textContent = body.key;
    $("new-key-box").hidden = false;
    $("create-form").reset();
    showError("app-error", null);
    await loadKeys();
  } catch (error) { showError("app-error", error); }
}

function hideNewKey() {
  $("new-key-value").textContent = "";
  $("new-key-box").hidden = true;
}

async function loadModels() {
  const body = await api("/v1/models");
  const list = $("models-list");
  const select = $("new-models");
  const chosen = new Set(Array.from(select.selectedOptions).map((o) => o.value));
  list.replaceChildren();
  select.replaceChildren();
  for (const model of body.data) {
    const item = document.createElement("li");
    item.textContent = model.id;
    list.appendChild(item);
    const option = document.createElement("option");
    option.value = model.id;
    option.textContent = model.id;
    option.selected = chosen.has(model.id);
    select.appendChild(option);
  }
}

function isoDay(date) { return date.toISOString().slice(0, 10); }

async function loadSpend() {
  if (!$("spend-from").value) {
    const now = new Date();
    $("spend-to").value = isoDay(now);
    $("spend-from").value = isoDay(new Date(now.getTime() - 29 * 86400000));
  }
  const query = new URLSearchParams({ start_date: $("spend-from").value, end_date: $("spend-to").value });
  const rows = await api("/spend/report?" + query);
  const report = $("spend-report").tBodies[0];
  report.replaceChildren();
  const byKey = new Map(), byModel = new Map(), byDay = new Map();
  for (const r of rows) {
    const row = document.createElement("tr");
    cell(row, r.group_by_day);
    cell(row, shortKey(r.api_key, r.key_alias));
    cell(row, r.model_group);
    cell(row, r.requests, "num");
    cell(row, r.total_tokens, "num");
    cell(row, money(r.spend), "num");
    report.appendChild(row);
    const k = shortKey(r.api_key, r.key_alias);
    for (const [map, name] of [[byKey, k], [byModel, r.model_group]]) {
      const sum = map.get(name) || { requests: 0, spend: 0 };
      sum.requests += r.requests;
      sum.spend += r.spend;
      map.set(name, sum);
    }
    byDay.set(r.group_by_day, (byDay.get(r.group_by_day) || 0) + r.spend);
  }
  for (const [id, map] of [["spend-by-key", byKey], ["spend-by-model", byModel]]) {
    const tbody = $(id).tBodies[0];
    tbody.replaceChildren();
    for (const [name, sum] of [...map.entries()].sort((a, b) => b[1].spend - a[1].spend)) {
      const row = document.createElement("tr");
      cell(row, name);
      cell(row, sum.requests, "num");
      cell(row, money(sum.spend), "num");
      tbody.appendChild(row);
    }
  }
  drawChart(byDay);
}

function drawChart(byDay) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 600 160");
  svg.setAttribute("preserveAspectRatio", "none");
  const days = [...byDay.keys()].sort();
  const top = Math.max(...byDay.values(), 0);
  const width = days.length ? 600 / days.length : 600;
  days.forEach((day, i) => {
    const value = byDay.get(day);
    const height = top > 0 ? (value / top) * 130 : 0;
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", String(i * width + 2));
    rect.setAttribute("y", String(140 - height));
    rect.setAttribute("width", String(Math.max(width - 4, 1)));
    rect.setAttribute("height", String(height));
    const title = document.createElementNS(ns, "title");
    title.textContent = day + ": " + money(value);
    rect.appendChild(title);
    svg.appendChild(rect);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", String(i * width + 2));
    label.setAttribute("y", "155");
    label.textContent = day.slice(5);
    svg.appendChild(label);
  });
  $("spend-chart").replaceChildren(svg);
}

async function loadLogs() {
  const body = await api("/spend/logs?page_size=50");
  const tbody = $("logs-table").tBodies[0];
  tbody.replaceChildren();
  for (const r of body.data) {
    const row = document.createElement("tr");
    cell(row, when(r.startTime));
    cell(row, shortKey(r.api_key, r.key_alias));
    cell(row, r.model_group);
    cell(row, r.model);
    cell(row, r.status_code);
    cell(row, r.total_tokens + (r.tokens_estimated ? " (est.)" : ""), "num");
    cell(row, money(r.spend), "num");
    cell(row, r.ttft === null ? "" : (r.ttft * 1000).toFixed(0) + " ms", "num");
    const ms = (Date.parse(r.endTime) - Date.parse(r.startTime));
    cell(row, isNaN(ms) ? "" : ms.toFixed(0) + " ms", "num");
    tbody.appendChild(row);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("create-form").addEventListener("submit", createKey);
  $("new-key-done").addEventListener("click", hideNewKey);
  $("spend-form").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  $("refresh").addEventListener("click", refresh);
  $("logout").addEventListener("click", logout);
  if (masterKey) enter();
});
