// Next-token sampling: logit bias, penalties, then temperature, top-k, top-p and min-p, in the
// order and with the rules of runtime/sampling.py (greedy at temperature 0: the first maximum).
#pragma once

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace mlc {

struct SamplingConfig {
  double temperature = 0.7;
  double top_p = 0.95;
  int64_t top_k = 40;  // 0: off
  double min_p = 0.0;
  double repetition_penalty = 1.0;  // over the context and the answer (transformers' rule)
  double presence_penalty = 0.0;    // over the answer (OpenAI's rule)
  double frequency_penalty = 0.0;
  std::map<int32_t, double> logit_bias;

  // "" where the settings are valid, else the problem (as GenerationConfig.validate says it).
  std::string Problem() const;
};

int32_t Sample(std::vector<float> logits, const SamplingConfig& config, std::mt19937_64& rng,
               const std::vector<int32_t>& context_ids, const std::vector<int32_t>& generated_ids);

}  // namespace mlc
