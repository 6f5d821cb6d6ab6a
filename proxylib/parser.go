// Package proxylib is the Go side of everything that runs inside Envoy: the
// filter registry, the interfaces the cgo binding in proxylib/abi calls, and
// the stream-parser framework for L7 protocols carried over TCP.
//
// Invariants: nothing in this package imports "C" or unsafe; hooks called
// by abi never block, and never retain a borrowed buffer after they return.
package proxylib

// Op is a stream parser's verdict on the bytes at the head of one direction.
type Op int

// The operations a Parser returns. They mirror Cilium's proxylib (OpType).
const (
	// More: the parser needs N more bytes before it can decide (N may be 1
	// when the amount is unknown). Nothing is consumed.
	More Op = iota
	// Pass: forward the next N bytes unchanged.
	Pass
	// Drop: discard the next N bytes; they never reach the other side.
	Drop
	// Error: the stream is malformed or not allowed; close the connection.
	// N is an error code for the flow record (see the Err* constants).
	Error
)

// Error codes carried in N with Op Error.
const (
	ErrInvalidFrame = iota + 1
	ErrFrameTooLarge
	ErrPolicyDenied
	ErrUnsupported
)

// Parser parses one TCP connection of an L7 protocol. OnData is called with
// the unconsumed bytes of one direction (reply false: client to server;
// true: server to client) as a list of slices that are only valid during the
// call. The parser returns one operation for the head of that data; the
// framework applies it and calls again while data is left and the op was
// Pass or Drop. A parser is used by one connection only and is never called
// concurrently.
type Parser interface {
	OnData(reply, endStream bool, data [][]byte) (op Op, n int)
}

// Connection is what a Parser sees of its connection.
type Connection interface {
	// Inject queues bytes to be sent toward the client (reply true) or the
	// server (reply false), after the bytes already passed in that
	// direction. The data is copied.
	Inject(reply bool, data []byte)
	// Info describes the connection: addresses, identities, policy.
	Info() *ConnInfo
}

// ConnInfo describes the connection a parser serves.
type ConnInfo struct {
	Ingress      bool   // true when the policy is the destination's ingress
	SrcIdentity  uint32 // numeric security identity of the source
	DstIdentity  uint32 // numeric security identity of the destination
	SrcAddr      string // "ip:port"
	DstAddr      string // "ip:port" (original destination)
	DstPort      uint16
	PolicyName   string // the policy (endpoint) name the filter enforces
	ConnectionID uint64
}

// ParserFactory creates the parser for a new connection. It returns nil when
// the connection must be closed (for example, no policy for it).
type ParserFactory interface {
	Create(conn Connection) Parser
}
