// JSON that users hand in (tuning documents, shape files): the file read with an error that says
// why it cannot be (missing, a directory, unreadable), and the text parsed with duplicate object
// keys rejected, since a parser that keeps one of them silently may keep the wrong one.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace sigattn::cache {

// Parses `text`; throws std::invalid_argument naming `origin` for invalid JSON and for an object
// that has a key twice.
nlohmann::json parse_strict_json(std::string_view text, const std::string& origin);

// Reads and parses a file; `what` names it in errors ("tuning file", "shape file"). Throws
// std::invalid_argument.
nlohmann::json read_strict_json_file(const std::filesystem::path& path, std::string_view what);

}  // namespace sigattn::cache
