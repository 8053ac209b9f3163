// Fixture of the layering check (tests/check_layers.cmake): the runtime includes the tuner.
#include <vector>

#include "cache/tuning_store.hpp"
#include "tuner/online_tuning.hpp"
