// Quartermaster's web console: a client of the API over the session cookie. Every string from the
// API goes into the page as text (never as HTML).
"use strict";

const ROLES = ["viewer", "operator", "admin"];
let me = null;
let feed = null;
let onEvent = null;
let refresher = null;

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.headers["content-type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error((data && (data.detail || data.title)) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function can(role) {
  return me && ROLES.indexOf(me.role) >= ROLES.indexOf(role);
}

function money(micros) {
  return micros === null || micros === undefined ? "-" : (micros / 1e6).toFixed(Math.abs(micros) < 10000 && micros !== 0 ? 6 : 2);
}

function ago(time) {
  if (!time) return "-";
  const seconds = Math.round((Date.now() - Date.parse(time)) / 1000);
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  return `${Math.floor(seconds / 3600)}h ago`;
}

function page(title, ...content) {
  const main = document.getElementById("main");
  main.replaceChildren(el("h1", {}, title), ...content);
  main.focus();
}

function table(headers, rows) {
  return el("div", { class: "table" }, el("table", {}, el("thead", {}, el("tr", {}, headers.map((header) => el("th", { scope: "col" }, header)))), el("tbody", {}, rows)));
}

function stateCell(state) {
  return el("td", { class: `state-${state}`, "data-state": state }, state);
}

function openFeed() {
  if (feed) return;
  feed = new EventSource("/events");
  feed.addEventListener("instance.state_changed", (event) => onEvent && onEvent(JSON.parse(event.data)));
  feed.onerror = () => { /* the browser reconnects with Last-Event-ID by itself */ };
}

async function login() {
  document.getElementById("nav").hidden = true;
  const user = el("input", { id: "login", name: "login", autocomplete: "username", required: true });
  const password = el("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const form = el("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        await api("POST", "/auth/login", { login: user.value, password: password.value });
        showError("");
        await start();
      } catch (error) {
        showError(error.message);
      }
    },
  }, el("label", { for: "login" }, "Username or email", user), el("label", { for: "password" }, "Password", password), el("button", { type: "submit" }, "Log in"));
  page("Log in", form);
}

async function overview() {
  const [instances, forecast] = await Promise.all([api("GET", "/instances?limit=500"), api("GET", "/finops/cost/forecast")]);
  const byState = {};
  for (const instance of instances.items) byState[instance.state] = (byState[instance.state] || 0) + 1;
  let budget = null;
  try {
    budget = await api("GET", `/finops/budgets/${me.organization_id}`);
  } catch (error) {
    if (error.status !== 404) throw error;
  }
  const card = (label, value) => el("div", { class: "card" }, el("div", { class: "value" }, value), el("div", { class: "label" }, label));
  page("Overview",
    el("div", { class: "cards" },
      card("instances ready", byState.ready || 0),
      card("starting", (byState.requested || 0) + (byState.provisioning || 0) + (byState.booting || 0)),
      card(`burn rate, ${forecast.currency}/h`, money(forecast.burn_rate_micros_per_hour)),
      card(`month to date, ${forecast.currency}`, money(forecast.month_to_date_micros)),
      card(`month end (forecast), ${forecast.currency}`, money(forecast.projected_month_end_micros)),
      card("budget", budget ? `${money(budget.amount_micros)} (${budget.spent_percent.toFixed(1)}% spent)` : "none")),
    table(["state", "instances"], Object.entries(byState).map(([state, count]) => el("tr", {}, stateCell(state), el("td", {}, count)))));
  onEvent = () => schedule(overview);
}

let scheduled = null;
function schedule(view) {
  clearTimeout(scheduled);
  scheduled = setTimeout(() => view().catch((error) => showError(error.message)), 300);
}

async function instances() {
  const list = await api("GET", "/instances?limit=200");
  const rows = list.items.map((instance) => el("tr", { "data-instance": instance.id },
    el("td", {}, el("a", { href: `#/instances/${instance.id}` }, instance.id.slice(0, 13))),
    el("td", {}, instance.model), stateCell(instance.state), el("td", {}, instance.provider),
    el("td", {}, instance.zone), el("td", {}, instance.instance_type), el("td", {}, ago(instance.state_changed_at))));
  page("Instances", rows.length ? table(["id", "model", "state", "provider", "zone", "type", "since"], rows) : el("p", { class: "muted" }, "No instances yet."));
  onEvent = () => schedule(instances);
}

async function instance(id) {
  const detail = await api("GET", `/instances/${encodeURIComponent(id)}`);
  const finished = ["terminating", "terminated", "provisioning_failed", "startup_failed"].includes(detail.state);
  const terminate = can("operator") && !finished ? el("button", {
    class: "danger", type: "button", id: "terminate",
    onclick: async () => {
      if (!window.confirm(`Terminate ${detail.id}? It stops billing and cannot be undone.`)) return;
      try {
        await api("DELETE", `/instances/${encodeURIComponent(detail.id)}`);
        await instance(id);
      } catch (error) {
        showError(error.message);
      }
    },
  }, "Terminate") : null;
  page(`Instance ${detail.id}`,
    el("div", { class: "cards" },
      el("div", { class: "card" }, el("div", { class: `value state-${detail.state}`, id: "state" }, detail.state), el("div", { class: "label" }, `${detail.progress_percent}%`)),
      el("div", { class: "card" }, el("div", { class: "value", id: "cost" }, money(detail.cost_to_date_micros)), el("div", { class: "label" }, "cost to date")),
      el("div", { class: "card" }, el("div", { class: "value" }, `${money(detail.hourly_price_micros)} ${detail.currency}/h`), el("div", { class: "label" }, `${detail.provider} ${detail.zone} ${detail.instance_type}`))),
    terminate,
    el("h2", {}, "History"),
    table(["when", "from", "to", "reason"], detail.history.map((change) => el("tr", {}, el("td", {}, ago(change.occurred_at)), el("td", {}, change.from_state || "-"), stateCell(change.to_state), el("td", {}, change.reason || "")))));
  onEvent = (envelope) => { if (envelope.data && envelope.data.instance_id === id) schedule(() => instance(id)); };
  clearInterval(refresher);
  refresher = setInterval(() => { if (location.hash === `#/instances/${id}`) instance(id).catch((error) => showError(error.message)); }, 3000);
}

async function deploy() {
  if (!can("operator")) {
    page("Deploy", el("p", {}, "Deploying needs the operator role."));
    return;
  }
  const offers = await api("GET", "/offers");
  const model = el("input", { id: "model", name: "model", required: true, value: "demo" });
  const count = el("input", { id: "count", name: "count", type: "number", min: 1, max: 100, value: 1 });
  const provider = el("select", { id: "provider", name: "provider" });
  const zone = el("select", { id: "zone", name: "zone" });
  const type = el("select", { id: "type", name: "type" });
  const estimate = el("div", { class: "estimate", id: "estimate", "aria-live": "polite" }, "Choose, then estimate.");
  const fill = (select, values) => select.replaceChildren(...values.map(([value, label]) => el("option", { value }, label)));
  const unique = (values) => [...new Set(values)];
  const refreshZones = () => {
    fill(zone, unique(offers.filter((offer) => offer.provider === provider.value).map((offer) => offer.zone)).map((code) => [code, code]));
    refreshTypes();
  };
  const refreshTypes = () => fill(type, offers.filter((offer) => offer.provider === provider.value && offer.zone === zone.value)
    .map((offer) => [offer.instance_type, `${offer.instance_type} · ${offer.gpu_model ? `${offer.gpu_count}x ${offer.gpu_model}` : "no GPU"} · ${money(offer.reporting_hourly_price_micros)} ${offer.reporting_currency}/h`]));
  fill(provider, unique(offers.map((offer) => offer.provider)).map((name) => [name, name]));
  provider.addEventListener("change", refreshZones);
  zone.addEventListener("change", refreshTypes);
  refreshZones();
  const request = () => ({ model: model.value, count: Number(count.value), provider: provider.value, zone: zone.value, instance_type: type.value });
  const form = el("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        const accepted = await api("POST", "/deployments", request());
        showError("");
        location.hash = `#/instances/${accepted.instance_ids[0]}`;
      } catch (error) {
        showError(error.message);
      }
    },
  },
  el("label", { for: "model" }, "Model", model), el("label", { for: "count" }, "Instances", count),
  el("label", { for: "provider" }, "Provider", provider), el("label", { for: "zone" }, "Zone", zone), el("label", { for: "type" }, "Instance type", type),
  el("button", { type: "button", id: "estimate-button", onclick: async () => {
    try {
      const answer = await api("POST", "/deployments?dry_run=true", request());
      estimate.textContent = `${answer.count} × ${answer.placements[0].instance_type} in ${answer.placements[0].zone}: ${money(answer.hourly_price_micros)} ${answer.reporting_currency} per hour, ${money(answer.monthly_price_micros)} per month`;
      showError("");
    } catch (error) {
      showError(error.message);
    }
  } }, "Estimate cost"),
  estimate,
  el("button", { type: "submit", id: "deploy" }, "Deploy"));
  page("Deploy", form);
  onEvent = null;
}

const PERIODS = { hour: ["minute", 3600], day: ["hour", 86400], month: ["day", 30 * 86400] };

function chart(points) {
  const width = 640, height = 160, gap = 2;
  const high = Math.max(1, ...points.map((point) => point.cost_micros));
  const bar = points.length ? width / points.length : width;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `cost per step, highest ${money(high)}`);
  svg.setAttribute("class", "chart");
  points.forEach((point, index) => {
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const size = (point.cost_micros / high) * (height - 4);
    rect.setAttribute("x", index * bar + gap / 2);
    rect.setAttribute("y", height - size);
    rect.setAttribute("width", Math.max(1, bar - gap));
    rect.setAttribute("height", size);
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${point.start}: ${money(point.cost_micros)} (cumulative ${money(point.cumulative_micros)})`;
    rect.append(title);
    svg.append(rect);
  });
  return svg;
}

async function finops(period) {
  const [step, span] = PERIODS[period] || PERIODS.day;
  const from = new Date(Date.now() - span * 1000).toISOString();
  const month = new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), 1)).toISOString();
  const [series, summary, forecast, tokens] = await Promise.all([
    api("GET", `/finops/cost/actual/minute?from=${encodeURIComponent(from)}&step=${step}`),
    api("GET", `/finops/dashboard/costs/summary?from=${encodeURIComponent(month)}&top=10`),
    api("GET", "/finops/cost/forecast"),
    api("GET", `/finops/cost/per_token?from=${encodeURIComponent(month)}`),
  ]);
  const last = series.points.length ? series.points[series.points.length - 1].cumulative_micros : 0;
  const breakdown = (title, entries) => el("section", {}, el("h2", {}, title),
    entries.length ? table(["key", `cost, ${summary.currency}`], entries.map((entry) => el("tr", {}, el("td", {}, entry.key), el("td", {}, money(entry.cost_micros))))) : el("p", { class: "muted" }, "Nothing yet."));
  const periods = el("div", { class: "periods", role: "group", "aria-label": "Period" },
    Object.keys(PERIODS).map((name) => el("a", { href: `#/finops/${name}`, "aria-current": name === (period || "day") ? "page" : null }, `last ${name}`)));
  page("FinOps", periods,
    el("div", { class: "cards" },
      el("div", { class: "card" }, el("div", { class: "value", id: "total" }, money(last)), el("div", { class: "label" }, `over the period, ${series.currency}`)),
      el("div", { class: "card" }, el("div", { class: "value" }, money(summary.total_micros)), el("div", { class: "label" }, `this month, ${summary.currency}`)),
      el("div", { class: "card" }, el("div", { class: "value" }, money(forecast.projected_month_end_micros)), el("div", { class: "label" }, `month end (forecast), ${forecast.currency}`)),
      el("div", { class: "card" }, el("div", { class: "value" }, money(forecast.burn_rate_micros_per_hour)), el("div", { class: "label" }, `burn rate, ${forecast.currency}/h`))),
    el("h2", {}, `Cost per ${step}`), chart(series.points),
    breakdown("By provider", summary.by_provider), breakdown("By model", summary.by_model),
    breakdown("By instance type", summary.by_instance_type), breakdown("By zone", summary.by_zone),
    el("h2", {}, "Tokens and cost per million tokens"),
    tokens.by_model.length ? table(["model", "tokens", `cost, ${tokens.currency}`, "per million tokens"], tokens.by_model.map((entry) => el("tr", {}, el("td", {}, entry.key), el("td", {}, entry.tokens), el("td", {}, money(entry.cost_micros)), el("td", {}, money(entry.cost_per_million_tokens_micros))))) : el("p", { class: "muted" }, "No tokens yet."));
  onEvent = null;
}

async function logs() {
  const action = el("input", { id: "action", name: "action", placeholder: "deployment.create", value: sessionStorage.getItem("qm.logs.action") || "" });
  const status = el("select", { id: "status", name: "status" }, el("option", { value: "" }, "any"), el("option", { value: "succeeded" }, "succeeded"), el("option", { value: "failed" }, "failed"));
  status.value = sessionStorage.getItem("qm.logs.status") || "";
  const query = new URLSearchParams({ limit: "100" });
  if (action.value) query.set("action_type", action.value);
  if (status.value) query.set("status", status.value);
  const found = await api("GET", `/action_logs/search?${query}`);
  const filters = el("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    sessionStorage.setItem("qm.logs.action", action.value.trim());
    sessionStorage.setItem("qm.logs.status", status.value);
    logs().catch((error) => showError(error.message));
  } }, el("label", { for: "action" }, "Action", action), el("label", { for: "status" }, "Status", status), el("button", { type: "submit" }, "Filter"));
  const rows = found.items.map((entry) => el("tr", { "data-action": entry.action_type },
    el("td", {}, ago(entry.created_at)), el("td", {}, entry.component), el("td", {}, entry.action_type), el("td", {}, entry.status),
    el("td", {}, entry.instance_id ? el("a", { href: `#/instances/${entry.instance_id}` }, entry.instance_id.slice(0, 13)) : "-"), el("td", {}, entry.error || "")));
  page("Action logs", filters, rows.length ? table(["when", "component", "action", "status", "instance", "error"], rows) : el("p", { class: "muted" }, "No entries."));
  onEvent = null;
}

function scaling(pool) {
  const bound = (name, value) => el("input", { type: "number", min: 0, max: 100, value, "aria-label": `${name} replicas of ${pool.name}`, class: "bound", "data-bound": name });
  const min = bound("min", pool.min_replicas);
  const max = bound("max", pool.max_replicas);
  return el("td", {}, min, " – ", max, " ", el("button", { type: "button", "data-pool": pool.id, onclick: async () => {
    try {
      await api("PATCH", `/pools/${encodeURIComponent(pool.id)}`, { min_replicas: Number(min.value), max_replicas: Number(max.value) });
      showError("");
      await pools();
    } catch (error) {
      showError(error.message);
    }
  } }, "Apply"));
}

async function pools() {
  const list = await api("GET", "/pools?limit=200");
  const rows = list.items.map((pool) => el("tr", { "data-pool-row": pool.name }, el("td", {}, pool.name), el("td", {}, pool.model),
    can("operator") ? scaling(pool) : el("td", {}, `${pool.min_replicas}–${pool.max_replicas}`),
    el("td", { "data-desired": pool.desired }, pool.desired), el("td", {}, pool.status.ready ?? "-"), el("td", {}, pool.revision), el("td", {}, money(pool.status.hourly_price_micros)),
    el("td", {}, (pool.status.conditions || []).map((condition) => condition.message).join("; "))));
  page("Pools", rows.length ? table(["name", "model", "min–max", "desired", "ready", "revision", "per hour", "conditions"], rows) : el("p", { class: "muted" }, "No pools yet."));
  onEvent = null;
}

async function keys() {
  const list = await api("GET", "/api_keys?limit=200");
  const name = el("input", { id: "key-name", name: "name", required: true, placeholder: "ci" });
  const secret = el("div", { id: "secret", "aria-live": "polite" });
  const create = el("form", { class: "filters", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const created = await api("POST", "/api_keys", { name: name.value });
      await keys();
      document.getElementById("secret").replaceChildren(el("p", { class: "estimate" }, "The key's secret, shown this once: ", el("code", { id: "secret-value" }, created.secret)));
      showError("");
    } catch (error) {
      showError(error.message);
    }
  } }, el("label", { for: "key-name" }, "New key", name), el("button", { type: "submit" }, "Create"));
  const rows = list.items.map((key) => el("tr", { "data-key": key.name },
    el("td", {}, key.name), el("td", {}, key.prefix), el("td", {}, key.role), el("td", {}, ago(key.created_at)), el("td", {}, key.revoked_at ? "revoked" : "active"),
    el("td", {}, key.revoked_at ? "" : el("button", { type: "button", class: "danger", onclick: async () => {
      if (!window.confirm(`Revoke the key ${key.name}? Programs using it stop working.`)) return;
      try { await api("DELETE", `/api_keys/${encodeURIComponent(key.id)}`); await keys(); } catch (error) { showError(error.message); }
    } }, "Revoke"))));
  page("API keys", create, secret, rows.length ? table(["name", "prefix", "role", "created", "status", ""], rows) : el("p", { class: "muted" }, "No keys yet."));
  onEvent = null;
}

async function profile() {
  const current = el("input", { id: "current-password", type: "password", autocomplete: "current-password", required: true });
  const next = el("input", { id: "new-password", type: "password", autocomplete: "new-password", minlength: 8, required: true });
  const done = el("p", { id: "changed", "aria-live": "polite" });
  page("Profile",
    el("dl", {}, el("dt", {}, "User"), el("dd", {}, me.username), el("dt", {}, "Email"), el("dd", {}, me.email || "-"), el("dt", {}, "Role"), el("dd", {}, me.role)),
    el("h2", {}, "Change the password"),
    el("form", { onsubmit: async (event) => {
      event.preventDefault();
      try {
        await api("PUT", "/auth/me/password", { current_password: current.value, new_password: next.value });
        done.textContent = "Password changed.";
        showError("");
      } catch (error) {
        showError(error.message);
      }
    } }, el("label", { for: "current-password" }, "Current password", current), el("label", { for: "new-password" }, "New password (8 characters at least)", next), el("button", { type: "submit" }, "Change"), done));
  onEvent = null;
}

async function route() {
  clearInterval(refresher);
  const hash = location.hash || "#/overview";
  const [, view, id] = hash.split("/");
  try {
    if (view === "instances" && id) await instance(id);
    else if (view === "instances") await instances();
    else if (view === "finops") await finops(id);
    else if (view === "logs") await logs();
    else if (view === "pools") await pools();
    else if (view === "keys") await keys();
    else if (view === "profile") await profile();
    else if (view === "deploy") await deploy();
    else await overview();
  } catch (error) {
    if (error.status === 401) await login();
    else showError(error.message);
  }
}

async function start() {
  try {
    me = await api("GET", "/auth/me");
  } catch (error) {
    if (error.status === 401) return login();
    showError(error.message);
    return;
  }
  const nav = document.getElementById("nav");
  nav.hidden = false;
  document.getElementById("who").textContent = `${me.username} (${me.role})`;
  for (const link of nav.querySelectorAll("[data-role]")) link.hidden = !can(link.dataset.role);
  openFeed();
  await route();
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("POST", "/auth/logout"); } catch (error) { /* the session may be gone already */ }
    if (feed) { feed.close(); feed = null; }
    me = null;
    await login();
  });
  start();
});
