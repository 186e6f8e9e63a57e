/**
 * The chat page: loads the model at `?model=URL` (default `model/`, where `mlc web` serves it),
 * showing progress, then chats with streamed answers and prefill/decode speeds.
 * `window.mlcChat` holds the session for the console (and the tests).
 */

import {
  readChatConfig,
  fetchJSON,
  loadModel,
  ModelLoadError,
  needsFloat16,
  requestAdapter,
  requestDevice,
  WebGPUUnavailableError,
} from "./engine.js";
import { ChatSession } from "./session.js";
import { Tokenizer } from "./tokenizer.js";

const CHAT_FORMAT_VERSION = 1;
const $ = (id) => document.getElementById(id);

function setState(state) {
  document.body.dataset.state = state;
  const busy = state === "generating";
  $("prompt").disabled = !(state === "ready" || busy);
  $("send").disabled = state !== "ready";
  $("stop").disabled = !busy;
  $("reset").disabled = state !== "ready";
}

function showNotice(message, state) {
  $("notice").textContent = message;
  $("notice").hidden = false;
  setState(state);
}

function progress({ text, fraction }) {
  $("progress-text").textContent = text;
  $("progress").value = fraction;
}

function addMessage(role, text = "") {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  div.textContent = text;
  $("log").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function modelBaseUrl() {
  const param = new URLSearchParams(location.search).get("model") ?? "model/";
  return new URL(param.endsWith("/") ? param : `${param}/`, location.href);
}

async function importRuntime() {
  try {
    return await import("./tvmjs.js");
  } catch (err) {
    throw new Error(
      `The TVM runtime (tvmjs.js) did not load (${err.message}): serve this page with ` +
        "`mlc web MODEL`, or export it with `mlc web MODEL --export DIR`.",
    );
  }
}

async function start() {
  const baseUrl = modelBaseUrl();
  setState("loading");
  progress({ text: "Looking for a WebGPU adapter", fraction: 0 });
  const adapter = await requestAdapter();
  progress({ text: `Reading ${new URL("mlc-chat-config.json", baseUrl)}`, fraction: 0 });
  const config = await readChatConfig(baseUrl).catch((err) => {
    if (!/^(No|Cannot read the) mlc-chat-config\.json /.test(err.message)) throw err;
    throw new ModelLoadError(
      `No model at ${baseUrl.href}: ${err.message} Open the page with ?model= naming the ` +
        "directory of a `mlc build MODEL --target webgpu` build.",
    );
  });
  $("model-name").textContent = config.model_lib.replace(/\.wasm$/, "");
  const needF16 = needsFloat16(config);
  const { device, info } = await requestDevice(adapter, needF16);
  $("device").textContent = `WebGPU: ${info.adapter || "adapter"}`;
  device.lost.then((lost) => {
    if (lost.reason !== "destroyed") showNotice(`The WebGPU device was lost: ${lost.message}`, "error");
  });
  const [tvmjs, tokenizerJSON, format] = await Promise.all([
    importRuntime(),
    fetchJSON(new URL("tokenizer.json", baseUrl), "tokenizer.json"),
    fetchJSON(new URL("chat-format.json", baseUrl), "chat-format.json (written by `mlc web`)"),
  ]);
  if (format.format_version !== CHAT_FORMAT_VERSION) {
    throw new Error(`chat-format.json has version ${format.format_version}; this page reads ${CHAT_FORMAT_VERSION}`);
  }
  const tokenizer = new Tokenizer(tokenizerJSON);
  const engine = await loadModel({
    tvmjs,
    createWASI: tvmjs.createWASI,
    baseUrl,
    device,
    chatConfig: config,
    onProgress: progress,
    log: (m) => console.log(m),
  });
  const session = new ChatSession(engine, tokenizer, format);
  window.mlcChat = { session, engine, tokenizer, format, config };
  $("temperature").value = config.temperature ?? 0.7;
  $("max-tokens").value = config.max_tokens ?? 512;
  setState("ready");
  $("prompt").focus();
  wire(session, config);
}

function generationConfig(config) {
  return {
    temperature: Number($("temperature").value),
    topP: config.top_p ?? 0.95,
    topK: config.top_k ?? 40,
    minP: config.min_p ?? 0,
    repetitionPenalty: config.repetition_penalty ?? 1,
    maxTokens: Number($("max-tokens").value),
  };
}

function statsText(stats) {
  const f = (x) => x.toFixed(1);
  return `prefill: ${f(stats.prefillTokensPerSecond)} tok/s (${stats.prefillTokens} tokens), ` +
    `decode: ${f(stats.decodeTokensPerSecond)} tok/s (${stats.decodeTokens} tokens), ` +
    `finish: ${stats.finishReason}`;
}

function wire(session, config) {
  $("composer").addEventListener("submit", async (event) => {
    event.preventDefault();
    const prompt = $("prompt").value;
    if (!prompt || document.body.dataset.state !== "ready") return;
    $("prompt").value = "";
    addMessage("user", prompt);
    const bubble = addMessage("assistant");
    setState("generating");
    $("stats").textContent = "Generating…";
    try {
      await session.generate(prompt, generationConfig(config), (piece) => {
        bubble.textContent += piece;
        bubble.scrollIntoView({ block: "end" });
      });
      $("stats").textContent = statsText(session.lastStats);
    } catch (err) {
      bubble.classList.add("failed");
      bubble.textContent += `${bubble.textContent ? "\n" : ""}Error: ${err.message}`;
      $("stats").textContent = "";
    }
    setState("ready");
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => session.interrupt());
  $("reset").addEventListener("click", () => {
    session.reset();
    $("log").replaceChildren();
    $("stats").textContent = "";
  });
}

start().catch((err) => {
  console.error(err);
  const state = err instanceof WebGPUUnavailableError ? "unavailable" : "error";
  showNotice(err.message, state);
});
