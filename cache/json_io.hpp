// Tuning results as reviewable JSON: the format of `sigattn db export|import` and of the shipped
// databases in data/. Reading is strict: unknown fields, wrong types, out-of-range values and
// tiles that the search-space constraints reject for the row's arch are errors that name the
// entry and field, and nothing of a rejected document is used.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cache/tuning_store.hpp"

namespace sigattn::cache {

inline constexpr const char* kTuningFormat = "sigattn-tuning";
inline constexpr int kTuningFormatVersion = 1;

struct TuningDocument {
  std::vector<TuningResult> results;
  std::vector<TuningCandidate> candidates;
};

nlohmann::json to_json(const TuningDocument& document);

// Throws Error(invalid_argument) naming origin (a file name), the entry and the field.
TuningDocument parse_tuning_document(const nlohmann::json& json, const std::string& origin);
TuningDocument read_tuning_file(const std::filesystem::path& path);

// Every *.json file of a shipped data directory, in name order. A missing directory or one
// without JSON files gives an empty document.
TuningDocument read_shipped_directory(const std::filesystem::path& directory);

TuningDocument export_document(TuningStore& store);

}  // namespace sigattn::cache
