/**
 * A Hugging Face `tokenizer.json` in plain JavaScript: BPE vocabularies, byte-level (GPT-2,
 * SmolLM2, Llama 3, Qwen2) or SentencePiece-style (Metaspace, byte fallback: Llama 2, Mistral,
 * our GGUF `llama` kind).
 *
 * `encode(text)` gives the ids of `tokenizers`' `encode(text, add_special_tokens=False)` (the
 * post-processor is not applied, as in the Python runtime) and `decode(ids)` the text of
 * `decode(ids, skip_special_tokens=True)`. A component outside the supported set is refused when
 * the file is loaded, so a model never silently tokenizes differently from the Python runtime.
 */

/**
 * A regular expression of `tokenizers` (Oniguruma syntax) as a JavaScript one: Oniguruma's
 * `\s`, `\d` and `\w` are Unicode classes, JavaScript's are not (`\s` even differs on U+0085 and
 * U+FEFF).
 * @param {string} pattern
 * @returns {RegExp}
 */
export function onigurumaRegExp(pattern) {
  const word = String.raw`\p{L}\p{M}\p{Nd}\p{Pc}`;
  const escapes = {
    s: String.raw`\p{White_Space}`,
    S: String.raw`\P{White_Space}`,
    d: String.raw`\p{Nd}`,
    D: String.raw`\P{Nd}`,
  };
  let out = "";
  let inClass = false;
  for (let i = 0; i < pattern.length; ++i) {
    const c = pattern[i];
    if (c === "\\" && i + 1 < pattern.length) {
      const next = pattern[++i];
      if (next in escapes) out += escapes[next];
      else if (next === "w") out += inClass ? word : `[${word}]`;
      else if (next === "W" && !inClass) out += `[^${word}]`;
      else if (next === "W") throw new Error(`unsupported regex (\\W in a class): ${pattern}`);
      else if (/[A-Za-z0-9^$\\.*+?()[\]{}|\/]/.test(next) || (next === "-" && inClass)) {
        out += "\\" + next;
      } else out += next; // an identity escape (`\'`), which the `u` flag refuses
      continue;
    }
    if (c === "[" && !inClass) inClass = true;
    else if (c === "]" && inClass) inClass = false;
    out += c;
  }
  return new RegExp(out, "gu");
}

/** The GPT-2 split that `ByteLevel(use_regex=true)` applies. */
const GPT2_SPLIT = String.raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;

/** GPT-2's map of the 256 bytes to printable characters, and its inverse. */
function byteLevelAlphabet() {
  const bytes = [];
  for (let b = 33; b <= 126; ++b) bytes.push(b);
  for (let b = 161; b <= 172; ++b) bytes.push(b);
  for (let b = 174; b <= 255; ++b) bytes.push(b);
  const chars = bytes.map((b) => b);
  let extra = 0;
  for (let b = 0; b < 256; ++b) {
    if (!bytes.includes(b)) {
      bytes.push(b);
      chars.push(256 + extra++);
    }
  }
  const toChar = new Array(256);
  const toByte = new Map();
  bytes.forEach((b, i) => {
    toChar[b] = String.fromCodePoint(chars[i]);
    toByte.set(toChar[b], b);
  });
  return { toChar, toByte };
}

const BYTE_LEVEL = byteLevelAlphabet();
const ENCODER = new TextEncoder();
// Rust's `String::from_utf8_lossy` and a non-fatal TextDecoder replace the same subsequences.
const LOSSY = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
const STRICT = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const WHITE_SPACE = /\p{White_Space}/u;

/**
 * The spans of `text` that `regex` matches and the ones between, as `tokenizers`' `Split`
 * sees them (empty matches are skipped).
 * @returns {{text: string, match: boolean}[]}
 */
function matchSpans(text, regex) {
  const spans = [];
  let last = 0;
  regex.lastIndex = 0;
  for (let m = regex.exec(text); m !== null; m = regex.exec(text)) {
    if (m[0].length === 0) {
      regex.lastIndex += text.codePointAt(m.index) > 0xffff ? 2 : 1;
      continue;
    }
    if (m.index > last) spans.push({ text: text.slice(last, m.index), match: false });
    spans.push({ text: m[0], match: true });
    last = m.index + m[0].length;
  }
  if (last < text.length) spans.push({ text: text.slice(last), match: false });
  return spans;
}

/** `SplitDelimiterBehavior` applied to spans whose `match` marks the delimiters, as in
 * `tokenizers` (a delimiter merges with a neighbour only when that one is not a delimiter). */
function splitSpans(spans, behavior) {
  if (behavior === "Removed") return spans.filter((s) => !s.match).map((s) => s.text);
  if (behavior === "Isolated") return spans.map((s) => s.text);
  const merged = [];
  let previous = false;
  const ordered = behavior === "MergedWithNext" ? [...spans].reverse() : spans;
  for (const { text, match } of ordered) {
    const join =
      behavior === "Contiguous" ? match === previous : match && !previous;
    if (join && merged.length > 0) {
      const last = merged.length - 1;
      merged[last] = behavior === "MergedWithNext" ? text + merged[last] : merged[last] + text;
    } else if (behavior in { MergedWithPrevious: 1, MergedWithNext: 1, Contiguous: 1 }) {
      merged.push(text);
    } else {
      throw new Error(`unsupported split behavior ${behavior}`);
    }
    previous = match;
  }
  return behavior === "MergedWithNext" ? merged.reverse() : merged;
}

function patternRegExp(pattern) {
  if ("Regex" in pattern) return onigurumaRegExp(pattern.Regex);
  if ("String" in pattern) {
    return new RegExp(pattern.String.replace(/[.*+?^${}()|[\]\\\/]/g, "\\$&"), "gu");
  }
  throw new Error(`unsupported pattern ${JSON.stringify(pattern)}`);
}

// --- normalizers: string -> string --------------------------------------------------------

function makeNormalizer(spec) {
  if (spec === null || spec === undefined) return (s) => s;
  switch (spec.type) {
    case "Sequence": {
      const steps = spec.normalizers.map(makeNormalizer);
      return (s) => steps.reduce((text, step) => step(text), s);
    }
    case "Prepend":
      return (s) => (s.length > 0 ? spec.prepend + s : s);
    case "Replace": {
      const regex = patternRegExp(spec.pattern);
      return (s) => s.replace(regex, () => spec.content);
    }
    case "NFC":
    case "NFD":
    case "NFKC":
    case "NFKD":
      return (s) => s.normalize(spec.type);
    case "Lowercase":
      return (s) => s.toLowerCase();
    case "Strip":
      return (s) => {
        let text = s;
        if (spec.strip_left) text = text.replace(/^\p{White_Space}+/u, "");
        if (spec.strip_right) text = text.replace(/\p{White_Space}+$/u, "");
        return text;
      };
    default:
      throw new Error(`unsupported normalizer ${spec.type}`);
  }
}

// --- pre-tokenizers: pieces -> pieces -----------------------------------------------------
// A piece is {text, atStart}: `atStart` when it begins at offset 0 of the original text
// (Metaspace's `prepend_scheme: "first"` looks at that).

function eachPiece(split) {
  return (pieces) =>
    pieces.flatMap((piece) =>
      split(piece).map((text, i) => ({ text, atStart: piece.atStart && i === 0 })),
    );
}

function makePreTokenizer(spec) {
  if (spec === null || spec === undefined) return (pieces) => pieces;
  switch (spec.type) {
    case "Sequence": {
      const steps = spec.pretokenizers.map(makePreTokenizer);
      return (pieces) => steps.reduce((p, step) => step(p), pieces);
    }
    case "ByteLevel": {
      const regex = spec.use_regex === false ? null : onigurumaRegExp(GPT2_SPLIT);
      const toBytes = (text) =>
        Array.from(ENCODER.encode(text), (b) => BYTE_LEVEL.toChar[b]).join("");
      return eachPiece(({ text }) => {
        const prefixed = spec.add_prefix_space && !text.startsWith(" ") ? " " + text : text;
        const parts = regex ? splitSpans(matchSpans(prefixed, regex), "Isolated") : [prefixed];
        return parts.map(toBytes);
      });
    }
    case "Split": {
      const regex = patternRegExp(spec.pattern);
      return eachPiece(({ text }) => {
        const spans = matchSpans(text, regex).map((s) => ({ ...s, match: s.match !== !!spec.invert }));
        return splitSpans(spans, spec.behavior);
      });
    }
    case "Digits": {
      const regex = /\p{N}/gu;
      const behavior = spec.individual_digits ? "Isolated" : "Contiguous";
      return eachPiece(({ text }) => splitSpans(matchSpans(text, regex), behavior));
    }
    case "Metaspace": {
      const scheme = spec.prepend_scheme ?? (spec.add_prefix_space === false ? "never" : "always");
      const mark = spec.replacement;
      const markRegex = new RegExp(mark.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "gu");
      return eachPiece(({ text, atStart }) => {
        let replaced = text.replaceAll(" ", mark);
        const prepend = scheme === "always" || (scheme === "first" && atStart);
        if (prepend && !replaced.startsWith(mark)) replaced = mark + replaced;
        if (spec.split === false) return [replaced];
        return splitSpans(matchSpans(replaced, markRegex), "MergedWithNext");
      });
    }
    case "Whitespace": {
      const regex = onigurumaRegExp(String.raw`\w+|[^\w\s]+`);
      return eachPiece(({ text }) => matchSpans(text, regex).filter((s) => s.match).map((s) => s.text));
    }
    case "WhitespaceSplit":
      return eachPiece(({ text }) => text.split(/\p{White_Space}+/u).filter((s) => s.length > 0));
    case "Punctuation": {
      const regex = /[\p{P}!-\/:-@\[-`{-~]/gu;
      return eachPiece(({ text }) => splitSpans(matchSpans(text, regex), spec.behavior ?? "Isolated"));
    }
    default:
      throw new Error(`unsupported pre-tokenizer ${spec.type}`);
  }
}

// --- the BPE model ------------------------------------------------------------------------

class BPE {
  constructor(spec) {
    if (spec.type !== "BPE") throw new Error(`unsupported tokenizer model ${spec.type}`);
    if (spec.dropout) throw new Error("BPE dropout is not supported");
    this.vocab = new Map(Object.entries(spec.vocab));
    this.prefix = spec.continuing_subword_prefix ?? "";
    this.suffix = spec.end_of_word_suffix ?? "";
    this.unkId = spec.unk_token != null ? this.vocab.get(spec.unk_token) : undefined;
    this.fuseUnk = !!spec.fuse_unk;
    this.byteFallback = !!spec.byte_fallback;
    this.ignoreMerges = !!spec.ignore_merges;
    /** "leftId rightId" -> [rank, merged id] */
    this.merges = new Map();
    spec.merges.forEach((merge, rank) => {
      const [a, b] = Array.isArray(merge) ? merge : [merge.slice(0, merge.indexOf(" ")), merge.slice(merge.indexOf(" ") + 1)];
      const merged = this.vocab.get(a + b.slice(this.prefix.length));
      if (this.vocab.has(a) && this.vocab.has(b) && merged !== undefined) {
        this.merges.set(`${this.vocab.get(a)} ${this.vocab.get(b)}`, [rank, merged]);
      }
    });
    this.cache = new Map();
  }

  /** The ids of one pre-tokenized word. */
  tokenize(word) {
    if (this.ignoreMerges && this.vocab.has(word)) return [this.vocab.get(word)];
    let ids = this.cache.get(word);
    if (ids === undefined) {
      ids = this.merge(this.symbols(word));
      if (this.cache.size < 100000) this.cache.set(word, ids);
    }
    return ids;
  }

  /** One symbol per character; byte tokens or the unknown token for what the vocabulary lacks. */
  symbols(word) {
    const chars = Array.from(word);
    const ids = [];
    let unk = null; // a pending unknown token (fused with the next ones when fuse_unk)
    chars.forEach((char, i) => {
      let piece = char;
      if (i > 0) piece = this.prefix + piece;
      if (i === chars.length - 1) piece += this.suffix;
      const id = this.vocab.get(piece);
      if (id !== undefined) {
        if (unk !== null) ids.push(unk);
        unk = null;
        ids.push(id);
        return;
      }
      if (this.byteFallback) {
        const bytes = Array.from(ENCODER.encode(piece), (b) =>
          this.vocab.get(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`),
        );
        // As `tokenizers` does, byte tokens do not flush a pending unknown token.
        if (bytes.every((b) => b !== undefined)) {
          ids.push(...bytes);
          return;
        }
      }
      if (this.unkId !== undefined) {
        if (unk !== null && !this.fuseUnk) ids.push(unk);
        unk = this.unkId;
      }
    });
    if (unk !== null) ids.push(unk);
    return ids;
  }

  /** Merge the best-ranked adjacent pair (leftmost on ties) until none is left. */
  merge(ids) {
    const symbols = ids.slice();
    for (;;) {
      let best = -1;
      let bestRank = Infinity;
      let bestId = -1;
      for (let i = 0; i + 1 < symbols.length; ++i) {
        const merge = this.merges.get(`${symbols[i]} ${symbols[i + 1]}`);
        if (merge !== undefined && merge[0] < bestRank) {
          [bestRank, bestId] = merge;
          best = i;
        }
      }
      if (best < 0) return symbols;
      symbols.splice(best, 2, bestId);
    }
  }
}

// --- decoders: token strings -> token strings ---------------------------------------------

function byteFallback(tokens) {
  const out = [];
  let bytes = [];
  const flush = () => {
    if (bytes.length === 0) return;
    try {
      out.push(STRICT.decode(Uint8Array.from(bytes)));
    } catch {
      out.push("\ufffd".repeat(bytes.length));
    }
    bytes = [];
  };
  for (const token of tokens) {
    const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(token);
    if (m) bytes.push(parseInt(m[1], 16));
    else {
      flush();
      out.push(token);
    }
  }
  flush();
  return out;
}

function stripChars(token, char, left, right) {
  const chars = Array.from(token);
  let start = 0;
  let end = chars.length;
  while (start < Math.min(left, chars.length) && chars[start] === char) ++start;
  while (end > start && chars.length - end < right && chars[end - 1] === char) --end;
  return chars.slice(start, end).join("");
}

function makeDecoder(spec) {
  if (spec === null || spec === undefined) return (tokens) => [tokens.join(" ")];
  switch (spec.type) {
    case "Sequence": {
      const steps = spec.decoders.map(makeDecoder);
      return (tokens) => steps.reduce((t, step) => step(t), tokens);
    }
    case "ByteLevel":
      return (tokens) => {
        const bytes = [];
        for (const token of tokens) {
          const chars = Array.from(token);
          if (chars.every((c) => BYTE_LEVEL.toByte.has(c))) {
            for (const c of chars) bytes.push(BYTE_LEVEL.toByte.get(c));
          } else bytes.push(...ENCODER.encode(token));
        }
        return [LOSSY.decode(Uint8Array.from(bytes))];
      };
    case "Replace": {
      const regex = patternRegExp(spec.pattern);
      return (tokens) => tokens.map((t) => t.replace(regex, () => spec.content));
    }
    case "ByteFallback":
      return byteFallback;
    case "Fuse":
      return (tokens) => [tokens.join("")];
    case "Strip":
      return (tokens) => tokens.map((t) => stripChars(t, spec.content, spec.start, spec.stop));
    case "Metaspace": {
      const scheme = spec.prepend_scheme ?? (spec.add_prefix_space === false ? "never" : "always");
      return (tokens) =>
        // As in `tokenizers`: every mark of the first token goes, not only a leading one.
        tokens.map((t, i) => t.replaceAll(spec.replacement, i === 0 && scheme !== "never" ? "" : " "));
    }
    default:
      throw new Error(`unsupported decoder ${spec.type}`);
  }
}

// --- added tokens -------------------------------------------------------------------------

const WORD_CHAR = /[\p{L}\p{N}_]/u;

/** Leftmost-longest matching of added tokens, with their lstrip/rstrip/single_word rules. */
class AddedTokenMatcher {
  constructor(tokens) {
    /** first character -> tokens starting with it, longest first */
    this.byFirst = new Map();
    for (const token of tokens) {
      const list = this.byFirst.get(token.content[0]) ?? [];
      list.push(token);
      this.byFirst.set(token.content[0], list);
    }
    for (const list of this.byFirst.values()) list.sort((a, b) => b.content.length - a.content.length);
  }

  /** `text` cut into [{text, id?, start}] (an `id` marks an added token). */
  split(text) {
    const out = [];
    let done = 0;
    let i = 0;
    while (i < text.length) {
      const token = (this.byFirst.get(text[i]) ?? []).find((t) => text.startsWith(t.content, i));
      if (token === undefined) {
        ++i;
        continue;
      }
      let start = i;
      let stop = i + token.content.length;
      if (token.single_word) {
        const before = i > 0 && WORD_CHAR.test(Array.from(text.slice(0, i)).pop());
        const after = stop < text.length && WORD_CHAR.test(String.fromCodePoint(text.codePointAt(stop)));
        if (before || after) {
          ++i;
          continue;
        }
      }
      if (token.lstrip) {
        while (start > done && WHITE_SPACE.test(text[start - 1])) --start;
      }
      if (token.rstrip) {
        while (stop < text.length && WHITE_SPACE.test(text[stop])) ++stop;
      }
      if (start > done) out.push({ text: text.slice(done, start), start: done });
      out.push({ text: text.slice(start, stop), id: token.id, start });
      done = i = stop;
    }
    if (done < text.length) out.push({ text: text.slice(done), start: done });
    return out;
  }
}

// --- the tokenizer ------------------------------------------------------------------------

export class Tokenizer {
  /** @param {object} json the parsed tokenizer.json */
  constructor(json) {
    this.model = new BPE(json.model);
    this.normalize = makeNormalizer(json.normalizer);
    this.preTokenize = makePreTokenizer(json.pre_tokenizer);
    this.decodeChain = makeDecoder(json.decoder);
    const added = json.added_tokens ?? [];
    this.rawMatcher = new AddedTokenMatcher(added.filter((t) => !t.normalized));
    this.normalizedMatcher = new AddedTokenMatcher(added.filter((t) => t.normalized));
    this.idToToken = new Map();
    for (const [token, id] of this.model.vocab) this.idToToken.set(id, token);
    this.special = new Set();
    for (const t of added) {
      this.idToToken.set(t.id, t.content);
      if (t.special) this.special.add(t.id);
    }
    this.tokenIds = new Map([...this.idToToken].map(([id, token]) => [token, id]));
  }

  /** @param {string} url where tokenizer.json is served */
  static async fromURL(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return new Tokenizer(await response.json());
  }

  /** @returns {number | undefined} */
  tokenToId(token) {
    return this.tokenIds.get(token);
  }

  /**
   * @param {string} text
   * @returns {number[]}
   */
  encode(text) {
    const ids = [];
    for (const raw of this.rawMatcher.split(text)) {
      if (raw.id !== undefined) {
        ids.push(raw.id);
        continue;
      }
      const normalized = this.normalize(raw.text);
      for (const part of this.normalizedMatcher.split(normalized)) {
        if (part.id !== undefined) {
          ids.push(part.id);
          continue;
        }
        const atStart = raw.start === 0 && part.start === 0;
        for (const piece of this.preTokenize([{ text: part.text, atStart }])) {
          if (piece.text.length > 0) ids.push(...this.model.tokenize(piece.text));
        }
      }
    }
    return ids;
  }

  /**
   * @param {number[]} ids
   * @param {{skipSpecialTokens?: boolean}} options
   * @returns {string}
   */
  decode(ids, { skipSpecialTokens = true } = {}) {
    const tokens = [];
    for (const id of ids) {
      if (skipSpecialTokens && this.special.has(id)) continue;
      const token = this.idToToken.get(id);
      if (token !== undefined) tokens.push(token);
    }
    return this.decodeChain(tokens).join("");
  }
}
