// Editor helpers for the Sana and Wan2.1 nodes: size presets and snapping on the empty latents, the video's
// duration, and recommended sampler settings when a transformer file is picked. Values only change when the user
// edits a widget (its callback runs); loading a workflow never changes a value it saved.
//
// Served as /extensions/<pack>/js/sana_wan.js, so the app module is three folders up.
import { app } from "../../../scripts/app.js";
import { SANA_BINS } from "./sana_sizes.js";

const SANA_STRIDE = 32; // DC-AE f32
const WAN_STRIDE = 16; // Wan VAE 8x times 2x2 patches
const WAN_FPS = 16;
const CUSTOM = "custom";

const widgetNamed = (node, name) => node.widgets?.find((w) => w.name === name);
const toMultiple = (value, step) => Math.max(step, Math.round(Number(value) / step) * step);
const toFourNPlusOne = (value) => Math.max(1, Math.round((Number(value) - 1) / 4) * 4 + 1);

// Runs `after()` once the widget's own callback (the frontend's step rounding) has run on a user edit.
function afterEdit(widget, after) {
  if (!widget) return;
  const own = widget.callback;
  widget.callback = function (...args) {
    const result = own?.apply(this, args);
    after();
    return result;
  };
}

function snapOnEdit(widget, snap, then = () => {}) {
  afterEdit(widget, () => {
    widget.value = snap(widget.value);
    then();
  });
}

// A one-line, read-only text under a node's widgets; never saved in the workflow or sent with the prompt.
function addNote(node, name) {
  return node.addCustomWidget({
    name,
    type: "sana_wan_note",
    value: "",
    serialize: false,
    options: { serialize: false },
    draw(ctx, _node, width, y, height) {
      ctx.save();
      ctx.fillStyle = "#9a9a9a";
      ctx.font = "12px sans-serif";
      ctx.textAlign = "center";
      ctx.fillText(String(this.value), width / 2, y + height * 0.7);
      ctx.restore();
    },
    computeSize: (width) => [width, 20],
  });
}

function growToFit(node) {
  const [width, height] = node.computeSize();
  node.setSize([Math.max(node.size[0], width), Math.max(node.size[1], height)]);
}

// ---- EmptySanaLatent: trained-size presets ------------------------------------------------------------------

// "1024 · 1152×896" -> {bin: "1024", width: 1152, height: 896}; bins hold [height, width], listed tall to wide.
const SANA_PRESETS = new Map(
  Object.entries(SANA_BINS).flatMap(([bin, sizes]) =>
    Object.values(sizes)
      .sort(([h1, w1], [h2, w2]) => w1 / h1 - w2 / h2)
      .map(([height, width]) => [`${bin} · ${width}×${height}`, { bin, width, height }])
  )
);

// The preset showing the current size: one from the node's resolution_bin first, "custom" when none matches.
function presetFor(width, height, bin) {
  let found = CUSTOM;
  for (const [label, size] of SANA_PRESETS) {
    if (size.width !== width || size.height !== height) continue;
    if (size.bin === bin) return label;
    if (found === CUSTOM) found = label;
  }
  return found;
}

function setUpSanaLatent(node) {
  const [width, height, bin] = ["width", "height", "resolution_bin"].map((n) => widgetNamed(node, n));
  const preset = node.addWidget("combo", "preset", CUSTOM, (label) => {
    const size = SANA_PRESETS.get(label);
    if (!size) return;
    width.value = size.width;
    height.value = size.height;
    // A preset is a size of its own bin: resolution_bin set to another bin would resize it at run time.
    if (bin) bin.value = size.bin;
    node.setDirtyCanvas(true, true);
  }, { values: [CUSTOM, ...SANA_PRESETS.keys()], serialize: false });
  preset.serialize = false; // shown from width/height, not saved: the saved widgets_values stay the node's own
  const refresh = () => {
    preset.value = presetFor(width?.value, height?.value, bin?.value);
  };
  snapOnEdit(width, (v) => toMultiple(v, SANA_STRIDE), refresh);
  snapOnEdit(height, (v) => toMultiple(v, SANA_STRIDE), refresh);
  afterEdit(bin, refresh);
  return refresh;
}

// ---- EmptyWanLatentVideo: strides, 4n+1 frames, duration -------------------------------------------------------

function setUpWanLatent(node) {
  const [width, height, length] = ["width", "height", "length"].map((n) => widgetNamed(node, n));
  const note = addNote(node, "duration");
  const refresh = () => {
    const frames = Number(length?.value);
    note.value = `${frames} frames = ${(frames / WAN_FPS).toFixed(2)} s @${WAN_FPS} fps`;
    node.setDirtyCanvas(true, false);
  };
  snapOnEdit(width, (v) => toMultiple(v, WAN_STRIDE));
  snapOnEdit(height, (v) => toMultiple(v, WAN_STRIDE));
  snapOnEdit(length, toFourNPlusOne, refresh);
  return refresh;
}

// ---- Loaders: recommended sampler settings by file name ----------------------------------------------------------
//
// The rule: when the user picks another model_name in a loader, every sampler of that family that the loader's
// output reaches through links (passing through other nodes, stopping at the first sampler on each path) gets the
// recommended values below, overwriting what it had. Settings a recommendation does not name are left alone.
// shift 0 means "the model's own default" (3.0 for Sana; see the samplers' tooltips).

function recommendedSettings(family, fileName) {
  const name = String(fileName).toLowerCase();
  if (family === "sana") {
    if (name.includes("sprint")) return null; // distilled one/two-step models use SanaSprintSampler
    return { steps: 20, cfg: 4.5, shift: /4k|4096/.test(name) ? 6 : 0 };
  }
  if (/14b/.test(name)) return { cfg: 5, shift: 5 };
  if (/1[._-]?3b/.test(name)) return { steps: 50, cfg: 6, shift: 8 };
  return null;
}

function samplersReachedFrom(loader, samplerType) {
  const samplers = [];
  const seen = new Set([loader.id]);
  const queue = [loader];
  while (queue.length) {
    const node = queue.shift();
    for (let slot = 0; slot < (node.outputs?.length ?? 0); slot++) {
      for (const next of node.getOutputNodes(slot) ?? []) {
        if (seen.has(next.id)) continue;
        seen.add(next.id);
        (next.type === samplerType ? samplers : queue).push(next);
      }
    }
  }
  return samplers;
}

function setUpLoader(node, family, samplerType) {
  const modelName = widgetNamed(node, "model_name");
  afterEdit(modelName, () => {
    const settings = recommendedSettings(family, modelName.value);
    if (!settings || !node.graph) return;
    for (const sampler of samplersReachedFrom(node, samplerType)) {
      for (const [name, value] of Object.entries(settings)) {
        const widget = widgetNamed(sampler, name);
        if (widget) widget.value = value;
      }
      sampler.setDirtyCanvas(true, false);
    }
  });
}

// ---- Registration ------------------------------------------------------------------------------------------------

// Node type -> set-up run when a node is created; it may return a refresh run again once saved values are loaded.
const SET_UPS = {
  EmptySanaLatent: setUpSanaLatent,
  EmptyWanLatentVideo: setUpWanLatent,
  SanaTransformerLoader: (node) => setUpLoader(node, "sana", "SanaSampler"),
  WanTransformerLoader: (node) => setUpLoader(node, "wan", "WanSampler"),
};

app.registerExtension({
  name: "sana_wan.ui",
  beforeRegisterNodeDef(nodeType, nodeData) {
    const setUp = SET_UPS[nodeData.name];
    if (!setUp) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const result = created?.apply(this, args);
      this.sanaWanRefresh = setUp(this);
      this.sanaWanRefresh?.();
      growToFit(this);
      return result;
    };
    const configured = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (...args) {
      const result = configured?.apply(this, args);
      this.sanaWanRefresh?.();
      return result;
    };
  },
});
