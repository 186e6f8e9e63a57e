// `chat-format.json` (written by `mlc build`, runtime/chat_format.py): the model's chat template
// reduced to fixed text around turns, checked at build time against the template.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "json.h"

namespace mlc {

struct ChatFormat {
  std::string first_user_prefix, user_prefix, user_suffix;
  bool trim = false;  // the template strips message contents (Python's str.strip)
  bool add_bos = false;
  std::optional<int32_t> bos_token_id;
  std::set<int32_t> stop_token_ids;
  std::vector<std::string> stop_strings;

  // Throws std::runtime_error naming what is missing or of another format version.
  static ChatFormat FromJson(const Json& json);
  // user/assistant messages alternating, from a user message: the text up to the answer.
  std::string Render(const std::vector<std::string>& turns) const;
};

}  // namespace mlc
