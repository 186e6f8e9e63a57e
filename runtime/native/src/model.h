// One compiled model on one device: its library, weights and paged KV cache holding one
// sequence (runtime/compiled_model.py's single-sequence API). Token ids and logits only.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "chat_config.h"

namespace mlc {

// The conversation would not fit in the model's context window.
class ContextWindowExceeded : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Model {
 public:
  // Loads and checks everything (library stamp, shard sizes and checksums); ArtifactError
  // names what is wrong and how to rebuild. `device` is "cpu" (the only one this runtime has).
  Model(const std::string& model_dir, const std::string& device, bool verify_weights = true);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ChatConfig& config() const;
  // Feed tokens in chunks of the prefill size; the last token's logits.
  std::vector<float> Prefill(const std::vector<int32_t>& ids);
  // Feed one token; its logits.
  std::vector<float> Decode(int32_t id);
  // Forget the sequence; its KV pages are freed.
  void Reset();
  // Throws ContextWindowExceeded unless `num_new` more tokens (or, `fresh`, in an empty cache) fit.
  void CheckFits(int64_t num_new, bool fresh = false) const;
  int64_t num_cached_tokens() const;
  int64_t context_window_size() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mlc
