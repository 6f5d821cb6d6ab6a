#include "callbacks.h"

// The ABI version ward's declarations follow (Envoy 1.40's abi.h). Envoy
// only warns on a mismatch; a static string needs no Go memory.
const char* ward_abi_version(void) { return "v0.2.0"; }
