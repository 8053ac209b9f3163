// The spelling rule of on/off environment switches.
#include "runtime/environment.hpp"

#include <fmt/format.h>

#include <cstdlib>
#include <string>

#include "runtime/log.hpp"

namespace sigattn {

std::optional<bool> parse_switch(const char* name, const char* value, std::string* warning) {
  if (value == nullptr) return std::nullopt;
  const std::string_view text(value);
  if (text.empty()) return std::nullopt;
  if (text == "1" || text == "on" || text == "true") return true;
  if (text == "0" || text == "off" || text == "false") return false;
  if (warning != nullptr) {
    *warning = fmt::format("{}={} is neither on (1, on, true) nor off (0, off, false); ignored",
                           name, text);
  }
  return std::nullopt;
}

std::optional<bool> environment_switch(const char* name) {
  std::string warning;
  const std::optional<bool> setting = parse_switch(name, std::getenv(name), &warning);
  if (!warning.empty()) {
    logging::warn("{}", warning);
  }
  return setting;
}

}  // namespace sigattn
