// Reading user JSON files: the whole file read first (so a directory or an I/O error is a message,
// not a stream exception in the parser), then parsed with a callback that tracks the keys of each
// open object.
#include "cache/json_file.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <fstream>
#include <iterator>
#include <set>
#include <stdexcept>
#include <system_error>
#include <vector>

namespace sigattn::cache {

nlohmann::json parse_strict_json(std::string_view text, const std::string& origin) {
  using nlohmann::json;
  std::vector<std::set<std::string>> open_objects;
  const json::parser_callback_t check_keys = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      open_objects.pop_back();
    } else if (event == json::parse_event_t::key &&
               !open_objects.back().insert(parsed.get<std::string>()).second) {
      throw std::invalid_argument(fmt::format("{}: the key '{}' appears twice in one object",
                                              origin, parsed.get<std::string>()));
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), check_keys);
  } catch (const json::exception& error) {
    // parse_error, and out_of_range for a number too large for a double (1e400).
    throw std::invalid_argument(fmt::format("{} is not valid JSON: {}", origin, error.what()));
  }
}

nlohmann::json read_strict_json_file(const std::filesystem::path& path, std::string_view what) {
  const auto fail = [&](const std::string& why) {
    throw std::invalid_argument(fmt::format("cannot read the {} {}: {}", what, path.string(), why));
  };
  std::error_code status_error;
  if (std::filesystem::is_directory(path, status_error)) fail("it is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(std::error_code(errno, std::generic_category()).message());
  std::string text;
  try {
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } catch (const std::ios_base::failure& error) {
    fail(error.what());
  }
  if (in.bad()) fail("a read error");
  return parse_strict_json(text, fmt::format("{} {}", what, path.string()));
}

}  // namespace sigattn::cache
