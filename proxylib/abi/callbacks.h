// The subset of Envoy 1.40's dynamic-modules ABI (abi.h) that ward uses,
// declared with layout-compatible types: ward_buf is both
// envoy_dynamic_module_type_module_buffer and _envoy_buffer ({ptr, length});
// ward_header is envoy_dynamic_module_type_module_http_header /
// _envoy_http_header; the opaque envoy/module pointers are void* and
// uintptr_t. Enums are int.
#ifndef WARD_CALLBACKS_H
#define WARD_CALLBACKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
  const char* ptr;
  size_t length;
} ward_buf;

typedef struct {
  const char* key_ptr;
  size_t key_length;
  const char* value_ptr;
  size_t value_length;
} ward_header;

// Logging (any thread).
bool envoy_dynamic_module_callback_log_enabled(int level);
void envoy_dynamic_module_callback_log(int level, ward_buf message);

// HTTP filter.
bool envoy_dynamic_module_callback_http_get_header(void* filter, int header_type, ward_buf key,
                                                   ward_buf* result, size_t index,
                                                   size_t* optional_count);
bool envoy_dynamic_module_callback_http_set_header(void* filter, int header_type, ward_buf key,
                                                   ward_buf value);
bool envoy_dynamic_module_callback_http_add_header(void* filter, int header_type, ward_buf key,
                                                   ward_buf value);
void envoy_dynamic_module_callback_http_send_response(void* filter, uint32_t status,
                                                      ward_header* headers, size_t n,
                                                      ward_buf body, ward_buf details);
bool envoy_dynamic_module_callback_http_filter_get_attribute_string(void* filter, int id,
                                                                    ward_buf* result);
bool envoy_dynamic_module_callback_http_filter_get_attribute_int(void* filter, int id,
                                                                 uint64_t* result);

// Network filter.
size_t envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(void* filter);
bool envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(void* filter,
                                                                         ward_buf* result);
size_t envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks_size(void* filter);
bool envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks(void* filter,
                                                                          ward_buf* result);
bool envoy_dynamic_module_callback_network_filter_drain_read_buffer(void* filter, size_t n);
bool envoy_dynamic_module_callback_network_filter_drain_write_buffer(void* filter, size_t n);
void envoy_dynamic_module_callback_network_filter_inject_read_data(void* filter, ward_buf data,
                                                                   bool end_stream);
void envoy_dynamic_module_callback_network_filter_inject_write_data(void* filter, ward_buf data,
                                                                    bool end_stream);
void envoy_dynamic_module_callback_network_filter_close(void* filter, int close_type);
bool envoy_dynamic_module_callback_network_filter_get_remote_address(void* filter,
                                                                     ward_buf* address,
                                                                     uint32_t* port);
bool envoy_dynamic_module_callback_network_filter_get_local_address(void* filter,
                                                                    ward_buf* address,
                                                                    uint32_t* port);
uint64_t envoy_dynamic_module_callback_network_filter_get_connection_id(void* filter);

// Defined in version.c: the ABI version string ward was written against.
const char* ward_abi_version(void);

#endif  // WARD_CALLBACKS_H
