// The `sigattn` command line: version, doctor, gen, compile, db and tune. A thin layer over the
// library and the one place where errors become exit codes: 0 success, 1 some kernels failed to
// compile (or tune found no winner for a problem) or db verify found problems, 2 bad usage or
// argument (variant, tile, arch, tuning file, shape), 3 NVRTC cannot be loaded, 4 any other
// failure.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <exception>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sigattn/sigattn.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cache/paths.hpp"
#include "cli/db_commands.hpp"
#include "cli/tune_command.hpp"
#include "generator/generator.hpp"
#include "generator/kernel_spec.hpp"
#include "generator/tile_policy.hpp"
#include "runtime/compiler.hpp"
#include "runtime/doctor.hpp"
#include "runtime/errors.hpp"
#include "runtime/module_cache.hpp"
#include "runtime/persistent_cache.hpp"

namespace {

enum ExitCode : int {
  kExitOk = 0,
  kExitKernelsFailed = 1,
  kExitUsage = 2,
  kExitNvrtcMissing = 3,
  kExitFailure = 4,
};

constexpr const char* kExitCodeHelp =
    "Exit codes:\n"
    "  0  success\n"
    "  1  compile: at least one kernel failed to compile; db verify: problems found; tune: a\n"
    "     problem without a winner\n"
    "  2  bad usage or argument (unknown variant field, rejected tile, unknown arch, invalid\n"
    "     tuning file, missing database)\n"
    "  3  NVRTC cannot be loaded (install the CUDA toolkit's NVRTC or set SIGATTN_NVRTC_LIBRARY)\n"
    "  4  any other failure";

// The variant `gen --help` shows; its tile is allowed on every supported architecture (a test
// runs it).
constexpr const char* kGenExample =
    "fwd.bf16.d128.dense.causal.nosmod.fast.anylen[/sm80.m64n64w4s2]";

// How many lines of an NVRTC log a failed kernel shows in the per-kernel listing.
constexpr int kLogLinesShown = 12;

// Thrown for argument errors found by the CLI itself; maps to exit code 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

sigattn::policy::Target checked_target(const std::string& arch) {
  if (!sigattn::arch_supported(arch)) {
    throw UsageError(fmt::format("unknown or unsupported arch '{}' (supported: {})", arch,
                                 sigattn::policy::architecture_names()));
  }
  return sigattn::policy::target_for_arch(arch);
}

std::string command_names(const CLI::App& app) {
  std::vector<std::string> names;
  for (const CLI::App* command :
       app.get_subcommands([](const CLI::App* c) { return !c->get_group().empty(); })) {
    names.push_back(command->get_name());
  }
  return fmt::format("{}", fmt::join(names, ", "));
}

int run_doctor(bool json) {
  const sigattn::DoctorReport report = sigattn::collect_doctor_report();
  if (json) {
    fmt::print("{}\n", sigattn::doctor_json(report));
    return kExitOk;
  }
  fmt::print("{}", sigattn::doctor_text(report));
  const bool any_usable_gpu =
      std::any_of(report.devices.begin(), report.devices.end(),
                  [](const sigattn::DeviceReport& device) { return !device.arch.empty(); });
  if (!any_usable_gpu) {
    fmt::print("no usable GPU: kernels can be generated and compiled here, not run\n");
  }
  return kExitOk;
}

int run_gen(const std::string& text, const std::string& arch) {
  const sigattn::policy::Target target = checked_target(arch);
  sigattn::gen::ParsedVariant parsed;
  try {
    parsed = sigattn::gen::parse_variant(text);
  } catch (const std::invalid_argument& e) {
    // The parser's message quotes the part that is wrong.
    throw UsageError(fmt::format("invalid variant: {}", e.what()));
  }
  sigattn::gen::TileConfig tile;
  std::string tile_origin = "given";
  if (parsed.tile) {
    tile = *parsed.tile;
    const std::string why = sigattn::policy::rejection(parsed.spec, tile, target);
    if (!why.empty()) {
      throw UsageError(fmt::format("tile '{}' is rejected for {}: {}",
                                   sigattn::gen::to_string(tile), arch, why));
    }
  } else {
    sigattn::policy::DefaultChoice choice = sigattn::policy::default_tile(parsed.spec, target);
    tile = choice.tile;
    tile_origin = std::move(choice.reason);
  }
  const sigattn::gen::GeneratedKernel kernel = sigattn::gen::generate({parsed.spec, tile});
  // The program is followed by what NVRTC and the launch need, as comments, so the output
  // remains a valid program.
  fmt::print("{}", kernel.source);
  fmt::print("\n// kernel: {}\n", kernel.name_expression);
  const std::string grid =
      parsed.spec.direction == sigattn::gen::Direction::decode
          ? fmt::format("ceil(heads_q / heads_kv x seqlen_q / {}) x splits, heads_kv, batch",
                        tile.block_m)
          : fmt::format("ceil(max_seqlen_q / {}), heads_q, batch", tile.block_m);
  fmt::print("// launch: grid ({}), {} threads, {} bytes of dynamic shared memory\n", grid,
             kernel.threads, kernel.smem_bytes);
  fmt::print("// NVRTC options: {} --gpu-architecture={}\n", fmt::join(kernel.options, " "), arch);
  fmt::print("// tile: {}\n", tile_origin);
  return kExitOk;
}

struct CompileJob {
  sigattn::gen::Variant variant;
  std::string name;
};

// One kernel's result: `compiled` on success (from_cache when the user database already held it,
// so NVRTC did not run), otherwise `error` (and the NVRTC log when there is one). A failed kernel
// is data; only a missing NVRTC or an unexpected exception stops the run.
struct CompileOutcome {
  std::optional<sigattn::CompiledKernel> compiled;
  bool from_cache = false;
  std::string error;
  std::string log;
};

// Compiles through the caches, so that what is built here is what the runtime finds later.
CompileOutcome compile_one(const CompileJob& job, const std::string& arch) {
  CompileOutcome outcome;
  try {
    const sigattn::gen::GeneratedKernel kernel = sigattn::gen::generate(job.variant);
    outcome.compiled = sigattn::PersistentCache::instance().find_binary(kernel, arch);
    outcome.from_cache = outcome.compiled.has_value();
    if (!outcome.from_cache)
      outcome.compiled = *sigattn::ModuleCache::instance().compiled(kernel, arch);
  } catch (const sigattn::CompileError& e) {
    outcome.error = e.what();
    outcome.log = e.log();
  } catch (const std::invalid_argument& e) {
    outcome.error = e.what();
  } catch (const sigattn::Error& e) {
    if (e.status() == sigattn::Status::not_available) throw;
    outcome.error = e.what();
  }
  return outcome;
}

std::string first_lines(const std::string& text, int count) {
  std::istringstream in(text);
  std::string line;
  std::string out;
  for (int i = 0; i < count && std::getline(in, line); ++i) out += fmt::format("    {}\n", line);
  return out;
}

std::string outcome_line(const CompileJob& job, const CompileOutcome& outcome) {
  if (!outcome.compiled) {
    std::string line = fmt::format("{:<7} {}: {}\n", "failed", job.name, outcome.error);
    return line + first_lines(outcome.log, kLogLinesShown);
  }
  const sigattn::CompiledKernel& k = *outcome.compiled;
  const char* status = k.spills() ? "spills" : outcome.from_cache ? "cached" : "ok";
  return fmt::format("{:<7} {:<64} regs {:>3}  spill st {:>4} B ld {:>4} B  {:>8.1f} ms\n", status,
                     job.name, k.registers, k.spill_store_bytes, k.spill_load_bytes, k.compile_ms);
}

nlohmann::json outcome_json(const CompileJob& job, const CompileOutcome& outcome) {
  nlohmann::json entry = {{"variant", job.name}};
  if (!outcome.compiled) {
    entry["status"] = "failed";
    entry["error"] = outcome.error;
    entry["log"] = outcome.log;
    return entry;
  }
  const sigattn::CompiledKernel& k = *outcome.compiled;
  entry["status"] = k.spills() ? "spills" : "ok";
  entry["from_cache"] = outcome.from_cache;
  entry["registers"] = k.registers;
  entry["spill_store_bytes"] = k.spill_store_bytes;
  entry["spill_load_bytes"] = k.spill_load_bytes;
  entry["stack_frame_bytes"] = k.stack_frame_bytes;
  entry["compile_ms"] = k.compile_ms;
  return entry;
}

// Prints outcomes in job order as soon as every earlier job has finished, so the listing is
// deterministic and still shows progress while the workers run.
class OrderedPrinter {
 public:
  OrderedPrinter(const std::vector<CompileJob>& jobs, const std::vector<CompileOutcome>& outcomes)
      : jobs_(jobs), outcomes_(outcomes), finished_(jobs.size(), false) {}

  void finished(std::size_t index) {
    std::lock_guard lock(mutex_);
    finished_[index] = true;
    while (next_ < finished_.size() && finished_[next_]) {
      fmt::print("{}", outcome_line(jobs_[next_], outcomes_[next_]));
      std::fflush(stdout);
      ++next_;
    }
  }

 private:
  const std::vector<CompileJob>& jobs_;
  const std::vector<CompileOutcome>& outcomes_;
  std::mutex mutex_;
  std::vector<bool> finished_;
  std::size_t next_ = 0;
};

std::vector<CompileJob> compile_jobs(const std::vector<std::string>& spec_texts,
                                     const sigattn::policy::Target& target) {
  std::vector<sigattn::gen::KernelSpec> specs;
  for (const std::string& text : spec_texts) {
    try {
      specs.push_back(sigattn::gen::parse_spec(text));
    } catch (const std::invalid_argument& e) {
      throw UsageError(fmt::format("invalid --spec: {}", e.what()));
    }
  }
  const bool explicit_specs = !specs.empty();
  if (!explicit_specs) specs = sigattn::policy::default_specs();

  std::vector<CompileJob> jobs;
  for (const sigattn::gen::KernelSpec& spec : specs) {
    const std::vector<sigattn::gen::TileConfig> tiles = sigattn::policy::candidates(spec, target);
    if (tiles.empty()) {
      const std::string why = sigattn::policy::rejection(
          spec, sigattn::policy::default_tile(spec, target).tile, target);
      const std::string message = fmt::format("no tile config of {} is allowed on {}: {}",
                                              sigattn::gen::to_string(spec), target.arch, why);
      if (explicit_specs) throw UsageError(message);
      fmt::print(stderr, "note: {}\n", message);
    }
    for (const sigattn::gen::TileConfig& tile : tiles) {
      // A decode tile's fixed split counts launch the program of its open one (splits 0).
      if (tile.splits != 0) continue;
      const sigattn::gen::Variant variant{spec, tile};
      jobs.push_back({variant, sigattn::gen::to_string(variant)});
    }
  }
  return jobs;
}

int run_compile(const std::string& arch, unsigned jobs_requested,
                const std::vector<std::string>& spec_texts, bool json) {
  const sigattn::policy::Target target = checked_target(arch);
  const std::vector<CompileJob> jobs = compile_jobs(spec_texts, target);
  std::vector<CompileOutcome> outcomes(jobs.size());
  OrderedPrinter printer(jobs, outcomes);

  std::atomic<std::size_t> next_job{0};
  std::atomic<bool> stop{false};
  std::mutex fatal_mutex;
  std::exception_ptr fatal;
  auto worker = [&] {
    try {
      for (std::size_t i = next_job++; i < jobs.size() && !stop; i = next_job++) {
        outcomes[i] = compile_one(jobs[i], arch);
        if (!json) printer.finished(i);
      }
    } catch (...) {
      std::lock_guard lock(fatal_mutex);
      if (!fatal) fatal = std::current_exception();
      stop = true;
    }
  };
  const unsigned thread_count =
      std::max(1u, std::min<unsigned>(jobs_requested, static_cast<unsigned>(jobs.size())));
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < thread_count; ++t) threads.emplace_back(worker);
  for (std::thread& thread : threads) thread.join();
  if (fatal) std::rethrow_exception(fatal);

  std::size_t failed = 0;
  std::size_t from_cache = 0;
  nlohmann::json listing = nlohmann::json::array();
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    if (!outcomes[i].compiled) ++failed;
    if (outcomes[i].from_cache) ++from_cache;
    if (json) listing.push_back(outcome_json(jobs[i], outcomes[i]));
  }
  const std::string summary = fmt::format("compiled {}, from cache {}, failed {}",
                                          jobs.size() - failed - from_cache, from_cache, failed);
  if (json) {
    fmt::print("{}\n", listing.dump(2));
    fmt::print(stderr, "{}\n", summary);
  } else {
    fmt::print("{}\n", summary);
  }
  return failed > 0 ? kExitKernelsFailed : kExitOk;
}

int exit_code_for(const sigattn::Error& e) {
  switch (e.status()) {
    case sigattn::Status::invalid_argument:
    case sigattn::Status::unsupported:
      return kExitUsage;
    case sigattn::Status::not_available:
      return kExitNvrtcMissing;
    default:
      return kExitFailure;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("sigattn: generated sigmoid-attention CUDA kernels, compiled at run time with NVRTC",
               "sigattn");
  app.set_version_flag("--version", std::string(sigattn::version()));
  app.footer(kExitCodeHelp);
  app.require_subcommand(1);
  // Options of the top level may also follow a subcommand: `sigattn db show --db FILE`.
  app.fallthrough();
  std::string database_path;
  app.add_option("--db", database_path,
                 "The user database (default: $SIGATTN_DB, else "
                 "$XDG_CACHE_HOME/sigattn/sigattn.db or ~/.cache/sigattn/sigattn.db)");

  bool doctor_as_json = false;
  CLI::App* doctor = app.add_subcommand(
      "doctor", "Report the CUDA driver, GPUs, NVRTC and how sigattn will run here");
  doctor->add_flag("--json", doctor_as_json, "Print the report as JSON");

  std::string gen_variant;
  std::string gen_arch = "sm_90a";
  CLI::App* gen = app.add_subcommand(
      "gen", "Print the generated CUDA source of one variant (default tile when none is given)");
  gen->add_option("VARIANT", gen_variant, fmt::format("e.g. {}", kGenExample))->required();
  gen->add_option("--arch", gen_arch, "Target architecture for the default tile and checks")
      ->capture_default_str();

  std::string compile_arch;
  unsigned compile_jobs_count = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::string> compile_specs;
  bool compile_as_json = false;
  CLI::App* compile = app.add_subcommand(
      "compile",
      "Generate and compile every candidate tile config of the default specs (or of --spec) "
      "with NVRTC; the last line reads 'compiled N, failed M'");
  compile
      ->add_option("--arch", compile_arch,
                   "Target architecture, e.g. sm_80, sm_90a, sm_100a or sm_120a")
      ->required();
  compile->add_option("--jobs,-j", compile_jobs_count, "Worker threads")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  compile->add_option("--spec", compile_specs,
                      "Only this spec, e.g. fwd.fp16.d64.dense.nomask.nosmod.fast.anylen "
                      "(repeatable)");
  compile->add_flag("--json", compile_as_json,
                    "Print a JSON array of the kernels on stdout; the summary line goes to stderr");

  sigattn::cli::DbCommands db_commands(app);
  sigattn::cli::TuneCommand tune_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // A mistyped command is left over as an extra argument while the missing subcommand is
    // what CLI11 reports; name the word instead.
    if (app.get_subcommands().empty() && !app.remaining().empty() &&
        !app.remaining().front().starts_with("-") &&
        dynamic_cast<const CLI::RequiredError*>(&e) != nullptr) {
      fmt::print(stderr, "sigattn: unknown command '{}' (commands: {}); see sigattn --help\n",
                 app.remaining().front(), command_names(app));
      return kExitUsage;
    }
    const int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }

  try {
    if (app.count("--db") > 0 && database_path.empty()) {
      throw UsageError("--db must name a database file, not be empty");
    }
    if (!database_path.empty()) sigattn::set_database_path(database_path);
    if (db_commands.parsed()) {
      return db_commands.run(database_path.empty() ? sigattn::cache::user_database_path().string()
                                                   : database_path);
    }
    if (tune_command.parsed()) {
      return tune_command.run(database_path.empty() ? sigattn::cache::user_database_path().string()
                                                    : database_path);
    }
    if (doctor->parsed()) return run_doctor(doctor_as_json);
    if (gen->parsed()) return run_gen(gen_variant, gen_arch);
    return run_compile(compile_arch, compile_jobs_count, compile_specs, compile_as_json);
  } catch (const UsageError& e) {
    fmt::print(stderr, "sigattn: {}\n", e.what());
    return kExitUsage;
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "sigattn: {}\n", e.what());
    return kExitUsage;
  } catch (const sigattn::Error& e) {
    fmt::print(stderr, "sigattn: {}\n", e.what());
    return exit_code_for(e);
  } catch (const std::exception& e) {
    fmt::print(stderr, "sigattn: {}\n", e.what());
    return kExitFailure;
  }
}
