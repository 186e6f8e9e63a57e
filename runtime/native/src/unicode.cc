#include "unicode.h"

#include <algorithm>
#include <iterator>
#include <stdexcept>

namespace mlc {
namespace {

struct Range {
  char32_t first;
  char32_t last;
};

// Every `stride`-th codepoint from `first` to `last` folds to itself + `delta`.
struct FoldRun {
  char32_t first;
  char32_t last;
  int stride;
  int delta;
};

#include "unicode_data.inc"

template <size_t N>
bool InTable(const Range (&table)[N], char32_t cp) {
  const Range* it = std::upper_bound(std::begin(table), std::end(table), cp,
                                     [](char32_t c, const Range& r) { return c < r.first; });
  return it != std::begin(table) && cp <= (it - 1)->last;
}

const FoldRun* FindFoldRun(char32_t cp) {
  const FoldRun* it = std::upper_bound(std::begin(kFold), std::end(kFold), cp,
                                       [](char32_t c, const FoldRun& r) { return c < r.first; });
  if (it == std::begin(kFold)) return nullptr;
  const FoldRun* run = it - 1;
  if (cp > run->last || (cp - run->first) % run->stride != 0) return nullptr;
  return run;
}

// The length of the UTF-8 sequence that `lead` starts and the range of its second byte; 0 for a
// byte that starts none.
int SequenceLength(unsigned char lead, unsigned char* low, unsigned char* high) {
  *low = 0x80;
  *high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) {
    if (lead == 0xE0) *low = 0xA0;
    if (lead == 0xED) *high = 0x9F;
    return 3;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    if (lead == 0xF0) *low = 0x90;
    if (lead == 0xF4) *high = 0x8F;
    return 4;
  }
  return 0;
}

// Decodes the sequence at `*pos`: advances past it and returns true, or advances past its
// maximal valid prefix (at least one byte) and returns false.
bool DecodeOne(std::string_view text, size_t* pos, char32_t* cp) {
  auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  unsigned char lead = byte(*pos);
  if (lead < 0x80) {
    *cp = lead;
    ++*pos;
    return true;
  }
  unsigned char low, high;
  int length = SequenceLength(lead, &low, &high);
  ++*pos;
  if (length == 0) return false;
  char32_t value = lead & (0xFF >> (length + 1));
  for (int i = 1; i < length; ++i) {
    if (*pos >= text.size() || byte(*pos) < low || byte(*pos) > high) return false;
    value = (value << 6) | (byte(*pos) & 0x3F);
    ++*pos;
    low = 0x80;
    high = 0xBF;
  }
  *cp = value;
  return true;
}

}  // namespace

std::u32string Utf8Decode(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    size_t start = pos;
    char32_t cp;
    if (!DecodeOne(text, &pos, &cp)) {
      throw std::runtime_error("invalid UTF-8 at byte " + std::to_string(start));
    }
    out.push_back(cp);
  }
  return out;
}

bool IsValidUtf8(std::string_view text) {
  size_t pos = 0;
  char32_t cp;
  while (pos < text.size()) {
    if (!DecodeOne(text, &pos, &cp)) return false;
  }
  return true;
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t start = pos;
    char32_t cp;
    if (DecodeOne(bytes, &pos, &cp)) {
      out.append(bytes.substr(start, pos - start));
    } else {
      AppendUtf8(&out, 0xFFFD);
    }
  }
  return out;
}

void AppendUtf8(std::string* out, char32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string Utf8Encode(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : text) AppendUtf8(&out, cp);
  return out;
}

bool IsLetter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return InTable(kLetter, cp);
}
bool IsMark(char32_t cp) { return cp >= 0x300 && InTable(kMark, cp); }
bool IsNumber(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return InTable(kNumber, cp);
}
bool IsDecimal(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return InTable(kDecimal, cp);
}
bool IsPunct(char32_t cp) { return InTable(kPunct, cp); }
bool IsConnector(char32_t cp) { return InTable(kConnector, cp); }
bool IsWhiteSpace(char32_t cp) { return InTable(kWhiteSpace, cp); }
bool IsWord(char32_t cp) {
  if (cp < 0x80) return IsLetter(cp) || IsDecimal(cp) || cp == '_';
  return InTable(kWord, cp);
}

bool IsTokenizersPunctuation(char32_t cp) { return InTable(kTokenizersPunctuation, cp); }

char32_t SimpleFold(char32_t cp) {
  const FoldRun* run = FindFoldRun(cp);
  return run == nullptr ? cp : static_cast<char32_t>(static_cast<int>(cp) + run->delta);
}

const std::vector<std::pair<char32_t, char32_t>>& SimpleFoldPairs() {
  static const std::vector<std::pair<char32_t, char32_t>> pairs = [] {
    std::vector<std::pair<char32_t, char32_t>> out;
    for (const FoldRun& run : kFold) {
      for (char32_t cp = run.first; cp <= run.last; cp += run.stride) {
        out.push_back({cp, static_cast<char32_t>(static_cast<int>(cp) + run.delta)});
      }
    }
    return out;
  }();
  return pairs;
}

bool HasMultiCharFold(char32_t first, char32_t last) {
  for (const Range& range : kMultiFold) {
    if (range.first <= last && first <= range.last) return true;
  }
  return false;
}

const std::vector<std::u32string>& MultiCharFoldTargets() {
  static const std::vector<std::u32string> targets(std::begin(kMultiFoldTargets),
                                                   std::end(kMultiFoldTargets));
  return targets;
}

}  // namespace mlc
