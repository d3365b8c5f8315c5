// Quartermaster's web console: a client of the API over the session cookie. Every string from the
// API goes into the page as text (never as HTML).
"use strict";

const ROLES = ["viewer", "operator", "admin"];
let me = null;
let feed = null;
let onEvent = null;
// The feed's last instance moves since the console opened, newest first (the overview lists them).
const recent = [];
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

// A decimal amount typed by a person ("0.09", "12") in micro-units, or NaN.
function micros(text) {
  const match = /^\s*(\d{1,9})(?:\.(\d{1,6}))?\s*$/.exec(text);
  return match ? Number(match[1]) * 1e6 + Number((match[2] || "").padEnd(6, "0")) : NaN;
}

// Why an amount typed in `field` is refused.
function notAnAmount(field) {
  return `The ${field} must be an amount such as 1.25.`;
}

function money(amount) {
  return amount === null || amount === undefined ? "-" : (amount / 1e6).toFixed(Math.abs(amount) < 10000 && amount !== 0 ? 6 : 2);
}

function ago(time) {
  if (!time) return "-";
  const seconds = Math.round((Date.now() - Date.parse(time)) / 1000);
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  return `${Math.floor(seconds / 3600)}h ago`;
}

// A view's way to draw itself: only while the address is still the one it was started for (a
// slow answer must not draw over the page the user has gone to since).
function here() {
  const hash = location.hash;
  const show = (title, ...content) => {
    if (location.hash === hash) page(title, ...content);
  };
  // What the view does with the live feed's events, likewise only while it is shown.
  show.live = (handler) => {
    if (location.hash === hash) onEvent = handler;
  };
  return show;
}

// Where focus was, as a selector that finds the same control after a redraw: its id, or its
// first data- attribute (a sort button, a row's button).
function focusKey(element, main) {
  if (!element || element === main || !main.contains(element)) return null;
  if (element.id) return `#${CSS.escape(element.id)}`;
  const data = [...element.attributes].find((attribute) => attribute.name.startsWith("data-"));
  return data ? `${element.tagName.toLowerCase()}[${data.name}="${CSS.escape(data.value)}"]` : null;
}

// The address and title the main area was last drawn for.
let drawnFor = null;

// Draws a view. A new view takes the focus (a screen reader starts at its heading); a view
// redrawn in place (a live update, a filter or sort changed) gives it back to the control that
// had it, so that a keyboard user keeps their place.
function page(title, ...content) {
  const main = document.getElementById("main");
  const drawing = `${location.hash} ${title}`;
  const redraw = drawnFor === drawing;
  const key = redraw ? focusKey(document.activeElement, main) : null;
  main.replaceChildren(el("h1", {}, title), ...content);
  drawnFor = drawing;
  const again = key && main.querySelector(key);
  if (again) again.focus();
  else if (!redraw) main.focus();
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
  feed.addEventListener("instance.state_changed", (event) => {
    const envelope = JSON.parse(event.data);
    recent.unshift(envelope);
    recent.length = Math.min(recent.length, 10);
    if (onEvent) onEvent(envelope);
  });
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
  const show = here();
  const [instances, forecast, pools] = await Promise.all([api("GET", "/instances?limit=500"), api("GET", "/finops/cost/forecast"), api("GET", "/pools?limit=100")]);
  const byState = {};
  const byProvider = {};
  for (const instance of instances.items) {
    byState[instance.state] = (byState[instance.state] || 0) + 1;
    if (!["terminated", "provisioning_failed", "startup_failed"].includes(instance.state)) byProvider[instance.provider] = (byProvider[instance.provider] || 0) + 1;
  }
  let budget = null;
  try {
    budget = await api("GET", `/finops/budgets/${me.organization_id}`);
  } catch (error) {
    if (error.status !== 404) throw error;
  }
  const card = (label, value) => el("div", { class: "card" }, el("div", { class: "value" }, value), el("div", { class: "label" }, label));
  show("Overview",
    el("div", { class: "cards" },
      card("instances ready", byState.ready || 0),
      card("starting", (byState.requested || 0) + (byState.provisioning || 0) + (byState.booting || 0)),
      card(`burn rate, ${forecast.currency}/h`, money(forecast.burn_rate_micros_per_hour)),
      card(`month to date, ${forecast.currency}`, money(forecast.month_to_date_micros)),
      card(`month end (forecast), ${forecast.currency}`, money(forecast.projected_month_end_micros)),
      card("budget", budget ? `${money(budget.amount_micros)} (${budget.spent_percent.toFixed(1)}% spent)` : "none")),
    el("div", { class: "columns" },
      el("section", {}, el("h2", {}, "Instances by state"), table(["state", "instances"], Object.entries(byState).map(([state, count]) => el("tr", {}, stateCell(state), el("td", {}, count))))),
      el("section", {}, el("h2", {}, "Unfinished, by provider"), table(["provider", "instances"], Object.entries(byProvider).map(([provider, count]) => el("tr", { "data-provider-count": provider }, el("td", {}, provider), el("td", {}, count)))))),
    el("h2", {}, "Pools"),
    pools.items.length ? table(["pool", "model", "desired", "ready"], pools.items.map((pool) => el("tr", { "data-overview-pool": pool.name }, el("td", {}, el("a", { href: `#/pools/${pool.id}` }, pool.name)), el("td", {}, pool.model), el("td", {}, pool.desired), el("td", {}, pool.status.ready ?? "-"))))
      : el("p", { class: "muted" }, "No pools yet."),
    el("h2", {}, "Last events"),
    recent.length ? el("ul", { id: "last-events" }, recent.map((envelope) => el("li", {}, `${ago(envelope.occurred_at)}: `,
      el("a", { href: `#/instances/${envelope.data.instance_id}` }, String(envelope.data.instance_id).slice(0, 13)), ` ${envelope.data.from} → ${envelope.data.to}`)))
      : el("p", { class: "muted", id: "last-events" }, "Nothing has moved since this page opened."));
  show.live(() => schedule(overview));
}

let scheduled = null;
// Redraws `view` soon, unless the user has gone to another page meanwhile.
function schedule(view) {
  clearTimeout(scheduled);
  const hash = location.hash;
  scheduled = setTimeout(() => {
    if (location.hash === hash) view().catch((error) => showError(error.message));
  }, 300);
}

const INSTANCE_STATES = ["requested", "provisioning", "booting", "ready", "unhealthy", "draining", "terminating", "terminated", "provisioning_failed", "startup_failed"];
const PAGE_SIZE = 50;
// The instances page's filters, sort and page (kept while the console is open).
// `asked` counts the list's requests: only the newest one draws (an older answer, from a live
// refresh still in flight when Next was pressed, would show page 1's rows as page 2).
const listing = { state: "", provider: "", archived: false, sort: "", descending: false, cursors: [null], asked: 0 };
const INSTANCE_COLUMNS = [
  ["id", (item) => item.id], ["model", (item) => item.model], ["state", (item) => item.state], ["provider", (item) => item.provider],
  ["zone", (item) => item.zone], ["type", (item) => item.instance_type], ["since", (item) => item.state_changed_at],
];

function items(answer) {
  return Array.isArray(answer) ? answer : (answer && answer.items) || [];
}

function sortable(columns, state, redraw) {
  return columns.map(([name]) => el("th", { scope: "col", "aria-sort": state.sort === name ? (state.descending ? "descending" : "ascending") : null },
    el("button", { type: "button", class: "sort", "data-sort": name, onclick: () => {
      state.descending = state.sort === name ? !state.descending : false;
      state.sort = name;
      redraw();
    } }, name, state.sort === name ? (state.descending ? " ▼" : " ▲") : "")));
}

function sorted(rows, columns, state) {
  const column = columns.find(([name]) => name === state.sort);
  if (!column) return rows;
  const direction = state.descending ? -1 : 1;
  return [...rows].sort((a, b) => direction * String(column[1](a) ?? "").localeCompare(String(column[1](b) ?? ""), undefined, { numeric: true }));
}

async function instances() {
  const show = here();
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (listing.state) query.set("state", listing.state);
  if (listing.provider) query.set("provider", listing.provider);
  if (listing.archived) query.set("archived", "true");
  const cursor = listing.cursors[listing.cursors.length - 1];
  if (cursor) query.set("cursor", cursor);
  const asked = ++listing.asked;
  const [list, providers] = await Promise.all([api("GET", `/instances?${query}`), api("GET", "/providers")]);
  if (asked !== listing.asked) return;
  const reload = () => instances().catch((error) => showError(error.message));
  const refilter = () => { listing.cursors = [null]; reload(); };
  const stateFilter = el("select", { id: "filter-state", onchange: (event) => { listing.state = event.target.value; refilter(); } },
    el("option", { value: "" }, "any"), INSTANCE_STATES.map((state) => el("option", { value: state, selected: state === listing.state }, state)));
  const providerFilter = el("select", { id: "filter-provider", onchange: (event) => { listing.provider = event.target.value; refilter(); } },
    el("option", { value: "" }, "any"), items(providers).map((provider) => el("option", { value: provider.name, selected: provider.name === listing.provider }, provider.name)));
  const archived = el("input", { id: "filter-archived", type: "checkbox", checked: listing.archived, onchange: (event) => { listing.archived = event.target.checked; refilter(); } });
  const rows = sorted(list.items, INSTANCE_COLUMNS, listing).map((instance) => el("tr", { "data-instance": instance.id },
    el("td", {}, el("a", { href: `#/instances/${instance.id}` }, instance.id.slice(0, 13))),
    el("td", {}, instance.model), stateCell(instance.state), el("td", {}, instance.provider),
    el("td", {}, instance.zone), el("td", {}, instance.instance_type), el("td", {}, ago(instance.state_changed_at))));
  const pager = el("div", { class: "pager" },
    el("button", { type: "button", id: "previous-page", disabled: listing.cursors.length === 1, onclick: () => { listing.cursors.pop(); reload(); } }, "Previous"),
    el("span", { id: "page-number" }, `page ${listing.cursors.length}`),
    el("button", { type: "button", id: "next-page", disabled: !list.next_cursor, onclick: () => { listing.cursors.push(list.next_cursor); reload(); } }, "Next"));
  show("Instances",
    el("div", { class: "filters" }, el("label", { for: "filter-state" }, "State", stateFilter), el("label", { for: "filter-provider" }, "Provider", providerFilter),
      el("label", { for: "filter-archived", class: "inline" }, archived, "archived")),
    rows.length ? el("div", { class: "table" }, el("table", {}, el("thead", {}, el("tr", {}, sortable(INSTANCE_COLUMNS, listing, reload))), el("tbody", {}, rows)))
      : el("p", { class: "muted" }, listing.state || listing.provider || listing.archived || listing.cursors.length > 1 ? "No instances match." : "No instances yet."),
    pager);
  show.live(() => schedule(instances));
}

async function instance(id) {
  const show = here();
  const [detail, worker, logged] = await Promise.all([
    api("GET", `/instances/${encodeURIComponent(id)}`),
    api("GET", `/instances/${encodeURIComponent(id)}/worker`).catch((error) => { if (error.status === 404) return null; throw error; }),
    api("GET", `/action_logs/search?instance_id=${encodeURIComponent(id)}&limit=20`),
  ]);
  const gpus = (worker && worker.gpu_metrics) || [];
  const gpuName = (index) => ((worker && worker.gpus) || []).find((gpu) => gpu.index === index)?.name || "";
  const workerView = worker
    ? el("section", { id: "worker" }, el("h2", {}, "Worker"),
      el("p", {}, `${worker.in_flight ?? "-"} in flight, ${worker.queue_depth ?? "-"} queued, last heartbeat ${ago(worker.last_heartbeat_at)}`),
      gpus.length ? table(["GPU", "utilisation", "memory used", "temperature"], gpus.map((gpu) => el("tr", { "data-gpu": gpu.index },
        el("td", {}, `#${gpu.index} ${gpuName(gpu.index)}`), el("td", {}, `${gpu.utilization_percent ?? "-"}%`), el("td", {}, `${gpu.memory_used_mb ?? "-"} / ${gpu.memory_total_mb ?? "-"} MB`), el("td", {}, gpu.temperature_c === undefined || gpu.temperature_c === null ? "-" : `${gpu.temperature_c} °C`))))
        : el("p", { class: "muted" }, "No GPU metrics (a CPU instance, or none reported)."))
    : el("section", { id: "worker" }, el("h2", {}, "Worker"), el("p", { class: "muted" }, "No worker has registered."));
  const logView = el("section", { id: "instance-logs" }, el("h2", {}, "Action logs"),
    logged.items.length ? table(["when", "component", "action", "status", "error"], logged.items.map((entry) => el("tr", { "data-instance-action": entry.action_type },
      el("td", {}, ago(entry.created_at)), el("td", {}, entry.component), el("td", {}, entry.action_type), el("td", {}, entry.status), el("td", {}, entry.error || ""))))
      : el("p", { class: "muted" }, "No entries."));
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
  const archive = can("operator") && finished && detail.state !== "terminating" && !detail.archived ? el("button", {
    type: "button", id: "archive",
    onclick: async () => {
      if (!window.confirm(`Archive ${detail.id}? It leaves the instance lists (its history and cost stay).`)) return;
      try {
        await api("PUT", `/instances/${encodeURIComponent(detail.id)}/archive`);
        await instance(id);
      } catch (error) {
        showError(error.message);
      }
    },
  }, "Archive") : null;
  show(`Instance ${detail.id}`,
    el("div", { class: "cards" },
      el("div", { class: "card" }, el("div", { class: `value state-${detail.state}`, id: "state" }, detail.state), el("div", { class: "label" }, `${detail.progress_percent}%`)),
      el("div", { class: "card" }, el("div", { class: "value", id: "cost" }, money(detail.cost_to_date_micros)), el("div", { class: "label" }, "cost to date")),
      el("div", { class: "card" }, el("div", { class: "value" }, `${money(detail.hourly_price_micros)} ${detail.currency}/h`), el("div", { class: "label" }, `${detail.provider} ${detail.zone} ${detail.instance_type}`))),
    terminate, archive, detail.archived ? el("p", { class: "muted", id: "archived" }, "archived") : null,
    el("h2", {}, "History"),
    table(["when", "from", "to", "reason"], detail.history.map((change) => el("tr", {}, el("td", {}, ago(change.occurred_at)), el("td", {}, change.from_state || "-"), stateCell(change.to_state), el("td", {}, change.reason || "")))),
    workerView, logView);
  show.live((envelope) => { if (envelope.data && envelope.data.instance_id === id) schedule(() => instance(id)); });
  clearInterval(refresher);
  refresher = setInterval(() => { if (location.hash === `#/instances/${id}`) instance(id).catch((error) => showError(error.message)); }, 3000);
}

function radios(name, legend, choices, checked, onchange) {
  return el("fieldset", { class: "choices" }, el("legend", {}, legend),
    choices.map(([value, label]) => el("label", { class: "inline" },
      el("input", { type: "radio", name, value, id: `${name}-${value}`, checked: value === checked, onchange: () => onchange(value) }), label)));
}

async function deploy() {
  const show = here();
  if (!can("operator")) {
    show("Deploy", el("p", {}, "Deploying needs the operator role."));
    return;
  }
  const offers = await api("GET", "/offers");
  const unique = (values) => [...new Set(values)];
  const model = el("input", { id: "model", name: "model", required: true, value: "demo" });
  const count = el("input", { id: "count", name: "count", type: "number", min: 1, max: 100, value: 1 });
  // An exact placement: provider → zone → instance type, only what the catalog offers.
  const provider = el("select", { id: "provider", name: "provider" });
  const region = el("select", { id: "region", name: "region" });
  const zone = el("select", { id: "zone", name: "zone" });
  const type = el("select", { id: "type", name: "type" });
  // Or constraints: the cheapest offer that meets them.
  const gpu = el("select", { id: "gpu", name: "gpu" }, el("option", { value: "" }, "any (or none)"),
    unique(offers.map((offer) => offer.gpu_model).filter(Boolean)).sort().map((name) => el("option", { value: name }, name)));
  const gpuMemory = el("input", { id: "min-gpu-memory", name: "min_gpu_memory_gb", type: "number", min: 0, max: 4096, placeholder: "any" });
  const maxPrice = el("input", { id: "max-price", name: "max_hourly_price", inputmode: "decimal", placeholder: "e.g. 1.50", pattern: "[0-9]+(\\.[0-9]{1,6})?" });
  const allowed = unique(offers.map((offer) => offer.provider)).map((name) =>
    el("label", { class: "inline" }, el("input", { type: "checkbox", name: "providers", value: name, checked: true, "data-provider": name }), name));
  // A pool keeps the model served between its bounds and scales; instances are a fixed count.
  const name = el("input", { id: "pool-name", name: "pool_name", placeholder: "the model's name" });
  const min = el("input", { id: "pool-min", type: "number", min: 0, max: 100, value: 0 });
  const max = el("input", { id: "pool-max", type: "number", min: 1, max: 100, value: 2 });
  const target = el("input", { id: "pool-target", type: "number", min: 0.1, max: 10000, step: "any", value: 8 });
  const ttft = el("input", { id: "pool-ttft", type: "number", min: 1, max: 600000, placeholder: "none" });
  const estimate = el("div", { class: "estimate", id: "estimate", "aria-live": "polite" }, "Choose, then estimate.");
  const fill = (select, values) => select.replaceChildren(...values.map(([value, label]) => el("option", { value }, label)));
  const refreshTypes = () => fill(type, offers.filter((offer) => offer.provider === provider.value && offer.zone === zone.value)
    .map((offer) => [offer.instance_type, `${offer.instance_type} · ${offer.gpu_model ? `${offer.gpu_count}x ${offer.gpu_model}` : "no GPU"} · ${money(offer.reporting_hourly_price_micros)} ${offer.reporting_currency}/h`]));
  const refreshZones = () => {
    fill(zone, unique(offers.filter((offer) => offer.provider === provider.value && offer.region === region.value).map((offer) => offer.zone)).map((code) => [code, code]));
    refreshTypes();
  };
  const refreshRegions = () => {
    fill(region, unique(offers.filter((offer) => offer.provider === provider.value).map((offer) => offer.region)).map((code) => [code, code]));
    refreshZones();
  };
  fill(provider, unique(offers.map((offer) => offer.provider)).map((value) => [value, value]));
  provider.addEventListener("change", refreshRegions);
  region.addEventListener("change", refreshZones);
  zone.addEventListener("change", refreshTypes);
  refreshRegions();
  let placement = "exact";
  let kind = "instances";
  const exact = el("div", { class: "group", id: "exact" }, el("label", { for: "provider" }, "Provider", provider), el("label", { for: "region" }, "Region", region), el("label", { for: "zone" }, "Zone", zone), el("label", { for: "type" }, "Instance type", type));
  const constrained = el("div", { class: "group", id: "constrained", hidden: true },
    el("label", { for: "gpu" }, "GPU model", gpu), el("label", { for: "min-gpu-memory" }, "Memory of one GPU, at least (GB)", gpuMemory),
    el("label", { for: "max-price" }, `Hourly price, at most (${offers.length ? offers[0].reporting_currency : ""})`, maxPrice),
    el("fieldset", { class: "choices" }, el("legend", {}, "Providers allowed"), allowed));
  const fixed = el("div", { class: "group", id: "fixed" }, el("label", { for: "count" }, "Instances", count));
  const pooled = el("div", { class: "group", id: "pooled", hidden: true },
    el("label", { for: "pool-name" }, "Pool name", name), el("label", { for: "pool-min" }, "Fewest replicas (0 scales to zero)", min),
    el("label", { for: "pool-max" }, "Most replicas", max), el("label", { for: "pool-target" }, "Requests per replica (in flight or queued)", target),
    el("label", { for: "pool-ttft" }, "Time to first token objective, ms (optional)", ttft));
  const where = () => {
    if (placement === "exact") return { provider: provider.value, zone: zone.value, instance_type: type.value };
    const providers = [...constrained.querySelectorAll("input[name=providers]:checked")].map((box) => box.value);
    const constraints = { providers };
    if (gpu.value) constraints.gpu_model = gpu.value;
    if (gpuMemory.value) constraints.min_gpu_memory_gb = Number(gpuMemory.value);
    if (maxPrice.value.trim()) constraints.max_hourly_price = maxPrice.value.trim();
    return { constraints };
  };
  const deployment = () => ({ model: model.value, count: kind === "pool" ? Math.max(1, Number(min.value)) : Number(count.value), ...where() });
  const pool = () => {
    const policy = { target_per_replica: Number(target.value) };
    if (ttft.value) policy.ttft_slo_ms = Number(ttft.value);
    return { name: name.value.trim() || undefined, model: model.value, min_replicas: Number(min.value), max_replicas: Number(max.value), policy, ...where() };
  };
  const form = el("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        if (kind === "pool") {
          const created = await api("POST", "/pools", pool());
          showError("");
          location.hash = `#/pools/${created.id}`;
        } else {
          const accepted = await api("POST", "/deployments", deployment());
          showError("");
          location.hash = `#/instances/${accepted.instance_ids[0]}`;
        }
      } catch (error) {
        showError(error.message);
      }
    },
  },
  el("label", { for: "model" }, "Model", model),
  radios("placement", "Where", [["exact", "a provider, zone and type"], ["cheapest", "the cheapest offer that meets constraints"]], placement, (value) => {
    placement = value;
    exact.hidden = value !== "exact";
    constrained.hidden = value === "exact";
  }),
  exact, constrained,
  radios("kind", "What", [["instances", "a fixed number of instances"], ["pool", "a pool that heals and scales"]], kind, (value) => {
    kind = value;
    fixed.hidden = value === "pool";
    pooled.hidden = value !== "pool";
  }),
  fixed, pooled,
  el("button", { type: "button", id: "estimate-button", onclick: async () => {
    try {
      const answer = await api("POST", "/deployments?dry_run=true", deployment());
      const first = answer.placements[0];
      estimate.textContent = `${answer.count} × ${first.instance_type} (${first.provider}, ${first.zone}): ${money(answer.hourly_price_micros)} ${answer.reporting_currency} per hour, ${money(answer.monthly_price_micros)} per month`;
      showError("");
    } catch (error) {
      estimate.textContent = "No estimate.";
      showError(error.message);
    }
  } }, "Estimate cost"),
  estimate,
  el("button", { type: "submit", id: "deploy" }, "Deploy"));
  show("Deploy", form);
  show.live(null);
}

const PERIODS = { hour: ["minute", 3600], day: ["hour", 86400], month: ["day", 30 * 86400] };

function chart(points, value = (point) => point.cost_micros, name = "cost per step") {
  const width = 640, height = 160, gap = 2;
  const high = Math.max(1, ...points.map(value));
  const bar = points.length ? width / points.length : width;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${name}, highest ${money(high)}`);
  svg.setAttribute("class", "chart");
  points.forEach((point, index) => {
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const size = (value(point) / high) * (height - 4);
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

// The organization's monthly budget: shown to all, edited by admins.
async function budgetEditor() {
  let budget = null;
  try {
    budget = await api("GET", `/finops/budgets/${me.organization_id}`);
  } catch (error) {
    if (error.status !== 404) throw error;
  }
  const shown = budget
    ? el("p", { id: "budget" }, `${money(budget.amount_micros)} a month${budget.hard_cap ? " (hard cap)" : ""}, ${budget.spent_percent.toFixed(1)}% spent, alerts at ${budget.thresholds.join(", ")}%`)
    : el("p", { id: "budget", class: "muted" }, "No budget.");
  if (!can("admin")) return el("section", {}, el("h2", {}, "Budget"), shown);
  const amount = el("input", { id: "budget-amount", inputmode: "decimal", required: true, pattern: "[0-9]+(\\.[0-9]{1,6})?", value: budget ? (budget.amount_micros / 1e6).toFixed(2) : "" });
  const thresholds = el("input", { id: "budget-thresholds", placeholder: "50, 80, 100", value: budget ? budget.thresholds.join(", ") : "" });
  const cap = el("input", { id: "budget-cap", type: "checkbox", checked: Boolean(budget && budget.hard_cap) });
  const form = el("form", { class: "filters", id: "budget-form", onsubmit: async (event) => {
    event.preventDefault();
    const body = { amount_micros: micros(amount.value), hard_cap: cap.checked };
    if (Number.isNaN(body.amount_micros)) return showError(notAnAmount("budget"));
    if (thresholds.value.trim()) body.thresholds = thresholds.value.split(",").map((value) => Number(value.trim()));
    try {
      await api("PUT", `/finops/budgets/${me.organization_id}`, body);
      showError("");
      await route();
    } catch (error) {
      showError(error.message);
    }
  } }, el("label", { for: "budget-amount" }, "Amount a month", amount), el("label", { for: "budget-thresholds" }, "Alert thresholds, %", thresholds),
  el("label", { for: "budget-cap", class: "inline" }, cap, "hard cap (refuse deployments past it)"), el("button", { type: "submit" }, "Save the budget"));
  return el("section", {}, el("h2", {}, "Budget"), shown, form);
}

async function finops(period) {
  const show = here();
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
  const breakdown = (title, entries, by) => el("section", { "data-breakdown": by }, el("h2", {}, title),
    entries.length ? table(["key", `cost, ${summary.currency}`], entries.map((entry) => el("tr", {}, el("td", {}, entry.key), el("td", {}, money(entry.cost_micros))))) : el("p", { class: "muted" }, "Nothing yet."));
  const periods = el("div", { class: "periods", role: "group", "aria-label": "Period" },
    Object.keys(PERIODS).map((name) => el("a", { href: `#/finops/${name}`, "aria-current": name === (period || "day") ? "page" : null }, `last ${name}`)));
  show("FinOps", periods,
    el("div", { class: "cards" },
      el("div", { class: "card" }, el("div", { class: "value", id: "total" }, money(last)), el("div", { class: "label" }, `over the period, ${series.currency}`)),
      el("div", { class: "card" }, el("div", { class: "value" }, money(summary.total_micros)), el("div", { class: "label" }, `this month, ${summary.currency}`)),
      el("div", { class: "card" }, el("div", { class: "value" }, money(forecast.projected_month_end_micros)), el("div", { class: "label" }, `month end (forecast), ${forecast.currency}`)),
      el("div", { class: "card" }, el("div", { class: "value" }, money(forecast.burn_rate_micros_per_hour)), el("div", { class: "label" }, `burn rate, ${forecast.currency}/h`))),
    el("h2", {}, `Cost per ${step}`), chart(series.points),
    el("h2", {}, "Cumulative cost over the period"), chart(series.points, (point) => point.cumulative_micros, "cumulative cost"),
    breakdown("By provider", summary.by_provider, "provider"), breakdown("By model", summary.by_model, "model"),
    breakdown("By instance type", summary.by_instance_type, "instance_type"), breakdown("By region", summary.by_region, "region"),
    breakdown("By zone", summary.by_zone, "zone"),
    me.is_platform_admin ? breakdown("By organization", summary.by_organization, "organization") : null,
    await budgetEditor(),
    el("section", { id: "tokens" }, el("h2", {}, "Tokens and cost per million tokens"),
      tokens.by_model.length ? table(["model", "tokens", `cost, ${tokens.currency}`, "per million tokens"], tokens.by_model.map((entry) => el("tr", { "data-model": entry.key }, el("td", {}, entry.key), el("td", {}, entry.tokens), el("td", {}, money(entry.cost_micros)), el("td", {}, money(entry.cost_per_million_tokens_micros))))) : el("p", { class: "muted" }, "No tokens yet.")));
  show.live(null);
}

const ROW_HEIGHT = 34;
const LOG_PAGE = 200;
const LOG_COLUMNS = ["when", "component", "action", "status", "instance", "error"];

// The action log as a virtualized table: only the rows in view (and a few around them) are in
// the page; the next page is fetched as the end comes into view.
async function logs() {
  const show = here();
  const saved = (key) => sessionStorage.getItem(`qm.logs.${key}`) || "";
  const action = el("input", { id: "action", name: "action", placeholder: "deployment.create", value: saved("action") });
  const component = el("input", { id: "component", name: "component", placeholder: "api", value: saved("component") });
  const status = el("select", { id: "status", name: "status" }, el("option", { value: "" }, "any"), el("option", { value: "succeeded" }, "succeeded"), el("option", { value: "failed" }, "failed"));
  status.value = saved("status");
  const filter = new URLSearchParams({ limit: String(LOG_PAGE) });
  if (action.value) filter.set("action_type", action.value);
  if (component.value) filter.set("component", component.value);
  if (status.value) filter.set("status", status.value);
  const first = await api("GET", `/action_logs/search?${filter}`);
  const entries = [...first.items];
  let cursor = first.next_cursor;
  let fetching = false;
  const filters = el("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    sessionStorage.setItem("qm.logs.action", action.value.trim());
    sessionStorage.setItem("qm.logs.component", component.value.trim());
    sessionStorage.setItem("qm.logs.status", status.value);
    logs().catch((error) => showError(error.message));
  } }, el("label", { for: "action" }, "Action", action), el("label", { for: "component" }, "Component", component), el("label", { for: "status" }, "Status", status), el("button", { type: "submit" }, "Filter"));
  const counts = first.counts;
  const summary = el("p", { id: "log-counts" }, `${counts.total} entries`,
    Object.entries(counts.by_status).map(([name, count]) => `, ${count} ${name}`).join(""));
  if (!entries.length) {
    show("Action logs", filters, summary, el("p", { class: "muted" }, "No entries."));
    show.live(null);
    return;
  }
  const body = el("tbody");
  const viewport = el("div", { class: "virtual", id: "log-viewport", tabindex: 0, role: "region", "aria-label": "action log entries" },
    el("table", { "aria-rowcount": counts.total + 1 }, el("thead", {}, el("tr", { "aria-rowindex": 1 }, LOG_COLUMNS.map((header) => el("th", { scope: "col" }, header)))), body));
  // Sized through the CSSOM: the content security policy refuses style attributes.
  const spacer = (rows) => {
    const cell = el("td", { colspan: LOG_COLUMNS.length });
    cell.style.height = `${rows * ROW_HEIGHT}px`;
    return el("tr", { "aria-hidden": "true", class: "spacer" }, cell);
  };
  const row = (entry, index) => el("tr", { "data-action": entry.action_type, "aria-rowindex": index + 2 },
    el("td", {}, ago(entry.created_at)), el("td", {}, entry.component), el("td", {}, entry.action_type), el("td", {}, entry.status),
    el("td", {}, entry.instance_id ? el("a", { href: `#/instances/${entry.instance_id}` }, entry.instance_id.slice(0, 13)) : "-"), el("td", { title: entry.error || "" }, entry.error || ""));
  const draw = () => {
    const visible = Math.ceil(viewport.clientHeight / ROW_HEIGHT) || 20;
    const start = Math.max(0, Math.floor(viewport.scrollTop / ROW_HEIGHT) - 10);
    const end = Math.min(entries.length, start + visible + 20);
    body.replaceChildren(spacer(start), ...entries.slice(start, end).map((entry, offset) => row(entry, start + offset)), spacer(entries.length - end));
    if (end >= entries.length - 10 && cursor && !fetching) {
      fetching = true;
      filter.set("cursor", cursor);
      api("GET", `/action_logs/search?${filter}`).then((next) => {
        entries.push(...next.items);
        cursor = next.next_cursor;
        fetching = false;
        draw();
      }).catch((error) => { fetching = false; showError(error.message); });
    }
  };
  viewport.addEventListener("scroll", () => window.requestAnimationFrame(draw));
  show("Action logs", filters, summary, viewport);
  draw();
  show.live(null);
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
  const show = here();
  const list = await api("GET", "/pools?limit=200");
  const rows = list.items.map((pool) => el("tr", { "data-pool-row": pool.name }, el("td", {}, el("a", { href: `#/pools/${pool.id}` }, pool.name)), el("td", {}, pool.model),
    can("operator") ? scaling(pool) : el("td", {}, `${pool.min_replicas}–${pool.max_replicas}`),
    el("td", { "data-desired": pool.desired }, pool.desired), el("td", {}, pool.status.ready ?? "-"), el("td", {}, pool.revision), el("td", {}, money(pool.status.hourly_price_micros)),
    el("td", {}, (pool.status.conditions || []).map((condition) => condition.message).join("; "))));
  show("Pools", rows.length ? table(["name", "model", "min–max", "desired", "ready", "revision", "per hour", "conditions"], rows) : el("p", { class: "muted" }, "No pools yet."));
  show.live(null);
}

async function pool(id) {
  const show = here();
  const detail = await api("GET", `/pools/${encodeURIComponent(id)}`);
  const status = detail.status || {};
  const card = (label, value, key) => el("div", { class: "card" }, el("div", { class: "value", "data-count": key }, value ?? "-"), el("div", { class: "label" }, label));
  const policy = detail.policy;
  const field = (key, label, value, attributes) => el("label", { for: `policy-${key}` }, label, el("input", { id: `policy-${key}`, type: "number", value: value ?? "", ...attributes }));
  const edit = can("operator") ? el("form", { id: "policy", onsubmit: async (event) => {
    event.preventDefault();
    const value = (key) => event.target.querySelector(`#policy-${key}`).value;
    const changed = { ...policy, target_per_replica: Number(value("target")), scale_down_delay_s: Number(value("delay")), idle_to_zero_s: Number(value("idle")) };
    changed.ttft_slo_ms = value("ttft") ? Number(value("ttft")) : null;
    const update = { min_replicas: Number(value("min")), max_replicas: Number(value("max")), policy: changed };
    const model = event.target.querySelector("#policy-model").value.trim();
    if (model && model !== detail.model) update.model = model;
    try {
      await api("PATCH", `/pools/${encodeURIComponent(id)}`, update);
      showError("");
      await pool(id);
    } catch (error) {
      showError(error.message);
    }
  } },
  field("min", "Fewest replicas", detail.min_replicas, { min: 0, max: 100 }), field("max", "Most replicas", detail.max_replicas, { min: 1, max: 100 }),
  field("target", "Requests per replica", policy.target_per_replica, { min: 0.1, max: 10000, step: "any" }),
  field("ttft", "Time to first token objective, ms (empty: none)", policy.ttft_slo_ms, { min: 1, max: 600000 }),
  field("delay", "Seconds before shrinking", policy.scale_down_delay_s, { min: 0, max: 86400 }),
  field("idle", "Idle seconds before zero (with 0 fewest)", policy.idle_to_zero_s, { min: 1, max: 86400 }),
  el("label", { for: "policy-model" }, "Model (a change rolls the replicas one by one)", el("input", { id: "policy-model", value: detail.model })),
  el("button", { type: "submit" }, "Save")) : null;
  const remove = can("operator") ? el("button", { type: "button", class: "danger", id: "delete-pool", onclick: async () => {
    if (!window.confirm(`Delete the pool ${detail.name}? Its replicas drain and terminate.`)) return;
    try { await api("DELETE", `/pools/${encodeURIComponent(id)}`); location.hash = "#/pools"; } catch (error) { showError(error.message); }
  } }, "Delete the pool") : null;
  show(`Pool ${detail.name}`,
    el("div", { class: "cards" }, card("desired", detail.desired, "desired"), card("ready", status.ready, "ready"), card("starting", status.starting, "starting"),
      card("draining", status.draining, "draining"), card("revision", detail.revision, "revision"), card("per hour", money(status.hourly_price_micros), "hourly")),
    el("p", {}, `${detail.model} · ${detail.placements.map((offer) => `${offer.provider} ${offer.zone} ${offer.instance_type}`).slice(0, 3).join(", ")}${detail.placements.length > 3 ? ", …" : ""}`),
    (status.conditions || []).length ? el("ul", { class: "conditions" }, status.conditions.map((condition) => el("li", {}, condition.message))) : null,
    edit, remove,
    el("h2", {}, "Replicas"),
    detail.instances.length ? table(["id", "state", "zone", "type", "since"], detail.instances.map((instance) => el("tr", {},
      el("td", {}, el("a", { href: `#/instances/${instance.id}` }, instance.id.slice(0, 13))), stateCell(instance.state), el("td", {}, instance.zone), el("td", {}, instance.instance_type), el("td", {}, ago(instance.state_changed_at)))))
      : el("p", { class: "muted" }, "No replicas."),
    el("h2", {}, "Recent scaling decisions"),
    (status.decisions || []).length ? table(["when", "from", "to", "reason"], status.decisions.slice().reverse().map((decision) => el("tr", {}, el("td", {}, ago(decision.at)), el("td", {}, decision.from), el("td", {}, decision.to), el("td", {}, decision.reason))))
      : el("p", { class: "muted" }, "None yet."));
  // Not while someone is editing the policy.
  show.live(() => { if (!(document.activeElement && document.activeElement.closest("#policy"))) schedule(() => pool(id)); });
}

async function keys() {
  const show = here();
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
  show("API keys", create, secret, rows.length ? table(["name", "prefix", "role", "created", "status", ""], rows) : el("p", { class: "muted" }, "No keys yet."));
  show.live(null);
}

// Runs an admin change, then redraws the admin page (or says why it was refused).
async function change(method, path, body) {
  try {
    await api(method, path, body);
    showError("");
    await admin();
  } catch (error) {
    showError(error.message);
  }
}

function usersSection(users) {
  const field = (id, label, attributes) => el("label", { for: id }, label, el("input", { id, required: true, ...attributes }));
  const role = el("select", { id: "user-role" }, ROLES.map((name) => el("option", { value: name }, name)));
  const create = el("form", { class: "filters", id: "user-form", onsubmit: (event) => {
    event.preventDefault();
    const value = (id) => event.target.querySelector(`#${id}`).value.trim();
    change("POST", "/users", { username: value("user-name"), email: value("user-email"), password: event.target.querySelector("#user-password").value, role: role.value });
  } }, field("user-name", "Username", { autocomplete: "off" }), field("user-email", "Email", { type: "email" }),
  field("user-password", "Password", { type: "password", minlength: 8, autocomplete: "new-password" }), el("label", { for: "user-role" }, "Role", role), el("button", { type: "submit" }, "Add the user"));
  const rows = users.map((user) => {
    const select = el("select", { "aria-label": `role of ${user.username}`, onchange: (event) => change("PUT", `/users/${encodeURIComponent(user.id)}`, { role: event.target.value }) },
      ROLES.map((name) => el("option", { value: name, selected: name === user.role }, name)));
    const mine = user.id === me.id;
    return el("tr", { "data-user": user.username }, el("td", {}, user.username), el("td", {}, user.email), el("td", {}, mine ? user.role : select), el("td", {}, ago(user.created_at)),
      el("td", {}, mine ? "" : el("button", { type: "button", class: "danger", onclick: () => {
        if (window.confirm(`Remove ${user.username}? Their sessions end.`)) change("DELETE", `/users/${encodeURIComponent(user.id)}`);
      } }, "Remove")));
  });
  return el("section", {}, el("h2", {}, "Users"), create, table(["username", "email", "role", "created", ""], rows));
}

function organizationsSection(organizations) {
  const create = el("form", { class: "filters", id: "org-form", onsubmit: (event) => {
    event.preventDefault();
    change("POST", "/organizations", { name: event.target.querySelector("#org-name").value.trim(), slug: event.target.querySelector("#org-slug").value.trim() });
  } }, el("label", { for: "org-name" }, "Name", el("input", { id: "org-name", required: true })),
  el("label", { for: "org-slug" }, "Slug", el("input", { id: "org-slug", required: true, pattern: "[a-z0-9]([a-z0-9-]*[a-z0-9])?" })), el("button", { type: "submit" }, "Add the organization"));
  return el("section", {}, el("h2", {}, "Organizations"), create,
    table(["name", "slug", "created"], organizations.map((org) => el("tr", { "data-org": org.slug }, el("td", {}, org.name), el("td", {}, org.slug), el("td", {}, ago(org.created_at))))));
}

function ratesSection(rates) {
  const set = el("form", { class: "filters", id: "rate-form", onsubmit: (event) => {
    event.preventDefault();
    const currency = event.target.querySelector("#rate-currency").value.trim().toUpperCase();
    change("PUT", `/finops/exchange_rates/${encodeURIComponent(currency)}`, { rate: event.target.querySelector("#rate-value").value.trim() });
  } }, el("label", { for: "rate-currency" }, "Currency", el("input", { id: "rate-currency", required: true, maxlength: 3, placeholder: "USD" })),
  el("label", { for: "rate-value" }, `${rates.reporting_currency} per unit`, el("input", { id: "rate-value", required: true, inputmode: "decimal", placeholder: "0.92" })),
  el("button", { type: "submit" }, "Set the rate"));
  return el("section", {}, el("h2", {}, `Exchange rates into ${rates.reporting_currency}`), set,
    table(["currency", "rate", "source", "updated"], rates.rates.map((rate) => el("tr", { "data-rate": rate.currency }, el("td", {}, rate.currency), el("td", {}, (rate.rate_micros / 1e6).toFixed(6)), el("td", {}, rate.source), el("td", {}, ago(rate.updated_at))))));
}

// A random (version 4) UUID, also where `crypto.randomUUID` is missing (plain HTTP to a host
// that is not localhost is not a secure context).
function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// A new instance type for a provider.
function typeForm(providers) {
  const field = (id, label, attributes) => el("label", { for: id }, label, el("input", { id, ...attributes }));
  const provider = el("select", { id: "type-provider" }, providers.map((entry) => el("option", { value: entry.name }, entry.name)));
  const value = (id) => document.getElementById(id).value.trim();
  return el("form", { id: "type-form", class: "filters", onsubmit: async (event) => {
    event.preventDefault();
    const gpuCount = Number(value("type-gpu-count") || 0);
    const body = { provider: provider.value, code: value("type-code"), gpu_model: gpuCount > 0 ? value("type-gpu-model") : null, gpu_count: gpuCount,
      gpu_memory_gb: Number(value("type-gpu-memory") || 0), vcpus: Number(value("type-vcpus")), memory_gb: Number(value("type-memory")),
      hourly_price_micros: micros(value("type-price")), currency: value("type-currency").toUpperCase(), active: true };
    if (Number.isNaN(body.hourly_price_micros)) return showError(notAnAmount("hourly price"));
    try {
      await api("PUT", `/instance_types/${newId()}`, body);
      showError("");
      await admin();
    } catch (error) {
      showError(error.message);
    }
  } }, el("label", { for: "type-provider" }, "Provider", provider), field("type-code", "Name", { required: true, maxlength: 64 }),
    field("type-gpu-model", "GPU model", { maxlength: 100 }), field("type-gpu-count", "GPUs", { type: "number", min: 0, max: 64, value: "0" }),
    field("type-gpu-memory", "Memory of one GPU (GB)", { type: "number", min: 0, max: 4096, value: "0" }),
    field("type-vcpus", "vCPUs", { type: "number", min: 1, max: 4096, required: true }), field("type-memory", "Memory (GB)", { type: "number", min: 1, max: 65536, required: true }),
    field("type-price", "Hourly price", { inputmode: "decimal", required: true }), field("type-currency", "Currency", { required: true, maxlength: 3, value: "EUR" }),
    el("button", { type: "submit" }, "Add the type"));
}

// Which of its provider's zones offer a type: checkboxes, saved as a whole.
function zoneEditor(types, zones) {
  const editor = el("div", { id: "type-zones" });
  const choose = el("select", { id: "zones-of-type", onchange: () => load().catch((error) => showError(error.message)) }, el("option", { value: "" }, "choose a type"),
    types.map((type) => el("option", { value: type.id }, `${type.provider}/${type.code}`)));
  const load = async () => {
    const type = types.find((entry) => entry.id === choose.value);
    if (!type) return editor.replaceChildren();
    const offered = new Set(items(await api("GET", `/instance_types/${encodeURIComponent(type.id)}/zones`)).map((zone) => zone.id));
    const boxes = zones.filter((zone) => zone.provider === type.provider).map((zone) => el("label", { class: "inline" },
      el("input", { type: "checkbox", name: "zone", value: zone.id, "data-zone": zone.code, checked: offered.has(zone.id) }), zone.code));
    const save = el("button", { type: "button", id: "save-zones", onclick: async () => {
      const chosen = [...editor.querySelectorAll("input[name=zone]:checked")].map((box) => box.value);
      try {
        const saved = items(await api("PUT", `/instance_types/${encodeURIComponent(type.id)}/zones`, { zone_ids: chosen }));
        editor.dataset.saved = saved.map((zone) => zone.code).sort().join(",");
        showError("");
      } catch (error) {
        showError(error.message);
      }
    } }, "Save the zones");
    editor.replaceChildren(el("fieldset", {}, el("legend", {}, `Zones offering ${type.code}`), boxes), save);
  };
  return el("div", {}, el("label", { for: "zones-of-type" }, "Instance type", choose), editor);
}

function catalogSection(providers, types, zones) {
  const sync = el("button", { type: "button", id: "catalog-sync", onclick: () => change("POST", "/catalog/sync") }, "Sync the catalog from the providers");
  const providerRows = providers.map((provider) => el("tr", { "data-provider-row": provider.name }, el("td", {}, provider.name), el("td", {}, provider.display_name),
    el("td", {}, el("input", { type: "checkbox", checked: provider.active, "aria-label": `${provider.name} active`,
      onchange: (event) => change("PUT", `/providers/${encodeURIComponent(provider.name)}`, { display_name: provider.display_name, active: event.target.checked }) }))));
  const typeRows = types.map((type) => {
    const price = el("input", { class: "price", inputmode: "decimal", value: (type.hourly_price_micros / 1e6).toFixed(4), "aria-label": `hourly price of ${type.code} (${type.provider})` });
    // Saved in place (the row shows what the API stored), not by redrawing the whole page.
    const save = el("button", { type: "button", onclick: async () => {
      const { provider, code, gpu_model, gpu_count, gpu_memory_gb, vcpus, memory_gb, currency, active } = type;
      const hourly = micros(price.value);
      if (Number.isNaN(hourly)) return showError(notAnAmount("hourly price"));
      try {
        const saved = await api("PUT", `/instance_types/${encodeURIComponent(type.id)}`, { provider, code, gpu_model, gpu_count, gpu_memory_gb, vcpus, memory_gb, currency, active,
          hourly_price_micros: hourly });
        price.value = (saved.hourly_price_micros / 1e6).toFixed(4);
        price.dataset.saved = price.value;
        showError("");
      } catch (error) {
        showError(error.message);
      }
    } }, "Save");
    return el("tr", { "data-type": `${type.provider}/${type.code}` }, el("td", {}, type.provider), el("td", {}, type.code),
      el("td", {}, type.gpu_model ? `${type.gpu_count}x ${type.gpu_model}` : "-"), el("td", {}, price, " ", type.currency, " ", save));
  });
  return el("section", {}, el("h2", {}, "Catalog"), sync, table(["provider", "name", "active"], providerRows), table(["provider", "type", "GPU", "hourly price"], typeRows),
    el("h3", {}, "Add an instance type"), typeForm(providers), el("h3", {}, "Where a type is offered"), zoneEditor(types, zones));
}

async function admin() {
  const show = here();
  if (!can("admin")) {
    show("Admin", el("p", {}, "This page needs the admin role."));
    return;
  }
  const platform = me.is_platform_admin;
  const [users, organizations, rates, providers, types, zones] = await Promise.all([
    api("GET", "/users?limit=500"),
    platform ? api("GET", "/organizations?limit=500") : null,
    api("GET", "/finops/exchange_rates"),
    platform ? api("GET", "/providers") : null,
    platform ? api("GET", "/instance_types") : null,
    platform ? api("GET", "/zones") : null,
  ]);
  show("Admin", usersSection(items(users)),
    platform ? organizationsSection(items(organizations)) : null,
    platform ? ratesSection(rates) : null,
    platform ? catalogSection(items(providers), items(types), items(zones)) : null);
  show.live(null);
}

async function profile() {
  const show = here();
  const current = el("input", { id: "current-password", type: "password", autocomplete: "current-password", required: true });
  const next = el("input", { id: "new-password", type: "password", autocomplete: "new-password", minlength: 8, required: true });
  const done = el("p", { id: "changed", "aria-live": "polite" });
  show("Profile",
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
  show.live(null);
}

async function route() {
  clearInterval(refresher);
  clearTimeout(scheduled);
  onEvent = null;
  const hash = location.hash || "#/overview";
  const [, view, id] = hash.split("/");
  // A page that takes a moment says so (and is marked busy for assistive technology).
  const main = document.getElementById("main");
  const loading = document.getElementById("loading");
  main.setAttribute("aria-busy", "true");
  const slow = setTimeout(() => { loading.hidden = false; }, 150);
  try {
    if (view === "instances" && id) await instance(id);
    else if (view === "instances") await instances();
    else if (view === "finops") await finops(id);
    else if (view === "logs") await logs();
    else if (view === "pools" && id) await pool(id);
    else if (view === "pools") await pools();
    else if (view === "keys") await keys();
    else if (view === "admin") await admin();
    else if (view === "profile") await profile();
    else if (view === "deploy") await deploy();
    else await overview();
  } catch (error) {
    if (error.status === 401) await login();
    else showError(error.message);
  } finally {
    clearTimeout(slow);
    loading.hidden = true;
    main.removeAttribute("aria-busy");
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
