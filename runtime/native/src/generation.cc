#include "generation.h"

#include <algorithm>
#include <stdexcept>

namespace mlc {
namespace {

const std::string kIncomplete = "\xEF\xBF\xBD";  // U+FFFD: what an incomplete character decodes to

bool EndsWith(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::string TextStreamer::Window(size_t from, size_t to) const {
  return tokenizer_.Decode(std::vector<int32_t>(ids_.begin() + from, ids_.begin() + to), true);
}

std::string TextStreamer::Put(int32_t id) {
  ids_.push_back(id);
  std::string prefix = Window(prefix_offset_, read_offset_);
  std::string full = Window(prefix_offset_, ids_.size());
  if (full.size() > prefix.size() && !EndsWith(full, kIncomplete)) {
    prefix_offset_ = read_offset_;
    read_offset_ = ids_.size();
    return full.substr(prefix.size());
  }
  return "";
}

std::string TextStreamer::Finish() {
  std::string prefix = Window(prefix_offset_, read_offset_);
  std::string full = Window(prefix_offset_, ids_.size());
  prefix_offset_ = read_offset_ = ids_.size();
  return full.compare(0, prefix.size(), prefix) == 0 ? full.substr(prefix.size()) : "";
}

StopStringFilter::StopStringFilter(std::vector<std::string> stop) {
  for (std::string& s : stop) {
    if (!s.empty()) stop_.push_back(std::move(s));
  }
}

std::string StopStringFilter::Put(const std::string& text) {
  if (stopped_) return "";
  pending_ += text;
  size_t first = std::string::npos;
  for (const std::string& s : stop_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  size_t hold = 0;  // the longest suffix of pending that is a proper prefix of a stop string
  for (const std::string& s : stop_) {
    for (size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n) {
      if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_ = pending_.substr(pending_.size() - hold);
  return out;
}

std::string StopStringFilter::Finish() {
  std::string out = stopped_ ? "" : pending_;
  pending_.clear();
  return out;
}

GenerationStep::GenerationStep(const Tokenizer& tokenizer, const GenerationSettings& settings,
                               std::vector<int32_t> context_ids, int64_t kv_tokens, int64_t context_window_size,
                               const std::set<int32_t>& stop_token_ids, const std::vector<std::string>& stop_strings)
    : settings_(settings),
      context_ids_(std::move(context_ids)),
      kv_tokens_(kv_tokens),
      context_window_size_(context_window_size),
      stop_token_ids_(stop_token_ids),
      rng_(settings.seed ? *settings.seed : std::random_device{}()),
      streamer_(tokenizer),
      stop_filter_([&] {
        std::vector<std::string> all = settings.stop;
        all.insert(all.end(), stop_strings.begin(), stop_strings.end());
        return all;
      }()) {
  stop_token_ids_.insert(settings.stop_token_ids.begin(), settings.stop_token_ids.end());
}

std::string GenerationStep::Finish(const std::string& reason) {
  finished_ = true;
  finish_reason_ = reason;
  std::string text = stop_filter_.Put(streamer_.Finish());
  return text + stop_filter_.Finish();
}

std::optional<StepOutput> GenerationStep::Step(const std::vector<float>& logits) {
  if (finished_) throw std::logic_error("the answer has finished; start a new GenerationStep");
  if (static_cast<int64_t>(generated_.size()) >= settings_.max_tokens) {
    Finish("length");
    return std::nullopt;
  }
  std::vector<int32_t> history = context_ids_;
  history.insert(history.end(), generated_.begin(), generated_.end());
  StepOutput out;
  out.sampled = Sample(logits, settings_.sampling, rng_, history, generated_);
  if (stop_token_ids_.count(out.sampled)) {
    out.text = Finish("stop");
    out.finish_reason = "stop";
    return out;
  }
  out.appended = true;
  generated_.push_back(out.sampled);
  out.text = stop_filter_.Put(streamer_.Put(out.sampled));
  std::string reason;
  if (stop_filter_.stopped()) {
    reason = "stop";
  } else if (static_cast<int64_t>(generated_.size()) >= settings_.max_tokens) {
    reason = "length";
  } else if (kv_tokens_ + static_cast<int64_t>(generated_.size()) - 1 >= context_window_size_) {
    reason = "length";  // no room in the KV cache to feed this token
  }
  if (!reason.empty()) {
    out.text += Finish(reason);
    out.finish_reason = reason;
  }
  return out;
}

}  // namespace mlc
