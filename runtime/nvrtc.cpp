// libnvrtc loaded once with dlopen. SIGATTN_NVRTC_LIBRARY names the one library to use; otherwise
// the versioned sonames are tried, then the toolkit's lib64 directories. A failure names every
// path tried with its dlerror.
#include "runtime/nvrtc.hpp"

#include <dlfcn.h>
#include <fmt/format.h>

#include <cstdlib>
#include <exception>
#include <string>
#include <type_traits>
#include <vector>

#include "runtime/errors.hpp"

namespace sigattn::nvrtc {
namespace {

struct NvrtcState {
  NvrtcApi api{};
  std::string version;
  std::exception_ptr failure;
};

std::vector<std::string> candidate_paths() {
  // An explicit choice is honoured alone: falling back would hide a wrong override.
  if (const char* chosen = std::getenv("SIGATTN_NVRTC_LIBRARY"); chosen != nullptr && *chosen) {
    return {chosen};
  }
  std::vector<std::string> paths = {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"};
  if (const char* cuda_home = std::getenv("CUDA_HOME"); cuda_home != nullptr && *cuda_home) {
    paths.push_back(std::string(cuda_home) + "/lib64/libnvrtc.so");
  }
  paths.push_back("/usr/local/cuda/lib64/libnvrtc.so");
  return paths;
}

void* open_first(const std::vector<std::string>& paths) {
  std::string attempts;
  for (const std::string& path : paths) {
    // Kept open for the life of the process, like the compiled programs' results.
    if (void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return library;
    const char* why = dlerror();
    attempts += fmt::format("\n  {}: {}", path, why != nullptr ? why : "unknown error");
  }
  throw Error(Status::not_available,
              fmt::format("NVRTC not available; tried:{}\nInstall the CUDA toolkit's NVRTC "
                          "(libnvrtc) or set SIGATTN_NVRTC_LIBRARY to its path.",
                          attempts));
}

template <class Pointer>
void resolve(void* library, Pointer& entry, const char* symbol) {
  void* address = dlsym(library, symbol);
  if (address == nullptr) {
    throw Error(
        Status::not_available,
        fmt::format("the loaded NVRTC library lacks {}; it is older than CUDA 11.1", symbol));
  }
  entry = reinterpret_cast<Pointer>(address);
}

// nvrtc.h declares no versioned aliases, so the plain names are the exported symbols.
#define SIGATTN_RESOLVE(name)                                                \
  static_assert(std::is_same_v<decltype(NvrtcApi::name), decltype(&::name)>, \
                "NvrtcApi::" #name " differs from nvrtc.h");                 \
  resolve(library, api.name, #name)

NvrtcState load_nvrtc() {
  NvrtcState state;
  try {
    void* library = open_first(candidate_paths());
    NvrtcApi& api = state.api;
    SIGATTN_RESOLVE(nvrtcVersion);
    SIGATTN_RESOLVE(nvrtcGetErrorString);
    SIGATTN_RESOLVE(nvrtcCreateProgram);
    SIGATTN_RESOLVE(nvrtcDestroyProgram);
    SIGATTN_RESOLVE(nvrtcAddNameExpression);
    SIGATTN_RESOLVE(nvrtcCompileProgram);
    SIGATTN_RESOLVE(nvrtcGetLoweredName);
    SIGATTN_RESOLVE(nvrtcGetProgramLogSize);
    SIGATTN_RESOLVE(nvrtcGetProgramLog);
    SIGATTN_RESOLVE(nvrtcGetCUBINSize);
    SIGATTN_RESOLVE(nvrtcGetCUBIN);
    SIGATTN_RESOLVE(nvrtcGetPTXSize);
    SIGATTN_RESOLVE(nvrtcGetPTX);
    int major = 0;
    int minor = 0;
    if (const nvrtcResult result = api.nvrtcVersion(&major, &minor); result != NVRTC_SUCCESS) {
      throw Error(Status::not_available,
                  fmt::format("nvrtcVersion failed: {}", api.nvrtcGetErrorString(result)));
    }
    state.version = fmt::format("{}.{}", major, minor);
  } catch (...) {
    state.failure = std::current_exception();
  }
  return state;
}

#undef SIGATTN_RESOLVE

const NvrtcState& nvrtc_state() {
  static const NvrtcState state = load_nvrtc();
  return state;
}

}  // namespace

const NvrtcApi& api() {
  const NvrtcState& state = nvrtc_state();
  if (state.failure) std::rethrow_exception(state.failure);
  return state.api;
}

const NvrtcApi* try_api(std::string* why) {
  try {
    return &api();
  } catch (const std::exception& error) {
    if (why != nullptr) *why = error.what();
    return nullptr;
  }
}

std::string version_string() {
  api();
  return nvrtc_state().version;
}

}  // namespace sigattn::nvrtc
