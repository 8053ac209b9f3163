// Strict JSON reading and writing of tuning results. Every check happens before a row is used,
// so a bad file changes nothing.
#include "cache/json_io.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <chrono>
#include <cmath>
#include <initializer_list>
#include <stdexcept>
#include <string_view>

#include "cache/json_file.hpp"

namespace sigattn::cache {
namespace {

using nlohmann::json;

// Largest sequence-length bucket: the forward pass accepts lengths up to 2^24.
constexpr std::int64_t kMaxBucket = std::int64_t{1} << 24;
constexpr std::int64_t kMaxSmCount = 4096;
constexpr std::int64_t kMaxTileValue = 1024;
constexpr std::size_t kTemplateHashLength = 32;

// A value as JSON text for a message; strings that are not UTF-8 (possible in a document built in
// memory, not in a parsed file) show replacement characters instead of failing.
std::string shown(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Accumulates the path of the value being read, for messages like
// "tuned.json: results[3].tile.block_m: ...".
class Reader {
 public:
  Reader(const json& value, std::string where) : value_(value), where_(std::move(where)) {}

  [[noreturn]] void fail(std::string_view problem) const {
    throw Error(Status::invalid_argument, fmt::format("{}: {}", where_, problem));
  }

  const json& value() const { return value_; }
  const std::string& where() const { return where_; }

  void expect_object(std::initializer_list<std::string_view> required,
                     std::initializer_list<std::string_view> optional = {}) const {
    if (!value_.is_object()) fail(fmt::format("expected an object, found {}", value_.type_name()));
    for (const auto& [key, unused] : value_.items()) {
      const auto known = [&key](std::initializer_list<std::string_view> names) {
        return std::find(names.begin(), names.end(), key) != names.end();
      };
      if (!known(required) && !known(optional)) {
        fail(fmt::format("unknown field '{}' (known fields: {}{}{})", key,
                         fmt::join(required, ", "), optional.size() > 0 ? ", " : "",
                         fmt::join(optional, ", ")));
      }
    }
    for (std::string_view name : required) {
      if (!value_.contains(name)) fail(fmt::format("missing field '{}'", name));
    }
  }

  Reader field(std::string_view name) const {
    return Reader(value_.at(name), fmt::format("{}.{}", where_, name));
  }
  bool has(std::string_view name) const { return value_.contains(name); }

  std::string string(bool allow_empty = false) const {
    if (!value_.is_string()) fail(fmt::format("expected a string, found {}", value_.type_name()));
    std::string text = value_.get<std::string>();
    if (!allow_empty && text.empty()) fail("must not be empty");
    return text;
  }

  std::int64_t integer(std::int64_t low, std::int64_t high) const {
    if (!value_.is_number_integer()) {
      fail(fmt::format("expected an integer, found {}", shown(value_)));
    }
    const bool negative = value_.is_number_integer() && !value_.is_number_unsigned() &&
                          value_.get<std::int64_t>() < 0;
    if (!negative && value_.get<std::uint64_t>() > static_cast<std::uint64_t>(high)) {
      fail(fmt::format("{} is out of range [{}, {}]", shown(value_), low, high));
    }
    const std::int64_t number = value_.get<std::int64_t>();
    if (number < low) fail(fmt::format("{} is out of range [{}, {}]", number, low, high));
    return number;
  }

  // A UTC time as the tuner writes it, "2026-11-28T19:03:02Z", with a real date and time of day.
  std::string timestamp() const {
    const std::string text = string();
    constexpr std::string_view kPattern = "dddd-dd-ddTdd:dd:ddZ";
    bool shaped = text.size() == kPattern.size();
    for (std::size_t i = 0; shaped && i < text.size(); ++i) {
      shaped = kPattern[i] == 'd' ? std::isdigit(static_cast<unsigned char>(text[i])) != 0
                                  : text[i] == kPattern[i];
    }
    const auto digits = [&](std::size_t at, std::size_t count) {
      return shaped ? std::stoi(text.substr(at, count)) : 0;
    };
    const std::chrono::year_month_day date{std::chrono::year(digits(0, 4)),
                                           std::chrono::month(digits(5, 2)),
                                           std::chrono::day(digits(8, 2))};
    if (!shaped || !date.ok() || digits(11, 2) > 23 || digits(14, 2) > 59 || digits(17, 2) > 60) {
      fail(fmt::format("'{}' is not a UTC time such as 2026-11-28T19:03:02Z", text));
    }
    return text;
  }

  double number(double low, bool low_inclusive) const {
    if (!value_.is_number()) fail(fmt::format("expected a number, found {}", shown(value_)));
    const double number = value_.get<double>();
    if (!std::isfinite(number) || number < low || (!low_inclusive && number == low)) {
      fail(
          fmt::format("{} must be a finite number {} {}", number, low_inclusive ? ">=" : ">", low));
    }
    return number;
  }

 private:
  const json& value_;
  std::string where_;
};

DeviceKey read_device(const Reader& reader) {
  reader.expect_object({"name", "arch", "sm_count"});
  DeviceKey device;
  device.name = reader.field("name").string();
  device.arch = reader.field("arch").string();
  try {
    policy::target_for_arch(device.arch);
  } catch (const std::invalid_argument& error) {
    reader.field("arch").fail(error.what());
  }
  device.sm_count = static_cast<int>(reader.field("sm_count").integer(1, kMaxSmCount));
  return device;
}

std::string read_template_hash(const Reader& reader) {
  std::string hash = reader.string();
  const bool hex = std::all_of(hash.begin(), hash.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
  });
  if (hash.size() != kTemplateHashLength || !hex) {
    reader.fail(fmt::format("'{}' is not a template hash ({} lowercase hex digits)", hash,
                            kTemplateHashLength));
  }
  return hash;
}

gen::KernelSpec read_spec(const Reader& reader) {
  const std::string text = reader.string();
  gen::KernelSpec spec;
  try {
    spec = gen::parse_spec(text);
  } catch (const std::invalid_argument& error) {
    reader.fail(error.what());
  }
  if (gen::to_string(spec) != text) {
    reader.fail(fmt::format("'{}' is not in canonical form ('{}')", text, gen::to_string(spec)));
  }
  return spec;
}

int read_bucket(const Reader& reader) {
  const std::int64_t bucket = reader.integer(1, kMaxBucket);
  if (!std::has_single_bit(static_cast<std::uint64_t>(bucket))) {
    reader.fail(fmt::format("{} is not a power of two", bucket));
  }
  return static_cast<int>(bucket);
}

gen::TileConfig read_tile(const Reader& reader) {
  reader.expect_object({"family", "block_m", "block_n", "warps", "stages"},
                       {"atomic_dq", "schedule", "splits"});
  gen::TileConfig tile;
  try {
    tile.family = gen::parse_family(reader.field("family").string());
  } catch (const std::invalid_argument& error) {
    reader.field("family").fail(error.what());
  }
  tile.block_m = static_cast<int>(reader.field("block_m").integer(1, kMaxTileValue));
  tile.block_n = static_cast<int>(reader.field("block_n").integer(1, kMaxTileValue));
  tile.warps = static_cast<int>(reader.field("warps").integer(1, kMaxTileValue));
  tile.stages = static_cast<int>(reader.field("stages").integer(1, kMaxTileValue));
  if (reader.has("atomic_dq")) {
    const json& atomic = reader.field("atomic_dq").value();
    if (!atomic.is_boolean()) reader.field("atomic_dq").fail("expected true or false");
    tile.atomic_dq = atomic.get<bool>();
  }
  if (reader.has("schedule")) {
    try {
      tile.schedule = gen::parse_schedule(reader.field("schedule").string());
    } catch (const std::invalid_argument& error) {
      reader.field("schedule").fail(error.what());
    }
  }
  if (reader.has("splits")) {
    tile.splits = static_cast<int>(reader.field("splits").integer(1, kMaxTileValue));
  }
  return tile;
}

struct RowKey {
  DeviceKey device;
  std::string template_hash;
  gen::KernelSpec spec;
  ProblemKey problem;
};

RowKey read_row_key(const Reader& entry) {
  RowKey key;
  key.device = read_device(entry.field("device"));
  key.template_hash = read_template_hash(entry.field("template_hash"));
  key.spec = read_spec(entry.field("spec"));
  key.problem = {gen::to_string(key.spec), read_bucket(entry.field("seqlen_q_bucket")),
                 read_bucket(entry.field("seqlen_k_bucket"))};
  return key;
}

TuningResult read_result(const Reader& entry) {
  entry.expect_object({"device", "template_hash", "spec", "seqlen_q_bucket", "seqlen_k_bucket",
                       "tile", "time_ms", "tflops", "measured_at"},
                      {"method", "source"});
  const RowKey key = read_row_key(entry);
  TuningResult result;
  result.device = key.device;
  result.template_hash = key.template_hash;
  result.problem = key.problem;
  result.tile = read_tile(entry.field("tile"));
  // A result is what the runtime launches, so its tile must pass the constraints of its arch.
  const std::string why =
      policy::rejection(key.spec, result.tile, policy::target_for_arch(key.device.arch));
  if (!why.empty()) {
    entry.field("tile").fail(fmt::format("tile {} is rejected for {} on {}: {}",
                                         gen::to_string(result.tile), key.problem.spec,
                                         key.device.arch, why));
  }
  result.time_ms = entry.field("time_ms").number(0.0, false);
  result.tflops = entry.field("tflops").number(0.0, true);
  result.measured_at = entry.field("measured_at").timestamp();
  if (entry.has("method")) result.method = entry.field("method").string(true);
  if (entry.has("source")) result.source = entry.field("source").string(true);
  return result;
}

std::optional<double> optional_number(const Reader& entry, std::string_view name, double low,
                                      bool low_inclusive) {
  if (!entry.has(name) || entry.value().at(name).is_null()) return std::nullopt;
  return entry.field(name).number(low, low_inclusive);
}

TuningCandidate read_candidate(const Reader& entry) {
  entry.expect_object({"device", "template_hash", "spec", "seqlen_q_bucket", "seqlen_k_bucket",
                       "tile", "status", "measured_at"},
                      {"time_ms", "tflops", "message"});
  const RowKey key = read_row_key(entry);
  TuningCandidate candidate;
  candidate.device = key.device;
  candidate.template_hash = key.template_hash;
  candidate.problem = key.problem;
  candidate.tile = read_tile(entry.field("tile"));
  try {
    candidate.status = parse_candidate_status(entry.field("status").string());
  } catch (const std::invalid_argument& error) {
    entry.field("status").fail(error.what());
  }
  candidate.time_ms = optional_number(entry, "time_ms", 0.0, false);
  candidate.tflops = optional_number(entry, "tflops", 0.0, true);
  if (candidate.status == CandidateStatus::ok && !candidate.time_ms) {
    entry.fail("a candidate with status ok needs time_ms");
  }
  if (entry.has("message")) candidate.message = entry.field("message").string(true);
  candidate.measured_at = entry.field("measured_at").timestamp();
  return candidate;
}

json device_json(const DeviceKey& device) {
  return {{"name", device.name}, {"arch", device.arch}, {"sm_count", device.sm_count}};
}

json key_json(const DeviceKey& device, const std::string& template_hash, const ProblemKey& problem,
              const gen::TileConfig& tile) {
  json tile_json;
  gen::to_json(tile_json, tile);
  return {{"device", device_json(device)},
          {"template_hash", template_hash},
          {"spec", problem.spec},
          {"seqlen_q_bucket", problem.seqlen_q_bucket},
          {"seqlen_k_bucket", problem.seqlen_k_bucket},
          {"tile", tile_json}};
}

}  // namespace

json to_json(const TuningDocument& document) {
  json results = json::array();
  for (const TuningResult& r : document.results) {
    json entry = key_json(r.device, r.template_hash, r.problem, r.tile);
    entry["time_ms"] = r.time_ms;
    entry["tflops"] = r.tflops;
    entry["measured_at"] = r.measured_at;
    entry["method"] = r.method;
    entry["source"] = r.source;
    results.push_back(std::move(entry));
  }
  json candidates = json::array();
  for (const TuningCandidate& c : document.candidates) {
    json entry = key_json(c.device, c.template_hash, c.problem, c.tile);
    entry["status"] = to_string(c.status);
    entry["time_ms"] = c.time_ms ? json(*c.time_ms) : json(nullptr);
    entry["tflops"] = c.tflops ? json(*c.tflops) : json(nullptr);
    entry["message"] = c.message;
    entry["measured_at"] = c.measured_at;
    candidates.push_back(std::move(entry));
  }
  return {{"format", kTuningFormat},
          {"format_version", kTuningFormatVersion},
          {"results", std::move(results)},
          {"candidates", std::move(candidates)}};
}

TuningDocument parse_tuning_document(const json& value, const std::string& origin) {
  const Reader root(value, origin);
  root.expect_object({"format", "format_version"}, {"results", "candidates"});
  if (const std::string format = root.field("format").string(); format != kTuningFormat) {
    root.field("format").fail(fmt::format("'{}' is not '{}'", format, kTuningFormat));
  }
  if (const std::int64_t version = root.field("format_version").integer(1, 1 << 30);
      version != kTuningFormatVersion) {
    root.field("format_version")
        .fail(fmt::format("version {} is not supported; this sigattn reads version {}", version,
                          kTuningFormatVersion));
  }
  TuningDocument document;
  for (const auto& [name, read] :
       {std::pair<std::string_view, bool>{"results", true}, {"candidates", false}}) {
    if (!root.has(name)) continue;
    const Reader list = root.field(name);
    if (!list.value().is_array()) list.fail("expected an array");
    for (std::size_t i = 0; i < list.value().size(); ++i) {
      const Reader entry(list.value()[i], fmt::format("{}[{}]", list.where(), i));
      if (read) {
        document.results.push_back(read_result(entry));
      } else {
        document.candidates.push_back(read_candidate(entry));
      }
    }
  }
  return document;
}

TuningDocument read_tuning_file(const std::filesystem::path& path) {
  json value;
  try {
    value = read_strict_json_file(path, "tuning file");
  } catch (const std::invalid_argument& error) {
    throw Error(Status::invalid_argument, error.what());
  }
  return parse_tuning_document(value, path.filename().string());
}

TuningDocument read_shipped_directory(const std::filesystem::path& directory) {
  TuningDocument all;
  std::error_code error;
  if (!std::filesystem::is_directory(directory, error)) return all;
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(directory, error)) {
    if (entry.is_regular_file() && entry.path().extension() == ".json") {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  for (const std::filesystem::path& file : files) {
    TuningDocument document = read_tuning_file(file);
    all.results.insert(all.results.end(), document.results.begin(), document.results.end());
    all.candidates.insert(all.candidates.end(), document.candidates.begin(),
                          document.candidates.end());
  }
  return all;
}

TuningDocument export_document(TuningStore& store) {
  return {store.all_best(), store.all_candidates()};
}

}  // namespace sigattn::cache
