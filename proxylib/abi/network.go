package abi

/*
#include "callbacks.h"

#cgo noescape envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks
#cgo nocallback envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks
#cgo noescape envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks
#cgo nocallback envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks
#cgo nocallback envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size
#cgo nocallback envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks_size
#cgo nocallback envoy_dynamic_module_callback_network_filter_drain_read_buffer
#cgo nocallback envoy_dynamic_module_callback_network_filter_drain_write_buffer
#cgo noescape envoy_dynamic_module_callback_network_filter_get_remote_address
#cgo nocallback envoy_dynamic_module_callback_network_filter_get_remote_address
#cgo noescape envoy_dynamic_module_callback_network_filter_get_local_address
#cgo nocallback envoy_dynamic_module_callback_network_filter_get_local_address
#cgo noescape envoy_dynamic_module_callback_network_filter_inject_read_data
#cgo noescape envoy_dynamic_module_callback_network_filter_inject_write_data
*/
import "C"

import (
	"unsafe"

	"github.com/wardproxy/ward/proxylib"
)

// Connection close types (envoy_dynamic_module_type_network_connection_close_type).
const (
	closeFlushWrite = 0
	closeNoFlush    = 1
)

// Connection events (envoy_dynamic_module_type_network_connection_event).
const (
	eventRemoteClose = 0
	eventLocalClose  = 1
)

type networkConfig struct {
	cfg proxylib.NetworkFilterConfig
}

type networkFilter struct {
	f      proxylib.NetworkFilter
	conn   networkConn
	closed bool
	// chunks is reused between reads to avoid allocating per event.
	chunks []C.ward_buf
	views  [][]byte
}

// networkConn implements proxylib.NetworkConn over the envoy filter pointer
// of the current hook.
type networkConn struct {
	p     unsafe.Pointer
	owner *networkFilter
}

var _ proxylib.NetworkConn = (*networkConn)(nil)

func (c *networkConn) DrainRead(n int) {
	C.envoy_dynamic_module_callback_network_filter_drain_read_buffer(c.p, C.size_t(n))
}

func (c *networkConn) DrainWrite(n int) {
	C.envoy_dynamic_module_callback_network_filter_drain_write_buffer(c.p, C.size_t(n))
}

func (c *networkConn) InjectRead(data []byte, end bool) {
	C.envoy_dynamic_module_callback_network_filter_inject_read_data(c.p, goBytesBuf(data), C.bool(end))
}

func (c *networkConn) InjectWrite(data []byte, end bool) {
	C.envoy_dynamic_module_callback_network_filter_inject_write_data(c.p, goBytesBuf(data), C.bool(end))
}

func (c *networkConn) Close(flush bool, details string) {
	if c.owner.closed {
		return
	}
	c.owner.closed = true
	if details != "" {
		envoyLogger{}.Log(proxylib.LogDebug, "ward: closing connection: "+details)
	}
	t := closeNoFlush
	if flush {
		t = closeFlushWrite
	}
	C.envoy_dynamic_module_callback_network_filter_close(c.p, C.int(t))
}

func (c *networkConn) Addrs() proxylib.ConnAddrs {
	var a C.ward_buf
	var port C.uint32_t
	var out proxylib.ConnAddrs
	if C.envoy_dynamic_module_callback_network_filter_get_remote_address(c.p, &a, &port) {
		out.Remote = joinHostPort(view(a), uint32(port))
	}
	if C.envoy_dynamic_module_callback_network_filter_get_local_address(c.p, &a, &port) {
		out.Local = joinHostPort(view(a), uint32(port))
	}
	out.ID = uint64(C.envoy_dynamic_module_callback_network_filter_get_connection_id(c.p))
	return out
}

// buffer returns borrowed views of the read (or write) buffer's chunks.
func (f *networkFilter) buffer(write bool) [][]byte {
	p := f.conn.p
	var n C.size_t
	if write {
		n = C.envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks_size(p)
	} else {
		n = C.envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(p)
	}
	if n == 0 {
		return nil
	}
	if cap(f.chunks) < int(n) {
		f.chunks = make([]C.ward_buf, n)
		f.views = make([][]byte, n)
	}
	chunks := f.chunks[:n]
	var ok C.bool
	if write {
		ok = C.envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks(p, &chunks[0])
	} else {
		ok = C.envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(p, &chunks[0])
	}
	if !bool(ok) {
		return nil
	}
	views := f.views[:n]
	for i, c := range chunks {
		views[i] = view(c)
	}
	return views
}

// failNetwork closes the connection after a recovered panic.
func failNetwork(p unsafe.Pointer, f *networkFilter, where string, r any) C.int {
	logPanic(where, r)
	if f != nil && !f.closed {
		func() {
			defer func() {
				if r := recover(); r != nil {
					logPanic(where+" (close)", r)
				}
			}()
			f.conn.p = p
			f.conn.Close(false, "ward_panic")
		}()
	} else if f == nil && p != nil {
		C.envoy_dynamic_module_callback_network_filter_close(p, closeNoFlush)
	}
	return C.int(proxylib.NetworkStopIteration)
}

//export envoy_dynamic_module_on_network_filter_config_new
func envoy_dynamic_module_on_network_filter_config_new(_ unsafe.Pointer, name, config C.ward_buf) (h C.uintptr_t) {
	defer func() {
		if r := recover(); r != nil {
			logPanic("network_filter_config_new", r)
			h = 0
		}
	}()
	n := string(view(name))
	cfg, err := proxylib.NewNetworkConfig(n, append([]byte(nil), view(config)...))
	if err != nil {
		envoyLogger{}.Log(proxylib.LogError, "ward: network filter "+n+": "+err.Error())
		return 0
	}
	return toHandle(&networkConfig{cfg: cfg})
}

//export envoy_dynamic_module_on_network_filter_config_destroy
func envoy_dynamic_module_on_network_filter_config_destroy(h C.uintptr_t) {
	defer func() {
		if r := recover(); r != nil {
			logPanic("network_filter_config_destroy", r)
		}
	}()
	if c, ok := fromHandle[*networkConfig](h); ok {
		c.cfg.Close()
	}
	deleteHandle(h)
}

//export envoy_dynamic_module_on_network_filter_new
func envoy_dynamic_module_on_network_filter_new(h C.uintptr_t, _ unsafe.Pointer) (fh C.uintptr_t) {
	defer func() {
		if r := recover(); r != nil {
			logPanic("network_filter_new", r)
			fh = 0 // Envoy closes the connection
		}
	}()
	c, ok := fromHandle[*networkConfig](h)
	if !ok {
		return 0
	}
	f := &networkFilter{f: c.cfg.NewNetworkFilter()}
	f.conn.owner = f
	return toHandle(f)
}

//export envoy_dynamic_module_on_network_filter_new_connection
func envoy_dynamic_module_on_network_filter_new_connection(p unsafe.Pointer, h C.uintptr_t) (st C.int) {
	var f *networkFilter
	defer func() {
		if r := recover(); r != nil {
			st = failNetwork(p, f, "network_filter_new_connection", r)
		}
	}()
	f, _ = fromHandle[*networkFilter](h)
	if f == nil {
		panic("unknown filter handle")
	}
	f.conn.p = p
	return C.int(f.f.OnNewConnection(&f.conn))
}

//export envoy_dynamic_module_on_network_filter_read
func envoy_dynamic_module_on_network_filter_read(p unsafe.Pointer, h C.uintptr_t, _ C.size_t, end C.bool) C.int {
	return onData(p, h, false, bool(end))
}

//export envoy_dynamic_module_on_network_filter_write
func envoy_dynamic_module_on_network_filter_write(p unsafe.Pointer, h C.uintptr_t, _ C.size_t, end C.bool) C.int {
	return onData(p, h, true, bool(end))
}

// onData hands the read (client to server) or write buffer to the filter.
func onData(p unsafe.Pointer, h C.uintptr_t, write, end bool) (st C.int) {
	var f *networkFilter
	defer func() {
		if r := recover(); r != nil {
			where := "network_filter_read"
			if write {
				where = "network_filter_write"
			}
			st = failNetwork(p, f, where, r)
		}
	}()
	f, _ = fromHandle[*networkFilter](h)
	if f == nil {
		panic("unknown filter handle")
	}
	if f.closed {
		return C.int(proxylib.NetworkStopIteration)
	}
	f.conn.p = p
	if write {
		return C.int(f.f.OnWrite(&f.conn, f.buffer(true), end))
	}
	return C.int(f.f.OnRead(&f.conn, f.buffer(false), end))
}

//export envoy_dynamic_module_on_network_filter_event
func envoy_dynamic_module_on_network_filter_event(p unsafe.Pointer, h C.uintptr_t, ev C.int) {
	defer func() {
		if r := recover(); r != nil {
			logPanic("network_filter_event", r)
		}
	}()
	if ev != eventRemoteClose && ev != eventLocalClose {
		return
	}
	if f, ok := fromHandle[*networkFilter](h); ok {
		f.closed = true
		f.f.OnClose(ev == eventRemoteClose)
	}
}

//export envoy_dynamic_module_on_network_filter_destroy
func envoy_dynamic_module_on_network_filter_destroy(h C.uintptr_t) {
	defer func() {
		if r := recover(); r != nil {
			logPanic("network_filter_destroy", r)
		}
	}()
	deleteHandle(h)
}

//export envoy_dynamic_module_on_network_filter_scheduled
func envoy_dynamic_module_on_network_filter_scheduled(unsafe.Pointer, C.uintptr_t, C.uint64_t) {}

//export envoy_dynamic_module_on_network_filter_config_scheduled
func envoy_dynamic_module_on_network_filter_config_scheduled(C.uintptr_t, C.uint64_t) {}

//export envoy_dynamic_module_on_network_filter_above_write_buffer_high_watermark
func envoy_dynamic_module_on_network_filter_above_write_buffer_high_watermark(unsafe.Pointer, C.uintptr_t) {
}

//export envoy_dynamic_module_on_network_filter_below_write_buffer_low_watermark
func envoy_dynamic_module_on_network_filter_below_write_buffer_low_watermark(unsafe.Pointer, C.uintptr_t) {
}

//export envoy_dynamic_module_on_network_filter_http_callout_done
func envoy_dynamic_module_on_network_filter_http_callout_done(unsafe.Pointer, C.uintptr_t) {}
