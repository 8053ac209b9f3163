// The level setting, read from $SIGATTN_LOG once, the one writer of stderr lines, and the public
// sigattn::set_log_level / log_level.
#include "runtime/log.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <set>

#include "runtime/errors.hpp"

namespace sigattn::logging {
namespace {

std::mutex& output_mutex() {
  static std::mutex mutex;
  return mutex;
}

// The current level, from the environment on first use. A bad value's warning is written here
// directly: the level it would be checked against is what is being initialised.
std::atomic<LogLevel>& current() {
  static std::atomic<LogLevel> level = [] {
    std::string warning;
    const LogLevel from_environment = level_from_environment(std::getenv(kVariable), &warning);
    if (!warning.empty()) write(LogLevel::warn, warning);
    return from_environment;
  }();
  return level;
}

}  // namespace

std::string_view to_string(LogLevel level) {
  switch (level) {
    case LogLevel::off:
      return "off";
    case LogLevel::error:
      return "error";
    case LogLevel::warn:
      return "warn";
    case LogLevel::info:
      return "info";
    case LogLevel::debug:
      return "debug";
  }
  return "unknown";
}

std::optional<LogLevel> parse_level(std::string_view text) {
  std::string lower(text);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const LogLevel level : kLevels) {
    if (lower == to_string(level)) return level;
  }
  return std::nullopt;
}

LogLevel level_from_environment(const char* value, std::string* warning) {
  if (value == nullptr || *value == '\0') return kDefaultLevel;
  if (const std::optional<LogLevel> level = parse_level(value)) return *level;
  if (warning != nullptr) {
    *warning = fmt::format("{}={} is not a log level (off, error, warn, info, debug); {} kept",
                           kVariable, value, to_string(kDefaultLevel));
  }
  return kDefaultLevel;
}

LogLevel level() { return current().load(std::memory_order_relaxed); }

void set_level(LogLevel level) { current().store(level, std::memory_order_relaxed); }

bool enabled(LogLevel level) { return level != LogLevel::off && level <= logging::level(); }

void write(LogLevel level, std::string_view message) {
  const std::string_view label = level == LogLevel::warn ? "warning" : to_string(level);
  const std::string line = fmt::format("sigattn: {}: {}\n", label, message);
  std::lock_guard lock(output_mutex());
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

bool first_time(const std::string& key) {
  static std::mutex mutex;
  static std::set<std::string> seen;
  std::lock_guard lock(mutex);
  return seen.insert(key).second;
}

}  // namespace sigattn::logging

namespace sigattn {

void set_log_level(LogLevel level) {
  if (std::find(logging::kLevels.begin(), logging::kLevels.end(), level) ==
      logging::kLevels.end()) {
    throw_invalid(
        fmt::format("log level {} is none of 0 (off), 1 (error), 2 (warn), 3 (info), "
                    "4 (debug)",
                    static_cast<int>(level)));
  }
  logging::set_level(level);
}

LogLevel log_level() { return logging::level(); }

}  // namespace sigattn
