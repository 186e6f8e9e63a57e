#include "tokenizer.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <functional>
#include <queue>
#include <sstream>
#include <stdexcept>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "regex.h"
#include "unicode.h"

namespace mlc {
namespace {

using Text = std::u32string;

// The split that `ByteLevel(use_regex=true)` applies (GPT-2's).
constexpr const char* kGpt2Split =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

[[noreturn]] void Unsupported(const std::string& what) {
  throw std::runtime_error(what + " is not supported by the native runtime");
}

std::string TypeOf(const Json& spec) {
  const Json& type = spec.get("type");
  return type.is_string() ? type.as_string() : "(without a type)";
}

bool Flag(const Json& spec, const std::string& key, bool fallback) {
  const Json& value = spec.get(key);
  return value.is_null() ? fallback : value.as_bool();
}

Text TextOf(const Json& value) { return Utf8Decode(value.as_string()); }

char32_t CharOf(const Json& value, const std::string& what) {
  Text text = TextOf(value);
  if (text.size() != 1) throw std::runtime_error(what + " must be one character");
  return text[0];
}

Regex PatternRegex(const Json& pattern) {
  if (pattern.has("Regex")) return Regex(pattern.at("Regex").as_string());
  if (pattern.has("String")) return Regex(RegexEscape(pattern.at("String").as_string()));
  Unsupported("the pattern " + pattern.Dump());
}

// --- spans: how `tokenizers` cuts a string ---------------------------------------------------

// A stretch of a text in codepoints; `match` when a pattern matched it.
struct Span {
  size_t start;
  size_t end;
  bool match;
};

// A piece cut from a text and where it started there.
struct Cut {
  size_t start;
  Text text;
};
using Cuts = std::vector<Cut>;

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior BehaviorOf(const Json& value) {
  const std::pair<const char*, Behavior> names[] = {
      {"Removed", Behavior::kRemoved},
      {"Isolated", Behavior::kIsolated},
      {"MergedWithPrevious", Behavior::kMergedWithPrevious},
      {"MergedWithNext", Behavior::kMergedWithNext},
      {"Contiguous", Behavior::kContiguous}};
  for (const auto& [name, behavior] : names) {
    if (value.as_string() == name) return behavior;
  }
  Unsupported("the split behavior " + value.as_string());
}

// The matches of `regex` and the stretches between them (empty matches included).
std::vector<Span> RegexSpans(const Text& text, const Regex& regex) {
  std::vector<Span> spans;
  size_t last = 0;
  for (auto [start, end] : regex.FindAll(text)) {
    if (start > last) spans.push_back({last, start, false});
    spans.push_back({start, end, true});
    last = end;
  }
  if (last < text.size()) spans.push_back({last, text.size(), false});
  return spans;
}

// Each codepoint where `match` holds as a match, and the stretches between.
std::vector<Span> CharSpans(const Text& text, const std::function<bool(char32_t)>& match) {
  std::vector<Span> spans;
  size_t last = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!match(text[i])) continue;
    if (i > last) spans.push_back({last, i, false});
    spans.push_back({i, i + 1, true});
    last = i + 1;
  }
  if (last < text.size()) spans.push_back({last, text.size(), false});
  return spans;
}

// `SplitDelimiterBehavior`: a delimiter merges with a neighbour only when that one is not one.
Cuts SplitSpans(const Text& text, const std::vector<Span>& spans, Behavior behavior) {
  std::vector<std::pair<size_t, size_t>> kept;
  bool previous = false;
  auto merge = [&](const Span& span, bool join, bool at_front) {
    if (join && !kept.empty()) {
      (at_front ? kept.back().first : kept.back().second) = at_front ? span.start : span.end;
    } else {
      kept.push_back({span.start, span.end});
    }
    previous = span.match;
  };
  switch (behavior) {
    case Behavior::kRemoved:
      for (const Span& span : spans) {
        if (!span.match) kept.push_back({span.start, span.end});
      }
      break;
    case Behavior::kIsolated:
      for (const Span& span : spans) kept.push_back({span.start, span.end});
      break;
    case Behavior::kContiguous:
      for (const Span& span : spans) merge(span, span.match == previous, false);
      break;
    case Behavior::kMergedWithPrevious:
      for (const Span& span : spans) merge(span, span.match && !previous, false);
      break;
    case Behavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        merge(*it, it->match && !previous, true);
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  Cuts cuts;
  for (auto [start, end] : kept) {
    if (end > start) cuts.push_back({start, text.substr(start, end - start)});
  }
  return cuts;
}

// --- normalizers ---------------------------------------------------------------------------

// Text being normalized, with the offset of each codepoint in the text it came from (Metaspace's
// `prepend_scheme: "first"` asks whether a piece starts at offset 0 of the input).
struct Normalized {
  Text text;
  std::vector<size_t> origin;
};

Normalized Unnormalized(const Text& text) {
  Normalized out{text, std::vector<size_t>(text.size())};
  for (size_t i = 0; i < text.size(); ++i) out.origin[i] = i;
  return out;
}

// Each match of `regex` replaced by `content`, whose codepoints take the offset of the last one
// they replace (as `tokenizers` aligns them). An empty text has no matches.
void ReplaceAll(Normalized* text, const Regex& regex, const Text& content) {
  if (text->text.empty()) return;
  Normalized out;
  size_t last = 0;
  auto keep = [&](size_t start, size_t end) {
    out.text.append(text->text, start, end - start);
    out.origin.insert(out.origin.end(), text->origin.begin() + start, text->origin.begin() + end);
  };
  for (auto [start, end] : regex.FindAll(text->text)) {
    keep(last, start);
    size_t origin = end > 0 ? text->origin[end - 1] : 0;
    out.text += content;
    out.origin.insert(out.origin.end(), content.size(), origin);
    last = end;
  }
  keep(last, text->text.size());
  *text = std::move(out);
}

using Normalizer = std::function<void(Normalized*)>;  // empty: the identity

Text NormalizeText(const Normalizer& normalize, const Text& text) {
  Normalized normalized = Unnormalized(text);
  if (normalize) normalize(&normalized);
  return normalized.text;
}

Normalizer MakeNormalizer(const Json& spec) {
  if (spec.is_null()) return nullptr;
  std::string type = TypeOf(spec);
  if (type == "Sequence") {
    std::vector<Normalizer> steps;
    for (const Json& step : spec.at("normalizers").as_array()) {
      if (Normalizer normalizer = MakeNormalizer(step)) steps.push_back(normalizer);
    }
    return [steps](Normalized* text) {
      for (const Normalizer& step : steps) step(text);
    };
  }
  if (type == "Prepend") {
    Text prepend = TextOf(spec.at("prepend"));
    return [prepend](Normalized* text) {
      if (text->text.empty()) return;
      text->text.insert(0, prepend);
      text->origin.insert(text->origin.begin(), prepend.size(), text->origin[0]);
    };
  }
  if (type == "Replace") {
    Regex regex = PatternRegex(spec.at("pattern"));
    Text content = TextOf(spec.at("content"));
    return [regex, content](Normalized* text) { ReplaceAll(text, regex, content); };
  }
  if (type == "Strip") {
    bool left = Flag(spec, "strip_left", false);
    bool right = Flag(spec, "strip_right", false);
    return [left, right](Normalized* text) {
      size_t start = 0, end = text->text.size();
      while (left && start < end && IsWhiteSpace(text->text[start])) ++start;
      while (right && end > start && IsWhiteSpace(text->text[end - 1])) --end;
      text->text = text->text.substr(start, end - start);
      text->origin = std::vector<size_t>(text->origin.begin() + start, text->origin.begin() + end);
    };
  }
  Unsupported("the normalizer " + type);
}

// --- pre-tokenizers ------------------------------------------------------------------------

// A pre-tokenized piece and how many of its first codepoints come from offset 0 of the input:
// Metaspace's `prepend_scheme: "first"` prepends to a piece that starts there.
struct Piece {
  Text text;
  size_t from_start;
};
using Pieces = std::vector<Piece>;
using PreTokenizer = std::function<Pieces(Pieces)>;  // empty: the identity

// The non-empty cuts of `piece` as pieces.
Pieces CutPiece(const Piece& piece, Cuts cuts) {
  Pieces out;
  for (Cut& cut : cuts) {
    if (cut.text.empty()) continue;
    size_t from_start = cut.start < piece.from_start
                            ? std::min(piece.from_start - cut.start, cut.text.size())
                            : 0;
    out.push_back({std::move(cut.text), from_start});
  }
  return out;
}

// `piece` with `prefix` in front, aligned (as `tokenizers` aligns it) with its first codepoint.
Piece Prepended(const Piece& piece, char32_t prefix) {
  return {prefix + piece.text, piece.from_start > 0 ? piece.from_start + 1 : 0};
}

PreTokenizer EachPiece(std::function<Pieces(const Piece&)> split) {
  return [split](Pieces pieces) {
    Pieces out;
    for (const Piece& piece : pieces) {
      for (Piece& part : split(piece)) {
        if (!part.text.empty()) out.push_back(std::move(part));
      }
    }
    return out;
  };
}

// GPT-2's map of the 256 bytes to printable codepoints, and its inverse.
struct ByteAlphabet {
  std::array<char32_t, 256> to_char{};
  std::array<int, 324> to_byte{};  // -1: not in the alphabet

  ByteAlphabet() {
    to_byte.fill(-1);
    char32_t extra = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      to_char[b] = printable ? static_cast<char32_t>(b) : extra++;
      to_byte[to_char[b]] = b;
    }
  }
};

const ByteAlphabet& Alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

// Each byte of the piece's UTF-8 as a codepoint of the alphabet.
Piece ByteLevelChars(const Piece& piece) {
  Piece out{{}, 0};
  std::string bytes;
  for (size_t i = 0; i < piece.text.size(); ++i) {
    bytes.clear();
    AppendUtf8(&bytes, piece.text[i]);
    for (unsigned char b : bytes) {
      out.text.push_back(Alphabet().to_char[b]);
      if (i < piece.from_start) ++out.from_start;
    }
  }
  return out;
}

std::string PrependScheme(const Json& spec) {
  const Json& scheme = spec.get("prepend_scheme");
  if (scheme.is_null()) return Flag(spec, "add_prefix_space", true) ? "always" : "never";
  const std::string& name = scheme.as_string();
  if (name != "always" && name != "first" && name != "never") {
    Unsupported("the Metaspace prepend_scheme " + name);
  }
  return name;
}

// `\w+|[^\w\s]+` in Rust's regex crate (Whitespace's split): the runs of word characters and
// the runs of other non-space ones.
Cuts WordRuns(const Text& text) {
  auto kind = [](char32_t c) { return IsWord(c) ? 1 : IsWhiteSpace(c) ? 0 : 2; };
  Cuts cuts;
  for (size_t start = 0, end; start < text.size(); start = end) {
    int run = kind(text[start]);
    for (end = start + 1; end < text.size() && kind(text[end]) == run;) ++end;
    if (run != 0) cuts.push_back({start, text.substr(start, end - start)});
  }
  return cuts;
}

PreTokenizer MakeByteLevel(const Json& spec) {
  bool prefix_space = Flag(spec, "add_prefix_space", false);
  std::optional<Regex> regex;
  if (Flag(spec, "use_regex", true)) regex.emplace(kGpt2Split);
  return EachPiece([prefix_space, regex](const Piece& piece) {
    bool prefix = prefix_space && (piece.text.empty() || piece.text[0] != ' ');
    Piece text = prefix ? Prepended(piece, ' ') : piece;
    Pieces parts = regex ? CutPiece(text, SplitSpans(text.text, RegexSpans(text.text, *regex),
                                                      Behavior::kIsolated))
                         : Pieces{text};
    for (Piece& part : parts) part = ByteLevelChars(part);
    return parts;
  });
}

PreTokenizer MakeMetaspace(const Json& spec) {
  char32_t mark = CharOf(spec.at("replacement"), "Metaspace's replacement");
  std::string scheme = PrependScheme(spec);
  bool split = Flag(spec, "split", true);
  return EachPiece([mark, scheme, split](const Piece& piece) {
    Piece text = piece;
    std::replace(text.text.begin(), text.text.end(), U' ', mark);
    bool prepend = scheme == "always" || (scheme == "first" && piece.from_start > 0);
    if (prepend && (text.text.empty() || text.text[0] != mark)) text = Prepended(text, mark);
    if (!split) return Pieces{text};
    auto is_mark = [mark](char32_t c) { return c == mark; };
    return CutPiece(text, SplitSpans(text.text, CharSpans(text.text, is_mark),
                                     Behavior::kMergedWithNext));
  });
}

PreTokenizer MakePreTokenizer(const Json& spec) {
  if (spec.is_null()) return nullptr;
  std::string type = TypeOf(spec);
  if (type == "Sequence") {
    std::vector<PreTokenizer> steps;
    for (const Json& step : spec.at("pretokenizers").as_array()) {
      if (PreTokenizer pre_tokenizer = MakePreTokenizer(step)) steps.push_back(pre_tokenizer);
    }
    return [steps](Pieces pieces) {
      for (const PreTokenizer& step : steps) pieces = step(std::move(pieces));
      return pieces;
    };
  }
  if (type == "ByteLevel") return MakeByteLevel(spec);
  if (type == "Metaspace") return MakeMetaspace(spec);
  if (type == "Split") {
    Regex regex = PatternRegex(spec.at("pattern"));
    Behavior behavior = BehaviorOf(spec.at("behavior"));
    bool invert = Flag(spec, "invert", false);
    return EachPiece([regex, behavior, invert](const Piece& piece) {
      std::vector<Span> spans = RegexSpans(piece.text, regex);
      for (Span& span : spans) span.match = span.match != invert;
      return CutPiece(piece, SplitSpans(piece.text, spans, behavior));
    });
  }
  if (type == "Digits") {
    Behavior behavior =
        Flag(spec, "individual_digits", false) ? Behavior::kIsolated : Behavior::kContiguous;
    return EachPiece([behavior](const Piece& piece) {
      return CutPiece(piece, SplitSpans(piece.text, CharSpans(piece.text, IsNumber), behavior));
    });
  }
  if (type == "Whitespace") {
    return EachPiece([](const Piece& piece) { return CutPiece(piece, WordRuns(piece.text)); });
  }
  if (type == "WhitespaceSplit") {
    return EachPiece([](const Piece& piece) {
      Cuts cuts = SplitSpans(piece.text, CharSpans(piece.text, IsWhiteSpace), Behavior::kRemoved);
      return CutPiece(piece, std::move(cuts));
    });
  }
  if (type == "Punctuation") {
    const Json& name = spec.get("behavior");
    Behavior behavior = name.is_null() ? Behavior::kIsolated : BehaviorOf(name);
    return EachPiece([behavior](const Piece& piece) {
      Cuts cuts = SplitSpans(piece.text, CharSpans(piece.text, IsTokenizersPunctuation), behavior);
      return CutPiece(piece, std::move(cuts));
    });
  }
  Unsupported("the pre-tokenizer " + type);
}

// --- the BPE model -------------------------------------------------------------------------

class Bpe {
 public:
  explicit Bpe(const Json& spec) {
    std::string type = TypeOf(spec);
    if (type != "BPE") Unsupported("the model " + type);
    const Json& dropout = spec.get("dropout");
    if (!dropout.is_null() && dropout.as_double() != 0) Unsupported("BPE dropout");
    for (const auto& [token, id] : spec.at("vocab").as_object()) {
      vocab_[token] = static_cast<int32_t>(id.as_int());
    }
    if (spec.get("continuing_subword_prefix").is_string()) {
      prefix_ = spec.at("continuing_subword_prefix").as_string();
    }
    if (spec.get("end_of_word_suffix").is_string()) {
      suffix_ = spec.at("end_of_word_suffix").as_string();
    }
    if (spec.get("unk_token").is_string()) unk_id_ = Find(spec.at("unk_token").as_string());
    fuse_unk_ = Flag(spec, "fuse_unk", false);
    ignore_merges_ = Flag(spec, "ignore_merges", false);
    byte_ids_.fill(-1);
    if (Flag(spec, "byte_fallback", false)) {
      for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof(name), "<0x%02X>", b);
        byte_ids_[b] = Find(name).value_or(-1);
      }
    }
    LoadMerges(spec.at("merges").as_array());
  }

  const std::unordered_map<std::string, int32_t>& vocab() const { return vocab_; }

  // Appends the ids of one pre-tokenized word.
  void Tokenize(const Text& word, std::vector<int32_t>* out) const {
    if (ignore_merges_) {
      if (std::optional<int32_t> id = Find(Utf8Encode(word))) {
        out->push_back(*id);
        return;
      }
    }
    std::vector<int32_t> ids = Symbols(word);
    Merge(&ids);
    out->insert(out->end(), ids.begin(), ids.end());
  }

 private:
  struct MergeRule {
    int32_t rank;
    int32_t id;
  };

  static uint64_t PairKey(int32_t left, int32_t right) {
    return static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32 | static_cast<uint32_t>(right);
  }

  std::optional<int32_t> Find(const std::string& token) const {
    auto it = vocab_.find(token);
    if (it == vocab_.end()) return std::nullopt;
    return it->second;
  }

  // Merges as "left right" strings or [left, right] pairs; a later duplicate wins.
  void LoadMerges(const Json::Array& merges) {
    merges_.reserve(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      std::string left, right;
      if (merges[rank].is_array()) {
        left = merges[rank].as_array().at(0).as_string();
        right = merges[rank].as_array().at(1).as_string();
      } else {
        const std::string& line = merges[rank].as_string();
        size_t space = line.find(' ');
        if (space == std::string::npos) throw std::runtime_error("a BPE merge without a space");
        left = line.substr(0, space);
        right = line.substr(space + 1);
      }
      std::string merged = left + right.substr(std::min(prefix_.size(), right.size()));
      std::optional<int32_t> a = Find(left), b = Find(right), id = Find(merged);
      if (a && b && id) merges_[PairKey(*a, *b)] = {static_cast<int32_t>(rank), *id};
    }
  }

  // One symbol per codepoint; byte tokens or the unknown token for what the vocabulary lacks.
  std::vector<int32_t> Symbols(const Text& word) const {
    std::vector<int32_t> ids;
    std::optional<int32_t> unk;  // pending; fused with the next unknown ones when fuse_unk
    for (size_t i = 0; i < word.size(); ++i) {
      std::string piece = i > 0 ? prefix_ : "";
      AppendUtf8(&piece, word[i]);
      if (i + 1 == word.size()) piece += suffix_;
      if (std::optional<int32_t> id = Find(piece)) {
        if (unk) ids.push_back(*unk);
        unk.reset();
        ids.push_back(*id);
        continue;
      }
      // As in `tokenizers`, byte tokens do not flush a pending unknown token.
      if (AppendByteTokens(piece, &ids)) continue;
      if (unk_id_) {
        if (unk && !fuse_unk_) ids.push_back(*unk);
        unk = unk_id_;
      }
    }
    if (unk) ids.push_back(*unk);
    return ids;
  }

  bool AppendByteTokens(const std::string& piece, std::vector<int32_t>* ids) const {
    for (unsigned char b : piece) {
      if (byte_ids_[b] < 0) return false;
    }
    for (unsigned char b : piece) ids->push_back(byte_ids_[b]);
    return true;
  }

  std::optional<MergeRule> FindMerge(int32_t left, int32_t right) const {
    auto it = merges_.find(PairKey(left, right));
    if (it == merges_.end()) return std::nullopt;
    return it->second;
  }

  // Applies the best-ranked merge (leftmost on ties) until none is left, with a queue of
  // candidate pairs as `tokenizers` does.
  void Merge(std::vector<int32_t>* ids) const {
    struct Symbol {
      int32_t id;
      int prev;
      int next;
      bool alive;
    };
    const int n = static_cast<int>(ids->size());
    if (n < 2) return;
    std::vector<Symbol> symbols(n);
    for (int i = 0; i < n; ++i) symbols[i] = {(*ids)[i], i - 1, i + 1 < n ? i + 1 : -1, true};
    using Candidate = std::tuple<int32_t, int, int32_t>;  // rank, left position, merged id
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
    auto consider = [&](int left) {
      if (left < 0 || symbols[left].next < 0) return;
      if (auto rule = FindMerge(symbols[left].id, symbols[symbols[left].next].id)) {
        queue.push({rule->rank, left, rule->id});
      }
    };
    for (int i = 0; i + 1 < n; ++i) consider(i);
    while (!queue.empty()) {
      auto [rank, pos, id] = queue.top();
      queue.pop();
      Symbol& left = symbols[pos];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = symbols[left.next];
      std::optional<MergeRule> rule = FindMerge(left.id, right.id);
      if (!rule || rule->id != id) continue;  // the pair changed since
      left.id = id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = pos;
      consider(left.prev);
      consider(pos);
    }
    ids->clear();
    for (const Symbol& symbol : symbols) {
      if (symbol.alive) ids->push_back(symbol.id);
    }
  }

  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, MergeRule> merges_;
  std::string prefix_, suffix_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_ids_{};
};

// --- decoders ------------------------------------------------------------------------------

using Tokens = std::vector<std::string>;
using Decoder = std::function<Tokens(Tokens)>;  // empty: join with spaces

std::string ByteLevelDecode(const Tokens& tokens) {
  std::string bytes;
  for (const std::string& token : tokens) {
    Text chars = Utf8Decode(token);
    bool mapped = std::all_of(chars.begin(), chars.end(), [](char32_t c) {
      return c < Alphabet().to_byte.size() && Alphabet().to_byte[c] >= 0;
    });
    if (!mapped) {
      bytes += token;
      continue;
    }
    for (char32_t c : chars) bytes.push_back(static_cast<char>(Alphabet().to_byte[c]));
  }
  return Utf8Lossy(bytes);
}

// The byte of a `<0xHH>` token, parsed as Rust's `u8::from_str_radix` does.
std::optional<unsigned char> ByteToken(const std::string& token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return std::nullopt;
  std::string digits = token.substr(3, 2);
  if (digits[0] == '+') digits.erase(0, 1);
  if (!std::all_of(digits.begin(), digits.end(), [](unsigned char c) { return std::isxdigit(c); })) {
    return std::nullopt;
  }
  return static_cast<unsigned char>(std::stoi(digits, nullptr, 16));
}

Tokens ByteFallbackDecode(const Tokens& tokens) {
  Tokens out;
  std::string bytes;
  auto flush = [&] {
    if (IsValidUtf8(bytes)) {
      if (!bytes.empty()) out.push_back(bytes);
    } else {
      out.insert(out.end(), bytes.size(), "\xEF\xBF\xBD");
    }
    bytes.clear();
  };
  for (const std::string& token : tokens) {
    if (std::optional<unsigned char> byte = ByteToken(token)) {
      bytes.push_back(static_cast<char>(*byte));
      continue;
    }
    flush();
    out.push_back(token);
  }
  flush();
  return out;
}

std::string StripChars(const std::string& token, char32_t c, size_t left, size_t right) {
  Text chars = Utf8Decode(token);
  size_t start = 0, end = chars.size();
  while (start < std::min(left, chars.size()) && chars[start] == c) ++start;
  while (end > start && chars.size() - end < right && chars[end - 1] == c) --end;
  return Utf8Encode(Text(chars, start, end - start));
}

Decoder MakeDecoder(const Json& spec) {
  if (spec.is_null()) return nullptr;
  std::string type = TypeOf(spec);
  if (type == "Sequence") {
    std::vector<Decoder> steps;
    for (const Json& step : spec.at("decoders").as_array()) {
      Decoder decoder = MakeDecoder(step);
      if (!decoder) Unsupported("a decoder without a type");
      steps.push_back(decoder);
    }
    return [steps](Tokens tokens) {
      for (const Decoder& step : steps) tokens = step(std::move(tokens));
      return tokens;
    };
  }
  if (type == "ByteLevel") return [](Tokens tokens) { return Tokens{ByteLevelDecode(tokens)}; };
  if (type == "ByteFallback") return ByteFallbackDecode;
  if (type == "Fuse") {
    return [](Tokens tokens) {
      std::string joined;
      for (const std::string& token : tokens) joined += token;
      return Tokens{joined};
    };
  }
  if (type == "Replace") {
    Regex regex = PatternRegex(spec.at("pattern"));
    Text content = TextOf(spec.at("content"));
    return [regex, content](Tokens tokens) {
      for (std::string& token : tokens) {
        Normalized text = Unnormalized(Utf8Decode(token));
        ReplaceAll(&text, regex, content);
        token = Utf8Encode(text.text);
      }
      return tokens;
    };
  }
  if (type == "Strip") {
    char32_t c = CharOf(spec.at("content"), "Strip's content");
    size_t left = spec.at("start").as_int(), right = spec.at("stop").as_int();
    return [c, left, right](Tokens tokens) {
      for (std::string& token : tokens) token = StripChars(token, c, left, right);
      return tokens;
    };
  }
  if (type == "Metaspace") {
    char32_t mark = CharOf(spec.at("replacement"), "Metaspace's replacement");
    bool strip_first = PrependScheme(spec) != "never";
    // As in `tokenizers`: every mark of the first token goes, not only a leading one.
    return [mark, strip_first](Tokens tokens) {
      for (size_t i = 0; i < tokens.size(); ++i) {
        Text out;
        for (char32_t c : Utf8Decode(tokens[i])) {
          if (c != mark) out.push_back(c);
          else if (i > 0 || !strip_first) out.push_back(' ');
        }
        tokens[i] = Utf8Encode(out);
      }
      return tokens;
    };
  }
  Unsupported("the decoder " + type);
}

// --- added tokens --------------------------------------------------------------------------

struct AddedToken {
  std::string content;
  int32_t id;
  bool special;
  bool normalized;  // matched in the normalized text, as normalized itself
  bool single_word;
  bool lstrip;
  bool rstrip;
};

// An added token as the matcher looks for it.
struct Pattern {
  Text content;
  int32_t id;
  bool single_word;
  bool lstrip;
  bool rstrip;
};

// A stretch of text: an added token (`id` >= 0) or text between them.
struct Segment {
  size_t start;
  size_t end;
  int32_t id;
};

// Leftmost-longest matching of added tokens, with their lstrip/rstrip/single_word rules.
class AddedTokenMatcher {
 public:
  AddedTokenMatcher(const std::vector<AddedToken>& tokens, bool normalized,
                    const Normalizer& normalize) {
    std::vector<Pattern> patterns;
    for (const AddedToken& token : tokens) {
      if (token.normalized != normalized) continue;
      Text content = Utf8Decode(token.content);
      if (normalized) content = NormalizeText(normalize, content);
      patterns.push_back({content, token.id, token.single_word, token.lstrip, token.rstrip});
    }
    std::stable_sort(patterns.begin(), patterns.end(), [](const Pattern& a, const Pattern& b) {
      return a.content.size() > b.content.size();
    });
    for (Pattern& pattern : patterns) {
      if (!pattern.content.empty()) by_first_[pattern.content[0]].push_back(std::move(pattern));
    }
  }

  std::vector<Segment> Split(const Text& text) const {
    std::vector<Segment> out;
    size_t done = 0, i = 0;
    while (i < text.size()) {
      const Pattern* token = LongestAt(text, i);
      if (token == nullptr) {
        ++i;
        continue;
      }
      size_t start = i, stop = i + token->content.size();
      if (token->single_word && !IsSingleWord(text, start, stop)) {
        i = stop;  // matching resumes after the refused match
        continue;
      }
      while (token->lstrip && start > done && IsWhiteSpace(text[start - 1])) --start;
      while (token->rstrip && stop < text.size() && IsWhiteSpace(text[stop])) ++stop;
      if (start > done) out.push_back({done, start, -1});
      out.push_back({start, stop, token->id});
      done = i = stop;
    }
    if (done < text.size()) out.push_back({done, text.size(), -1});
    return out;
  }

 private:
  const Pattern* LongestAt(const Text& text, size_t i) const {
    auto it = by_first_.find(text[i]);
    if (it == by_first_.end()) return nullptr;
    for (const Pattern& token : it->second) {
      if (text.compare(i, token.content.size(), token.content) == 0) return &token;
    }
    return nullptr;
  }

  // No word character (\w) right before or after: `tokenizers`' `single_word` test.
  static bool IsSingleWord(const Text& text, size_t start, size_t stop) {
    return !(start > 0 && IsWord(text[start - 1])) && !(stop < text.size() && IsWord(text[stop]));
  }

  std::unordered_map<char32_t, std::vector<Pattern>> by_first_;  // longest first
};

// The file's added tokens with the ids `tokenizers` gives them when it loads it (not the ids
// written there): the vocabulary's id for a token already in it, else the next free one. A
// token listed again keeps its id and takes the later flags.
std::vector<AddedToken> ReadAddedTokens(const Json& json, const Bpe& model) {
  std::vector<AddedToken> out;
  const Json& added = json.get("added_tokens");
  if (added.is_null()) return out;
  const int32_t model_size = static_cast<int32_t>(model.vocab().size());
  std::unordered_map<std::string, size_t> index;
  std::optional<int32_t> max_id;
  for (const Json& spec : added.as_array()) {
    AddedToken token{spec.at("content").as_string(), 0,
                     Flag(spec, "special", false),     Flag(spec, "normalized", false),
                     Flag(spec, "single_word", false), Flag(spec, "lstrip", false),
                     Flag(spec, "rstrip", false)};
    if (token.content.empty()) continue;
    if (auto it = index.find(token.content); it != index.end()) {
      AddedToken& earlier = out[it->second];
      token.id = earlier.id;
      token.special = token.special || earlier.special;  // once special, always
      earlier = token;
      continue;
    }
    if (auto it = model.vocab().find(token.content); it != model.vocab().end()) {
      token.id = it->second;
    } else if (!max_id) {
      token.id = model_size;
    } else {
      token.id = *max_id >= model_size || model_size == 0 ? *max_id + 1 : model_size;
    }
    max_id = std::max(max_id.value_or(token.id), token.id);
    index[token.content] = out.size();
    out.push_back(token);
  }
  return out;
}

// Truncation and padding apply to `tokenizers`' encode too: refused, except padding to the
// longest of a batch, which leaves a single text as it is.
void CheckPostProcessing(const Json& json) {
  if (!json.get("truncation").is_null()) Unsupported("truncation");
  const Json& padding = json.get("padding");
  if (padding.is_null()) return;
  const Json& strategy = padding.get("strategy");
  bool longest = strategy.is_string() && strategy.as_string() == "BatchLongest";
  if (!longest || !padding.get("pad_to_multiple_of").is_null()) Unsupported("padding");
}

}  // namespace

// --- the tokenizer -------------------------------------------------------------------------

struct Tokenizer::Impl {
  explicit Impl(const Json& json)
      : model(json.at("model")),
        normalize(MakeNormalizer(json.get("normalizer"))),
        pre_tokenize(MakePreTokenizer(json.get("pre_tokenizer"))),
        decode(MakeDecoder(json.get("decoder"))),
        added(ReadAddedTokens(json, model)),
        raw_matcher(added, false, normalize),
        normalized_matcher(added, true, normalize) {
    for (const auto& [token, id] : model.vocab()) id_to_token[id] = token;
    for (const AddedToken& token : added) {
      // A normalized token decodes as its normalized form, as in `tokenizers`.
      id_to_token[token.id] = token.normalized
                                  ? Utf8Encode(NormalizeText(normalize, Utf8Decode(token.content)))
                                  : token.content;
      added_ids[token.content] = token.id;
      if (token.special) special.insert(token.content);
    }
    for (const auto& [id, token] : id_to_token) {
      vocab_size = std::max(vocab_size, static_cast<size_t>(id) + 1);
    }
  }

  void EncodePart(Text text, size_t from_start, std::vector<int32_t>* ids) const {
    Pieces pieces{{std::move(text), from_start}};
    if (pre_tokenize) pieces = pre_tokenize(std::move(pieces));
    for (const Piece& piece : pieces) {
      if (!piece.text.empty()) model.Tokenize(piece.text, ids);
    }
  }

  Bpe model;
  Normalizer normalize;
  PreTokenizer pre_tokenize;
  Decoder decode;
  std::vector<AddedToken> added;
  AddedTokenMatcher raw_matcher;         // tokens matched in the text as given
  AddedTokenMatcher normalized_matcher;  // tokens matched in the normalized text
  std::unordered_map<int32_t, std::string> id_to_token;
  std::unordered_map<std::string, int32_t> added_ids;
  std::unordered_set<std::string> special;
  size_t vocab_size = 0;
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::FromJson(const Json& json) {
  CheckPostProcessing(json);
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::make_unique<Impl>(json)));
}

std::unique_ptr<Tokenizer> Tokenizer::FromFile(const std::string& path) {
  try {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw std::runtime_error("cannot be read");
    std::stringstream text;
    text << file.rdbuf();
    return FromJson(Json::Parse(text.str()));
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text) const {
  const Impl& impl = *impl_;
  Text input = Utf8Decode(text);
  std::vector<int32_t> ids;
  for (const Segment& raw : impl.raw_matcher.Split(input)) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    Normalized part = Unnormalized(input.substr(raw.start, raw.end - raw.start));
    if (impl.normalize) impl.normalize(&part);
    for (const Segment& segment : impl.normalized_matcher.Split(part.text)) {
      if (segment.id >= 0) {
        ids.push_back(segment.id);
      } else {
        size_t from_start = 0;
        while (raw.start == 0 && segment.start + from_start < segment.end &&
               part.origin[segment.start + from_start] == 0) {
          ++from_start;
        }
        Text piece = part.text.substr(segment.start, segment.end - segment.start);
        impl.EncodePart(std::move(piece), from_start, &ids);
      }
    }
  }
  return ids;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& impl = *impl_;
  Tokens tokens;
  for (int32_t id : ids) {
    auto it = impl.id_to_token.find(id);
    if (it == impl.id_to_token.end()) continue;
    if (skip_special_tokens && impl.special.count(it->second) > 0) continue;
    tokens.push_back(it->second);
  }
  std::string out;
  if (!impl.decode) {
    for (size_t i = 0; i < tokens.size(); ++i) out += (i > 0 ? " " : "") + tokens[i];
    return out;
  }
  for (const std::string& piece : impl.decode(std::move(tokens))) out += piece;
  return out;
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  std::string key(token);
  if (auto it = impl_->added_ids.find(key); it != impl_->added_ids.end()) return it->second;
  if (auto it = impl_->model.vocab().find(key); it != impl_->model.vocab().end()) {
    return it->second;
  }
  return std::nullopt;
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  auto it = impl_->id_to_token.find(id);
  if (it == impl_->id_to_token.end()) return std::nullopt;
  return it->second;
}

size_t Tokenizer::VocabSize() const { return impl_->vocab_size; }

}  // namespace mlc
