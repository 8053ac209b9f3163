// On/off switches read from environment variables (SIGATTN_CACHE, SIGATTN_ONLINE_TUNING): one
// spelling rule for all of them, and a warning naming the variable when a value means neither.
#pragma once

#include <optional>
#include <string_view>

namespace sigattn {

// "1", "on", "true" -> true; "0", "off", "false" -> false; unset or empty -> nothing. Any other
// value -> nothing, with a warning on stderr that names the variable and the accepted values.
std::optional<bool> environment_switch(const char* name);

// The rule above for a value (null: unset); `warning` receives the message for a bad value.
std::optional<bool> parse_switch(const char* name, const char* value, std::string* warning);

}  // namespace sigattn
