// A Hugging Face `tokenizer.json`, as the `tokenizers` library runs it: BPE vocabularies,
// byte-level (GPT-2, SmolLM2, Llama 3, Qwen2) or SentencePiece-style (Metaspace, byte fallback).
// The same components as the web runtime's tokenizer.js; a file with any other component is
// refused when loaded, so a model never silently tokenizes differently from the reference. The
// post-processor is not applied (as with add_special_tokens=False).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "json.h"

namespace mlc {

class Tokenizer {
 public:
  // Throws std::runtime_error naming the file and the unsupported component (e.g.
  // "tokenizer.json: the normalizer NFKC is not supported by the native runtime").
  static std::unique_ptr<Tokenizer> FromFile(const std::string& path);
  static std::unique_ptr<Tokenizer> FromJson(const Json& json);
  ~Tokenizer();

  // tokenizers' encode(text, add_special_tokens=False).ids; throws on invalid UTF-8 input.
  std::vector<int32_t> Encode(std::string_view text) const;
  // tokenizers' decode(ids, skip_special_tokens); invalid UTF-8 comes out as U+FFFD as in Rust.
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens = true) const;
  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;
  size_t VocabSize() const;  // the largest id + 1 over the vocabulary and added tokens

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mlc
