// The kernel templates embedded at build time (see cmake/embed_templates.cmake) and their hash.
// NVRTC receives them as in-memory headers, so nothing is read from disk at run time.
#pragma once

#include <string>
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

}  // namespace sigattn::gen
