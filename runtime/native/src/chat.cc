#include "chat.h"

#include <chrono>
#include <stdexcept>

namespace mlc {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

bool StartsWith(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

// chat-format.json in `model_dir`; ArtifactError naming it and the rebuild command.
ChatFormat LoadChatFormat(const std::string& model_dir, const std::string& rebuild) {
  std::string path = model_dir + "/chat-format.json";
  Json json;
  try {
    json = ReadJsonFile(path, "chat format");
  } catch (const ArtifactError& err) {
    throw ArtifactError(std::string(err.what()) +
                        " (mlc build writes it where the model's chat template is fixed text "
                        "around turns; builds before it existed lack it): " + rebuild);
  }
  try {
    return ChatFormat::FromJson(json);
  } catch (const std::runtime_error& err) {
    throw ArtifactError(path + " is not a chat format this runtime reads (" + err.what() + "): " + rebuild);
  }
}

}  // namespace

ChatSession::ChatSession(const std::string& model_dir, const std::string& device) {
  model_ = std::make_unique<Model>(model_dir, device);
  std::string rebuild = model_->config().RebuildHint(model_dir);
  try {
    tokenizer_ = Tokenizer::FromFile(model_dir + "/tokenizer.json");
  } catch (const std::exception& err) {
    throw ArtifactError(std::string(err.what()));
  }
  format_ = LoadChatFormat(model_dir, rebuild);
}

GenerationSettings ChatSession::DefaultSettings() const {
  const ChatConfig& config = model_->config();
  GenerationSettings settings;
  settings.sampling.temperature = config.temperature;
  settings.sampling.top_p = config.top_p;
  settings.sampling.top_k = config.top_k;
  settings.sampling.repetition_penalty = config.repetition_penalty;
  settings.max_tokens = config.max_tokens;
  return settings;
}

void ChatSession::Reset() {
  model_->Reset();
  turns_.clear();
  history_ids_.clear();
  kv_text_.clear();
  pending_.clear();
}

std::string ChatSession::Generate(const std::string& prompt, const GenerationSettings& settings,
                                  const PieceCallback& on_piece, const CancelCheck& cancelled) {
  if (prompt.empty()) throw std::invalid_argument("the prompt is empty; give some text to respond to");
  std::string problem = settings.sampling.Problem();
  if (problem.empty() && settings.max_tokens < 0) problem = "max_tokens must be >= 0";
  const int64_t vocab = model_->config().vocab_size;
  for (int32_t id : settings.stop_token_ids) {
    if (id < 0 || id >= vocab) problem = "stop_token_ids names token " + std::to_string(id) + ", outside the vocabulary of " + std::to_string(vocab);
  }
  for (const auto& [id, _] : settings.sampling.logit_bias) {
    if (id >= vocab) problem = "logit_bias names token " + std::to_string(id) + ", outside the vocabulary of " + std::to_string(vocab);
  }
  if (!problem.empty()) throw std::invalid_argument("generation config: " + problem);
  std::vector<std::string> turns = turns_;
  turns.push_back(prompt);
  std::string full_text = format_.Render(turns);
  // Prefill only what the KV cache lacks. A template that rewrites earlier turns (or an answer
  // cut at a stop string) breaks the prefix: then the conversation is fed again whole.
  bool incremental = StartsWith(full_text, kv_text_);
  std::vector<int32_t> ids = tokenizer_->Encode(incremental ? full_text.substr(kv_text_.size()) : full_text);
  bool fresh = !incremental || turns_.empty();
  if (fresh && format_.add_bos && format_.bos_token_id) ids.insert(ids.begin(), *format_.bos_token_id);
  if (incremental) ids.insert(ids.begin(), pending_.begin(), pending_.end());
  model_->CheckFits(static_cast<int64_t>(ids.size()), !incremental);
  if (!incremental) Reset();
  pending_.clear();
  std::string answer = GenerateFrom(ids, settings, on_piece, cancelled);
  turns.push_back(answer);
  turns_ = std::move(turns);
  kv_text_ = full_text + answer;
  return answer;
}

std::string ChatSession::GenerateFrom(const std::vector<int32_t>& ids, const GenerationSettings& settings,
                                      const PieceCallback& on_piece, const CancelCheck& cancelled) {
  GenerationStats stats;
  Clock::time_point called = Clock::now();
  std::vector<float> logits = model_->Prefill(ids);
  history_ids_.insert(history_ids_.end(), ids.begin(), ids.end());
  stats.prefill_tokens = static_cast<int64_t>(ids.size());
  stats.prefill_seconds = Seconds(called);
  std::set<int32_t> stop_ids = format_.stop_token_ids;
  GenerationStep step(*tokenizer_, settings, history_ids_, model_->num_cached_tokens(),
                      model_->context_window_size(), stop_ids, format_.stop_strings);
  std::string answer;
  Clock::time_point decoding = Clock::now();
  auto deliver = [&](const std::string& text) {
    if (text.empty()) return;
    if (answer.empty()) stats.time_to_first_token = Seconds(called);
    answer += text;
    if (on_piece) on_piece(text);
  };
  for (;;) {
    std::optional<StepOutput> out = step.Step(logits);
    if (!out) break;
    deliver(out->text);
    bool finished = !out->finish_reason.empty();
    if (!finished && cancelled && cancelled()) {
      deliver(step.Cancel());
      finished = true;
    }
    if (finished) {
      if (out->appended) pending_ = {out->sampled};  // sampled but never fed
      break;
    }
    logits = model_->Decode(out->sampled);
    history_ids_.push_back(out->sampled);
  }
  stats.finish_reason = step.finish_reason();
  stats.decode_seconds = Seconds(decoding);
  stats.decode_tokens = static_cast<int64_t>(step.generated().size());
  stats_ = stats;
  last_output_ids_ = step.generated();
  return answer;
}

}  // namespace mlc
