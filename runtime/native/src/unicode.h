// UTF-8 and the Unicode character classes of the tokenizer (tables: unicode_data.inc).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mlc {

// Valid UTF-8 as codepoints; throws std::runtime_error at the first invalid byte.
std::u32string Utf8Decode(std::string_view text);
bool IsValidUtf8(std::string_view text);
// Bytes as UTF-8 text, each maximal invalid subsequence replaced by U+FFFD (as Rust's
// `String::from_utf8_lossy` and a non-fatal WHATWG TextDecoder do).
std::string Utf8Lossy(std::string_view bytes);

void AppendUtf8(std::string* out, char32_t cp);
std::string Utf8Encode(std::u32string_view text);

// General categories: L, M, N, Nd, P, Pc.
bool IsLetter(char32_t cp);
bool IsMark(char32_t cp);
bool IsNumber(char32_t cp);
bool IsDecimal(char32_t cp);
bool IsPunct(char32_t cp);
bool IsConnector(char32_t cp);
// The White_Space property (Rust's `char::is_whitespace`, Oniguruma's \s).
bool IsWhiteSpace(char32_t cp);
// Unicode's word characters (UTS #18, Rust regex's \w): Alphabetic, M, Nd, Pc, Join_Control.
bool IsWord(char32_t cp);
// What `tokenizers`' Punctuation pre-tokenizer splits on: ASCII punctuation and general
// category P as of Unicode 9.0 (the tables of the Rust crate it uses).
bool IsTokenizersPunctuation(char32_t cp);

// The simple case folding of `cp` (itself when it has none).
char32_t SimpleFold(char32_t cp);
// (codepoint, its simple folding) for every codepoint that has one, in codepoint order.
const std::vector<std::pair<char32_t, char32_t>>& SimpleFoldPairs();
// Whether the full case folding of a codepoint in [first, last] is several codepoints
// (U+00DF -> "ss").
bool HasMultiCharFold(char32_t first, char32_t last);
// The full case foldings that are several codepoints ("ss", "st", ...).
const std::vector<std::u32string>& MultiCharFoldTargets();

}  // namespace mlc
