// The installed online-tuning hook. It is constant-initialized, so a hook installed by another
// file's static initializer is never overwritten by this file's initialization.
#include "runtime/online_tuning_hook.hpp"

#include <atomic>

namespace sigattn {
namespace {

constinit std::atomic<OnlineTuningHook> installed_hook{nullptr};

}  // namespace

OnlineTuningHook install_online_tuning_hook(OnlineTuningHook hook) {
  return installed_hook.exchange(hook);
}

void request_online_tuning(const ForwardArgs& args, const gen::KernelSpec& spec) {
  if (const OnlineTuningHook hook = installed_hook.load()) hook(args, spec);
}

}  // namespace sigattn
