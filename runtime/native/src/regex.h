// The regular expressions of Hugging Face tokenizers: the subset of Oniguruma's syntax (Ruby
// flavour) that their patterns use, matched over codepoints by backtracking as Oniguruma does
// (the first alternative that leads to a match wins).
//
// Supported: literals, `.` (anything but \n), `^` `$` (line anchors) `\A` `\z` `\Z` `\b` `\B`;
// \s \S \d \D \w \W \p{..} \P{..} \p{^..} for L, M, N, Nd, P, Pc, Space, Word; \t \n \r \f \v
// \a \e \xHH \x{H..} \uHHHH and identity escapes; classes with ranges, negation, escapes and
// nested classes; groups ( ) (?: ) (?i: ) (?-i: ) (?i) (?> ); lookahead (?= ) (?! );
// alternation; ? * + {m} {m,} {m,n} {,n}, lazy (??) and possessive (?+ *+ ++).
// Anything else throws std::runtime_error naming the pattern.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mlc {

class Regex {
 public:
  using Span = std::pair<size_t, size_t>;  // [start, end), in codepoints

  explicit Regex(std::string_view pattern);  // UTF-8

  // The leftmost match that starts at `from` or later.
  std::optional<Span> Search(std::u32string_view text, size_t from = 0) const;
  // Every match, as Oniguruma's `find_iter` in `tokenizers` gives them: an empty match right
  // after the previous match is skipped, and the search goes on one codepoint further.
  std::vector<Span> FindAll(std::u32string_view text) const;

  const std::string& pattern() const { return pattern_; }

  struct Program;

 private:
  std::string pattern_;
  std::shared_ptr<const Program> program_;
};

// A pattern that matches `text` literally.
std::string RegexEscape(std::string_view text);

}  // namespace mlc
