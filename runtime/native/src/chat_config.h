// `mlc-chat-config.json`, the build↔runtime contract, validated against the JSON Schema that
// `mlc build` writes beside it (generated from runtime/chat_config.py).
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "json.h"

namespace mlc {

// An artifact is missing, damaged or does not match its companions.
class ArtifactError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The file as text, or ArtifactError saying "<what> not found: <path>".
std::string ReadFile(const std::string& path, const std::string& what);
// The file as JSON, or ArtifactError naming it.
Json ReadJsonFile(const std::string& path, const std::string& what);

constexpr int64_t kArtifactFormatVersion = 1;

struct ChatConfig {
  Json raw;  // the whole file
  std::string model_type, quantization, model_lib, target, source_model;
  int64_t vocab_size = 0, context_window_size = 0, prefill_chunk_size = 0;
  int64_t hidden_size = 0;
  double temperature = 0, top_p = 1, repetition_penalty = 1;
  int64_t top_k = 0, max_tokens = 0;
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;
  bool shares_prefixes = true;  // whether a sequence's first page is attended as its own block

  static ChatConfig Load(const std::string& model_dir);
  // "rebuild it with: mlc build SOURCE --quantization Q [--target T] -o PARENT"
  std::string RebuildHint(const std::string& model_dir) const;
};

// Where `value` breaks `schema` (the subset `mlc build` writes), or "" where it fits.
std::string SchemaViolation(const Json& value, const Json& schema, const std::string& path = "");

}  // namespace mlc
