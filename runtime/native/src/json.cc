#include "json.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "unicode.h"

namespace mlc {

class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : text_(text) {}

  Json ParseDocument() {
    Json value = ParseValue(0);
    SkipSpace();
    if (pos_ != text_.size()) Fail("unexpected text after the JSON value");
    return value;
  }

 private:
  static constexpr int kMaxDepth = 512;

  [[noreturn]] void Fail(const std::string& what) const {
    throw std::runtime_error("invalid JSON at byte " + std::to_string(pos_) + ": " + what);
  }

  void SkipSpace() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool Consume(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  Json ParseValue(int depth) {
    if (depth > kMaxDepth) Fail("nested too deeply");
    SkipSpace();
    if (pos_ >= text_.size()) Fail("unexpected end of text");
    Json out;
    char c = text_[pos_];
    if (c == '{') {
      ++pos_;
      out.kind_ = Json::Kind::kObject;
      out.object_ = std::make_shared<Json::Object>();
      SkipSpace();
      if (pos_ < text_.size() && text_[pos_] == '}') {
        ++pos_;
        return out;
      }
      for (;;) {
        SkipSpace();
        if (pos_ >= text_.size() || text_[pos_] != '"') Fail("expected a string key");
        std::string key = ParseString();
        SkipSpace();
        if (pos_ >= text_.size() || text_[pos_] != ':') Fail("expected ':'");
        ++pos_;
        (*out.object_)[key] = ParseValue(depth + 1);
        SkipSpace();
        if (pos_ < text_.size() && text_[pos_] == ',') {
          ++pos_;
          continue;
        }
        if (pos_ < text_.size() && text_[pos_] == '}') {
          ++pos_;
          return out;
        }
        Fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      ++pos_;
      out.kind_ = Json::Kind::kArray;
      out.array_ = std::make_shared<Json::Array>();
      SkipSpace();
      if (pos_ < text_.size() && text_[pos_] == ']') {
        ++pos_;
        return out;
      }
      for (;;) {
        out.array_->push_back(ParseValue(depth + 1));
        SkipSpace();
        if (pos_ < text_.size() && text_[pos_] == ',') {
          ++pos_;
          continue;
        }
        if (pos_ < text_.size() && text_[pos_] == ']') {
          ++pos_;
          return out;
        }
        Fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      out.kind_ = Json::Kind::kString;
      out.string_ = std::make_shared<std::string>(ParseString());
      return out;
    }
    for (bool value : {true, false}) {
      if (Consume(value ? "true" : "false")) {
        out.kind_ = Json::Kind::kBool;
        out.bool_ = value;
        return out;
      }
    }
    if (Consume("null")) return out;
    if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber();
    // Python's json module writes these for non-finite floats.
    if (Consume("NaN")) return Number(NAN);
    if (Consume("Infinity")) return Number(INFINITY);
    if (Consume("-Infinity")) return Number(-INFINITY);
    Fail(std::string("unexpected character '") + c + "'");
  }

  static Json Number(double value) {
    Json out;
    out.kind_ = Json::Kind::kNumber;
    out.number_ = value;
    return out;
  }

  Json ParseNumber() {
    size_t start = pos_;
    if (text_[pos_] == '-') ++pos_;
    if (Consume("Infinity")) return Number(-INFINITY);
    auto digits = [&] {
      size_t from = pos_;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
      if (pos_ == from) Fail("expected a digit");
    };
    digits();
    bool integral = true;
    if (pos_ < text_.size() && text_[pos_] == '.') {
      ++pos_;
      digits();
      integral = false;
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
      digits();
      integral = false;
    }
    std::string literal(text_.substr(start, pos_ - start));
    Json out = Number(std::strtod(literal.c_str(), nullptr));
    if (integral && literal.size() < 19) {
      out.integral_ = true;
      out.integer_ = std::strtoll(literal.c_str(), nullptr, 10);
    }
    return out;
  }

  unsigned ParseHex4() {
    if (pos_ + 4 > text_.size()) Fail("truncated \\u escape");
    unsigned value = 0;
    for (int i = 0; i < 4; ++i) {
      char h = text_[pos_++];
      value <<= 4;
      if (h >= '0' && h <= '9') value |= h - '0';
      else if (h >= 'a' && h <= 'f') value |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') value |= h - 'A' + 10;
      else Fail("bad hex digit in a \\u escape");
    }
    return value;
  }

  std::string ParseString() {
    ++pos_;  // the opening quote
    std::string out;
    for (;;) {
      if (pos_ >= text_.size()) Fail("unterminated string");
      char c = text_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) Fail("control character in a string");
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (pos_ >= text_.size()) Fail("unterminated escape");
      char e = text_[pos_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          unsigned cp = ParseHex4();
          if (cp >= 0xD800 && cp < 0xDC00 && text_.substr(pos_, 2) == "\\u") {
            size_t save = pos_;
            pos_ += 2;
            unsigned low = ParseHex4();
            if (low >= 0xDC00 && low < 0xE000) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else {
              pos_ = save;  // a lone high surrogate, kept as Python keeps it
            }
          }
          AppendUtf8(&out, static_cast<char32_t>(cp));
          break;
        }
        default: Fail(std::string("bad escape \\") + e);
      }
    }
  }

  std::string_view text_;
  size_t pos_ = 0;
};

Json Json::Parse(std::string_view text) { return JsonParser(text).ParseDocument(); }

const char* Json::kind_name() const {
  switch (kind_) {
    case Kind::kNull: return "null";
    case Kind::kBool: return "a boolean";
    case Kind::kNumber: return "a number";
    case Kind::kString: return "a string";
    case Kind::kArray: return "an array";
    case Kind::kObject: return "an object";
  }
  return "?";
}

static std::runtime_error KindError(const Json& value, const char* wanted) {
  return std::runtime_error(std::string("expected ") + wanted + ", found " + value.kind_name());
}

bool Json::as_bool() const {
  if (!is_bool()) throw KindError(*this, "a boolean");
  return bool_;
}

double Json::as_double() const {
  if (!is_number()) throw KindError(*this, "a number");
  return integral_ ? static_cast<double>(integer_) : number_;
}

int64_t Json::as_int() const {
  if (is_integer()) return integer_;
  if (is_number() && std::floor(number_) == number_ && std::fabs(number_) < 9.0e18) {
    return static_cast<int64_t>(number_);
  }
  throw KindError(*this, "an integer");
}

const std::string& Json::as_string() const {
  if (!is_string()) throw KindError(*this, "a string");
  return *string_;
}

const Json::Array& Json::as_array() const {
  if (!is_array()) throw KindError(*this, "an array");
  return *array_;
}

const Json::Object& Json::as_object() const {
  if (!is_object()) throw KindError(*this, "an object");
  return *object_;
}

bool Json::has(const std::string& key) const {
  return is_object() && object_->count(key) > 0;
}

const Json& Json::at(const std::string& key) const {
  const Object& object = as_object();
  auto it = object.find(key);
  if (it == object.end()) throw std::runtime_error("missing key \"" + key + "\"");
  return it->second;
}

const Json& Json::get(const std::string& key) const {
  static const Json kNull;
  if (!is_object()) return kNull;
  auto it = object_->find(key);
  return it == object_->end() ? kNull : it->second;
}

std::string JsonQuote(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(c);
        }
    }
  }
  return out + "\"";
}

std::string Json::Dump() const {
  switch (kind_) {
    case Kind::kNull: return "null";
    case Kind::kBool: return bool_ ? "true" : "false";
    case Kind::kNumber: {
      if (integral_) return std::to_string(integer_);
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.17g", number_);
      return buf;
    }
    case Kind::kString: return JsonQuote(*string_);
    case Kind::kArray: {
      std::string out = "[";
      for (size_t i = 0; i < array_->size(); ++i) out += (i ? "," : "") + (*array_)[i].Dump();
      return out + "]";
    }
    case Kind::kObject: {
      std::string out = "{";
      bool first = true;
      for (const auto& [key, value] : *object_) {
        out += (first ? "" : ",") + JsonQuote(key) + ":" + value.Dump();
        first = false;
      }
      return out + "}";
    }
  }
  return "null";
}

}  // namespace mlc
