// cnoop: the floor of Envoy's dynamic-module machinery for bench/http. A
// C HTTP filter implementing the same hooks as libward.so (the Envoy 1.40
// dynamic-modules ABI, declarations as in proxylib/abi/callbacks.h) doing
// the same work per hook as the Go no-op arm, ward.test.panic: a config
// object per filter config, one object per stream (malloc/free, as the Go
// side allocates a filter and a cgo.Handle), one request-header read
// (x-ward-panic) in the request-headers hook, continue everywhere else.
// Built by clang in the bench run (bench/http builds it into a temporary
// module directory as libward_cnoop.so); never committed as a binary.
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "../../proxylib/abi/callbacks.h"

#define EXPORT __attribute__((visibility("default")))

enum { header_request = 0 };          // envoy_dynamic_module_type_http_header_type_RequestHeader
enum { headers_continue = 0 };        // ..._on_http_filter_request_headers_status_Continue
enum { body_continue = 0, trailers_continue = 0 };

typedef struct { int unused; } cnoop_config;
typedef struct { uint64_t panics; } cnoop_filter;

EXPORT const char* envoy_dynamic_module_on_program_init(void) { return "v0.2.0"; }

EXPORT uintptr_t envoy_dynamic_module_on_http_filter_config_new(void* envoy, ward_buf name,
                                                                ward_buf config) {
  (void)envoy, (void)name, (void)config;
  cnoop_config* c = calloc(1, sizeof(*c));
  return (uintptr_t)c;
}

EXPORT void envoy_dynamic_module_on_http_filter_config_destroy(uintptr_t c) { free((void*)c); }

EXPORT uintptr_t envoy_dynamic_module_on_http_filter_new(uintptr_t c, void* envoy) {
  (void)envoy;
  if (c == 0) return 0;
  cnoop_filter* f = calloc(1, sizeof(*f));
  return (uintptr_t)f;
}

EXPORT int envoy_dynamic_module_on_http_filter_request_headers(void* envoy, uintptr_t h, bool eos) {
  (void)eos;
  cnoop_filter* f = (cnoop_filter*)h;
  static const char key[] = "x-ward-panic";
  ward_buf k = {key, sizeof(key) - 1}, v = {NULL, 0};
  size_t count = 0;
  if (envoy_dynamic_module_callback_http_get_header(envoy, header_request, k, &v, 0, &count) &&
      v.length == 1 && v.ptr[0] == '1')
    f->panics++;  // the Go no-op panics here; the bench never sends the header
  return headers_continue;
}

EXPORT int envoy_dynamic_module_on_http_filter_response_headers(void* e, uintptr_t h, bool eos) {
  (void)e, (void)h, (void)eos;
  return headers_continue;
}
EXPORT int envoy_dynamic_module_on_http_filter_request_body(void* e, uintptr_t h, bool eos) {
  (void)e, (void)h, (void)eos;
  return body_continue;
}
EXPORT int envoy_dynamic_module_on_http_filter_response_body(void* e, uintptr_t h, bool eos) {
  (void)e, (void)h, (void)eos;
  return body_continue;
}
EXPORT int envoy_dynamic_module_on_http_filter_request_trailers(void* e, uintptr_t h) {
  (void)e, (void)h;
  return trailers_continue;
}
EXPORT int envoy_dynamic_module_on_http_filter_response_trailers(void* e, uintptr_t h) {
  (void)e, (void)h;
  return trailers_continue;
}
EXPORT void envoy_dynamic_module_on_http_filter_stream_complete(void* e, uintptr_t h) { (void)e, (void)h; }
EXPORT void envoy_dynamic_module_on_http_filter_destroy(uintptr_t h) { free((void*)h); }

// Hooks the no-op does not use; Envoy resolves them (as for libward.so).
EXPORT void envoy_dynamic_module_on_http_filter_scheduled(void* e, uintptr_t h, uint64_t id) { (void)e, (void)h, (void)id; }
EXPORT void envoy_dynamic_module_on_http_filter_config_scheduled(void* e, uintptr_t h, uint64_t id) { (void)e, (void)h, (void)id; }
EXPORT void envoy_dynamic_module_on_http_filter_http_callout_done(void* e, uintptr_t h) { (void)e, (void)h; }
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_headers(void* e, uintptr_t h) { (void)e, (void)h; }
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_data(void* e, uintptr_t h) { (void)e, (void)h; }
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_trailers(void* e, uintptr_t h) { (void)e, (void)h; }
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_complete(void* e, uintptr_t h) { (void)e, (void)h; }
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_reset(void* e, uintptr_t h) { (void)e, (void)h; }
EXPORT void envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(void* e, uintptr_t h) { (void)e, (void)h; }
EXPORT void envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(void* e, uintptr_t h) { (void)e, (void)h; }
