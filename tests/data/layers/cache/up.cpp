// Fixture of the layering check (tests/check_layers.cmake): the cache includes the runtime and
// the tuner.
#include "cache/database.hpp"
#include "runtime/forward.hpp"
#include "tuner/tuner.hpp"
