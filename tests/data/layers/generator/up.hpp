// Fixture of the layering check (tests/check_layers.cmake): the generator includes the cache.
#pragma once
#include <sigattn/version.h>

#include "cache/database.hpp"
