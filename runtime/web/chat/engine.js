/**
 * One mlc `webgpu` build on a WebGPU device: the `.wasm` model library, its weight shards
 * (each checked against the size and sha256 that `tensor-cache.json` records) and a paged KV
 * cache holding one sequence. The chat page and the Deno driver (`run_model.ts`) both run it;
 * the calls mirror `mlc/runtime/compiled_model.py` (embed, then prefill or decode between
 * `kv_state_begin_forward` and `kv_state_end_forward`).
 *
 * `tvmjs` is the apache-tvm wheel's TypeScript runtime (bundled to plain JavaScript for a
 * browser by `mlc web`), passed in so that this module imports nothing itself.
 */

const PAGE_SIZE = 16;
const SEQUENCE_ID = 0;
const ARTIFACT_FORMAT_VERSION = 1;
const CHAT_CONFIG_NAME = "mlc-chat-config.json";
const CHAT_CONFIG_SCHEMA_NAME = "mlc-chat-config.schema.json";

/** The browser or the machine has no usable WebGPU. */
export class WebGPUUnavailableError extends Error {}

/** The model directory is missing, damaged, or not a `webgpu` build. */
export class ModelLoadError extends Error {}

/**
 * The WebGPU adapter, or WebGPUUnavailableError saying what is missing.
 * @returns {Promise<GPUAdapter>}
 */
export async function requestAdapter() {
  if (typeof navigator === "undefined" || !navigator.gpu) {
    throw new WebGPUUnavailableError(
      "WebGPU not available: this browser has no navigator.gpu. Open the page in a browser " +
        "with WebGPU (Chrome or Edge 113 and later, or a recent Safari or Firefox where it is " +
        "enabled), over https:// or from localhost.",
    );
  }
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) {
    throw new WebGPUUnavailableError(
      "WebGPU not available: navigator.gpu.requestAdapter() found no GPU adapter. Enable " +
        "hardware acceleration; Chromium without a usable GPU needs --enable-unsafe-webgpu.",
    );
  }
  return adapter;
}

/**
 * Whether a model's kernels need `shader-f16`: it computes in fp16, or its weights hold fp16
 * values the kernels read (the scales of a GGUF file's blocks).
 * @param {object} chatConfig the build's `mlc-chat-config.json`
 */
export function needsFloat16(chatConfig) {
  const scheme = chatConfig.quantization_scheme ?? {};
  return scheme.model_dtype === "float16" || scheme.reads_float16 === true;
}

/**
 * A device with the limits a model needs (as large as the adapter allows).
 * @param {GPUAdapter} adapter
 * @param {boolean} needF16 the model's kernels need `shader-f16` (`needsFloat16`)
 */
export async function requestDevice(adapter, needF16) {
  const info = adapter.info ?? {};
  const name = [info.vendor, info.architecture, info.description].filter(Boolean).join(" ");
  if (needF16 && !adapter.features.has("shader-f16")) {
    throw new ModelLoadError(
      `This model computes in fp16 or reads fp16 weights, but the WebGPU adapter (${name || "unnamed"}) lacks ` +
        "shader-f16: build it with --quantization q4f32_1 for this device.",
    );
  }
  const limits = adapter.limits;
  const device = await adapter.requestDevice({
    requiredFeatures: needF16 ? ["shader-f16"] : [],
    requiredLimits: {
      maxBufferSize: limits.maxBufferSize,
      maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
      maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
      maxStorageBuffersPerShaderStage: limits.maxStorageBuffersPerShaderStage,
    },
  });
  return { device, info: { adapter: name, features: [...device.features] } };
}

async function fetchOk(url, what) {
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new ModelLoadError(`Cannot read the ${what} at ${url}: ${err.message}`);
  }
  if (!response.ok) {
    throw new ModelLoadError(`No ${what} at ${url} (HTTP ${response.status}).`);
  }
  return response;
}

/** The bytes at `url`; `onBytes(n)` is told of every chunk as it arrives. */
export async function fetchBytes(url, what, onBytes = () => {}) {
  const response = await fetchOk(url, what);
  if (!response.body) {
    const data = new Uint8Array(await response.arrayBuffer());
    onBytes(data.length);
    return data;
  }
  const chunks = [];
  let size = 0;
  const reader = response.body.getReader();
  for (let r = await reader.read(); !r.done; r = await reader.read()) {
    chunks.push(r.value);
    size += r.value.length;
    onBytes(r.value.length);
  }
  const data = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    data.set(chunk, offset);
    offset += chunk.length;
  }
  return data;
}

export async function fetchJSON(url, what) {
  const text = await (await fetchOk(url, what)).text();
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ModelLoadError(`The ${what} at ${url} is not valid JSON: ${err.message}`);
  }
}

async function sha256Hex(data) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Where `value` breaks the JSON Schema `schema` (the subset `mlc build` writes: type, const,
 * anyOf, items, properties, required, additionalProperties false), or null where it fits.
 */
export function schemaViolation(value, schema, path = "") {
  if (schema.anyOf) {
    return schema.anyOf.some((s) => schemaViolation(value, s, path) === null)
      ? null
      : `${path || "the value"} must be ${schema.anyOf.map((s) => s.type).join(" or ")}`;
  }
  if ("const" in schema && value !== schema.const) {
    return `${path} must be ${JSON.stringify(schema.const)}, not ${JSON.stringify(value)}`;
  }
  const kinds = {
    integer: Number.isInteger(value),
    number: typeof value === "number",
    string: typeof value === "string",
    object: value !== null && typeof value === "object" && !Array.isArray(value),
    array: Array.isArray(value),
    null: value === null,
  };
  if (schema.type && !kinds[schema.type]) {
    return `${path || "the value"} must be ${schema.type}, not ${JSON.stringify(value)}`;
  }
  if (schema.type === "array" && schema.items) {
    for (const [i, item] of value.entries()) {
      const problem = schemaViolation(item, schema.items, `${path}[${i}]`);
      if (problem) return problem;
    }
  }
  if (schema.type === "object") {
    const missing = (schema.required ?? []).filter((k) => !(k in value));
    if (missing.length) return `${path || "the object"} lacks the key(s) ${missing.join(", ")}`;
    const properties = schema.properties ?? {};
    if (schema.additionalProperties === false) {
      const unknown = Object.keys(value).filter((k) => !(k in properties));
      if (unknown.length) return `${path || "the object"} has unknown key(s) ${unknown.join(", ")}`;
    }
    for (const [key, sub] of Object.entries(properties)) {
      if (key in value) {
        const problem = schemaViolation(value[key], sub, path ? `${path}.${key}` : key);
        if (problem) return problem;
      }
    }
  }
  return null;
}

/**
 * `mlc-chat-config.json` at `baseUrl`, validated against the JSON Schema the build wrote
 * beside it (`mlc-chat-config.schema.json`, generated from `mlc/runtime/chat_config.py`).
 */
export async function readChatConfig(baseUrl) {
  const url = (name) => new URL(name, baseUrl).href;
  const config = await fetchJSON(url(CHAT_CONFIG_NAME), CHAT_CONFIG_NAME);
  checkChatConfig(config, String(baseUrl)); // a build for another target says so first
  const schema = await fetchJSON(url(CHAT_CONFIG_SCHEMA_NAME), CHAT_CONFIG_SCHEMA_NAME).catch((err) => {
    throw new ModelLoadError(`${err.message} (builds before the schema existed lack it): ${rebuildHint(config)}`);
  });
  const problem = schemaViolation(config, schema);
  if (problem) {
    throw new ModelLoadError(`${url(CHAT_CONFIG_NAME)}: ${problem}; ${rebuildHint(config)}`);
  }
  return config;
}

function rebuildHint(config) {
  return `rebuild it with: mlc build ${config.source_model ?? "MODEL"} --target webgpu ` +
    `--quantization ${config.quantization ?? "q4f32_1"}`;
}

/** Refuse anything but a `webgpu` build of the format this code reads. */
export function checkChatConfig(config, url) {
  const rebuild = rebuildHint(config);
  if (config.target !== "webgpu" || !String(config.model_lib ?? "").endsWith(".wasm")) {
    throw new ModelLoadError(
      `The model at ${url} was built for the ${config.target ?? "unknown"} target, not ` +
        `webgpu; ${rebuild}`,
    );
  }
  if (config.artifact_format_version !== ARTIFACT_FORMAT_VERSION) {
    throw new ModelLoadError(
      `The model at ${url} has artifact format ${config.artifact_format_version}; this page ` +
        `reads format ${ARTIFACT_FORMAT_VERSION}: ${rebuild}`,
    );
  }
}

/** The library's stamp against the weights, as `check_library_metadata` does in Python. */
function checkMetadata(metadata, config, records, libraryName) {
  const key = (p) => `${p.name} ${JSON.stringify(p.shape)} ${p.dtype}`;
  const expected = (metadata.params ?? []).map(key);
  const actual = records.map(key);
  const same = expected.length === actual.length && expected.every((k, i) => k === actual[i]);
  if (metadata.model_type !== config.model_type || metadata.quantization !== config.quantization || !same) {
    throw new ModelLoadError(
      `The library ${libraryName} does not match the weights beside it (built for ` +
        `${metadata.model_type} ${metadata.quantization} with ${expected.length} parameters; ` +
        `the weights are ${config.model_type} ${config.quantization} with ${actual.length}): ` +
        "the library and the weights must come from the same build.",
    );
  }
}

/**
 * Load the model at `baseUrl` (a directory URL ending in `/`).
 * @param {object} options
 * @param {object} options.tvmjs the TVM JavaScript runtime module
 * @param {() => object} options.createWASI the WASI imports of a standalone `.wasm`
 * @param {string | URL} options.baseUrl
 * @param {GPUDevice} options.device
 * @param {object} [options.chatConfig] mlc-chat-config.json, when already read by `readChatConfig`
 * @param {(p: {stage: string, text: string, fraction: number}) => void} [options.onProgress]
 * @param {(m: string) => void} [options.log] the runtime's log messages
 */
export async function loadModel({ tvmjs, createWASI, baseUrl, device, chatConfig, onProgress = () => {}, log = console.error }) {
  const url = (name) => new URL(name, baseUrl).href;
  const config = chatConfig ?? (await readChatConfig(baseUrl));
  const cache = await fetchJSON(url("tensor-cache.json"), "tensor-cache.json");
  const shards = cache.records;

  onProgress({ stage: "library", text: `Fetching ${config.model_lib}`, fraction: 0 });
  const wasm = await fetchBytes(url(config.model_lib), `model library ${config.model_lib}`);
  const tvm = await tvmjs.instantiate(wasm.buffer, createWASI(log), log);
  tvm.initWebGPU(device);
  const dev = tvm.webgpu();
  tvm.beginScope();
  try {
    const vm = tvm.detachFromCurrentScope(tvm.createVirtualMachine(dev));
    const metadata = JSON.parse(vm.getFunction("_metadata")());
    checkMetadata(metadata, config, shards.flatMap((s) => s.records), config.model_lib);
    const params = await loadWeights(tvm, dev, shards, url, onProgress);
    tvm.registerInitProgressCallback((r) =>
      onProgress({ stage: "shaders", text: r.text, fraction: r.progress })
    );
    onProgress({ stage: "shaders", text: "Compiling the WebGPU shaders", fraction: 0 });
    await tvm.asyncLoadWebGPUPipelines(vm.getInternalModule());
    return new Engine(tvm, tvmjs, vm, params, config);
  } finally {
    tvm.endScope();
  }
}

/** Every shard fetched and checked against its recorded size and checksum (as weights.py
 * does), then copied into its tensors on the device. */
async function loadWeights(tvm, dev, shards, url, onProgress) {
  const totalBytes = shards.reduce((n, s) => n + s.nbytes, 0);
  const params = [];
  let fetched = 0;
  for (const [index, shard] of shards.entries()) {
    const label = `weight shard ${index + 1}/${shards.length} (${shard.dataPath})`;
    const report = () =>
      onProgress({
        stage: "weights",
        text: `Fetching ${label}: ${(fetched / 2 ** 20).toFixed(1)} of ${(totalBytes / 2 ** 20).toFixed(1)} MB`,
        fraction: totalBytes ? fetched / totalBytes : 1,
      });
    const data = await fetchBytes(url(shard.dataPath), label, (n) => {
      fetched += n;
      report();
    });
    onProgress({ stage: "weights", text: `Checking the sha256 of ${label}`, fraction: fetched / totalBytes });
    if (data.length !== shard.nbytes) {
      throw new ModelLoadError(`The ${label} is truncated: ${data.length} bytes, expected ${shard.nbytes}.`);
    }
    if ((await sha256Hex(data)) !== shard.sha256) {
      throw new ModelLoadError(`The ${label} is corrupted: its sha256 differs from tensor-cache.json.`);
    }
    for (const rec of shard.records) {
      const tensor = tvm.detachFromCurrentScope(tvm.empty(rec.shape, rec.dtype, dev));
      tensor.copyFromRawBytes(data.subarray(rec.byteOffset, rec.byteOffset + rec.nbytes));
      params.push(tensor);
    }
  }
  return params;
}

/** Forward passes over one sequence; logits come back to the CPU as a Float32Array. */
export class Engine {
  constructor(tvm, tvmjs, vm, params, config) {
    this.tvm = tvm;
    this.config = config;
    this.contextWindowSize = Number(config.context_window_size);
    this.prefillChunkSize = Number(config.prefill_chunk_size);
    this.vocabSize = Number(config.vocab_size);
    this.hidden = Number(config.model_config.hidden_size);
    this.numCachedTokens = 0;
    this.dev = tvm.webgpu();
    this.cpu = tvm.cpu();
    const keep = (obj) => tvm.detachFromCurrentScope(obj);
    tvm.beginScope();
    this.params = keep(tvm.makeTVMArray(params));
    this.int = (v) => new tvmjs.Scalar(v, "int");
    const shape = (...dims) => tvm.makeShapeTuple(dims);
    this.kvCache = keep(
      vm.getFunction("create_paged_kv_cache")(
        shape(1), shape(this.contextWindowSize), shape(this.prefillChunkSize), shape(PAGE_SIZE), shape(0),
      ),
    );
    this.fn = {
      addSequence: keep(tvm.getGlobalFunc("vm.builtin.kv_state_add_sequence")),
      removeSequence: keep(tvm.getGlobalFunc("vm.builtin.kv_state_remove_sequence")),
      beginForward: keep(tvm.getGlobalFunc("vm.builtin.kv_state_begin_forward")),
      endForward: keep(tvm.getGlobalFunc("vm.builtin.kv_state_end_forward")),
      embed: keep(vm.getFunction("embed")),
      prefill: keep(vm.getFunction("prefill")),
      decode: keep(vm.getFunction("decode")),
    };
    this.fn.addSequence(this.kvCache, this.int(SEQUENCE_ID));
    tvm.endScope();
  }

  /** Throw unless `numNew` more tokens (or, `fresh`, in an empty cache) fit the context. */
  checkFits(numNew, fresh = false) {
    const cached = fresh ? 0 : this.numCachedTokens;
    if (cached + numNew > this.contextWindowSize) {
      throw new Error(
        `The conversation needs ${cached + numNew} tokens (${cached} already in context + ` +
          `${numNew} new) but the context window is ${this.contextWindowSize}: shorten the ` +
          "prompt or reset the chat.",
      );
    }
  }

  /** Forget the sequence: its KV pages are freed. */
  reset() {
    this.tvm.beginScope();
    this.fn.removeSequence(this.kvCache, this.int(SEQUENCE_ID));
    this.fn.addSequence(this.kvCache, this.int(SEQUENCE_ID));
    this.tvm.endScope();
    this.numCachedTokens = 0;
  }

  /** Feed `ids` in chunks of the prefill size; the last token's logits. */
  async prefill(ids) {
    if (ids.length === 0) throw new Error("prefill needs at least one token");
    this.checkFits(ids.length);
    let logits;
    for (let start = 0; start < ids.length; start += this.prefillChunkSize) {
      logits = await this.forward(ids.slice(start, start + this.prefillChunkSize), true);
    }
    return logits;
  }

  /** Feed one token; its logits. */
  async decode(id) {
    this.checkFits(1);
    return await this.forward([id], false);
  }

  async forward(ids, prefill) {
    for (const id of ids) {
      if (!(id >= 0 && id < this.vocabSize)) {
        throw new Error(`token id ${id} is outside the vocabulary of ${this.vocabSize}`);
      }
    }
    const { tvm, dev, fn } = this;
    tvm.beginScope();
    try {
      const idTensor = tvm.empty([ids.length], "int32", dev).copyFrom(Int32Array.from(ids));
      const embed = fn.embed(idTensor, this.params).view([1, ids.length, this.hidden]);
      fn.beginForward(this.kvCache, tvm.makeShapeTuple([SEQUENCE_ID]), tvm.makeShapeTuple([ids.length]));
      let result;
      if (prefill) {
        const last = tvm.empty([1], "int32", dev).copyFrom(Int32Array.from([ids.length - 1]));
        result = fn.prefill(embed, last, this.kvCache, this.params);
      } else {
        result = fn.decode(embed, this.kvCache, this.params);
      }
      fn.endForward(this.kvCache);
      this.numCachedTokens += ids.length;
      const logitsGPU = result.get(0);
      const logitsCPU = tvm.empty(logitsGPU.shape, logitsGPU.dtype, this.cpu).copyFrom(logitsGPU);
      await dev.sync();
      return Float32Array.from(logitsCPU.toArray());
    } finally {
      tvm.endScope();
    }
  }
}
