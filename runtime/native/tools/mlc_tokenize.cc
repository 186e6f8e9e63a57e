// mlc-tokenize TOKENIZER_JSON: the native tokenizer alone, for checks against `tokenizers`.
//
// Reads one JSON object from stdin, {"encode": [text, ...], "decode": [[id, ...], ...]}, and
// writes {"ids": [[id, ...], ...], "text": [text, ...]} (decoded with skip_special_tokens).
// A tokenizer that cannot be loaded prints the reason on stderr and exits with 1.
#include <cstdint>
#include <exception>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "json.h"
#include "tokenizer.h"

namespace {

std::string IdList(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) out += (i > 0 ? "," : "") + std::to_string(ids[i]);
  return out + "]";
}

std::string Run(const mlc::Tokenizer& tokenizer, const mlc::Json& request) {
  std::string ids = "[", text = "[";
  const mlc::Json& encode = request.get("encode");
  if (!encode.is_null()) {
    for (const mlc::Json& sample : encode.as_array()) {
      ids += (ids.size() > 1 ? "," : "") + IdList(tokenizer.Encode(sample.as_string()));
    }
  }
  const mlc::Json& decode = request.get("decode");
  if (!decode.is_null()) {
    for (const mlc::Json& list : decode.as_array()) {
      std::vector<int32_t> id_list;
      for (const mlc::Json& id : list.as_array()) {
        id_list.push_back(static_cast<int32_t>(id.as_int()));
      }
      text += (text.size() > 1 ? "," : "") + mlc::JsonQuote(tokenizer.Decode(id_list));
    }
  }
  return "{\"ids\":" + ids + "],\"text\":" + text + "]}";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: mlc-tokenize TOKENIZER_JSON < request.json\n";
    return 2;
  }
  std::unique_ptr<mlc::Tokenizer> tokenizer;
  try {
    tokenizer = mlc::Tokenizer::FromFile(argv[1]);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  try {
    std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    std::cout << Run(*tokenizer, mlc::Json::Parse(input)) << "\n";
  } catch (const std::exception& e) {
    std::cerr << "mlc-tokenize: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
