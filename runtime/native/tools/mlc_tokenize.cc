// mlc-tokenize TOKENIZER_JSON: the native tokenizer and chat format alone, for checks against
// `tokenizers` and the Python templates.
//
// Reads one JSON object from stdin, {"encode": [text, ...], "decode": [[id, ...], ...],
// "render": {"format": CHAT_FORMAT, "conversations": [[content, ...], ...]}} (every key
// optional), and writes {"ids": [[id, ...], ...], "text": [text, ...], "rendered": [text, ...]}
// (decoded with skip_special_tokens; each conversation alternates user and assistant turns).
// A tokenizer that cannot be loaded prints the reason on stderr and exits with 1.
#include <cstdint>
#include <exception>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "chat_format.h"
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
  std::string rendered = "[";
  const mlc::Json& render = request.get("render");
  if (!render.is_null()) {
    mlc::ChatFormat format = mlc::ChatFormat::FromJson(render.at("format"));
    for (const mlc::Json& conversation : render.at("conversations").as_array()) {
      std::vector<std::string> turns;
      for (const mlc::Json& turn : conversation.as_array()) turns.push_back(turn.as_string());
      rendered += (rendered.size() > 1 ? "," : "") + mlc::JsonQuote(format.Render(turns));
    }
  }
  return "{\"ids\":" + ids + "],\"text\":" + text + "],\"rendered\":" + rendered + "]}";
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
