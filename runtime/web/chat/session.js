/**
 * A conversation with one model, held as `mlc/runtime/chat_module.py` holds it: earlier turns
 * stay in the KV cache and each turn prefills only its new tokens; answers stream as text
 * pieces that never split a character nor show any part of a stop string.
 *
 * The conversation format comes from `chat-format.json` (`mlc/runtime/chat_format.py`).
 */

// Python's str.strip() (Jinja's `trim`) removes these; JavaScript's trim() differs slightly.
const PY_SPACE = /^[\p{White_Space}\x1c-\x1f]+|[\p{White_Space}\x1c-\x1f]+$/gu;
const INCOMPLETE = "\ufffd"; // what decoding an incomplete UTF-8 sequence ends with

/**
 * A conversation as text, ending with the generation prompt after the last user message.
 * @param {object} format chat-format.json
 * @param {{role: string, content: string}[]} messages alternating user / assistant turns
 */
export function renderConversation(format, messages) {
  let text = "";
  messages.forEach((message, i) => {
    const content = format.trim ? message.content.replace(PY_SPACE, "") : message.content;
    if (message.role === "user") {
      text += (i === 0 ? format.first_user_prefix : format.user_prefix) + content + format.user_suffix;
    } else {
      text += content;
    }
  });
  return text;
}

/** Incremental detokenization: decode a short window of recent tokens, emit what is new. */
export class TextStreamer {
  constructor(tokenizer) {
    this.tokenizer = tokenizer;
    this.ids = [];
    this.prefixOffset = 0;
    this.readOffset = 0;
  }

  /** @returns {string} the new text, or "" while a character is incomplete */
  put(id) {
    this.ids.push(id);
    const prefix = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = this.tokenizer.decode(this.ids.slice(this.prefixOffset));
    if (full.length > prefix.length && !full.endsWith(INCOMPLETE)) {
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      return full.slice(prefix.length);
    }
    return "";
  }

  /** Whatever is still held back (an incomplete character is flushed as U+FFFD). */
  finish() {
    const prefix = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = this.tokenizer.decode(this.ids.slice(this.prefixOffset));
    this.prefixOffset = this.readOffset = this.ids.length;
    return full.startsWith(prefix) ? full.slice(prefix.length) : "";
  }
}

/** Holds back text that could be the start of a stop string. */
export class StopStringFilter {
  constructor(stop) {
    this.stop = stop.filter((s) => s);
    this.pending = "";
    this.stopped = false;
  }

  put(text) {
    if (this.stopped) return "";
    this.pending += text;
    const hits = this.stop.map((s) => this.pending.indexOf(s)).filter((i) => i >= 0);
    if (hits.length > 0) {
      this.stopped = true;
      const out = this.pending.slice(0, Math.min(...hits));
      this.pending = "";
      return out;
    }
    const hold = Math.max(0, ...this.stop.map((s) => this.overlap(s)));
    const out = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return out;
  }

  /** Length of the longest suffix of `pending` that is a proper prefix of `stop`. */
  overlap(stop) {
    for (let n = Math.min(stop.length - 1, this.pending.length); n > 0; --n) {
      if (this.pending.endsWith(stop.slice(0, n))) return n;
    }
    return 0;
  }

  finish() {
    const out = this.stopped ? "" : this.pending;
    this.pending = "";
    return out;
  }
}

/**
 * The next token: greedy at temperature 0 (the first maximum, as numpy's argmax), else
 * repetition penalty, temperature, top-k, top-p and min-p as `mlc/runtime/sampling.py`.
 * @param {Float32Array} logits
 */
export function sample(logits, config, contextIds, random = Math.random) {
  const values = Float64Array.from(logits);
  if (config.repetitionPenalty !== 1) {
    for (const id of new Set(contextIds)) {
      values[id] = values[id] > 0 ? values[id] / config.repetitionPenalty : values[id] * config.repetitionPenalty;
    }
  }
  let best = 0;
  for (let i = 1; i < values.length; ++i) if (values[i] > values[best]) best = i;
  if (config.temperature === 0) return best;
  const max = values[best];
  let order = Array.from(values.keys()).sort((a, b) => values[b] - values[a]);
  if (config.topK > 0 && config.topK < order.length) order = order.slice(0, config.topK);
  let probs = order.map((i) => Math.exp((values[i] - max) / config.temperature));
  const total = probs.reduce((a, b) => a + b, 0);
  let kept = probs.length;
  if (config.topP < 1) {
    let mass = 0;
    kept = probs.findIndex((p) => (mass += p) >= config.topP * total) + 1 || probs.length;
  }
  if (config.minP > 0) probs = probs.map((p) => (p < config.minP * probs[0] ? 0 : p));
  const keptTotal = probs.slice(0, kept).reduce((a, b) => a + b, 0);
  let r = random() * keptTotal;
  for (let i = 0; i < kept; ++i) {
    r -= probs[i];
    if (r <= 0 && probs[i] > 0) return order[i];
  }
  return order[0];
}

/** Prefill and decode speed of one answer, counted as `ChatModule.stats()` counts. */
export class GenerationStats {
  constructor() {
    this.prefillTokens = 0;
    this.prefillSeconds = 0;
    this.decodeTokens = 0;
    this.decodeSeconds = 0;
    this.finishReason = "";
  }

  get prefillTokensPerSecond() {
    return this.prefillSeconds ? this.prefillTokens / this.prefillSeconds : 0;
  }

  get decodeTokensPerSecond() {
    return this.decodeSeconds ? this.decodeTokens / this.decodeSeconds : 0;
  }
}

export class ChatSession {
  /**
   * @param {import("./engine.js").Engine} engine
   * @param {import("./tokenizer.js").Tokenizer} tokenizer
   * @param {object} format chat-format.json
   */
  constructor(engine, tokenizer, format) {
    this.engine = engine;
    this.tokenizer = tokenizer;
    this.format = format;
    this.stopIds = new Set(format.stop_token_ids);
    this.messages = []; // the conversation so far
    this.historyIds = []; // every token in the KV cache, in order
    this.kvText = ""; // the text of those tokens (and of the pending one)
    this.pending = null; // sampled last, not yet in the KV cache
    this.interrupted = false;
    this.lastStats = new GenerationStats();
    this.lastOutputIds = [];
  }

  /**
   * Answer `prompt` as the next turn; `onPiece(text)` gets the answer as it is decoded.
   * @param {string} prompt
   * @param {{temperature: number, topP: number, topK: number, minP: number,
   *          repetitionPenalty: number, maxTokens: number}} config
   * @param {(piece: string) => void} onPiece
   */
  async generate(prompt, config, onPiece = () => {}) {
    if (!prompt) throw new Error("The prompt is empty: type something to respond to.");
    const messages = [...this.messages, { role: "user", content: prompt }];
    const fullText = renderConversation(this.format, messages);
    // Prefill only what the KV cache lacks; a template that rewrites earlier turns (or an
    // answer cut at a stop string) breaks the prefix: then the conversation is re-fed whole.
    const incremental = fullText.startsWith(this.kvText);
    let ids = this.tokenizer.encode(incremental ? fullText.slice(this.kvText.length) : fullText);
    const fresh = !incremental || this.messages.length === 0;
    if (fresh && this.format.add_bos && this.format.bos_token_id != null) {
      ids = [this.format.bos_token_id, ...ids];
    }
    if (incremental && this.pending !== null) ids = [this.pending, ...ids];
    this.engine.checkFits(ids.length, !incremental);
    if (!incremental) this.reset();
    this.pending = null;
    const answer = await this.generateFrom(ids, config, onPiece);
    this.messages = [...messages, { role: "assistant", content: answer }];
    this.kvText = fullText + answer;
    return answer;
  }

  /** Stop the answer being generated after the current token. */
  interrupt() {
    this.interrupted = true;
  }

  reset() {
    this.engine.reset();
    this.messages = [];
    this.historyIds = [];
    this.kvText = "";
    this.pending = null;
  }

  async generateFrom(ids, config, onPiece) {
    this.interrupted = false;
    const stats = new GenerationStats();
    const pieces = [];
    let start = performance.now();
    let logits = await this.engine.prefill(ids);
    this.historyIds.push(...ids);
    stats.prefillTokens = ids.length;
    stats.prefillSeconds = (performance.now() - start) / 1000;
    const step = new GenerationStep(this.tokenizer, config, {
      contextIds: this.historyIds,
      kvTokens: this.engine.numCachedTokens,
      contextWindowSize: this.engine.contextWindowSize,
      stopTokenIds: this.stopIds,
      stopStrings: this.format.stop_str,
    });
    start = performance.now();
    for (;;) {
      if (this.interrupted) step.interrupt();
      const out = step.step(logits);
      if (out === null) break;
      if (out.text) {
        pieces.push(out.text);
        onPiece(out.text);
      }
      if (out.finishReason !== null) {
        this.pending = out.appended ? out.sampled : null; // sampled, never fed
        break;
      }
      logits = await this.engine.decode(out.sampled);
      this.historyIds.push(out.sampled);
    }
    stats.finishReason = step.finishReason ?? "";
    stats.decodeSeconds = (performance.now() - start) / 1000;
    // Count the final sampled token too: it was produced by the last forward pass.
    stats.decodeTokens = step.generated.length;
    this.lastStats = stats;
    this.lastOutputIds = step.generated;
    return pieces.join("");
  }
}

/**
 * The generation step, a port of `mlc/runtime/generation.py` (`GenerationStep`): the same
 * rules in the same order, so the page answers as `ChatModule` does. Keep the two in step.
 */
/** The generation settings the page implements; `checkConfig` refuses any other. */
export const CONFIG_KEYS = ["temperature", "topP", "topK", "minP", "repetitionPenalty", "maxTokens"];
const STRUCTURED_OUTPUT_KEYS = ["responseFormat", "grammar", "regex"];
const TOOL_KEYS = ["tools", "toolChoice", "parallelToolCalls"];

/** Throws on a setting the page does not implement, naming it (none is silently ignored). */
export function checkConfig(config) {
  for (const key of Object.keys(config)) {
    if (STRUCTURED_OUTPUT_KEYS.includes(key)) {
      throw new Error(
        `${key}: structured output is not available in the browser (the page has no grammar ` +
          "engine); use mlc serve or ChatModule for JSON, JSON Schema, regex or grammar output",
      );
    }
    if (TOOL_KEYS.includes(key)) {
      throw new Error(
        `${key}: tool calling is not available in the browser (the page has no grammar engine ` +
          "to constrain calls); use mlc serve or ChatModule for tools",
      );
    }
    if (!CONFIG_KEYS.includes(key)) {
      throw new Error(`unknown generation setting ${key}; the page takes ${CONFIG_KEYS.join(", ")}`);
    }
  }
}

export class GenerationStep {
  constructor(tokenizer, config, { contextIds, kvTokens, contextWindowSize, stopTokenIds, stopStrings }) {
    checkConfig(config);
    this.config = config;
    this.contextIds = [...contextIds];
    this.kvTokens = kvTokens;
    this.contextWindowSize = contextWindowSize;
    this.stopTokenIds = new Set(stopTokenIds);
    this.streamer = new TextStreamer(tokenizer);
    this.stopFilter = new StopStringFilter(stopStrings);
    this.generated = [];
    this.finishReason = null;
    this.interrupted = false;
  }

  interrupt() {
    this.interrupted = true;
  }

  /** @returns {{sampled: number, appended: boolean, text: string, finishReason: string | null} | null} */
  step(logits) {
    if (this.finishReason !== null) throw new Error("the answer has finished");
    if (this.generated.length >= this.config.maxTokens) {
      this.finish("length");
      return null;
    }
    const token = sample(logits, this.config, [...this.contextIds, ...this.generated]);
    const out = { sampled: token, appended: false, text: "", finishReason: null };
    if (this.stopTokenIds.has(token)) {
      out.text = this.finish("stop");
      out.finishReason = "stop";
      return out;
    }
    this.generated.push(token);
    out.appended = true;
    out.text = this.stopFilter.put(this.streamer.put(token));
    let reason = null;
    if (this.stopFilter.stopped) reason = "stop";
    else if (this.interrupted) reason = "interrupted";
    else if (this.generated.length >= this.config.maxTokens) reason = "length";
    else if (this.kvTokens + this.generated.length - 1 >= this.contextWindowSize) reason = "length";
    if (reason !== null) {
      out.text += this.finish(reason);
      out.finishReason = reason;
    }
    return out;
  }

  finish(reason) {
    this.finishReason = reason;
    return this.stopFilter.put(this.streamer.finish()) + this.stopFilter.finish();
  }
}
