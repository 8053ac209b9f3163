// The runtime's side of online tuning: a forward() whose tile came from the heuristic default
// passes the call to a hook that the tuner installs when the program starts
// (tuner/online_tuning.cpp), so the runtime never includes the tuner. Without a hook (no tuner
// linked in) nothing is tuned.
#pragma once

#include <sigattn/sigattn.hpp>

#include "generator/kernel_spec.hpp"

namespace sigattn {

// Queues the call's shape for tuning when online tuning is on; the hook decides whether it is.
using OnlineTuningHook = void (*)(const ForwardArgs& args, const gen::KernelSpec& spec);

// Installs `hook` (nullptr: none) and returns the hook it replaces.
OnlineTuningHook install_online_tuning_hook(OnlineTuningHook hook);

// Passes a forward call served by the heuristic default to the installed hook, if any.
void request_online_tuning(const ForwardArgs& args, const gen::KernelSpec& spec);

}  // namespace sigattn
