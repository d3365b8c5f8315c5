// The console in a real Chromium (Debian's), driven by Playwright: run by services/cli/tests/console.rs
// against a `qm dev` it started. Fails (exit 1) at the first expectation that does not hold;
// saves a screenshot of each step in SCREENSHOTS.
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const fs = require("fs");
const path = require("path");

const base = process.env.API_URL;
const shots = process.env.SCREENSHOTS;
const axeSource = fs.readFileSync(process.env.AXE_CORE, "utf8");

const pageOf = { current: null, changes: [] };

function expect(condition, message) {
  if (!condition) throw new Error(`expectation failed: ${message}`);
}

async function accessible(page, name) {
  await page.addScriptTag({ content: axeSource });
  const result = await page.evaluate(async () => await window.axe.run(document, { resultTypes: ["violations"] }));
  const serious = result.violations.filter((violation) => ["serious", "critical"].includes(violation.impact));
  expect(serious.length === 0, `${name}: accessibility violations ${JSON.stringify(serious.map((violation) => [violation.id, violation.nodes.map((node) => node.target)]))}`);
}

// On a failure, what the console's error box said (the API's problem detail, if any).
async function said(page) {
  try {
    return await page.textContent("#error", { timeout: 1000 });
  } catch (error) {
    return "";
  }
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

// Keyboard only: presses Tab until the focused element matches `selector` (at most `limit`
// times), and checks that the focus is drawn where it lands.
async function tabTo(page, selector, limit = 60) {
  for (let press = 0; press < limit; press += 1) {
    await page.keyboard.press("Tab");
    if (await page.evaluate((wanted) => document.activeElement && document.activeElement.matches(wanted), selector)) {
      const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
      expect(outline !== "none", `the focus on ${selector} is visible`);
      return;
    }
  }
  throw new Error(`expectation failed: ${selector} is not reached by Tab within ${limit} presses`);
}

async function logIn(page, user, password) {
  await page.goto(`${base}/`);
  await page.fill("#login", user);
  await page.fill("#password", password);
  await page.click("button[type=submit]");
  await page.waitForFunction((name) => !document.getElementById("nav").hidden && document.getElementById("who").textContent.startsWith(`${name} (`), user);
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ["--no-sandbox"] });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, bypassCSP: true });
    const page = await context.newPage();
    pageOf.current = page;
    // The console's changes and their answers, printed when a step fails.
    page.on("response", (response) => {
      const method = response.request().method();
      if (method !== "GET") pageOf.changes.push(`${method} ${new URL(response.url()).pathname} ${response.request().postData() || ""} → ${response.status()}`);
    });
    page.on("dialog", (dialog) => dialog.accept());

    // A wrong password says why; the right one shows the overview.
    await page.goto(`${base}/`);
    await accessible(page, "login");
    await shot(page, "01-login");
    // By keyboard alone.
    await tabTo(page, "#login");
    await page.keyboard.type("admin");
    await tabTo(page, "#password", 2);
    await page.keyboard.type("wrong-password");
    await page.keyboard.press("Enter");
    await page.waitForSelector("#error:not([hidden])");
    await logIn(page, "admin", process.env.ADMIN_PASSWORD);
    await page.waitForSelector("text=instances ready");
    await accessible(page, "overview");
    await shot(page, "02-overview");

    // Deploy one local instance from the form, with its cost estimated first.
    await page.click("a[href='#/deploy']");
    await page.waitForSelector("#provider");
    await page.selectOption("#provider", "local");
    await page.selectOption("#region", "local");
    await page.selectOption("#zone", "local-1");
    await page.selectOption("#type", "local.cpu");
    await page.click("#estimate-button");
    await page.waitForFunction(() => document.getElementById("estimate").textContent.includes("per hour"));
    await accessible(page, "deploy");
    await shot(page, "03-deploy");
    await page.click("#deploy");
    await page.waitForURL(/#\/instances\//);
    const instanceUrl = page.url();

    // It reaches ready without a reload, and its cost grows.
    await page.waitForFunction(() => document.getElementById("state") && document.getElementById("state").textContent === "ready", null, { timeout: 60000 });
    await shot(page, "04-ready");
    await page.click("a[href='#/overview']");
    await page.waitForFunction(() => [...document.querySelectorAll(".card")].some((card) => /^[1-9][0-9]*instances ready$/.test(card.textContent)));
    // The overview also counts by provider, lists the pools and the last moves of the feed.
    await page.waitForSelector("tr[data-provider-count=local]");
    await page.waitForSelector("tr[data-overview-pool='console-pool']");
    await page.waitForSelector("#last-events li");
    await shot(page, "04-overview-live");
    await page.goto(instanceUrl);
    await page.waitForFunction(() => document.getElementById("state") && document.getElementById("state").textContent === "ready");
    const costAt = async () => Number(await page.textContent("#cost"));
    const first = await costAt();
    await page.waitForFunction((before) => Number(document.getElementById("cost").textContent) > before, first, { timeout: 20000 });
    expect(page.url() === instanceUrl, "no navigation while watching");
    await accessible(page, "instance");
    await page.waitForSelector("text=booting");
    // Its worker (registered, heartbeating) and its action logs.
    await page.waitForFunction(() => document.getElementById("worker").textContent.includes("in flight"));
    await page.waitForSelector("#instance-logs tr[data-instance-action]");
    // A few answers from its engine (a client of the model, outside the browser): their tokens
    // reach FinOps through the agent's heartbeats.
    const worker = await page.evaluate(async (instance) => (await fetch(`/instances/${instance}/worker`)).json(), instanceUrl.split("/").pop());
    for (let answer = 0; answer < 3; answer += 1) {
      const chat = await context.request.post(`${worker.engine_url}/v1/chat/completions`, { data: { model: "demo", messages: [{ role: "user", content: "what does a token cost" }] } });
      expect(chat.ok(), `the engine answered ${chat.status()}`);
    }

    // Terminate by keyboard (Tab to the button, Enter), confirmed, and watch it finish.
    await page.focus("#main");
    await tabTo(page, "#terminate");
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => document.getElementById("state").textContent === "terminated", null, { timeout: 60000 });
    await shot(page, "05-terminated");
    await page.click("a[href='#/instances']");
    await page.waitForSelector("td[data-state=terminated]");
    await accessible(page, "instances");
    await shot(page, "06-instances");
    // Filters and sorting: by state, then archived once archived from its page.
    await page.selectOption("#filter-state", "startup_failed");
    await page.waitForSelector("text=No instances match.");
    await page.selectOption("#filter-state", "terminated");
    await page.waitForSelector("td[data-state=terminated]");
    // Sorted by keyboard; the redrawn table gives the focus back to the same button.
    await page.focus("#filter-archived");
    await tabTo(page, "button[data-sort=state]", 10);
    await page.keyboard.press("Enter");
    await page.waitForSelector("th[aria-sort=ascending] button[data-sort=state]");
    expect(await page.evaluate(() => document.activeElement.matches("button[data-sort=state]")), "the focus stays on the sort button");
    await page.selectOption("#filter-state", "");
    await page.goto(instanceUrl);
    await page.click("#archive");
    await page.waitForSelector("#archived");
    const archivedId = instanceUrl.split("/").pop();
    await page.click("a[href='#/instances']");
    await page.waitForSelector("tr[data-instance]");
    expect((await page.$(`tr[data-instance='${archivedId}']`)) === null, "an archived instance leaves the list");
    await page.check("#filter-archived");
    await page.waitForSelector(`tr[data-instance='${archivedId}'] td[data-state=terminated]`);
    await page.uncheck("#filter-archived");
    // Pages of 50: 55 sim instances fill more than one.
    const created = await page.evaluate(async () => (await fetch("/deployments", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "paged", count: 55, provider: "sim", zone: "sim-eu-1", instance_type: "sim.cpu" }) })).status);
    expect(created === 202 || created === 201, `55 sim instances: ${created}`);
    await page.waitForFunction(() => !document.getElementById("next-page").disabled);
    expect((await page.$$("tr[data-instance]")).length === 50, "a page holds 50");
    const firstPage = await page.$$eval("tr[data-instance]", (rows) => rows.map((row) => row.dataset.instance));
    await page.click("#next-page");
    await page.waitForFunction(() => document.getElementById("page-number").textContent === "page 2");
    const secondPage = await page.$$eval("tr[data-instance]", (rows) => rows.map((row) => row.dataset.instance));
    expect(secondPage.length > 0 && secondPage.length < 50 && secondPage.every((id) => !firstPage.includes(id)), `page 2 goes on from page 1 (${secondPage.length} rows)`);
    await page.click("#previous-page");
    await page.waitForFunction(() => document.getElementById("page-number").textContent === "page 1");
    await accessible(page, "instances-paged");

    // FinOps: the cost per step as a chart, breakdowns with the local provider, tokens.
    await page.click("a[href='#/finops']");
    await page.waitForFunction(() => [...document.querySelectorAll("svg.chart rect")].some((rect) => Number(rect.getAttribute("height")) > 0));
    await page.waitForSelector("td:text-is('local')");
    expect((await page.$$("svg.chart")).length === 2, "the cost per step and the cumulative cost are charted");
    // Every breakdown holds what ran: the instance deployed from the form.
    for (const [by, key] of [["provider", "local"], ["region", "local"], ["zone", "local-1"], ["instance_type", "local.cpu"], ["model", "demo"]]) {
      const keys = await page.$$eval(`section[data-breakdown=${by}] tbody tr td:first-child`, (cells) => cells.map((cell) => cell.textContent));
      expect(keys.includes(key), `the ${by} breakdown lists ${key} (${keys})`);
    }
    expect((await page.$$("section[data-breakdown=organization] tbody tr")).length > 0, "the platform admin sees the breakdown by organization");
    // The engine's tokens and their cost per million (the page is drawn once: look again until
    // the heartbeats have carried them).
    const served = async () => page.$$eval("#tokens tr[data-model=demo] td", (cells) => cells.length === 4 && Number(cells[1].textContent) > 0);
    for (let look = 0; look < 30 && !(await served()); look += 1) {
      await page.waitForTimeout(1000);
      await page.goto(`${base}/#/finops/hour`);
      await page.goto(`${base}/#/finops`);
      await page.waitForSelector("#tokens");
    }
    const tokenRow = await page.$$eval("#tokens tr[data-model=demo] td", (cells) => cells.map((cell) => cell.textContent));
    expect(tokenRow.length === 4 && Number(tokenRow[1]) > 0 && tokenRow[3] !== "-", `tokens and cost per million tokens for demo (${tokenRow})`);
    await accessible(page, "finops");
    await shot(page, "06-finops");
    await page.click("a[href='#/finops/hour']");
    await page.waitForSelector("text=Cost per minute");
    // A GPU instance shows its GPUs as its agent reports them.
    const gpuInstance = await page.evaluate(async () => (await (await fetch("/deployments", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "on-gpu", count: 1, provider: "sim", zone: "sim-eu-1", instance_type: "sim.l4" }) })).json()).instance_ids[0]);
    await page.goto(`${base}/#/instances/${gpuInstance}`);
    await page.waitForFunction(() => {
      const row = document.querySelector("tr[data-gpu='0']");
      return row && row.textContent.includes("NVIDIA L4 (simulated)") && row.textContent.includes("22118 / 24576 MB");
    });
    await accessible(page, "instance-gpu");
    await shot(page, "06-instance-gpu");
    // A view whose call fails says why (the API's problem detail), never a blank page.
    for (const missing of ["instances", "pools"]) {
      await page.goto(`${base}/#/${missing}/00000000-0000-4000-8000-000000000000`);
      await page.waitForFunction(() => /not found|no such/i.test(document.getElementById("error").textContent));
      expect(await page.isVisible("#error"), `the error of a missing ${missing} entry is shown`);
    }
    await shot(page, "06-error-state");
    // The action log, filtered.
    await page.click("a[href='#/logs']");
    await page.fill("#action", "deployment.create");
    await page.click(".filters button[type=submit]");
    // Filtered: every row (there is at least one) is that action.
    await page.waitForFunction(() => {
      const rows = [...document.querySelectorAll("tr[data-action]")];
      return rows.length > 0 && rows.every((row) => row.dataset.action === "deployment.create");
    });
    await accessible(page, "logs");
    await shot(page, "06-logs");
    // A pool (created by the test's setup) scaled from the pools page.
    await page.click("a[href='#/pools']");
    await page.waitForSelector("tr[data-pool-row='console-pool']");
    await page.fill("tr[data-pool-row='console-pool'] input[data-bound=max]", "3");
    await page.click("tr[data-pool-row='console-pool'] button[data-pool]");
    await page.waitForFunction(() => document.querySelector("tr[data-pool-row='console-pool'] input[data-bound=max]").value === "3" && !document.getElementById("error").textContent);
    await accessible(page, "pools");
    await shot(page, "06-pools");
    // A pool from the deploy form: the cheapest L4 under a price on sim, estimated first.
    await page.click("a[href='#/deploy']");
    await page.waitForSelector("#provider");
    await page.check("#placement-cheapest");
    await page.selectOption("#gpu", "L4");
    await page.fill("#max-price", "1");
    for (const box of await page.$$("input[name=providers]")) {
      if ((await box.getAttribute("value")) !== "sim") await box.uncheck();
    }
    await page.check("#kind-pool");
    await page.fill("#pool-name", "form-pool");
    await page.fill("#pool-max", "2");
    await page.fill("#pool-ttft", "800");
    await page.click("#estimate-button");
    await page.waitForFunction(() => document.getElementById("estimate").textContent.includes("sim.l4"));
    await accessible(page, "deploy-constraints");
    await shot(page, "06-deploy-pool");
    await page.click("#deploy");
    await page.waitForURL(/#\/pools\/.+/);
    await page.waitForSelector("h1:text-is('Pool form-pool')");
    expect((await page.inputValue("#policy-ttft")) === "800", "the TTFT objective was kept");
    // Its policy edited, and its model changed (a rolling update: the next revision).
    await page.fill("#policy-target", "4");
    await page.fill("#policy-model", "pooled-v2");
    await page.click("#policy button[type=submit]");
    await page.waitForFunction(() => document.querySelector("[data-count=revision]").textContent === "2" && document.getElementById("policy-target").value === "4");
    await accessible(page, "pool");
    await shot(page, "06-pool");
    await page.click("#delete-pool");
    await page.waitForURL(/#\/pools$/);
    await page.waitForSelector("tr[data-pool-row='console-pool']");
    expect((await page.$("tr[data-pool-row='form-pool']")) === null, "the deleted pool is gone");
    // The budget, edited on the FinOps page.
    await page.click("a[href='#/finops']");
    await page.fill("#budget-amount", "100000.25");
    await page.fill("#budget-thresholds", "50, 90");
    await page.check("#budget-cap");
    await page.click("#budget-form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("budget").textContent.startsWith("100000.25 a month (hard cap)") && document.getElementById("budget").textContent.includes("alerts at 50, 90%"));
    // An API key: its secret shown once, then revoked.
    await page.click("a[href='#/keys']");
    await page.fill("#key-name", "from-the-console");
    await page.click("form.filters button[type=submit]");
    await page.waitForSelector("#secret-value");
    expect((await page.textContent("#secret-value")).length > 20, "the secret is shown");
    await accessible(page, "keys");
    await page.click("tr[data-key='from-the-console'] button.danger");
    await page.waitForFunction(() => document.querySelector("tr[data-key='from-the-console']").textContent.includes("revoked"));
    expect((await page.$("#secret-value")) === null, "the secret is not shown again");
    // Admin: a user added, their role changed, removed; an organization; an exchange rate; a
    // catalog price edited and a sync asked for.
    await page.click("a[href='#/admin']");
    await page.fill("#user-name", "ops");
    await page.fill("#user-email", "ops@example.com");
    await page.fill("#user-password", "ops-password-1");
    await page.selectOption("#user-role", "operator");
    await page.click("#user-form button[type=submit]");
    await page.waitForSelector("tr[data-user=ops]");
    await page.selectOption("tr[data-user=ops] select", "viewer");
    await page.waitForFunction(() => document.querySelector("tr[data-user=ops] select").value === "viewer" && !document.getElementById("error").textContent);
    await page.click("a[href='#/overview']");
    await page.waitForSelector("h1:text-is('Overview')");
    await page.click("a[href='#/admin']");
    await page.waitForSelector("tr[data-user=ops]");
    expect((await page.inputValue("tr[data-user=ops] select")) === "viewer", "the role change was saved");
    await page.click("tr[data-user=ops] button.danger");
    await page.waitForFunction(() => !document.querySelector("tr[data-user=ops]"));
    await page.fill("#org-name", "Acme Labs");
    await page.fill("#org-slug", "acme");
    await page.click("#org-form button[type=submit]");
    await page.waitForSelector("tr[data-org=acme]");
    await page.fill("#rate-currency", "usd");
    // Not 0.92: that is the configured rate, already shown.
    await page.fill("#rate-value", "0.95");
    await page.click("#rate-form button[type=submit]");
    await page.waitForFunction(() => document.querySelector("tr[data-rate=USD]") && document.querySelector("tr[data-rate=USD]").textContent.includes("0.950000edited"));
    await page.fill("tr[data-type='sim/sim.cpu'] input.price", "0.09");
    await page.click("tr[data-type='sim/sim.cpu'] button");
    await page.waitForFunction(() => document.querySelector("tr[data-type='sim/sim.cpu'] input.price").dataset.saved === "0.0900");
    const stored = await page.evaluate(async () => (await (await fetch("/instance_types")).json()).items.find((type) => type.code === "sim.cpu").hourly_price_micros);
    expect(stored === 90000, `the price was stored (${stored})`);
    // A new instance type, then the zone that offers it: it becomes an offer of the catalog.
    await page.selectOption("#type-provider", "sim");
    const a10Type = { "#type-code": "sim.a10", "#type-gpu-model": "A10", "#type-gpu-count": "1", "#type-gpu-memory": "24", "#type-vcpus": "8", "#type-memory": "32", "#type-price": "x" };
    for (const [field, value] of Object.entries(a10Type)) await page.fill(field, value);
    await page.click("#type-form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("error").textContent.includes("hourly price"));
    await page.fill("#type-price", "0.55");
    await page.click("#type-form button[type=submit]");
    await page.waitForSelector("tr[data-type='sim/sim.a10']");
    await page.selectOption("#zones-of-type", { label: "sim/sim.a10" });
    await page.check("#type-zones input[data-zone='sim-eu-1']");
    await page.click("#save-zones");
    await page.waitForFunction(() => document.getElementById("type-zones").dataset.saved === "sim-eu-1");
    const a10 = await page.evaluate(async () => (await (await fetch("/offers?gpu_model=A10")).json()));
    const a10Offers = Array.isArray(a10) ? a10 : a10.items;
    expect(a10Offers.length === 1 && a10Offers[0].zone === "sim-eu-1" && a10Offers[0].hourly_price_micros === 550000, `the new type is offered in sim-eu-1 (${JSON.stringify(a10)})`);
    await page.click("#catalog-sync");
    await page.waitForFunction(() => document.querySelector("tr[data-org=acme]") && !document.getElementById("error").textContent);
    await accessible(page, "admin");
    await shot(page, "06-admin");
    // A bad rate is refused with the API's reason, and nothing changes.
    await page.fill("#rate-currency", "USD");
    await page.fill("#rate-value", "-1");
    await page.click("#rate-form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("error").textContent.includes("rate"));
    // The action log, virtualized: 240 more entries, a few dozen rows in the page at a time,
    // the rest fetched as the end comes into view.
    await page.evaluate(async () => {
      for (let index = 0; index < 240; index += 1) {
        await fetch("/finops/exchange_rates/GBP", { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify({ rate: `1.${index + 100}` }) });
      }
    });
    await page.click("a[href='#/logs']");
    await page.fill("#action", "finops.exchange_rate.put");
    await page.click(".filters button[type=submit]");
    await page.waitForFunction(() => /^2[4-9][0-9] entries/.test(document.getElementById("log-counts").textContent));
    const total = Number((await page.textContent("#log-counts")).split(" ")[0]);
    const drawn = (await page.$$("tr[data-action]")).length;
    expect(drawn > 0 && drawn < 80, `only the rows in view are drawn (${drawn} of ${total})`);
    await accessible(page, "logs-virtual");
    for (let attempt = 0; attempt < 50; attempt += 1) {
      await page.$eval("#log-viewport", (viewport) => { viewport.scrollTop = viewport.scrollHeight; });
      await page.waitForTimeout(100);
      const last = await page.$$eval("tr[data-action]", (rows) => Number(rows[rows.length - 1].getAttribute("aria-rowindex")));
      if (last === total + 1) break;
    }
    const last = await page.$$eval("tr[data-action]", (rows) => Number(rows[rows.length - 1].getAttribute("aria-rowindex")));
    expect(last === total + 1, `scrolled to the last entry (${last} of ${total + 1})`);
    expect((await page.$$("tr[data-action]")).length < 80, "still only the rows in view");
    await shot(page, "06-logs-virtual");
    // The profile.
    await page.click("#who");
    await page.waitForSelector("#current-password");
    await accessible(page, "profile");

    // A viewer: no deploy or terminate controls, and a 403 when it tries anyway.
    await page.click("#logout");
    await page.waitForSelector("#login");
    await logIn(page, "viewer", process.env.USER_PASSWORD);
    expect(await page.isHidden("a[href='#/deploy']"), "the viewer sees no Deploy link");
    await page.goto(instanceUrl);
    await page.waitForSelector("#state");
    expect((await page.$("#terminate")) === null, "the viewer sees no Terminate button");
    const id = instanceUrl.split("/").pop();
    const status = await page.evaluate(async (instance) => (await fetch(`/instances/${instance}`, { method: "DELETE" })).status, id);
    expect(status === 403, `the viewer's DELETE answered ${status}`);
    await shot(page, "07-viewer");

    // Another organization's user sees none of it, and at a phone's width.
    await page.click("#logout");
    await page.waitForSelector("#login");
    await page.setViewportSize({ width: 390, height: 844 });
    await logIn(page, "outsider", process.env.USER_PASSWORD);
    await page.click("a[href='#/instances']");
    await page.waitForSelector("text=No instances yet.");
    const missing = await page.evaluate(async (instance) => (await fetch(`/instances/${instance}`)).status, id);
    expect(missing === 404, `another organization's instance answered ${missing}`);
    await shot(page, "08-other-organization-390px");
    // Their password changed from the profile (a wrong current one refused first), then used.
    await page.click("#who");
    await page.fill("#current-password", "not-the-password");
    await page.fill("#new-password", "a-new-password-9");
    await page.click("#main form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("error").textContent.length > 0);
    expect(!(await page.textContent("#changed")), "a wrong current password changes nothing");
    await page.fill("#current-password", process.env.USER_PASSWORD);
    await page.click("#main form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("changed").textContent === "Password changed.");
    await page.click("#logout");
    await page.waitForSelector("#login");
    await logIn(page, "outsider", "a-new-password-9");
    console.log("console: every step passed");
  } catch (error) {
    error.consoleError = `${await said(pageOf.current)} (at ${pageOf.current.url()}; screenshot failure.png; last changes: ${pageOf.changes.slice(-6).join(", ")})`;
    await shot(pageOf.current, "failure").catch(() => {});
    throw error;
  } finally {
    await browser.close();
  }
})().catch((error) => {
  console.error(error.stack || String(error));
  if (error.consoleError !== undefined) console.error(`the console's error box: ${error.consoleError}`);
  process.exit(1);
});
