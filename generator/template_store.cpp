// The template hash: XXH3-128 over the embedded templates, in name order, each as name + NUL +
// content + NUL so that moving text between files changes the hash.
#include "generator/template_store.hpp"

#include <fmt/format.h>
#include <xxhash.h>

namespace sigattn::gen {

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

}  // namespace sigattn::gen
