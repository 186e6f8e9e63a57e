// A conversation with one model, held as runtime/chat_module.py holds it: earlier turns stay in
// the KV cache and each turn prefills only its new tokens; the answer streams as text pieces
// that never split a character nor show any part of a stop string.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "chat_format.h"
#include "generation.h"
#include "model.h"
#include "tokenizer.h"

namespace mlc {

struct GenerationStats {
  int64_t prefill_tokens = 0, decode_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  double time_to_first_token = 0;  // from the call to the first streamed text
  std::string finish_reason;
};

using PieceCallback = std::function<void(const std::string& piece)>;
using CancelCheck = std::function<bool()>;  // true: end the answer now

class ChatSession {
 public:
  ChatSession(const std::string& model_dir, const std::string& device);

  // Answer `prompt` as the next user turn; `on_piece` gets the text as it is decoded.
  // `cancelled` is asked after each token: true ends the answer there, finish reason
  // "interrupted".
  std::string Generate(const std::string& prompt, const GenerationSettings& settings,
                       const PieceCallback& on_piece = {}, const CancelCheck& cancelled = {});
  void Reset();
  // The model's defaults (from mlc-chat-config.json) for every setting.
  GenerationSettings DefaultSettings() const;
  const GenerationStats& last_stats() const { return stats_; }
  const std::vector<int32_t>& last_output_ids() const { return last_output_ids_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }

 private:
  std::string GenerateFrom(const std::vector<int32_t>& ids, const GenerationSettings& settings,
                           const PieceCallback& on_piece, const CancelCheck& cancelled);
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ChatFormat format_;
  std::vector<std::string> turns_;    // the conversation so far, user first
  std::vector<int32_t> history_ids_;  // every token in the KV cache, in order
  std::string kv_text_;               // the text of those tokens (and of the pending one)
  std::vector<int32_t> pending_;      // the last answer's final token, not yet in the KV cache
  GenerationStats stats_;
  std::vector<int32_t> last_output_ids_;
};

}  // namespace mlc
