#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>

namespace mlc {

std::string SamplingConfig::Problem() const {
  if (!(temperature >= 0)) return "temperature must be >= 0";
  if (!(top_p > 0 && top_p <= 1)) return "top_p must be in (0, 1]";
  if (top_k < 0) return "top_k must be >= 0";
  if (!(min_p >= 0 && min_p <= 1)) return "min_p must be in [0, 1]";
  if (!(repetition_penalty > 0)) return "repetition_penalty must be > 0";
  for (const auto& [token, bias] : logit_bias) {
    if (token < 0) return "logit_bias keys are token ids, not " + std::to_string(token);
    if (!(bias >= -100 && bias <= 100)) {
      return "logit_bias of token " + std::to_string(token) + " must be a number in [-100, 100]";
    }
  }
  return "";
}

namespace {

void ApplyPenalties(std::vector<float>& logits, const SamplingConfig& config,
                    const std::vector<int32_t>& context_ids, const std::vector<int32_t>& generated_ids) {
  const float penalty = static_cast<float>(config.repetition_penalty);
  if (config.repetition_penalty != 1.0) {
    for (int32_t id : std::set<int32_t>(context_ids.begin(), context_ids.end())) {
      float& v = logits[id];
      v = v > 0 ? v / penalty : v * penalty;
    }
  }
  if (config.presence_penalty != 0 || config.frequency_penalty != 0) {
    std::map<int32_t, int> counts;
    for (int32_t id : generated_ids) ++counts[id];
    for (const auto& [id, count] : counts) {
      logits[id] -= static_cast<float>(config.frequency_penalty) * static_cast<float>(count) +
                    static_cast<float>(config.presence_penalty);
    }
  }
}

}  // namespace

int32_t Sample(std::vector<float> logits, const SamplingConfig& config, std::mt19937_64& rng,
               const std::vector<int32_t>& context_ids, const std::vector<int32_t>& generated_ids) {
  for (const auto& [id, bias] : config.logit_bias) {
    if (id < static_cast<int32_t>(logits.size())) logits[id] += static_cast<float>(bias);
  }
  ApplyPenalties(logits, config, context_ids, generated_ids);
  const size_t n = logits.size();
  size_t best = 0;
  for (size_t i = 1; i < n; ++i) {
    if (logits[i] > logits[best] || (std::isnan(logits[i]) && !std::isnan(logits[best]))) best = i;
  }
  if (config.temperature == 0) return static_cast<int32_t>(best);
  // Shift first: any temperature > 0, however small, then gives finite values <= 0.
  std::vector<double> scaled(n);
  for (size_t i = 0; i < n; ++i) scaled[i] = static_cast<double>(logits[i] - logits[best]) / config.temperature;
  if (config.top_k > 0 && static_cast<size_t>(config.top_k) < n) {
    std::vector<double> sorted = scaled;
    std::nth_element(sorted.begin(), sorted.begin() + (config.top_k - 1), sorted.end(), std::greater<double>());
    double kth = sorted[config.top_k - 1];
    for (double& v : scaled) {
      if (v < kth) v = -std::numeric_limits<double>::infinity();
    }
  }
  double top = *std::max_element(scaled.begin(), scaled.end());
  std::vector<double> probs(n);
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += probs[i] = std::exp(scaled[i] - top);
  for (double& p : probs) p /= total;
  if (config.top_p < 1.0) {
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return probs[a] > probs[b]; });
    double mass = 0, sum = std::accumulate(probs.begin(), probs.end(), 0.0);
    size_t cut = n;
    for (size_t i = 0; i < n; ++i) {
      mass += probs[order[i]];
      if (mass >= config.top_p * sum) {  // the smallest prefix whose mass reaches top_p
        cut = i + 1;
        break;
      }
    }
    for (size_t i = cut; i < n; ++i) probs[order[i]] = 0;
  }
  if (config.min_p > 0) {
    double most = *std::max_element(probs.begin(), probs.end());
    for (double& p : probs) {
      if (p < config.min_p * most) p = 0;
    }
  }
  std::discrete_distribution<size_t> draw(probs.begin(), probs.end());
  return static_cast<int32_t>(draw(rng));
}

}  // namespace mlc
