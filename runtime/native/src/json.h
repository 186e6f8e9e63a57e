// A JSON value and a strict parser (RFC 8259), enough for a build's configuration files.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mlc {

class Json {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  using Array = std::vector<Json>;
  using Object = std::map<std::string, Json>;

  Json() = default;
  static Json Parse(std::string_view text);  // throws std::runtime_error naming the offset

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::kNull; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_number() const { return kind_ == Kind::kNumber; }
  bool is_integer() const { return kind_ == Kind::kNumber && integral_; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_object() const { return kind_ == Kind::kObject; }

  // Typed access; each throws std::runtime_error when the value has another kind.
  bool as_bool() const;
  double as_double() const;
  int64_t as_int() const;
  const std::string& as_string() const;
  const Array& as_array() const;
  const Object& as_object() const;

  // Object members: `has(key)`, `at(key)` (throws when absent), `get(key)` (null when absent).
  bool has(const std::string& key) const;
  const Json& at(const std::string& key) const;
  const Json& get(const std::string& key) const;

  std::string Dump() const;  // compact JSON text
  const char* kind_name() const;

 private:
  friend class JsonParser;
  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  bool integral_ = false;
  double number_ = 0;
  int64_t integer_ = 0;
  std::shared_ptr<std::string> string_;
  std::shared_ptr<Array> array_;
  std::shared_ptr<Object> object_;
};

// `text` as a JSON string literal (quoted, escaped).
std::string JsonQuote(std::string_view text);

}  // namespace mlc
