// Package testfilters holds filters that exist to prove the binding's
// contracts against the real Envoy: one that panics on demand (Envoy must
// keep serving), one that drains and re-injects every byte (the network
// filter's buffer, drain and inject callbacks), and one that echoes what
// the binding sees (addresses, headers). They do nothing unless a listener
// names them.
package testfilters

import (
	"bytes"
	"encoding/json"

	"github.com/wardproxy/ward/proxylib"
)

// Names under which the filters register.
const (
	PanicHTTP   = "ward.test.panic"
	PanicTCP    = "ward.test.panic_tcp"
	Passthrough = "ward.test.passthrough"
	Inspect     = "ward.test.inspect"
)

// Register adds the test filters to proxylib's registry.
func Register() {
	proxylib.RegisterHTTP(PanicHTTP, func([]byte) (proxylib.HTTPFilterConfig, error) { return panicConfig{}, nil })
	proxylib.RegisterHTTP(Inspect, func([]byte) (proxylib.HTTPFilterConfig, error) { return inspectConfig{}, nil })
	proxylib.RegisterNetwork(PanicTCP, func([]byte) (proxylib.NetworkFilterConfig, error) { return panicTCPConfig{}, nil })
	proxylib.RegisterNetwork(Passthrough, func([]byte) (proxylib.NetworkFilterConfig, error) { return passConfig{}, nil })
}

// panicFilter panics in the request-headers hook when the request carries
// "x-ward-panic: 1"; otherwise it continues.
type panicConfig struct{}

func (panicConfig) NewHTTPFilter() proxylib.HTTPFilter { return panicFilter{} }
func (panicConfig) Close()                             {}

type panicFilter struct{}

func (panicFilter) OnRequestHeaders(s proxylib.HTTPStream, _ bool) proxylib.HeadersStatus {
	if v, _ := s.RequestHeader("x-ward-panic"); v == "1" {
		panic("ward.test.panic: deliberate panic")
	}
	return proxylib.HeadersContinue
}

// inspectFilter answers every request itself with a JSON description of
// what the binding read: addresses, method, path, authority, and every value
// of x-multi. A request with "x-set: v" gets it as x-seen on the upstream
// instead (set/add/remove headers are checked by letting it through).
type inspectConfig struct{}

func (inspectConfig) NewHTTPFilter() proxylib.HTTPFilter { return inspectFilter{} }
func (inspectConfig) Close()                             {}

type inspectFilter struct{}

func (inspectFilter) OnRequestHeaders(s proxylib.HTTPStream, _ bool) proxylib.HeadersStatus {
	if v, ok := s.RequestHeader("x-set"); ok {
		s.SetRequestHeader("x-seen", v)
		s.AddRequestHeader("x-added", "1")
		s.AddRequestHeader("x-added", "2")
		s.RemoveRequestHeader("x-set")
		return proxylib.HeadersContinue
	}
	m, _ := s.RequestHeader(":method")
	p, _ := s.RequestHeader(":path")
	a, _ := s.RequestHeader(":authority")
	out, _ := json.Marshal(map[string]any{
		"conn": s.Conn(), "method": m, "path": p, "authority": a,
		"multi": s.RequestHeaderValues("x-multi"),
	})
	s.SendLocalReply(299, [][2]string{{"content-type", "application/json"}, {"x-ward", "inspect"}}, out, "ward_inspect")
	return proxylib.HeadersStopIteration
}

// panicTCP panics on a read whose data starts with "PANIC".
type panicTCPConfig struct{}

func (panicTCPConfig) NewNetworkFilter() proxylib.NetworkFilter { return panicTCP{} }
func (panicTCPConfig) Close()                                   {}

type panicTCP struct{}

func (panicTCP) OnNewConnection(proxylib.NetworkConn) proxylib.NetworkStatus {
	return proxylib.NetworkContinue
}
func (panicTCP) OnRead(_ proxylib.NetworkConn, data [][]byte, _ bool) proxylib.NetworkStatus {
	if len(data) > 0 && bytes.HasPrefix(data[0], []byte("PANIC")) {
		panic("ward.test.panic_tcp: deliberate panic")
	}
	return proxylib.NetworkContinue
}
func (panicTCP) OnWrite(proxylib.NetworkConn, [][]byte, bool) proxylib.NetworkStatus {
	return proxylib.NetworkContinue
}
func (panicTCP) OnClose(bool) {}

// passFilter takes every byte out of Envoy's buffers and injects it again,
// in both directions: the bytes reach the other side only through ward's
// drain and inject callbacks.
type passConfig struct{}

func (passConfig) NewNetworkFilter() proxylib.NetworkFilter { return &passFilter{} }
func (passConfig) Close()                                   {}

type passFilter struct{ buf []byte }

func (*passFilter) OnNewConnection(proxylib.NetworkConn) proxylib.NetworkStatus {
	return proxylib.NetworkContinue
}

func (p *passFilter) move(data [][]byte) []byte {
	p.buf = p.buf[:0]
	for _, d := range data {
		p.buf = append(p.buf, d...)
	}
	return p.buf
}

func (p *passFilter) OnRead(c proxylib.NetworkConn, data [][]byte, end bool) proxylib.NetworkStatus {
	b := p.move(data)
	c.DrainRead(len(b))
	if len(b) > 0 || end {
		c.InjectRead(b, end)
	}
	return proxylib.NetworkStopIteration
}

func (p *passFilter) OnWrite(c proxylib.NetworkConn, data [][]byte, end bool) proxylib.NetworkStatus {
	b := p.move(data)
	c.DrainWrite(len(b))
	if len(b) > 0 || end {
		c.InjectWrite(b, end)
	}
	return proxylib.NetworkStopIteration
}

func (*passFilter) OnClose(bool) {}
