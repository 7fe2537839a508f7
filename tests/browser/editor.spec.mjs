// The ComfyUI editor with this pack, in the system Chromium: the web extension registers, every example workflow
// loads without missing nodes or errors, and the extension's widgets behave. Run by tests/integration/test_browser.py:
//   COMFY_URL=http://127.0.0.1:8188 PACK_NAME=comfyui-sana-wan ARTIFACTS_DIR=... node editor.spec.mjs
// Prints "ok - ..." per check and "screenshot: <path>" per picture; exits 1 at the first failure.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const EXAMPLES = path.resolve(HERE, "../../example_workflows");
const API_TWINS = path.resolve(HERE, "../../workflows/api");
const COMFY_URL = process.env.COMFY_URL ?? "http://127.0.0.1:8188";
const PACK_NAME = process.env.PACK_NAME ?? "comfyui-sana-wan";
const ARTIFACTS = path.resolve(process.env.ARTIFACTS_DIR ?? path.join(HERE, "artifacts"));
const EXTENSION = "sana_wan.ui";
const KNOWN_PAGE_ERROR = "reading 'id'"; // frontend 1.27.10 raises it on start, with or without any pack
const PACK_MARKERS = [PACK_NAME, "sana_wan", "sana_sizes"];
// Headless, and nothing that calls out to the internet.
const CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

const consoleErrors = [];
const pageErrors = [];

function ok(what) {
  console.log(`ok - ${what}`);
}

async function api(route, init) {
  const response = await fetch(`${COMFY_URL}${route}`, init);
  assert.ok(response.ok, `${init?.method ?? "GET"} ${route}: HTTP ${response.status}`);
  return response;
}

// Sets a widget the way an edit in the editor does (value, then the widget's callback).
function setWidget(page, nodeType, widgetName, value) {
  return page.evaluate(([type, name, v]) => {
    const node = window.app.graph.nodes.find((n) => n.type === type);
    const widget = node.widgets.find((w) => w.name === name);
    widget.setValue(v, { node, canvas: window.app.canvas });
  }, [nodeType, widgetName, value]);
}

function widgetValues(page, nodeType) {
  return page.evaluate((type) => {
    const node = window.app.graph.nodes.find((n) => n.type === type);
    return Object.fromEntries(node.widgets.map((w) => [w.name, w.value]));
  }, nodeType);
}

async function screenshot(page, name) {
  await page.evaluate(() => new Promise((resolve) => {
    window.app.graph.setDirtyCanvas(true, true);
    requestAnimationFrame(() => requestAnimationFrame(resolve));
  }));
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file });
  console.log(`screenshot: ${file}`);
}

const withoutTitles = (prompt) =>
  Object.fromEntries(Object.entries(prompt).map(([id, { _meta, ...node }]) => [id, node]));

async function loadWorkflow(page, name) {
  const graph = await (await api(`/api/workflow_templates/${PACK_NAME}/${encodeURIComponent(name)}.json`)).json();
  const errorsBefore = consoleErrors.length;
  const report = await page.evaluate(async (workflow) => {
    await window.app.loadGraphData(workflow);
    const nodes = window.app.graph.nodes;
    // Matched by type and values, not id: ComfyUI 0.33's frontend may give a loaded template's nodes new ids. Only
    // the pack's nodes: core nodes gain widgets between ComfyUI releases (0.33's CreateVideo, SaveVideo), filled in.
    const ours = (type) => (window.LiteGraph.registered_node_types[type]?.nodeData?.python_module ?? "custom_nodes")
      .startsWith("custom_nodes");
    const saved = workflow.nodes.filter((n) => ours(n.type))
      .map((n) => `${n.type}: ${JSON.stringify(n.widgets_values ?? [])}`);
    return {
      missingTypes: nodes.filter((n) => !(n.type in window.LiteGraph.registered_node_types)).map((n) => n.type),
      withErrors: nodes.filter((n) => n.has_errors).map((n) => n.type),
      // The values the editor would save again: our extra widgets must not shift or change them.
      changed: nodes.filter((n) => ours(n.type)).map((n) => `${n.type}: ${JSON.stringify(n.serialize().widgets_values ?? [])}`)
        .filter((entry) => { const i = saved.indexOf(entry); if (i >= 0) saved.splice(i, 1); return i < 0; }),
      count: nodes.length,
    };
  }, graph);
  assert.equal(report.count, graph.nodes.length, `${name}: node count`);
  assert.deepEqual(report.missingTypes, [], `${name}: node types missing from the editor`);
  assert.deepEqual(report.withErrors, [], `${name}: nodes with errors`);
  assert.deepEqual(report.changed, [], `${name}: widget values changed on load`);
  // What "Run" would send: only the nodes' own inputs (the extension's widgets stay out), as in the API twin.
  // Core nodes' inputs that a newer ComfyUI added (with their defaults) are left out of the comparison.
  const { prompt, coreInputs } = await page.evaluate(async () => {
    const output = (await window.app.graphToPrompt()).output;
    const core = Object.fromEntries(Object.values(output).map(({ class_type }) => [class_type,
      (window.LiteGraph.registered_node_types[class_type]?.nodeData?.python_module ?? "custom_nodes")
        .startsWith("custom_nodes") ? null : true]));
    return { prompt: output, coreInputs: core };
  });
  const twinName = graph.extra.sana_wan.api_twin;
  const twin = JSON.parse(fs.readFileSync(path.join(API_TWINS, `${twinName}.json`), "utf8"));
  for (const [id, node] of Object.entries(prompt)) {
    if (coreInputs[node.class_type] && twin[id]) {
      node.inputs = Object.fromEntries(Object.entries(node.inputs).filter(([key]) => key in twin[id].inputs));
    }
  }
  assert.deepEqual(withoutTitles(prompt), withoutTitles(twin), `${name}: the editor's prompt differs from workflows/api/${twinName}.json`);
  const packErrors = consoleErrors.slice(errorsBefore).filter((e) => PACK_MARKERS.some((m) => e.includes(m)));
  assert.deepEqual(packErrors, [], `${name}: console errors about the pack`);
  ok(`${name}: ${report.count} nodes load, none missing, widget values kept, prompt equals the API twin`);
  return twinName;
}

async function checkWanWorkflow(page) {
  await setWidget(page, "EmptyWanLatentVideo", "length", 80);
  await setWidget(page, "EmptyWanLatentVideo", "width", 830);
  let latent = await widgetValues(page, "EmptyWanLatentVideo");
  assert.equal(latent.length, 81, "length 80 snaps to 4n+1");
  assert.equal(latent.width, 832, "width 830 snaps to a multiple of 16");
  assert.equal(latent.duration, "81 frames = 5.06 s @16 fps");
  await setWidget(page, "EmptyWanLatentVideo", "length", 33);
  latent = await widgetValues(page, "EmptyWanLatentVideo");
  assert.equal(latent.duration, "33 frames = 2.06 s @16 fps");
  ok("EmptyWanLatentVideo snaps length/width and shows the duration");

  const before = await widgetValues(page, "WanSampler");
  await setWidget(page, "WanTransformerLoader", "model_name", "wan2.1_t2v_14B_fp16.safetensors");
  let sampler = await widgetValues(page, "WanSampler");
  assert.deepEqual([sampler.cfg, sampler.shift, sampler.steps], [5, 5, before.steps], "14B: cfg 5, shift 5, steps kept");
  await setWidget(page, "WanTransformerLoader", "model_name", "wan2.1_t2v_1.3B_fp16.safetensors");
  sampler = await widgetValues(page, "WanSampler");
  assert.deepEqual([sampler.steps, sampler.cfg, sampler.shift], [50, 6, 8], "1.3B: steps 50, cfg 6, shift 8");
  ok("WanTransformerLoader model_name fills the connected WanSampler");
}

async function checkSanaWorkflow(page) {
  await setWidget(page, "EmptySanaLatent", "preset", "1024 · 1152×896");
  let latent = await widgetValues(page, "EmptySanaLatent");
  assert.deepEqual([latent.width, latent.height, latent.resolution_bin], [1152, 896, "1024"], "preset sets the size");
  await setWidget(page, "EmptySanaLatent", "width", 1000);
  latent = await widgetValues(page, "EmptySanaLatent");
  assert.deepEqual([latent.width, latent.preset], [992, "custom"], "width 1000 snaps to 992, a size of no preset");
  await setWidget(page, "EmptySanaLatent", "preset", "4K · 4096×4096");
  latent = await widgetValues(page, "EmptySanaLatent");
  assert.deepEqual([latent.width, latent.height, latent.resolution_bin], [4096, 4096, "4K"]);
  ok("EmptySanaLatent presets set width/height; typed sizes snap to 32");

  await setWidget(page, "SanaTransformerLoader", "model_name", "Sana_1600M_4Kpx_BF16.pth");
  let sampler = await widgetValues(page, "SanaSampler");
  assert.deepEqual([sampler.steps, sampler.cfg, sampler.shift], [20, 4.5, 6], "Sana 4K: shift 6");
  await setWidget(page, "SanaTransformerLoader", "model_name", "Sana_1600M_1024px_BF16.pth");
  sampler = await widgetValues(page, "SanaSampler");
  assert.deepEqual([sampler.steps, sampler.cfg, sampler.shift], [20, 4.5, 0], "Sana: model's default shift");
  ok("SanaTransformerLoader model_name fills the connected SanaSampler");
}

// Nodes added from the node library get the extension's widgets too, showing the default values.
async function checkNewNodes(page) {
  const shown = await page.evaluate(() => {
    const show = (type) => {
      const node = window.LiteGraph.createNode(type);
      window.app.graph.add(node);
      const values = Object.fromEntries(node.widgets.map((w) => [w.name, w.value]));
      const fits = node.size[1] >= node.computeSize()[1];
      window.app.graph.remove(node);
      return { ...values, fits };
    };
    return { sana: show("EmptySanaLatent"), wan: show("EmptyWanLatentVideo") };
  });
  assert.deepEqual([shown.sana.preset, shown.sana.fits], ["1024 · 1024×1024", true], "new EmptySanaLatent");
  assert.deepEqual([shown.wan.duration, shown.wan.fits], ["81 frames = 5.06 s @16 fps", true], "new EmptyWanLatentVideo");
  ok("new latent nodes show their preset and duration");
}

const CHECKS = { wan_text_to_video: checkWanWorkflow, sana_text_to_image: checkSanaWorkflow };

async function main() {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await api("/api/settings/Comfy.TutorialCompleted", { method: "POST", body: "true" });

  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_FLAGS });
  try {
    const context = await browser.newContext({ viewport: { width: 1920, height: 1080 } });
    const loopback = new URL(COMFY_URL).origin;
    await context.route("**/*", (route) => (route.request().url().startsWith(loopback) || route.request().url()
      .startsWith("data:") ? route.continue() : route.abort()));
    const page = await context.newPage();
    page.on("console", (m) => m.type() === "error" && consoleErrors.push(`${m.text()} ${m.location()?.url ?? ""}`));
    page.on("pageerror", (e) => pageErrors.push(String(e?.stack ?? e)));

    await page.goto(COMFY_URL);
    await page.waitForFunction(() => window.app?.graph && window.LiteGraph?.registered_node_types?.EmptySanaLatent,
      null, { timeout: 60_000 });
    const extensions = await page.evaluate(() => window.app.extensions.map((e) => e.name));
    assert.ok(extensions.includes(EXTENSION), `${EXTENSION} not registered (see the console errors)`);
    ok(`${EXTENSION} registered`);

    const templates = await (await api("/api/workflow_templates")).json();
    const listed = [...(templates[PACK_NAME] ?? [])].sort();
    const files = fs.readdirSync(EXAMPLES).filter((f) => f.endsWith(".json")).map((f) => f.slice(0, -5)).sort();
    assert.deepEqual(listed, files, `/api/workflow_templates lists ${PACK_NAME}'s example_workflows/`);
    for (const name of listed) {
      const thumbnail = await api(`/api/workflow_templates/${PACK_NAME}/${encodeURIComponent(name)}.jpg`);
      assert.equal(thumbnail.headers.get("content-type"), "image/jpeg", `${name}.jpg`);
    }
    ok(`the templates route lists ${listed.join(", ")}, each with its thumbnail`);

    await checkNewNodes(page);
    for (const name of listed) {
      const twinName = await loadWorkflow(page, name);
      await screenshot(page, twinName);
      if (CHECKS[twinName]) {
        await CHECKS[twinName](page);
        await screenshot(page, `${twinName}-edited`);
      }
    }

    const packErrors = consoleErrors.filter((e) => PACK_MARKERS.some((m) => e.includes(m)));
    assert.deepEqual(packErrors, [], "console errors about the pack");
    assert.deepEqual(pageErrors.filter((e) => !e.includes(KNOWN_PAGE_ERROR)), [], "page errors");
    ok("no console errors about the pack, no page errors but the known frontend one");
  } finally {
    await browser.close();
  }
}

main().then(() => console.log("PASSED"), (error) => {
  console.log(`not ok - ${error.message}`);
  if (consoleErrors.length) console.log(`console errors:\n${consoleErrors.join("\n")}`);
  if (pageErrors.length) console.log(`page errors:\n${pageErrors.join("\n")}`);
  process.exitCode = 1;
});
