package abi

/*
#include <stdlib.h>
#include <string.h>
#include "callbacks.h"

#cgo noescape envoy_dynamic_module_callback_http_get_header
#cgo nocallback envoy_dynamic_module_callback_http_get_header
#cgo noescape envoy_dynamic_module_callback_http_filter_get_attribute_string
#cgo nocallback envoy_dynamic_module_callback_http_filter_get_attribute_string
#cgo noescape envoy_dynamic_module_callback_http_filter_get_attribute_int
#cgo nocallback envoy_dynamic_module_callback_http_filter_get_attribute_int
#cgo noescape envoy_dynamic_module_callback_http_set_header
#cgo nocallback envoy_dynamic_module_callback_http_set_header
#cgo noescape envoy_dynamic_module_callback_http_add_header
#cgo nocallback envoy_dynamic_module_callback_http_add_header
*/
import "C"

import (
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/wardproxy/ward/proxylib"
)

// Header map type (envoy_dynamic_module_type_http_header_type).
const requestHeader = 0

// Attribute ids (envoy_dynamic_module_type_attribute_id); in 1.40 the
// address attributes include the port.
const (
	attrSourceAddress      = 24
	attrDestinationAddress = 26
	attrConnectionID       = 28
	attrRequestedSNI       = 30 // ConnectionRequestedServerName
)

// Headers status values.
const headersStopIteration = 1

type httpConfig struct {
	cfg   proxylib.HTTPFilterConfig
	conns connCache
}

// httpFilter is one stream's Go filter during its request-headers hook.
type httpFilter struct {
	f      proxylib.HTTPFilter
	stream httpStream
	// replied is set once the filter sent a local reply, so a panic after
	// it does not send a second one.
	replied bool
}

// httpStream implements proxylib.HTTPStream over the envoy filter pointer of
// the current hook.
type httpStream struct {
	p     unsafe.Pointer
	owner *httpFilter
	conns *connCache // the config's
}

var _ proxylib.HTTPStream = (*httpStream)(nil)

func (s *httpStream) header(typ int, name string, index int) (string, bool, int) {
	var out C.ward_buf
	var count C.size_t
	ok := C.envoy_dynamic_module_callback_http_get_header(s.p, C.int(typ), goBuf(name), &out, C.size_t(index), &count)
	if !bool(ok) {
		return "", false, int(count)
	}
	return string(view(out)), true, int(count)
}

func (s *httpStream) RequestHeader(name string) (string, bool) {
	v, ok, _ := s.header(requestHeader, name, 0)
	return v, ok
}

// Header returns a request header's values joined with "," (Envoy's view
// for header matching) with one callback when the header occurs once.
func (s *httpStream) Header(name string) (string, bool) {
	v, ok, n := s.header(requestHeader, name, 0)
	if !ok || n <= 1 {
		return v, ok
	}
	var b strings.Builder
	b.WriteString(v)
	for i := 1; i < n; i++ {
		if w, ok, _ := s.header(requestHeader, name, i); ok {
			b.WriteByte(',')
			b.WriteString(w)
		}
	}
	return b.String(), true
}

func (s *httpStream) RequestHeaderValues(name string) []string {
	v, ok, n := s.header(requestHeader, name, 0)
	if !ok {
		return nil
	}
	out := make([]string, 0, n)
	out = append(out, v)
	for i := 1; i < n; i++ {
		if v, ok, _ := s.header(requestHeader, name, i); ok {
			out = append(out, v)
		}
	}
	return out
}

func (s *httpStream) SetRequestHeader(name, value string) {
	C.envoy_dynamic_module_callback_http_set_header(s.p, requestHeader, goBuf(name), goBuf(value))
}

func (s *httpStream) RemoveRequestHeader(name string) {
	// A null value removes the header (abi.h: set_header).
	C.envoy_dynamic_module_callback_http_set_header(s.p, requestHeader, goBuf(name), C.ward_buf{})
}

func (s *httpStream) AddRequestHeader(name, value string) {
	C.envoy_dynamic_module_callback_http_add_header(s.p, requestHeader, goBuf(name), goBuf(value))
}

func (s *httpStream) SendLocalReply(status int, headers [][2]string, body []byte, details string) {
	s.owner.replied = true
	// The header array and its strings live in C memory: a pointer to
	// structs holding Go pointers would break the cgo pointer rules.
	size := 0
	for _, h := range headers {
		size += len(h[0]) + len(h[1])
	}
	var hdrs *C.ward_header
	var data *C.char
	if len(headers) > 0 {
		hdrs = (*C.ward_header)(C.calloc(C.size_t(len(headers)), C.size_t(unsafe.Sizeof(C.ward_header{}))))
		data = (*C.char)(C.malloc(C.size_t(size + 1)))
		defer C.free(unsafe.Pointer(hdrs))
		defer C.free(unsafe.Pointer(data))
		hs := unsafe.Slice(hdrs, len(headers))
		buf := unsafe.Slice((*byte)(unsafe.Pointer(data)), size+1)
		off := 0
		for i, h := range headers {
			k := copy(buf[off:], h[0])
			hs[i].key_ptr = (*C.char)(unsafe.Pointer(&buf[off]))
			hs[i].key_length = C.size_t(k)
			off += k
			v := copy(buf[off:], h[1])
			hs[i].value_ptr = (*C.char)(unsafe.Pointer(&buf[off]))
			hs[i].value_length = C.size_t(v)
			off += v
		}
	}
	C.envoy_dynamic_module_callback_http_send_response(s.p, C.uint32_t(status), hdrs, C.size_t(len(headers)), goBytesBuf(body), goBuf(details))
}

func (s *httpStream) attrString(id int) string {
	var out C.ward_buf
	if !bool(C.envoy_dynamic_module_callback_http_filter_get_attribute_string(s.p, C.int(id), &out)) {
		return ""
	}
	return string(view(out))
}

func (s *httpStream) RequestedServerName() string { return s.attrString(attrRequestedSNI) }

// Conn reads the connection's addresses from Envoy once per connection:
// the requests of a keep-alive or HTTP/2 connection find them in the
// config's connection cache by Envoy's connection id (one callback instead
// of three, and no new strings).
func (s *httpStream) Conn() proxylib.ConnAddrs {
	var id C.uint64_t
	if !bool(C.envoy_dynamic_module_callback_http_filter_get_attribute_int(s.p, attrConnectionID, &id)) || s.conns == nil {
		return proxylib.ConnAddrs{Remote: s.attrString(attrSourceAddress), Local: s.attrString(attrDestinationAddress), ID: uint64(id)}
	}
	slot := s.conns.slot(uint64(id))
	if e := slot.Load(); e != nil && e.ID == uint64(id) {
		return *e
	}
	a := proxylib.ConnAddrs{
		Remote: s.attrString(attrSourceAddress),
		Local:  s.attrString(attrDestinationAddress),
		ID:     uint64(id),
	}
	slot.Store(&a)
	return a
}

// connCache remembers recent downstream connections' addresses by Envoy's
// connection id (unique in the process, never reused): a direct-mapped
// table of immutable entries, so every worker thread reads and replaces
// slots without a lock. Two live connections whose ids share a slot only
// read Envoy more often.
type connCache [1024]atomic.Pointer[proxylib.ConnAddrs]

func (c *connCache) slot(id uint64) *atomic.Pointer[proxylib.ConnAddrs] {
	return &c[id%uint64(len(c))]
}

//export envoy_dynamic_module_on_http_filter_config_new
func envoy_dynamic_module_on_http_filter_config_new(_ unsafe.Pointer, name, config C.ward_buf) (h C.uintptr_t) {
	defer func() {
		if r := recover(); r != nil {
			logPanic("http_filter_config_new", r)
			h = 0 // Envoy rejects the configuration
		}
	}()
	n := string(view(name))
	cfg, err := proxylib.NewHTTPConfig(n, append([]byte(nil), view(config)...))
	if err != nil {
		envoyLogger{}.Log(proxylib.LogError, "ward: http filter "+n+": "+err.Error())
		return 0
	}
	return toHandle(&httpConfig{cfg: cfg})
}

//export envoy_dynamic_module_on_http_filter_config_destroy
func envoy_dynamic_module_on_http_filter_config_destroy(h C.uintptr_t) {
	defer func() {
		if r := recover(); r != nil {
			logPanic("http_filter_config_destroy", r)
		}
	}()
	if c, ok := fromHandle[*httpConfig](h); ok {
		c.cfg.Close()
	}
	deleteHandle(h)
}

// failHTTP answers 500 after a recovered panic, unless a reply went out.
func failHTTP(p unsafe.Pointer, f *httpFilter, where string, r any) C.int {
	logPanic(where, r)
	if f == nil {
		f = &httpFilter{} // the panic came before the stream's filter existed
	}
	if !f.replied {
		func() {
			defer func() {
				if r := recover(); r != nil {
					logPanic(where+" (local reply)", r)
				}
			}()
			f.stream = httpStream{p: p, owner: f}
			f.stream.SendLocalReply(500, [][2]string{{"content-type", "text/plain"}}, []byte("ward: internal error\n"), "ward_panic")
		}()
	}
	return headersStopIteration
}

// ward_go_http_request_headers is the request-headers hook's Go half
// (http_hooks.c holds the hooks): it makes the config's filter for the
// stream, runs it, and lets it go. ch is the config's cgo.Handle.
//
//export ward_go_http_request_headers
func ward_go_http_request_headers(p unsafe.Pointer, ch C.uintptr_t, eos C.bool) (st C.int) {
	var f *httpFilter
	defer func() {
		if r := recover(); r != nil {
			st = failHTTP(p, f, "http_filter_request_headers", r)
		}
	}()
	c, _ := fromHandle[*httpConfig](ch)
	if c == nil {
		panic("unknown filter config handle")
	}
	f = &httpFilter{f: c.cfg.NewHTTPFilter()}
	f.stream = httpStream{p: p, owner: f, conns: &c.conns}
	return C.int(f.f.OnRequestHeaders(&f.stream, bool(eos)))
}
