// The kernel templates embedded at build time (see cmake/embed_templates.cmake), the include graph
// between them, and their hashes. NVRTC receives them as in-memory headers, so nothing is read
// from disk at run time.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace sigattn::gen {

struct EmbeddedTemplate {
  const char* name;  // include path, e.g. "sigattn/fwd_sm80.cuh"
  const char* source;
};

const std::vector<EmbeddedTemplate>& embedded_templates();

// Hex XXH3-128 over every template's name and content: changes whenever any template changes.
const std::string& template_hash();

// Hex XXH3-128 of a byte string.
std::string hash_hex(std::string_view bytes);

// The source without what formatting and comments change: comments are dropped, each
// preprocessor directive keeps a line of its own with each run of whitespace in it as one space,
// and elsewhere whitespace remains only as one space between two characters that would otherwise
// join into another token (two of identifiers, numbers and literals, or two operator characters).
// String and character literals are kept as written.
std::string normalized_source(std::string_view source);

// The include paths of `entry` and of every template it includes, directly or not, in name order.
// Throws std::invalid_argument naming the template when `entry` or a quoted include is not in
// `templates`; <…> includes (NVRTC's own headers) are not followed.
std::vector<std::string> included_templates(
    std::string_view entry, const std::vector<EmbeddedTemplate>& templates = embedded_templates());

// Hex XXH3-128 over the normalized sources of included_templates(entry), each as name + NUL +
// normalized source + NUL: it changes when a template the entry includes changes what it says,
// not when a template it does not include changes or when one is only re-formatted. Computed once
// per entry for the embedded templates.
std::string included_sources_hash(std::string_view entry,
                                  const std::vector<EmbeddedTemplate>& templates);
const std::string& included_sources_hash(std::string_view entry);

}  // namespace sigattn::gen
