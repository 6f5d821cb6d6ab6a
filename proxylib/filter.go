package proxylib

import "time"

// HeadersStatus is what an HTTP filter returns from a headers event. The
// values are Envoy's (envoy_dynamic_module_type_on_http_filter_*_headers_status).
type HeadersStatus int

// Headers statuses.
const (
	HeadersContinue      HeadersStatus = 0
	HeadersStopIteration HeadersStatus = 1
)

// HTTPStream is what an HTTP filter sees of its stream during a hook. It
// must not be used after the hook returns, nor from another goroutine.
type HTTPStream interface {
	// RequestHeader returns the first value of a request header (names
	// lower-case; pseudo-headers ":path", ":method", ":authority" work).
	RequestHeader(name string) (string, bool)
	// RequestHeaderValues returns every value of a request header.
	RequestHeaderValues(name string) []string
	// Header returns a request header's values joined with "," (how
	// Envoy's header matchers see a repeated header), so a second copy
	// cannot smuggle a value past an exact match.
	Header(name string) (string, bool)
	// SetRequestHeader replaces a request header; RemoveRequestHeader
	// deletes it; AddRequestHeader appends a value.
	SetRequestHeader(name, value string)
	RemoveRequestHeader(name string)
	AddRequestHeader(name, value string)
	// SendLocalReply answers the request without contacting the upstream.
	// The hook must then return HeadersStopIteration.
	SendLocalReply(status int, headers [][2]string, body []byte, details string)
	// Conn describes the downstream connection.
	Conn() ConnAddrs
	// RequestedServerName is the SNI of the downstream TLS connection, ""
	// without TLS.
	RequestedServerName() string
}

// ConnAddrs are a connection's addresses as "ip:port" strings, plus its id.
// For a transparent listener, Local is the original destination.
type ConnAddrs struct {
	Remote string
	Local  string
	ID     uint64
}

// HTTPFilter handles one HTTP stream's request headers, the only event
// ward's filters decide on. Envoy calls it from one worker thread; it must
// not block. The binding answers the stream's other events (response
// headers, bodies, trailers, completion) in C without entering Go: each
// entry from an Envoy worker into the Go runtime costs far more than the
// call itself (issue 17, bench/PROFILE.md). A filter that needs a later
// event adds it to this interface and to proxylib/abi's http_hooks.c.
type HTTPFilter interface {
	OnRequestHeaders(s HTTPStream, endOfStream bool) HeadersStatus
}

// HTTPFilterConfig is one configured instance of a filter (one per listener
// filter chain that names it). It is shared by every worker thread, so it
// must be safe for concurrent use.
type HTTPFilterConfig interface {
	NewHTTPFilter() HTTPFilter
	Close()
}

// NetworkStatus is what a network filter returns from a data event; the
// values are Envoy's (envoy_dynamic_module_type_on_network_filter_data_status).
type NetworkStatus int

// Network statuses.
const (
	NetworkContinue      NetworkStatus = 0
	NetworkStopIteration NetworkStatus = 1
)

// NetworkConn is what a network filter may do to its connection. It must not
// be used after the hook returns, nor from another goroutine.
type NetworkConn interface {
	// DrainRead removes n bytes from the head of the read buffer
	// (client-to-server data); DrainWrite from the write buffer.
	DrainRead(n int)
	DrainWrite(n int)
	// InjectRead sends data toward the upstream, through the filters after
	// this one. InjectWrite sends data toward the client, through the
	// filters after this one on the write path.
	InjectRead(data []byte, endStream bool)
	InjectWrite(data []byte, endStream bool)
	// Close closes the connection; flush says whether pending writes go
	// out first.
	Close(flush bool, details string)
	Addrs() ConnAddrs
}

// NetworkFilter handles one downstream TCP connection.
type NetworkFilter interface {
	// OnNewConnection is called once the connection is accepted.
	OnNewConnection(c NetworkConn) NetworkStatus
	// OnRead is called with the whole read buffer (client to server); the
	// slices are borrowed from Envoy and valid only during the call.
	OnRead(c NetworkConn, data [][]byte, endStream bool) NetworkStatus
	// OnWrite is the same for server-to-client data.
	OnWrite(c NetworkConn, data [][]byte, endStream bool) NetworkStatus
	// OnClose is called once when the connection closes.
	OnClose(remote bool)
}

// NetworkFilterConfig is one configured network filter; safe for
// concurrent use.
type NetworkFilterConfig interface {
	NewNetworkFilter() NetworkFilter
	Close()
}

// Logger receives the binding's diagnostics (panics recovered in a hook,
// configuration errors). It must be safe for concurrent use.
type Logger interface {
	Log(level LogLevel, msg string)
}

// LogLevel mirrors Envoy's log levels.
type LogLevel int

// Log levels (envoy_dynamic_module_type_log_level).
const (
	LogTrace LogLevel = iota
	LogDebug
	LogInfo
	LogWarn
	LogError
	LogCritical
)

// Now is the clock filters use for flow records.
func Now() time.Time { return time.Now() }
