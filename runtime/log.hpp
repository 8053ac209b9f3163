// The library's messages on stderr: one line each, "sigattn: <level>: <text>" (the warn level's
// lines say "warning"), written whole under
// a lock so that lines of several threads never interleave. The level (off, error, warn, info,
// debug) comes from $SIGATTN_LOG when first asked (default warn) and can be changed at run time
// (sigattn::set_log_level); a message above it is not formatted.
#pragma once

#include <fmt/format.h>

#include <array>
#include <optional>
#include <sigattn/sigattn.hpp>
#include <string>
#include <string_view>
#include <utility>

namespace sigattn::logging {

inline constexpr const char* kVariable = "SIGATTN_LOG";
inline constexpr LogLevel kDefaultLevel = LogLevel::warn;
// Every level, from the quietest.
inline constexpr std::array<LogLevel, 5> kLevels = {LogLevel::off, LogLevel::error, LogLevel::warn,
                                                    LogLevel::info, LogLevel::debug};

// "off", "error", "warn", "info", "debug".
std::string_view to_string(LogLevel level);
// The level a name spells (the names above, in any case), or nothing.
std::optional<LogLevel> parse_level(std::string_view text);
// The level $SIGATTN_LOG = `value` selects (null or empty: the default); for any other value the
// default, and `warning` receives a message naming the variable and the accepted names.
LogLevel level_from_environment(const char* value, std::string* warning);

LogLevel level();
void set_level(LogLevel level);
// Whether a message of `level` is written now.
bool enabled(LogLevel level);

// "sigattn: <level>: <message>\n" on stderr ("warning" for warn), whatever the current level.
void write(LogLevel level, std::string_view message);

// True the first time this process asks about `key`, false after: for messages given once.
bool first_time(const std::string& key);

template <class... Args>
void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
  if (enabled(level)) write(level, fmt::format(format, std::forward<Args>(args)...));
}

template <class... Args>
void warn(fmt::format_string<Args...> format, Args&&... args) {
  log(LogLevel::warn, format, std::forward<Args>(args)...);
}
template <class... Args>
void info(fmt::format_string<Args...> format, Args&&... args) {
  log(LogLevel::info, format, std::forward<Args>(args)...);
}
template <class... Args>
void debug(fmt::format_string<Args...> format, Args&&... args) {
  log(LogLevel::debug, format, std::forward<Args>(args)...);
}

}  // namespace sigattn::logging
