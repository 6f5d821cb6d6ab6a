// The HTTP filter's event hooks, answered in C so that a request crosses
// into Go once, for its request headers (issue 17). Each entry from an
// Envoy worker into Go is a cgocallback: the thread leaves its "syscall"
// state, takes the Go runtime's P and gives it back, and keeps the
// runtime's sysmon thread polling on Envoy's CPU. ward's filters decide on
// the request headers alone (proxylib.HTTPFilter), so the other hooks
// (stream new and destroy, response headers, bodies, trailers, completion)
// never enter Go: a stream costs one crossing instead of six.
//
// The module's per-stream pointer is the Go config's cgo.Handle itself:
// the Go filter object lives only during the request-headers hook, so no
// per-stream object or cgo.Handle is made or deleted. Envoy keeps a
// filter's config alive until its streams are gone.
#include "_cgo_export.h"
#include "callbacks.h"

#define WARD_EXPORT __attribute__((visibility("default")))

// envoy_dynamic_module_type_on_http_filter_*_status: 0 is Continue for
// headers, body and trailers alike.
enum { ward_continue = 0 };

WARD_EXPORT uintptr_t envoy_dynamic_module_on_http_filter_new(uintptr_t config, void* envoy) {
  (void)envoy;
  return config;  // 0 (no config) makes Envoy fail the stream
}

WARD_EXPORT int envoy_dynamic_module_on_http_filter_request_headers(void* envoy, uintptr_t config,
                                                                   bool eos) {
  return ward_go_http_request_headers(envoy, config, eos);
}

WARD_EXPORT int envoy_dynamic_module_on_http_filter_response_headers(void* e, uintptr_t h,
                                                                    bool eos) {
  (void)e, (void)h, (void)eos;
  return ward_continue;
}

WARD_EXPORT void envoy_dynamic_module_on_http_filter_stream_complete(void* e, uintptr_t h) {
  (void)e, (void)h;
}

WARD_EXPORT void envoy_dynamic_module_on_http_filter_destroy(uintptr_t h) { (void)h; }

// Bodies and trailers pass: ward decides on headers.
WARD_EXPORT int envoy_dynamic_module_on_http_filter_request_body(void* e, uintptr_t h, bool eos) {
  (void)e, (void)h, (void)eos;
  return ward_continue;
}
WARD_EXPORT int envoy_dynamic_module_on_http_filter_response_body(void* e, uintptr_t h, bool eos) {
  (void)e, (void)h, (void)eos;
  return ward_continue;
}
WARD_EXPORT int envoy_dynamic_module_on_http_filter_request_trailers(void* e, uintptr_t h) {
  (void)e, (void)h;
  return ward_continue;
}
WARD_EXPORT int envoy_dynamic_module_on_http_filter_response_trailers(void* e, uintptr_t h) {
  (void)e, (void)h;
  return ward_continue;
}

// Hooks ward does not use; Envoy requires them to exist.
WARD_EXPORT void envoy_dynamic_module_on_http_filter_scheduled(void* e, uintptr_t h, uint64_t id) {
  (void)e, (void)h, (void)id;
}
WARD_EXPORT void envoy_dynamic_module_on_http_filter_config_scheduled(void* e, uintptr_t h,
                                                                     uint64_t id) {
  (void)e, (void)h, (void)id;
}
WARD_EXPORT void envoy_dynamic_module_on_http_filter_http_callout_done(void* e, uintptr_t h) {
  (void)e, (void)h;
}
WARD_EXPORT void envoy_dynamic_module_on_http_filter_http_stream_headers(void* e, uintptr_t h) {
  (void)e, (void)h;
}
WARD_EXPORT void envoy_dynamic_module_on_http_filter_http_stream_data(void* e, uintptr_t h) {
  (void)e, (void)h;
}
WARD_EXPORT void envoy_dynamic_module_on_http_filter_http_stream_trailers(void* e, uintptr_t h) {
  (void)e, (void)h;
}
WARD_EXPORT void envoy_dynamic_module_on_http_filter_http_stream_complete(void* e, uintptr_t h) {
  (void)e, (void)h;
}
WARD_EXPORT void envoy_dynamic_module_on_http_filter_http_stream_reset(void* e, uintptr_t h) {
  (void)e, (void)h;
}
WARD_EXPORT void envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    void* e, uintptr_t h) {
  (void)e, (void)h;
}
WARD_EXPORT void envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    void* e, uintptr_t h) {
  (void)e, (void)h;
}
