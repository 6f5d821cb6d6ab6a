package proxylib

import "fmt"

// StreamOutput is where a Stream sends what its parser lets through. The
// binding implements it on top of Envoy's network filter buffers.
type StreamOutput interface {
	// Forward sends data on toward the server (reply false) or the client
	// (reply true). data is only valid during the call.
	Forward(reply bool, data []byte)
	// Close closes the connection (both directions); reason is for logs
	// and flow records. No Forward follows a Close.
	Close(reason string)
}

// DefaultStreamLimit is the default bound on the bytes a Stream buffers per
// direction while its parser asks for more.
const DefaultStreamLimit = 128 << 20

// Stream drives one connection's Parser: it keeps the unconsumed bytes of
// each direction (copied; the caller's slices are never retained), calls
// the parser while it can decide, applies its operations (Pass forwards,
// Drop discards, More waits, Error closes) and emits injected bytes.
//
// Ordering: bytes a parser injects during an OnData call are forwarded
// after the bytes that call's operation passes, and before anything a
// later call passes.
//
// A Stream is used by one connection and is not safe for concurrent use:
// the binding calls OnData from the connection's worker thread only, and
// the parser may call Inject only from within OnData.
type Stream struct {
	parser Parser
	out    StreamOutput
	info   *ConnInfo
	closed bool

	// Limit bounds the bytes buffered per direction; a parser that asks
	// for more closes the connection. NewStream sets DefaultStreamLimit.
	Limit int

	closeAfter string // set by CloseAfter

	dir    [2]streamDir
	inject [2][]byte
	segs   [][]byte // scratch view handed to the parser
}

type streamDir struct {
	buf  []byte // unconsumed bytes kept between calls (owned)
	need int    // the parser asked for at least this many bytes in total
	pass int    // bytes still to pass from a Pass larger than the data
	drop int    // bytes still to drop from a Drop larger than the data
}

var _ Connection = (*Stream)(nil)

// NewStream creates the Stream of a new connection and its parser. When
// the factory refuses the connection (returns nil), NewStream calls
// out.Close at once and the Stream ignores all data.
func NewStream(f ParserFactory, out StreamOutput, info *ConnInfo) *Stream {
	s := &Stream{out: out, info: info, Limit: DefaultStreamLimit}
	if f != nil {
		s.parser = f.Create(s)
	}
	if s.parser == nil {
		s.close("no parser for the connection (no policy)")
	}
	return s
}

// Inject implements Connection: data is copied and forwarded after the
// bytes the current operation passes in that direction.
func (s *Stream) Inject(reply bool, data []byte) {
	i := idx(reply)
	s.inject[i] = append(s.inject[i], data...)
}

// Info implements Connection.
func (s *Stream) Info() *ConnInfo { return s.info }

// CloseAfter asks the stream to close the connection once the operation
// the parser is about to return, and what it injected, have been applied.
// A parser calls it from within OnData, typically with Pass of the last
// bytes that must still reach the peer.
func (s *Stream) CloseAfter(reason string) { s.closeAfter = reason }

// Closed reports whether the stream has closed the connection.
func (s *Stream) Closed() bool { return s.closed }

func idx(reply bool) int {
	if reply {
		return 1
	}
	return 0
}

func (s *Stream) close(reason string) {
	if s.closed {
		return
	}
	s.closed = true
	s.inject = [2][]byte{}
	s.dir = [2]streamDir{}
	s.out.Close(reason)
}

func (s *Stream) flushInjected() {
	for i := range s.inject {
		if len(s.inject[i]) > 0 && !s.closed {
			s.out.Forward(i == 1, s.inject[i])
			s.inject[i] = s.inject[i][:0]
		}
	}
}

// OnData hands the stream the bytes that arrived in one direction (reply
// false: from the client; true: from the server). The slices are only read
// during the call. endStream says the direction has ended.
func (s *Stream) OnData(reply, endStream bool, data [][]byte) {
	if s.closed {
		return
	}
	defer func() {
		clear(s.segs[:cap(s.segs)]) // hold no reference to the caller's data
		if r := recover(); r != nil {
			s.close(fmt.Sprintf("parser panic: %v", r))
		}
	}()
	d := &s.dir[idx(reply)]

	// The view: the kept tail first, then the new data.
	segs := s.segs[:0]
	avail := 0
	if len(d.buf) > 0 {
		segs = append(segs, d.buf)
		avail += len(d.buf)
	}
	for _, b := range data {
		if len(b) > 0 {
			segs = append(segs, b)
			avail += len(b)
		}
	}
	s.segs = segs[:0]

	for avail > 0 && !s.closed {
		if d.pass > 0 || d.drop > 0 {
			n := min(avail, d.pass+d.drop)
			segs = s.consume(reply, segs, n, d.pass > 0)
			if d.pass > 0 {
				d.pass -= n
			} else {
				d.drop -= n
			}
			avail -= n
			continue
		}
		if avail < d.need {
			break
		}
		op, n := s.parser.OnData(reply, endStream, segs)
		switch op {
		case More:
			d.need = avail + max(n, 1)
		case Pass, Drop:
			d.need = 0
			if n <= 0 {
				s.close(fmt.Sprintf("parser returned %v with length %d", op, n))
				return
			}
			if op == Pass {
				d.pass = n
			} else {
				d.drop = n
			}
			k := min(n, avail)
			segs = s.consume(reply, segs, k, op == Pass)
			avail -= k
			if op == Pass {
				d.pass -= k
			} else {
				d.drop -= k
			}
		case Error:
			s.close("parser error: " + errName(n))
			return
		default:
			s.close(fmt.Sprintf("parser returned unknown op %d", op))
			return
		}
		s.flushInjected()
		if s.closeAfter != "" {
			s.close(s.closeAfter)
			return
		}
		if op == More {
			break
		}
	}
	s.flushInjected()
	if s.closed {
		return
	}
	if avail > s.Limit {
		s.close(fmt.Sprintf("more than %d bytes buffered", s.Limit))
		return
	}
	s.keep(d, segs, avail)
}

// consume takes n bytes off the front of segs, forwarding them when pass.
func (s *Stream) consume(reply bool, segs [][]byte, n int, pass bool) [][]byte {
	for n > 0 && len(segs) > 0 {
		b := segs[0]
		k := min(n, len(b))
		if pass {
			s.out.Forward(reply, b[:k])
		}
		n -= k
		if k == len(b) {
			segs = segs[1:]
		} else {
			segs[0] = b[k:]
		}
	}
	return segs
}

// keep stores the unconsumed view (avail bytes) as the direction's tail.
// The first segment may alias d.buf; copy handles the overlap.
func (s *Stream) keep(d *streamDir, segs [][]byte, avail int) {
	if avail == 0 {
		if cap(d.buf) > 64<<10 {
			d.buf = nil // do not pin a large buffer on an idle connection
		} else {
			d.buf = d.buf[:0]
		}
		return
	}
	if cap(d.buf) < avail {
		nb := make([]byte, 0, max(avail, 2*cap(d.buf), 4096))
		for _, b := range segs {
			nb = append(nb, b...)
		}
		d.buf = nb
		return
	}
	buf := d.buf[:avail]
	off := 0
	for _, b := range segs {
		off += copy(buf[off:], b)
	}
	d.buf = buf
}

// StreamFactoryFunc adapts a function to ParserFactory.
type StreamFactoryFunc func(conn Connection) Parser

// Create calls f(conn).
func (f StreamFactoryFunc) Create(conn Connection) Parser { return f(conn) }

var _ ParserFactory = StreamFactoryFunc(nil)

func errName(code int) string {
	switch code {
	case ErrInvalidFrame:
		return "invalid frame"
	case ErrFrameTooLarge:
		return "frame too large"
	case ErrPolicyDenied:
		return "policy denied"
	case ErrUnsupported:
		return "unsupported"
	}
	return fmt.Sprintf("code %d", code)
}
