// libcuda.so.1 loaded once with dlopen; entry points resolved by the versioned names that cuda.h
// maps them to (cuMemAlloc -> cuMemAlloc_v2), so the pointers match the declared signatures.
// Also the current-context rule, device queries, the arch of a device and DeviceBuffer.
#include "runtime/cuda_driver.hpp"

#include <dlfcn.h>
#include <fmt/format.h>

#include <exception>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string_view>
#include <type_traits>
#include <utility>

#include "runtime/errors.hpp"

// Two levels so that the argument is macro-expanded first: SIGATTN_SYMBOL_NAME(cuMemAlloc) is
// "cuMemAlloc_v2", the name the driver exports for the signature cuda.h declares.
#define SIGATTN_SYMBOL_NAME_EXPANDED(name) #name
#define SIGATTN_SYMBOL_NAME(name) SIGATTN_SYMBOL_NAME_EXPANDED(name)

namespace sigattn::cuda {
namespace {

constexpr const char* kDriverLibrary = "libcuda.so.1";

// Either the resolved and initialised API, or the exception every later call rethrows.
struct DriverState {
  DriverApi api{};
  std::exception_ptr failure;
};

template <class Pointer>
void resolve(void* library, Pointer& entry, const char* symbol) {
  void* address = dlsym(library, symbol);
  if (address == nullptr) {
    throw Error(Status::not_available,
                fmt::format("CUDA driver {} lacks the entry point {}; the installed NVIDIA driver "
                            "is older than the CUDA {}.{} headers sigattn was built with. Update "
                            "the NVIDIA driver.",
                            kDriverLibrary, symbol, CUDA_VERSION / 1000, CUDA_VERSION % 1000 / 10));
  }
  entry = reinterpret_cast<Pointer>(address);
}

// The declared member types must be exactly cuda.h's prototypes, so a pointer resolved by the
// versioned symbol name is called with the right signature.
#define SIGATTN_RESOLVE(name)                                                             \
  static_assert(std::is_same_v<decltype(DriverApi::name), decltype(&::name)>,             \
                "DriverApi::" SIGATTN_SYMBOL_NAME_EXPANDED(name) " differs from cuda.h"); \
  resolve(library, api.name, SIGATTN_SYMBOL_NAME(name))

DriverApi resolve_all(void* library) {
  DriverApi api{};
  SIGATTN_RESOLVE(cuInit);
  SIGATTN_RESOLVE(cuDriverGetVersion);
  SIGATTN_RESOLVE(cuGetErrorName);
  SIGATTN_RESOLVE(cuGetErrorString);
  SIGATTN_RESOLVE(cuDeviceGetCount);
  SIGATTN_RESOLVE(cuDeviceGet);
  SIGATTN_RESOLVE(cuDeviceGetName);
  SIGATTN_RESOLVE(cuDeviceGetAttribute);
  SIGATTN_RESOLVE(cuDeviceTotalMem);
  SIGATTN_RESOLVE(cuDevicePrimaryCtxRetain);
  SIGATTN_RESOLVE(cuDevicePrimaryCtxRelease);
  SIGATTN_RESOLVE(cuCtxGetCurrent);
  SIGATTN_RESOLVE(cuCtxSetCurrent);
  SIGATTN_RESOLVE(cuCtxGetDevice);
  SIGATTN_RESOLVE(cuCtxSynchronize);
  SIGATTN_RESOLVE(cuModuleLoadData);
  SIGATTN_RESOLVE(cuModuleUnload);
  SIGATTN_RESOLVE(cuModuleGetFunction);
  SIGATTN_RESOLVE(cuFuncSetAttribute);
  SIGATTN_RESOLVE(cuFuncGetAttribute);
  SIGATTN_RESOLVE(cuOccupancyMaxActiveBlocksPerMultiprocessor);
  SIGATTN_RESOLVE(cuLaunchKernel);
  SIGATTN_RESOLVE(cuMemAlloc);
  SIGATTN_RESOLVE(cuMemFree);
  SIGATTN_RESOLVE(cuMemcpyHtoD);
  SIGATTN_RESOLVE(cuMemcpyDtoH);
  SIGATTN_RESOLVE(cuMemcpyDtoHAsync);
  SIGATTN_RESOLVE(cuMemcpyDtoDAsync);
  SIGATTN_RESOLVE(cuMemsetD8);
  SIGATTN_RESOLVE(cuMemsetD32Async);
  SIGATTN_RESOLVE(cuStreamCreate);
  SIGATTN_RESOLVE(cuStreamDestroy);
  SIGATTN_RESOLVE(cuStreamWaitEvent);
  SIGATTN_RESOLVE(cuStreamSynchronize);
  SIGATTN_RESOLVE(cuStreamIsCapturing);
  SIGATTN_RESOLVE(cuStreamGetId);
  SIGATTN_RESOLVE(cuThreadExchangeStreamCaptureMode);
  SIGATTN_RESOLVE(cuStreamGetCaptureInfo);
  SIGATTN_RESOLVE(cuUserObjectCreate);
  SIGATTN_RESOLVE(cuUserObjectRelease);
  SIGATTN_RESOLVE(cuGraphRetainUserObject);
  SIGATTN_RESOLVE(cuPointerGetAttribute);
  SIGATTN_RESOLVE(cuEventCreate);
  SIGATTN_RESOLVE(cuEventDestroy);
  SIGATTN_RESOLVE(cuEventRecord);
  SIGATTN_RESOLVE(cuEventQuery);
  SIGATTN_RESOLVE(cuEventSynchronize);
  SIGATTN_RESOLVE(cuEventElapsedTime);
  SIGATTN_RESOLVE(cuTensorMapEncodeTiled);
  return api;
}

#undef SIGATTN_RESOLVE

DriverState load_driver() {
  DriverState state;
  try {
    // The handle is kept for the life of the process: modules and contexts outlive any scope.
    void* library = dlopen(kDriverLibrary, RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr) {
      const char* why = dlerror();
      throw Error(
          Status::not_available,
          fmt::format("CUDA driver not available: dlopen {} failed: {}. Install the "
                      "NVIDIA driver (it provides {}) or run on a machine with a GPU.",
                      kDriverLibrary, why != nullptr ? why : "unknown error", kDriverLibrary));
    }
    state.api = resolve_all(library);
    // check() needs the error-name entry points, which are resolved by now.
    const CUresult init = state.api.cuInit(0);
    if (init != CUDA_SUCCESS) {
      const char* name = nullptr;
      const char* text = nullptr;
      state.api.cuGetErrorName(init, &name);
      state.api.cuGetErrorString(init, &text);
      throw DriverError("cuInit(0)", static_cast<int>(init), name != nullptr ? name : "",
                        fmt::format("cuInit(0) failed: {} ({}): {}. The NVIDIA driver is installed "
                                    "but no usable GPU was found.",
                                    name != nullptr ? name : "unknown CUresult",
                                    static_cast<int>(init), text != nullptr ? text : ""));
    }
  } catch (...) {
    state.failure = std::current_exception();
  }
  return state;
}

const DriverState& driver_state() {
  static const DriverState state = load_driver();
  return state;
}

// "api.cuMemAlloc(&ptr, n)" -> "cuMemAlloc(&ptr, n)": the call as the user would write it.
std::string_view call_text(std::string_view call) {
  for (const std::string_view prefix : {"cuda::driver().", "driver().", "api->", "api."}) {
    if (call.starts_with(prefix)) return call.substr(prefix.size());
  }
  return call;
}

}  // namespace

const DriverApi& driver() {
  const DriverState& state = driver_state();
  if (state.failure) std::rethrow_exception(state.failure);
  return state.api;
}

const DriverApi* try_driver(std::string* why) {
  try {
    return &driver();
  } catch (const std::exception& error) {
    if (why != nullptr) *why = error.what();
    return nullptr;
  }
}

void check(CUresult result, const char* call) {
  if (result == CUDA_SUCCESS) return;
  const DriverApi& api = driver();
  const char* name = nullptr;
  const char* text = nullptr;
  if (api.cuGetErrorName(result, &name) != CUDA_SUCCESS || name == nullptr) name = "unknown";
  if (api.cuGetErrorString(result, &text) != CUDA_SUCCESS || text == nullptr) text = "";
  const std::string_view shown = call_text(call);
  throw DriverError(
      std::string(shown), static_cast<int>(result), name,
      fmt::format("{} failed: {} ({}): {}", shown, name, static_cast<int>(result), text));
}

CUcontext current_context() {
  const DriverApi& api = driver();
  CUcontext context = nullptr;
  SIGATTN_CU(api.cuCtxGetCurrent(&context));
  if (context != nullptr) return context;
  // Device 0's primary context is retained once and never released: kernels and modules of this
  // process may live in it until exit, as with the CUDA runtime.
  static std::once_flag retained;
  static CUcontext primary = nullptr;
  std::call_once(retained, [&api] {
    int count = 0;
    SIGATTN_CU(api.cuDeviceGetCount(&count));
    if (count == 0) {
      throw Error(Status::not_available,
                  "no CUDA device: the NVIDIA driver is loaded but reports 0 devices");
    }
    CUdevice device = 0;
    SIGATTN_CU(api.cuDeviceGet(&device, 0));
    SIGATTN_CU(api.cuDevicePrimaryCtxRetain(&primary, device));
  });
  SIGATTN_CU(api.cuCtxSetCurrent(primary));
  return primary;
}

DeviceInfo device_info(CUdevice device) {
  // A device's properties do not change while the process runs: ask the driver once each.
  static std::mutex mutex;
  static std::map<CUdevice, DeviceInfo> known;
  std::lock_guard lock(mutex);
  if (const auto found = known.find(device); found != known.end()) return found->second;
  const DriverApi& api = driver();
  DeviceInfo info;
  info.ordinal = static_cast<int>(device);
  char name[256] = {};
  SIGATTN_CU(api.cuDeviceGetName(name, sizeof(name), device));
  info.name = name;
  SIGATTN_CU(api.cuDeviceGetAttribute(&info.cc_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                                      device));
  SIGATTN_CU(api.cuDeviceGetAttribute(&info.cc_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                                      device));
  SIGATTN_CU(
      api.cuDeviceGetAttribute(&info.sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device));
  SIGATTN_CU(api.cuDeviceGetAttribute(
      &info.max_smem_optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, device));
  SIGATTN_CU(api.cuDeviceTotalMem(&info.total_mem, device));
  known.emplace(device, info);
  return info;
}

DeviceInfo current_device_info() {
  current_context();
  CUdevice device = 0;
  SIGATTN_CU(driver().cuCtxGetDevice(&device));
  return device_info(device);
}

policy::DeviceArch device_arch(int cc_major, int cc_minor) {
  try {
    return policy::arch_for_device(cc_major, cc_minor);
  } catch (const std::invalid_argument& error) {
    throw_unsupported(error.what());
  }
}

std::string arch_for(int cc_major, int cc_minor) { return device_arch(cc_major, cc_minor).arch; }

DeviceBuffer::DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
  current_context();
  SIGATTN_CU(driver().cuMemAlloc(&ptr_, bytes));
}

DeviceBuffer::~DeviceBuffer() {
  // A failed free during unwinding cannot be reported; the allocation is then lost with the
  // context.
  if (ptr_ != 0) driver().cuMemFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, 0)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_ != 0) driver().cuMemFree(ptr_);
    ptr_ = std::exchange(other.ptr_, 0);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::upload(const void* host, std::size_t bytes) {
  if (bytes > bytes_) {
    throw_invalid(fmt::format("upload of {} bytes into a {}-byte device buffer", bytes, bytes_));
  }
  SIGATTN_CU(driver().cuMemcpyHtoD(ptr_, host, bytes));
}

void DeviceBuffer::download(void* host, std::size_t bytes) const {
  if (bytes > bytes_) {
    throw_invalid(fmt::format("download of {} bytes from a {}-byte device buffer", bytes, bytes_));
  }
  SIGATTN_CU(driver().cuMemcpyDtoH(host, ptr_, bytes));
}

void DeviceBuffer::fill_bytes(unsigned char value) {
  SIGATTN_CU(driver().cuMemsetD8(ptr_, value, bytes_));
}

}  // namespace sigattn::cuda
