#include "chat_format.h"

#include <stdexcept>

#include "unicode.h"

namespace mlc {
namespace {

constexpr int64_t kFormatVersion = 1;

// Python's str.isspace() characters, which str.strip() removes.
bool IsPythonSpace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string PythonStrip(const std::string& s) {
  std::u32string text = Utf8Decode(s);
  size_t first = 0, last = text.size();
  while (first < last && IsPythonSpace(text[first])) ++first;
  while (last > first && IsPythonSpace(text[last - 1])) --last;
  return Utf8Encode(std::u32string_view(text).substr(first, last - first));
}

}  // namespace

ChatFormat ChatFormat::FromJson(const Json& json) {
  if (json.at("format_version").as_int() != kFormatVersion) {
    throw std::runtime_error("format_version " + json.at("format_version").Dump() +
                             ", this runtime reads " + std::to_string(kFormatVersion));
  }
  ChatFormat format;
  format.first_user_prefix = json.at("first_user_prefix").as_string();
  format.user_prefix = json.at("user_prefix").as_string();
  format.user_suffix = json.at("user_suffix").as_string();
  format.trim = json.at("trim").as_bool();
  format.add_bos = json.at("add_bos").as_bool();
  if (json.at("bos_token_id").is_integer()) {
    format.bos_token_id = static_cast<int32_t>(json.at("bos_token_id").as_int());
  }
  for (const Json& id : json.at("stop_token_ids").as_array()) {
    format.stop_token_ids.insert(static_cast<int32_t>(id.as_int()));
  }
  for (const Json& s : json.at("stop_str").as_array()) format.stop_strings.push_back(s.as_string());
  return format;
}

std::string ChatFormat::Render(const std::vector<std::string>& turns) const {
  std::string text;
  for (size_t i = 0; i < turns.size(); ++i) {
    std::string content = trim ? PythonStrip(turns[i]) : turns[i];
    if (i % 2 == 0) {
      text += (i == 0 ? first_user_prefix : user_prefix) + content + user_suffix;
    } else {
      text += content;
    }
  }
  return text;
}

}  // namespace mlc
