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

function expect(condition, message) {
  if (!condition) throw new Error(`expectation failed: ${message}`);
}

async function accessible(page, name) {
  await page.addScriptTag({ content: axeSource });
  const result = await page.evaluate(async () => await window.axe.run(document, { resultTypes: ["violations"] }));
  const serious = result.violations.filter((violation) => ["serious", "critical"].includes(violation.impact));
  expect(serious.length === 0, `${name}: accessibility violations ${JSON.stringify(serious.map((violation) => [violation.id, violation.nodes.map((node) => node.target)]))}`);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
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
    page.on("dialog", (dialog) => dialog.accept());

    // A wrong password says why; the right one shows the overview.
    await page.goto(`${base}/`);
    await accessible(page, "login");
    await shot(page, "01-login");
    await page.fill("#login", "admin");
    await page.fill("#password", "wrong-password");
    await page.click("button[type=submit]");
    await page.waitForSelector("#error:not([hidden])");
    await logIn(page, "admin", process.env.ADMIN_PASSWORD);
    await page.waitForSelector("text=instances ready");
    await accessible(page, "overview");
    await shot(page, "02-overview");

    // Deploy one local instance from the form, with its cost estimated first.
    await page.click("a[href='#/deploy']");
    await page.waitForSelector("#provider");
    await page.selectOption("#provider", "local");
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
    await shot(page, "04-overview-live");
    await page.goto(instanceUrl);
    await page.waitForFunction(() => document.getElementById("state") && document.getElementById("state").textContent === "ready");
    const costAt = async () => Number(await page.textContent("#cost"));
    const first = await costAt();
    await page.waitForFunction((before) => Number(document.getElementById("cost").textContent) > before, first, { timeout: 20000 });
    expect(page.url() === instanceUrl, "no navigation while watching");
    await accessible(page, "instance");
    await page.waitForSelector("text=booting");

    // Terminate, confirmed, and watch it finish.
    await page.click("#terminate");
    await page.waitForFunction(() => document.getElementById("state").textContent === "terminated", null, { timeout: 60000 });
    await shot(page, "05-terminated");
    await page.click("a[href='#/instances']");
    await page.waitForSelector("td[data-state=terminated]");
    await accessible(page, "instances");
    await shot(page, "06-instances");

    // FinOps: the cost per step as a chart, breakdowns with the local provider, tokens.
    await page.click("a[href='#/finops']");
    await page.waitForFunction(() => [...document.querySelectorAll("svg.chart rect")].some((rect) => Number(rect.getAttribute("height")) > 0));
    await page.waitForSelector("td:text-is('local')");
    await accessible(page, "finops");
    await shot(page, "06-finops");
    await page.click("a[href='#/finops/hour']");
    await page.waitForSelector("text=Cost per minute");
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
    await page.setViewportSize({ width: 390, height: 844 });
    await logIn(page, "outsider", process.env.USER_PASSWORD);
    await page.click("a[href='#/instances']");
    await page.waitForSelector("text=No instances yet.");
    const missing = await page.evaluate(async (instance) => (await fetch(`/instances/${instance}`)).status, id);
    expect(missing === 404, `another organization's instance answered ${missing}`);
    await shot(page, "08-other-organization-390px");
    console.log("console: every step passed");
  } finally {
    await browser.close();
  }
})().catch((error) => {
  console.error(error.stack || String(error));
  process.exit(1);
});
