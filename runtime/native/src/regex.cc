#include "regex.h"

#include <algorithm>
#include <bitset>
#include <cctype>
#include <stdexcept>

#include "unicode.h"

namespace mlc {
namespace {

// --- character sets ------------------------------------------------------------------------

enum class Prop { kLetter, kMark, kNumber, kDecimal, kPunct, kConnector, kSpace, kWord };

// Oniguruma's \w: Unicode's word characters less Join_Control, plus the Latin-1 digits and
// fractions (superscripts, U+00BC..U+00BE) that its ISO-8859-1 table marks as word.
bool IsOnigurumaWord(char32_t cp) {
  if (cp == 0xB2 || cp == 0xB3 || cp == 0xB9 || (cp >= 0xBC && cp <= 0xBE)) return true;
  return cp != 0x200C && cp != 0x200D && IsWord(cp);
}

bool HasProp(Prop prop, char32_t cp) {
  switch (prop) {
    case Prop::kLetter: return IsLetter(cp);
    case Prop::kMark: return IsMark(cp);
    case Prop::kNumber: return IsNumber(cp);
    case Prop::kDecimal: return IsDecimal(cp);
    case Prop::kPunct: return IsPunct(cp);
    case Prop::kConnector: return IsConnector(cp);
    case Prop::kSpace: return IsWhiteSpace(cp);
    case Prop::kWord: return IsOnigurumaWord(cp);
  }
  return false;
}

// A set of codepoints: ranges, properties and nested sets, maybe negated; under (?i) a
// codepoint is in it when any codepoint of the same simple case folding is.
struct CharSet {
  std::vector<std::pair<char32_t, char32_t>> ranges;
  std::vector<std::pair<Prop, bool>> props;  // (property, negated)
  std::vector<CharSet> nested;
  bool negated = false;
  bool icase = false;
  std::vector<char32_t> folds;  // under (?i): the foldings of the members, sorted
  std::bitset<128> ascii;       // Matches() of ASCII, precomputed

  bool Contains(char32_t cp) const {  // before case folding and negation
    for (const auto& [first, last] : ranges) {
      if (cp >= first && cp <= last) return true;
    }
    for (const auto& [prop, negated_prop] : props) {
      if (HasProp(prop, cp) != negated_prop) return true;
    }
    for (const CharSet& set : nested) {
      if (set.Matches(cp)) return true;
    }
    return false;
  }

  bool Evaluate(char32_t cp) const {
    bool in = Contains(cp) ||
              (icase && std::binary_search(folds.begin(), folds.end(), SimpleFold(cp)));
    return in != negated;
  }

  bool Matches(char32_t cp) const { return cp < 128 ? ascii[cp] : Evaluate(cp); }

  // Fills `folds` and `ascii`; call once the members are in.
  void Prepare() {
    for (CharSet& set : nested) set.Prepare();
    if (icase) {
      for (const auto& [cp, folded] : SimpleFoldPairs()) {
        if (Contains(cp) || Contains(folded)) folds.push_back(folded);
      }
      std::sort(folds.begin(), folds.end());
      folds.erase(std::unique(folds.begin(), folds.end()), folds.end());
    }
    for (char32_t cp = 0; cp < 128; ++cp) ascii[cp] = Evaluate(cp);
  }
};

// --- syntax tree ---------------------------------------------------------------------------

enum class Mode { kGreedy, kLazy, kPossessive };
enum class Assertion { kLineStart, kLineEnd, kTextStart, kTextEnd, kTextEndNewline,
                       kWordBoundary, kNotWordBoundary };

struct Node {
  enum class Kind { kSet, kConcat, kAlt, kRepeat, kLook, kAtomic, kAssert };
  explicit Node(Kind node_kind = Kind::kConcat) : kind(node_kind) {}
  Kind kind;
  int set = -1;                // kSet
  std::vector<Node> children;  // kConcat, kAlt; the operand of kRepeat, kLook, kAtomic
  int min = 1;                 // kRepeat
  int max = 1;                 // kRepeat; -1: unbounded
  Mode mode = Mode::kGreedy;   // kRepeat
  bool negate = false;         // kLook
  Assertion assertion = Assertion::kLineStart;
  bool literal = false;        // kSet of one codepoint written as itself
  char32_t codepoint = 0;      // when literal
  bool icase = false;          // when literal
};

struct Escape {
  enum class Kind { kChar, kProp, kAssert };
  explicit Escape(char32_t c = 0) : codepoint(c) {}
  Kind kind = Kind::kChar;
  char32_t codepoint = 0;
  Prop prop = Prop::kLetter;
  bool negated = false;
  Assertion assertion = Assertion::kLineStart;
};

constexpr int kMaxRepeat = 1000;
constexpr int kMaxNesting = 100;  // groups and classes

class Parser {
 public:
  Parser(const std::string& pattern, std::vector<CharSet>* sets)
      : pattern_(pattern), text_(Utf8Decode(pattern)), sets_(sets) {}

  Node Parse() {
    Node root = ParseAlternation();
    if (pos_ < text_.size()) Fail("unmatched ')'");
    return root;
  }

 private:
  [[noreturn]] void Fail(const std::string& what) const {
    throw std::runtime_error("regex '" + pattern_ + "': " + what + " (at character " +
                             std::to_string(pos_) + ")");
  }

  bool AtEnd() const { return pos_ >= text_.size(); }
  bool Peek(char32_t c, size_t ahead = 0) const {
    return pos_ + ahead < text_.size() && text_[pos_ + ahead] == c;
  }
  char32_t Next() {
    if (AtEnd()) Fail("unexpected end of pattern");
    return text_[pos_++];
  }

  Node ParseAlternation() {
    Node alt(Node::Kind::kAlt);
    alt.children.push_back(ParseConcat());
    while (Peek('|')) {
      ++pos_;
      alt.children.push_back(ParseConcat());
    }
    return alt.children.size() == 1 ? std::move(alt.children[0]) : alt;
  }

  Node ParseConcat() {
    Node concat(Node::Kind::kConcat);
    while (!AtEnd() && !Peek('|') && !Peek(')')) {
      if (ParseInlineFlags()) {  // as in Oniguruma, the rest of the group, `|` included
        concat.children.push_back(ParseAlternation());
        break;
      }
      Node item = ParseQuantified();
      if (item.kind == Node::Kind::kConcat) {  // an unquantified group: its items join ours
        for (Node& child : item.children) concat.children.push_back(std::move(child));
      } else {
        concat.children.push_back(std::move(item));
      }
    }
    CheckCaseFoldedRuns(concat);
    return concat.children.size() == 1 ? std::move(concat.children[0]) : concat;
  }

  // `(?i)` or `(?-i)`: sets the flag for the rest of the enclosing group.
  bool ParseInlineFlags() {
    size_t start = pos_;
    if (!Peek('(') || !Peek('?', 1)) return false;
    pos_ += 2;
    std::optional<bool> icase = ParseFlags();
    if (icase.has_value() && Peek(')')) {
      ++pos_;
      icase_ = *icase;
      return true;
    }
    pos_ = start;
    return false;
  }

  // `i` or `-i` (after `(?`); nullopt, consuming nothing, when something else follows.
  std::optional<bool> ParseFlags() {
    if (Peek('i')) {
      ++pos_;
      return true;
    }
    if (Peek('-') && Peek('i', 1)) {
      pos_ += 2;
      return false;
    }
    return std::nullopt;
  }

  Node ParseQuantified() {
    Node atom = ParseAtom();
    if (AtEnd()) return atom;
    int min = 0, max = 0;
    if (!ParseQuantifier(&min, &max)) return atom;
    if (atom.kind == Node::Kind::kAssert || atom.kind == Node::Kind::kLook) {
      Fail("a quantifier on an anchor or a lookahead is not supported");
    }
    Node repeat(Node::Kind::kRepeat);
    repeat.min = min;
    repeat.max = max;
    bool braces = text_[pos_ - 1] == '}';
    if (Peek('?')) {
      ++pos_;
      repeat.mode = Mode::kLazy;
    } else if (Peek('+') && !braces) {
      ++pos_;
      repeat.mode = Mode::kPossessive;
    }
    if (!AtEnd() && (Peek('*') || Peek('+') || Peek('?') || IsBraceQuantifier())) {
      Fail("a quantifier on a quantifier is not supported");
    }
    repeat.children.push_back(std::move(atom));
    return repeat;
  }

  bool ParseQuantifier(int* min, int* max) {
    char32_t c = text_[pos_];
    if (c == '?' || c == '*' || c == '+') {
      ++pos_;
      *min = c == '+' ? 1 : 0;
      *max = c == '?' ? 1 : -1;
      return true;
    }
    if (!IsBraceQuantifier()) return false;
    ++pos_;
    *min = ParseNumber(0);
    *max = *min;
    if (Peek(',')) {
      ++pos_;
      *max = Peek('}') ? -1 : ParseNumber(0);
    }
    ++pos_;  // '}'
    if (*max >= 0 && *max < *min) Fail("a repeat range {m,n} with n < m");
    return true;
  }

  // `{m}`, `{m,}`, `{m,n}` or `{,n}` at the current position (else `{` is a literal).
  bool IsBraceQuantifier() const {
    if (!Peek('{')) return false;
    size_t i = pos_ + 1;
    auto digits = [&] {
      size_t start = i;
      while (i < text_.size() && text_[i] >= '0' && text_[i] <= '9') ++i;
      return i > start;
    };
    bool low = digits();
    bool comma = i < text_.size() && text_[i] == ',';
    if (comma) ++i;
    bool high = comma && digits();
    return i < text_.size() && text_[i] == '}' && (low || high);
  }

  int ParseNumber(int fallback) {
    if (!(!AtEnd() && text_[pos_] >= '0' && text_[pos_] <= '9')) return fallback;
    long value = 0;
    while (!AtEnd() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      value = value * 10 + (text_[pos_++] - '0');
      if (value > kMaxRepeat) Fail("a repeat count above " + std::to_string(kMaxRepeat));
    }
    return static_cast<int>(value);
  }

  Node ParseAtom() {
    char32_t c = Next();
    switch (c) {
      case '(': return ParseGroup();
      case '[': return SetNode(ParseClass());
      case '.': {
        CharSet dot;
        dot.negated = true;
        dot.ranges.push_back({'\n', '\n'});
        return SetNode(std::move(dot));
      }
      case '^': return AssertNode(Assertion::kLineStart);
      case '$': return AssertNode(Assertion::kLineEnd);
      case '*':
      case '+':
      case '?': --pos_; Fail("nothing to repeat");
      case '\\': {
        Escape escape = ParseEscape(false);
        if (escape.kind == Escape::Kind::kAssert) return AssertNode(escape.assertion);
        if (escape.kind == Escape::Kind::kProp) return PropSet(escape);
        return LiteralNode(escape.codepoint);
      }
      default: return LiteralNode(c);
    }
  }

  // Counts one level of nesting while alive.
  class Nested {
   public:
    explicit Nested(Parser* parser) : parser_(parser) {
      if (++parser_->depth_ > kMaxNesting) parser_->Fail("nested too deeply");
    }
    ~Nested() { --parser_->depth_; }

   private:
    Parser* parser_;
  };

  Node ParseGroup() {
    Nested nested(this);
    bool saved_icase = icase_;
    Node group(Node::Kind::kConcat);
    bool wrap = false;
    if (Peek('?')) {
      ++pos_;
      if (Peek('=') || Peek('!')) {
        group.kind = Node::Kind::kLook;
        group.negate = Next() == '!';
        wrap = true;
      } else if (Peek('>')) {
        ++pos_;
        group.kind = Node::Kind::kAtomic;
        wrap = true;
      } else if (Peek(':')) {
        ++pos_;
      } else if (std::optional<bool> icase = ParseFlags(); icase.has_value() && Peek(':')) {
        ++pos_;
        icase_ = *icase;
      } else {
        Fail("unsupported group syntax '(?'");
      }
    }
    Node body = ParseAlternation();
    if (!Peek(')')) Fail("missing ')'");
    ++pos_;
    icase_ = saved_icase;
    if (!wrap) return body;
    group.children.push_back(std::move(body));
    return group;
  }

  // After `[`.
  CharSet ParseClass() {
    Nested nested(this);
    CharSet set;
    set.icase = icase_;
    if (Peek('^')) {
      ++pos_;
      set.negated = true;
    }
    for (bool first = true;; first = false) {
      if (AtEnd()) Fail("missing ']'");
      if (Peek(']') && !first) {
        ++pos_;
        break;
      }
      if (Peek('[')) {
        if (Peek(':', 1)) Fail("POSIX bracket classes are not supported");
        ++pos_;
        set.nested.push_back(ParseClass());
        continue;
      }
      if (Peek('&') && Peek('&', 1)) Fail("class intersection (&&) is not supported");
      Escape low = ParseClassAtom();
      if (low.kind == Escape::Kind::kProp) {
        set.props.push_back({low.prop, low.negated});
        continue;
      }
      char32_t high = low.codepoint;
      if (Peek('-') && pos_ + 1 < text_.size() && text_[pos_ + 1] != ']') {
        ++pos_;
        Escape end = ParseClassAtom();
        if (end.kind != Escape::Kind::kChar) Fail("a range ending in a class escape");
        high = end.codepoint;
        if (high < low.codepoint) Fail("an empty range in a class");
      }
      set.ranges.push_back({low.codepoint, high});
      if (icase_ && HasMultiCharFold(low.codepoint, high)) FailMultiCharFold();
    }
    return set;
  }

  Escape ParseClassAtom() {
    char32_t c = Next();
    if (c != '\\') return Escape(c);
    return ParseEscape(true);
  }

  // After `\`.
  Escape ParseEscape(bool in_class) {
    char32_t c = Next();
    Escape out;
    switch (c) {
      case 's': case 'S': return PropEscape(Prop::kSpace, c == 'S');
      case 'd': case 'D': return PropEscape(Prop::kDecimal, c == 'D');
      case 'w': case 'W': return PropEscape(Prop::kWord, c == 'W');
      case 'p': case 'P': return ParseProperty(c == 'P');
      case 't': out.codepoint = '\t'; return out;
      case 'n': out.codepoint = '\n'; return out;
      case 'r': out.codepoint = '\r'; return out;
      case 'f': out.codepoint = '\f'; return out;
      case 'v': out.codepoint = '\v'; return out;
      case 'a': out.codepoint = 0x07; return out;
      case 'e': out.codepoint = 0x1B; return out;
      case 'x': out.codepoint = ParseHex(); return out;
      case 'u': out.codepoint = ParseHexDigits(4, 4); return out;
      default: break;
    }
    if (in_class && c == 'b') {
      out.codepoint = 0x08;
      return out;
    }
    if (!in_class) {
      const std::pair<char32_t, Assertion> anchors[] = {
          {'A', Assertion::kTextStart},     {'z', Assertion::kTextEnd},
          {'Z', Assertion::kTextEndNewline}, {'b', Assertion::kWordBoundary},
          {'B', Assertion::kNotWordBoundary}};
      for (const auto& [letter, assertion] : anchors) {
        if (c == letter) {
          out.kind = Escape::Kind::kAssert;
          out.assertion = assertion;
          return out;
        }
      }
    }
    bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (alnum) {
      --pos_;
      Fail("unsupported escape '\\" + Utf8Encode(std::u32string(1, c)) + "'");
    }
    out.codepoint = c;  // an identity escape
    return out;
  }

  static Escape PropEscape(Prop prop, bool negated) {
    Escape out;
    out.kind = Escape::Kind::kProp;
    out.prop = prop;
    out.negated = negated;
    return out;
  }

  // After `\p` or `\P`: `{Name}` or `{^Name}`.
  Escape ParseProperty(bool negated) {
    if (Next() != '{') Fail("expected '{' after \\p");
    if (Peek('^')) {
      ++pos_;
      negated = !negated;
    }
    std::string name;
    for (char32_t c = Next(); c != '}'; c = Next()) {
      if (c == ' ' || c == '_' || c == '-') continue;
      name += static_cast<char>(c < 128 ? std::tolower(static_cast<int>(c)) : '?');
    }
    const std::pair<const char*, Prop> names[] = {
        {"l", Prop::kLetter},       {"letter", Prop::kLetter},
        {"m", Prop::kMark},         {"mark", Prop::kMark},
        {"combiningmark", Prop::kMark},
        {"n", Prop::kNumber},       {"number", Prop::kNumber},
        {"nd", Prop::kDecimal},     {"decimalnumber", Prop::kDecimal},
        {"digit", Prop::kDecimal},  {"p", Prop::kPunct},
        {"punctuation", Prop::kPunct}, {"pc", Prop::kConnector},
        {"connectorpunctuation", Prop::kConnector},
        {"space", Prop::kSpace},    {"whitespace", Prop::kSpace},
        {"word", Prop::kWord}};
    for (const auto& [known, prop] : names) {
      if (name == known) return PropEscape(prop, negated);
    }
    Fail("unsupported property \\p{" + name + "}");
  }

  // After `\x`: one or two hex digits, or `{hex}`.
  char32_t ParseHex() {
    if (!Peek('{')) return ParseHexDigits(1, 2);
    ++pos_;
    char32_t value = ParseHexDigits(1, 6);
    if (Next() != '}') Fail("expected '}' after \\x{");
    return value;
  }

  char32_t ParseHexDigits(int min, int max) {
    char32_t value = 0;
    int count = 0;
    for (; count < max && !AtEnd(); ++count) {
      char32_t c = text_[pos_];
      int digit = c >= '0' && c <= '9'   ? c - '0'
                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                         : -1;
      if (digit < 0) break;
      value = value * 16 + digit;
      ++pos_;
    }
    if (count < min) Fail("expected hexadecimal digits");
    if (value > 0x10FFFF) Fail("a codepoint beyond U+10FFFF");
    return value;
  }

  Node SetNode(CharSet set) {
    set.Prepare();
    sets_->push_back(std::move(set));
    Node node(Node::Kind::kSet);
    node.set = static_cast<int>(sets_->size()) - 1;
    return node;
  }

  Node PropSet(const Escape& escape) {
    CharSet set;
    set.icase = icase_;
    set.props.push_back({escape.prop, escape.negated});
    return SetNode(std::move(set));
  }

  Node LiteralNode(char32_t c) {
    if (icase_ && HasMultiCharFold(c, c)) FailMultiCharFold();
    CharSet set;
    set.icase = icase_;
    set.ranges.push_back({c, c});
    Node node = SetNode(std::move(set));
    node.literal = true;
    node.codepoint = c;
    node.icase = icase_;
    return node;
  }

  static Node AssertNode(Assertion assertion) {
    Node node(Node::Kind::kAssert);
    node.assertion = assertion;
    return node;
  }

  // Oniguruma lets a case-insensitive string match a codepoint that folds to several ("st"
  // matches U+FB06); refused rather than matched differently.
  void CheckCaseFoldedRuns(const Node& concat) {
    std::u32string run;
    auto check = [&] {
      for (const std::u32string& target : MultiCharFoldTargets()) {
        if (run.find(target) != std::u32string::npos) FailMultiCharFold();
      }
      run.clear();
    };
    for (const Node& child : concat.children) {
      if (child.literal && child.icase) {
        run += SimpleFold(child.codepoint);
      } else {
        check();
      }
    }
    check();
  }

  [[noreturn]] void FailMultiCharFold() const {
    Fail("case-insensitive matching of a multi-codepoint case folding is not supported");
  }

  const std::string& pattern_;
  std::u32string text_;
  std::vector<CharSet>* sets_;
  size_t pos_ = 0;
  bool icase_ = false;
  int depth_ = 0;
};

// --- the program ---------------------------------------------------------------------------

enum class Op { kChar, kRun, kSplit, kJump, kMark, kLoop, kLook, kAtomic, kAssert, kMatch };

struct Inst {
  explicit Inst(Op inst_op) : op(inst_op) {}
  Op op;
  int x = 0;    // kSplit: preferred target; kJump, kLoop: target; kLook, kAtomic: sub-program
  int y = 0;    // kSplit: other target; kLoop: exit; kLook, kAtomic: the instruction after
  int arg = 0;  // kChar, kRun: set; kMark, kLoop: register
  int min = 0, max = 0;  // kRun; max -1: unbounded
  Mode mode = Mode::kGreedy;
  bool negate = false;
  Assertion assertion = Assertion::kLineStart;
};

constexpr size_t kMaxProgram = 100000;

}  // namespace

struct Regex::Program {
  std::vector<CharSet> sets;
  std::vector<Inst> insts;
  int registers = 0;
  int first_set = -1;  // a set every match starts with, if known
};

namespace {

class Compiler {
 public:
  Compiler(Regex::Program* program, const std::string& pattern)
      : program_(program), pattern_(pattern) {}

  void CompileRoot(const Node& root) {
    Compile(root);
    Emit(Inst(Op::kMatch));
    const Inst& first = program_->insts[0];
    if (first.op == Op::kChar || (first.op == Op::kRun && first.min > 0)) {
      program_->first_set = first.arg;
    }
  }

 private:
  int Here() const { return static_cast<int>(program_->insts.size()); }

  int Emit(Inst inst) {
    if (program_->insts.size() >= kMaxProgram) {
      throw std::runtime_error("regex '" + pattern_ + "': too large once repeats are expanded");
    }
    program_->insts.push_back(inst);
    return Here() - 1;
  }

  Inst& At(int pc) { return program_->insts[pc]; }

  void Compile(const Node& node) {
    switch (node.kind) {
      case Node::Kind::kSet: {
        Inst inst(Op::kChar);
        inst.arg = node.set;
        Emit(inst);
        return;
      }
      case Node::Kind::kConcat:
        for (const Node& child : node.children) Compile(child);
        return;
      case Node::Kind::kAlt: return CompileAlternation(node);
      case Node::Kind::kRepeat: return CompileRepeat(node);
      case Node::Kind::kLook:
      case Node::Kind::kAtomic: {
        Inst inst(node.kind == Node::Kind::kLook ? Op::kLook : Op::kAtomic);
        inst.negate = node.negate;
        int pc = Emit(inst);
        At(pc).x = Here();
        Compile(node.children[0]);
        Emit(Inst(Op::kMatch));
        At(pc).y = Here();
        return;
      }
      case Node::Kind::kAssert: {
        Inst inst(Op::kAssert);
        inst.assertion = node.assertion;
        Emit(inst);
        return;
      }
    }
  }

  void CompileAlternation(const Node& node) {
    std::vector<int> jumps;
    for (size_t i = 0; i < node.children.size(); ++i) {
      int split = -1;
      if (i + 1 < node.children.size()) split = Emit(Inst(Op::kSplit));
      if (split >= 0) At(split).x = Here();
      Compile(node.children[i]);
      if (split >= 0) {
        jumps.push_back(Emit(Inst(Op::kJump)));
        At(split).y = Here();
      }
    }
    for (int jump : jumps) At(jump).x = Here();
  }

  void CompileRepeat(const Node& node) {
    const Node& operand = node.children[0];
    if (operand.kind == Node::Kind::kSet) {  // one codepoint a time: a loop without recursion
      Inst inst(Op::kRun);
      inst.arg = operand.set;
      inst.min = node.min;
      inst.max = node.max;
      inst.mode = node.mode;
      Emit(inst);
      return;
    }
    if (node.mode == Mode::kPossessive) {
      Node greedy = node;
      greedy.mode = Mode::kGreedy;
      Node atomic(Node::Kind::kAtomic);
      atomic.children.push_back(std::move(greedy));
      Compile(atomic);
      return;
    }
    for (int i = 0; i < node.min; ++i) Compile(operand);
    if (node.max < 0) return CompileStar(operand, node.mode == Mode::kLazy);
    std::vector<int> splits;
    for (int i = node.min; i < node.max; ++i) {
      splits.push_back(Emit(Inst(Op::kSplit)));
      Compile(operand);
    }
    for (int split : splits) SetSplit(split, split + 1, Here(), node.mode == Mode::kLazy);
  }

  // Iterations that match nothing end the loop, as in Oniguruma.
  void CompileStar(const Node& operand, bool lazy) {
    int reg = program_->registers++;
    int head = Emit(Inst(Op::kSplit));
    Inst mark(Op::kMark);
    mark.arg = reg;
    Emit(mark);
    Compile(operand);
    Inst loop(Op::kLoop);
    loop.arg = reg;
    loop.x = head;
    int tail = Emit(loop);
    At(tail).y = Here();
    SetSplit(head, head + 1, Here(), lazy);
  }

  void SetSplit(int pc, int enter, int skip, bool lazy) {
    At(pc).x = lazy ? skip : enter;
    At(pc).y = lazy ? enter : skip;
  }

  Regex::Program* program_;
  const std::string& pattern_;
};

// --- matching ------------------------------------------------------------------------------

struct Frame {
  enum class Kind { kBranch, kGreedy, kLazy, kRestore } kind;
  int pc;      // kBranch, kGreedy: where to go on; kLazy: the kRun; kRestore: the register
  size_t pos;  // kBranch: the position; kGreedy, kLazy: the run's end; kRestore: the old value
  size_t aux;  // kGreedy: the run's shortest end; kLazy: its length
};

class Matcher {
 public:
  Matcher(const Regex::Program& program, std::u32string_view text)
      : program_(program), text_(text), registers_(program.registers, 0) {}

  // Runs from `pc` at `pos` to the first kMatch; its position goes to `end`.
  bool Run(int pc, size_t pos, size_t* end) {
    const size_t base = stack_.size();
    for (;;) {
      const Inst& inst = program_.insts[pc];
      bool ok = true;
      switch (inst.op) {
        case Op::kChar:
          ok = pos < text_.size() && Set(inst).Matches(text_[pos]);
          if (ok) {
            ++pos;
            ++pc;
          }
          break;
        case Op::kRun: ok = EnterRun(inst, &pc, &pos); break;
        case Op::kSplit:
          stack_.push_back({Frame::Kind::kBranch, inst.y, pos, 0});
          pc = inst.x;
          break;
        case Op::kJump: pc = inst.x; break;
        case Op::kMark:
          stack_.push_back({Frame::Kind::kRestore, inst.arg, registers_[inst.arg], 0});
          registers_[inst.arg] = pos;
          ++pc;
          break;
        case Op::kLoop: pc = pos == registers_[inst.arg] ? inst.y : inst.x; break;
        case Op::kLook: {
          size_t ignored;
          ok = Run(inst.x, pos, &ignored) != inst.negate;
          pc = inst.y;
          break;
        }
        case Op::kAtomic: ok = Run(inst.x, pos, &pos); pc = inst.y; break;
        case Op::kAssert: ok = Holds(inst.assertion, pos); ++pc; break;
        case Op::kMatch:
          *end = pos;
          stack_.resize(base);
          return true;
      }
      if (!ok && !Backtrack(base, &pc, &pos)) return false;
    }
  }

 private:
  const CharSet& Set(const Inst& inst) const { return program_.sets[inst.arg]; }

  bool EnterRun(const Inst& inst, int* pc, size_t* pos) {
    const CharSet& set = Set(inst);
    size_t start = *pos;
    size_t limit = text_.size();
    if (inst.max >= 0) limit = std::min(limit, start + inst.max);
    size_t stop = inst.mode == Mode::kLazy ? std::min(limit, start + inst.min) : limit;
    while (*pos < stop && set.Matches(text_[*pos])) ++*pos;
    size_t count = *pos - start;
    if (count < static_cast<size_t>(inst.min)) return false;
    if (inst.mode == Mode::kLazy && *pos < limit) {
      stack_.push_back({Frame::Kind::kLazy, *pc, *pos, count});
    } else if (inst.mode == Mode::kGreedy && count > static_cast<size_t>(inst.min)) {
      stack_.push_back({Frame::Kind::kGreedy, *pc + 1, *pos, start + inst.min});
    }
    ++*pc;
    return true;
  }

  // Resumes at the latest choice above `base`; false when none is left.
  bool Backtrack(size_t base, int* pc, size_t* pos) {
    while (stack_.size() > base) {
      Frame& frame = stack_.back();
      switch (frame.kind) {
        case Frame::Kind::kRestore:
          registers_[frame.pc] = frame.pos;
          stack_.pop_back();
          continue;
        case Frame::Kind::kBranch:
          *pc = frame.pc;
          *pos = frame.pos;
          stack_.pop_back();
          return true;
        case Frame::Kind::kGreedy:
          *pc = frame.pc;
          *pos = --frame.pos;
          if (frame.pos == frame.aux) stack_.pop_back();
          return true;
        case Frame::Kind::kLazy: {
          const Inst& inst = program_.insts[frame.pc];
          bool more = inst.max < 0 || frame.aux < static_cast<size_t>(inst.max);
          if (more && frame.pos < text_.size() && Set(inst).Matches(text_[frame.pos])) {
            ++frame.aux;
            *pc = frame.pc + 1;
            *pos = ++frame.pos;
            return true;
          }
          stack_.pop_back();
          continue;
        }
      }
    }
    return false;
  }

  bool Holds(Assertion assertion, size_t pos) const {
    size_t size = text_.size();
    switch (assertion) {
      case Assertion::kLineStart: return pos == 0 || text_[pos - 1] == '\n';
      case Assertion::kLineEnd: return pos == size || text_[pos] == '\n';
      case Assertion::kTextStart: return pos == 0;
      case Assertion::kTextEnd: return pos == size;
      case Assertion::kTextEndNewline:
        return pos == size || (pos + 1 == size && text_[pos] == '\n');
      case Assertion::kWordBoundary:
      case Assertion::kNotWordBoundary: {
        bool before = pos > 0 && IsOnigurumaWord(text_[pos - 1]);
        bool after = pos < size && IsOnigurumaWord(text_[pos]);
        return (before != after) == (assertion == Assertion::kWordBoundary);
      }
    }
    return false;
  }

  const Regex::Program& program_;
  std::u32string_view text_;
  std::vector<size_t> registers_;
  std::vector<Frame> stack_;
};

}  // namespace

Regex::Regex(std::string_view pattern) : pattern_(pattern) {
  auto program = std::make_shared<Program>();
  Node root;
  try {
    root = Parser(pattern_, &program->sets).Parse();
  } catch (const std::runtime_error& e) {
    if (std::string(e.what()).rfind("regex '", 0) == 0) throw;
    throw std::runtime_error("regex '" + pattern_ + "': " + e.what());  // invalid UTF-8
  }
  Compiler(program.get(), pattern_).CompileRoot(root);
  program_ = std::move(program);
}

std::optional<Regex::Span> Regex::Search(std::u32string_view text, size_t from) const {
  Matcher matcher(*program_, text);
  const CharSet* first = program_->first_set >= 0 ? &program_->sets[program_->first_set] : nullptr;
  for (size_t start = from; start <= text.size(); ++start) {
    if (first != nullptr && (start == text.size() || !first->Matches(text[start]))) continue;
    size_t end;
    if (matcher.Run(0, start, &end)) return Span{start, end};
  }
  return std::nullopt;
}

std::vector<Regex::Span> Regex::FindAll(std::u32string_view text) const {
  std::vector<Span> out;
  size_t from = 0;
  std::optional<size_t> last_end;
  while (from <= text.size()) {
    std::optional<Span> match = Search(text, from);
    if (!match) break;
    auto [start, end] = *match;
    if (start == end) {
      from = end + 1;
      if (last_end == end) continue;
    } else {
      from = end;
    }
    last_end = end;
    out.push_back(*match);
  }
  return out;
}

std::string RegexEscape(std::string_view text) {
  std::string out;
  for (char c : text) {
    bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (static_cast<unsigned char>(c) < 0x80 && !alnum) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace mlc
