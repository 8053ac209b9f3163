// The template hashes: XXH3-128 over all embedded templates (template_hash) or over those one entry
// template includes (included_sources_hash), each as name + NUL + content + NUL so that moving
// text between files changes the hash. The per-entry hash reads normalized sources, so that
// re-formatting a template or editing its comments keeps it.
#include "generator/template_store.hpp"

#include <fmt/format.h>
#include <xxhash.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <set>
#include <stdexcept>

namespace sigattn::gen {
namespace {

// Normalized sources by include path.
using NormalizedSources = std::map<std::string, std::string, std::less<>>;

bool word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_'; }
bool quote_char(char c) { return c == '"' || c == '\''; }
bool operator_char(char c) {
  return std::string_view("+-*/%&|^<>=!:.#?~").find(c) != std::string_view::npos;
}

// Whether dropping the whitespace between a and b could change the tokens: "int x" vs "intx",
// "a - -b" vs "a--b", u8 "x" vs u8"x".
bool whitespace_separates(char a, char b) {
  const bool a_word = word_char(a) || quote_char(a);
  const bool b_word = word_char(b) || quote_char(b);
  return (a_word && b_word) || (operator_char(a) && operator_char(b));
}

class Normalizer {
 public:
  explicit Normalizer(std::string_view source) : in_(source) {}

  std::string run() {
    while (at_ < in_.size()) {
      const char c = in_[at_];
      const char next = at_ + 1 < in_.size() ? in_[at_ + 1] : '\0';
      if (c == '\\' && next == '\n') {  // a line splice joins the lines
        at_ += 2;
        space_ = true;
      } else if (c == '\n') {
        end_line();
      } else if (std::isspace(static_cast<unsigned char>(c)) != 0) {
        ++at_;
        space_ = true;
      } else if (c == '/' && next == '/') {
        at_ = std::min(in_.find('\n', at_), in_.size());
        space_ = true;
      } else if (c == '/' && next == '*') {
        const std::size_t end = in_.find("*/", at_ + 2);
        at_ = end == std::string_view::npos ? in_.size() : end + 2;
        space_ = true;
      } else if (c == '"' || (c == '\'' && !digit_separator())) {
        literal(c);
      } else {
        if (line_start_ && c == '#') start_directive();
        emit(c);
        ++at_;
      }
    }
    if (directive_) out_.push_back('\n');
    return std::move(out_);
  }

 private:
  // A quote right after a digit, as in 1'000, separates digits instead of opening a literal.
  bool digit_separator() const {
    return !space_ && !out_.empty() && std::isdigit(static_cast<unsigned char>(out_.back())) != 0;
  }

  void emit(char c) {
    // In a directive whitespace can matter anywhere: "#define F (x)" is not "#define F(x)".
    if (space_ && !out_.empty() && out_.back() != '\n' &&
        (directive_ || whitespace_separates(out_.back(), c))) {
      out_.push_back(' ');
    }
    space_ = false;
    line_start_ = false;
    out_.push_back(c);
  }

  void end_line() {
    ++at_;
    line_start_ = true;
    if (directive_) {
      out_.push_back('\n');
      directive_ = false;
      space_ = false;
    } else {
      space_ = true;
    }
  }

  // A directive starts on a line of its own in the output as in the source.
  void start_directive() {
    directive_ = true;
    if (!out_.empty() && out_.back() != '\n') out_.push_back('\n');
    space_ = false;
  }

  // Copies a string or character literal as written, up to its closing quote or the line's end.
  void literal(char quote) {
    emit(quote);
    ++at_;
    while (at_ < in_.size() && in_[at_] != '\n') {
      const char c = in_[at_++];
      out_.push_back(c);
      if (c == '\\' && at_ < in_.size()) {
        out_.push_back(in_[at_++]);
      } else if (c == quote) {
        return;
      }
    }
  }

  std::string_view in_;
  std::size_t at_ = 0;
  std::string out_;
  bool space_ = false;      // whitespace or a comment since the last character written
  bool line_start_ = true;  // nothing but whitespace yet on this source line
  bool directive_ = false;  // inside a preprocessor directive
};

// The paths of the quoted #include directives of a normalized source.
std::vector<std::string> quoted_includes(std::string_view normalized) {
  constexpr std::string_view kInclude = "#include";
  std::vector<std::string> paths;
  std::size_t line = 0;
  while (line < normalized.size()) {
    const std::size_t end = std::min(normalized.find('\n', line), normalized.size());
    std::string_view text = normalized.substr(line, end - line);
    line = end + 1;
    if (!text.starts_with(kInclude)) continue;
    text.remove_prefix(kInclude.size());
    if (text.starts_with(' ')) text.remove_prefix(1);
    if (!text.starts_with('"')) continue;
    const std::size_t close = text.find('"', 1);
    if (close != std::string_view::npos) paths.emplace_back(text.substr(1, close - 1));
  }
  return paths;
}

NormalizedSources normalize_all(const std::vector<EmbeddedTemplate>& templates) {
  NormalizedSources sources;
  for (const EmbeddedTemplate& t : templates) sources.emplace(t.name, normalized_source(t.source));
  return sources;
}

std::vector<std::string> closure(std::string_view entry, const NormalizedSources& sources) {
  std::set<std::string, std::less<>> found;
  std::vector<std::pair<std::string, std::string>> pending = {{std::string(entry), ""}};
  while (!pending.empty()) {
    const auto [name, included_by] = std::move(pending.back());
    pending.pop_back();
    if (found.contains(name)) continue;
    const auto source = sources.find(name);
    if (source == sources.end()) {
      throw std::invalid_argument(
          included_by.empty()
              ? fmt::format("'{}' is not a kernel template", name)
              : fmt::format("{} includes '{}', which is not a kernel template", included_by, name));
    }
    found.insert(name);
    for (std::string& include : quoted_includes(source->second)) {
      pending.emplace_back(std::move(include), name);
    }
  }
  return {found.begin(), found.end()};
}

std::string closure_hash(std::string_view entry, const NormalizedSources& sources) {
  std::string hashed;
  for (const std::string& name : closure(entry, sources)) {
    hashed.append(name).push_back('\0');
    hashed.append(sources.find(name)->second).push_back('\0');
  }
  return hash_hex(hashed);
}

}  // namespace

std::string hash_hex(std::string_view bytes) {
  XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

const std::string& template_hash() {
  static const std::string hash = [] {
    std::string all;
    for (const auto& t : embedded_templates()) {
      all.append(t.name).push_back('\0');
      all.append(t.source).push_back('\0');
    }
    return hash_hex(all);
  }();
  return hash;
}

std::string normalized_source(std::string_view source) { return Normalizer(source).run(); }

std::vector<std::string> included_templates(std::string_view entry,
                                            const std::vector<EmbeddedTemplate>& templates) {
  return closure(entry, normalize_all(templates));
}

std::string included_sources_hash(std::string_view entry,
                                  const std::vector<EmbeddedTemplate>& templates) {
  return closure_hash(entry, normalize_all(templates));
}

const std::string& included_sources_hash(std::string_view entry) {
  static const std::map<std::string, std::string, std::less<>> hashes = [] {
    const NormalizedSources sources = normalize_all(embedded_templates());
    std::map<std::string, std::string, std::less<>> by_entry;
    for (const auto& [name, source] : sources) by_entry.emplace(name, closure_hash(name, sources));
    return by_entry;
  }();
  const auto found = hashes.find(entry);
  if (found == hashes.end()) {
    throw std::invalid_argument(fmt::format("'{}' is not a kernel template", entry));
  }
  return found->second;
}

}  // namespace sigattn::gen
