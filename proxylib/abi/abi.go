// Package abi is ward's cgo binding to Envoy's dynamic-modules C ABI
// (source/extensions/dynamic_modules/abi/abi.h of Envoy 1.40). It is the
// only package of ward that imports "C".
//
// Envoy loads libward.so (built from proxylib/module) and calls the
// envoy_dynamic_module_on_* hooks exported here; the hooks decode their C
// arguments, dispatch to the Go filters registered in proxylib by
// filter_name, and encode the answer. Invariants:
//
//   - Only the callbacks declared in callbacks.h are used; each exists in the
//     pinned binary (checked by TestCallbacksExported).
//   - No Go pointer is returned to Envoy: config and filter objects cross the
//     boundary as runtime/cgo.Handle values, deleted in the destroy hooks.
//   - Buffers Envoy lends (envoy_buffer) are only read during the hook;
//     callers copy what they keep.
//   - Every hook recovers panics and fails closed: an HTTP stream gets a
//     local reply 500 and stops; a TCP connection is closed. A panic never
//     unwinds into Envoy.
//   - Callbacks that may re-enter the module (send_response, inject, close)
//     are not marked nocallback; no lock is held across any callback.
package abi

/*
// Envoy's callbacks resolve when Envoy dlopens libward.so; linking the
// module as a plain executable (go build ./...) leaves them unresolved.
#cgo LDFLAGS: -Wl,--unresolved-symbols=ignore-all
#include "callbacks.h"
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"runtime/debug"
	"strconv"
	"unsafe"

	"github.com/wardproxy/ward/proxylib"
)

// envoyLogger logs through Envoy's logger, so module messages land in
// Envoy's log with its format and level filter. Safe from any thread.
type envoyLogger struct{}

func (envoyLogger) Log(level proxylib.LogLevel, msg string) {
	if !bool(C.envoy_dynamic_module_callback_log_enabled(C.int(level))) {
		return
	}
	C.envoy_dynamic_module_callback_log(C.int(level), goBuf(msg))
}

// Logger returns the logger that writes into Envoy's log.
func Logger() proxylib.Logger { return envoyLogger{} }

// goBuf lends a Go string to Envoy for the duration of one call. Envoy
// copies what it keeps (module_buffer contract).
func goBuf(s string) C.ward_buf {
	return C.ward_buf{ptr: (*C.char)(unsafe.Pointer(unsafe.StringData(s))), length: C.size_t(len(s))}
}

func goBytesBuf(b []byte) C.ward_buf {
	return C.ward_buf{ptr: (*C.char)(unsafe.Pointer(unsafe.SliceData(b))), length: C.size_t(len(b))}
}

// view returns Envoy's bytes as a Go slice without copying; valid only
// during the current hook.
func view(b C.ward_buf) []byte {
	if b.ptr == nil || b.length == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(b.ptr)), int(b.length))
}

// logPanic reports a recovered panic with its stack to Envoy's log.
func logPanic(where string, r any) {
	envoyLogger{}.Log(proxylib.LogError, fmt.Sprintf("ward: panic in %s (failing closed): %v\n%s", where, r, debug.Stack()))
}

//export envoy_dynamic_module_on_program_init
func envoy_dynamic_module_on_program_init() *C.char {
	// A C static string: Envoy copies it; no Go memory crosses.
	return C.ward_abi_version()
}

func joinHostPort(ip []byte, port uint32) string {
	s := string(ip)
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			return "[" + s + "]:" + strconv.FormatUint(uint64(port), 10)
		}
	}
	return s + ":" + strconv.FormatUint(uint64(port), 10)
}

// handle helpers: module pointers are cgo.Handle values.
func toHandle(v any) C.uintptr_t { return C.uintptr_t(cgo.NewHandle(v)) }

func fromHandle[T any](h C.uintptr_t) (T, bool) {
	var zero T
	if h == 0 {
		return zero, false
	}
	v, ok := cgo.Handle(h).Value().(T)
	return v, ok
}

func deleteHandle(h C.uintptr_t) {
	if h != 0 {
		cgo.Handle(h).Delete()
	}
}
