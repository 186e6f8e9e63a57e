// The generation step of one answer: logits in, the next token, its streamed text and whether
// to stop, out. The rules and their order are runtime/generation.py's (without grammars).
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "sampler.h"
#include "tokenizer.h"

namespace mlc {

// Incremental detokenization: decode a short window of recent tokens, emit what is new, never
// half a UTF-8 character.
class TextStreamer {
 public:
  explicit TextStreamer(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  std::string Put(int32_t id);
  std::string Finish();  // what is still held back (an incomplete character as U+FFFD)

 private:
  std::string Window(size_t from, size_t to) const;
  const Tokenizer& tokenizer_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0, read_offset_ = 0;
};

// Holds back text that could be the start of a stop string.
class StopStringFilter {
 public:
  explicit StopStringFilter(std::vector<std::string> stop);
  std::string Put(const std::string& text);
  std::string Finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stop_;
  std::string pending_;
  bool stopped_ = false;
};

struct GenerationSettings {
  SamplingConfig sampling;
  int64_t max_tokens = 512;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;       // stop strings, beside the template's
  std::vector<int32_t> stop_token_ids;  // beside EOS and the template's
};

struct StepOutput {
  int32_t sampled = -1;
  bool appended = false;  // whether it joined the answer (a stop token does not)
  std::string text;
  std::string finish_reason;  // "stop", "length", "interrupted", or "" to go on
};

class GenerationStep {
 public:
  GenerationStep(const Tokenizer& tokenizer, const GenerationSettings& settings,
                 std::vector<int32_t> context_ids, int64_t kv_tokens, int64_t context_window_size,
                 const std::set<int32_t>& stop_token_ids, const std::vector<std::string>& stop_strings);
  // The rules applied to the logits of the last fed token; nullopt when max_tokens is 0.
  std::optional<StepOutput> Step(const std::vector<float>& logits);
  // End the answer now, after the last appended token: "interrupted"; the text still held back.
  std::string Cancel() { return Finish("interrupted"); }
  const std::vector<int32_t>& generated() const { return generated_; }
  const std::string& finish_reason() const { return finish_reason_; }

 private:
  std::string Finish(const std::string& reason);
  GenerationSettings settings_;
  std::vector<int32_t> context_ids_;
  int64_t kv_tokens_, context_window_size_;
  std::set<int32_t> stop_token_ids_;
  std::mt19937_64 rng_;
  TextStreamer streamer_;
  StopStringFilter stop_filter_;
  std::vector<int32_t> generated_;
  std::string finish_reason_;
  bool finished_ = false;
};

}  // namespace mlc
