package proxylib

import (
	"fmt"
	"sync/atomic"
)

// StreamOutput is where a Stream sends what its parser lets through. The
// binding implements it on top of Envoy's network filter buffers.
type StreamOutput interface {
	// Forward sends data on toward the server (reply false) or the client
	// (reply true). data is only valid during the call.
	Forward(reply bool, data []byte)
	// End passes on the end of one direction (a half-close: the client
	// shut down its writes, reply false; or the server, reply true) after
	// everything forwarded in that direction. No Forward in that direction
	// follows.
	End(reply bool)
	// Close closes the connection (both directions); reason is for logs
	// and flow records. No Forward follows a Close.
	Close(reason string)
}

// DefaultStreamLimit is the default bound on the bytes a Stream buffers per
// direction while its parser asks for more.
const DefaultStreamLimit = 128 << 20

// Budget bounds the bytes that the Streams sharing it keep buffered,
// across connections: a per-process memory budget. A Stream that would
// grow its buffers past the budget closes its connection instead, and the
// budget counts it (Closed). The zero value is an unlimited budget that
// still counts; it is safe for concurrent use.
type Budget struct {
	limit  atomic.Int64
	used   atomic.Int64
	closed atomic.Uint64
}

// SetLimit sets the budget in bytes; 0 or less means unlimited. Streams
// already over a lowered limit are closed when they next grow.
func (b *Budget) SetLimit(n int64) { b.limit.Store(max(n, 0)) }

// Limit returns the budget in bytes (0: unlimited).
func (b *Budget) Limit() int64 { return b.limit.Load() }

// Used returns the bytes the Streams hold now.
func (b *Budget) Used() int64 { return b.used.Load() }

// Closed returns how many connections were closed for going over budget.
func (b *Budget) Closed() uint64 { return b.closed.Load() }

func (b *Budget) reserve(n int64) bool {
	u := b.used.Add(n)
	if lim := b.limit.Load(); lim > 0 && u > lim {
		b.used.Add(-n)
		b.closed.Add(1)
		return false
	}
	return true
}

func (b *Budget) release(n int64) { b.used.Add(-n) }

// shrinkAbove is the buffer capacity above which a Stream gives a buffer
// back once most of it is unused, so a connection that carried one large
// frame does not pin it.
const shrinkAbove = 64 << 10

// Stream drives one connection's Parser: it keeps the unconsumed bytes of
// each direction (copied; the caller's slices are never retained), calls
// the parser while it can decide, applies its operations (Pass forwards,
// Drop discards, More waits, Error closes) and emits injected bytes.
//
// Ordering: bytes a parser injects during an OnData call are forwarded
// after the bytes that call's operation passes, and before anything a
// later call passes.
//
// Memory: when a parser asked for more (More n) and the bytes arrive, the
// stream hands the parser the bytes it asked for as one contiguous first
// slice, so a parser never copies a frame itself. What it keeps is
// bounded by Limit per direction and by Budget across streams; buffers
// larger than 64 KiB are given back once mostly unused.
//
// Half-close: the end of a direction (endStream) is passed on (End) after
// what the parser passed; bytes of an incomplete message are not.
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
	// Budget, when set, is charged with the capacity of the stream's
	// buffers; set before the first OnData.
	Budget *Budget

	closeAfter string // set by CloseAfter

	dir    [2]streamDir
	inject [2][]byte
	segs   [][]byte // scratch view handed to the parser
	held   int64    // bytes charged to Budget
	ip     inPlace  // during an OnDataInPlace call
}

type streamDir struct {
	buf   []byte // unconsumed bytes kept between calls (owned)
	need  int    // the parser asked for at least this many bytes in total
	pass  int    // bytes still to pass from a Pass larger than the data
	drop  int    // bytes still to drop from a Drop larger than the data
	ended bool   // End was passed on
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

// Release frees the stream's buffers and returns them to the Budget. The
// binding calls it when the connection has closed, whichever side closed
// it; the stream ignores data afterwards and does not call Close.
func (s *Stream) Release() {
	s.closed = true
	s.free()
}

func idx(reply bool) int {
	if reply {
		return 1
	}
	return 0
}

func (s *Stream) free() {
	s.inject = [2][]byte{}
	s.dir = [2]streamDir{}
	s.segs = nil
	if s.Budget != nil && s.held != 0 {
		s.Budget.release(s.held)
	}
	s.held = 0
}

func (s *Stream) close(reason string) {
	if s.closed {
		return
	}
	// What the call passed so far reaches the peer before the close, as
	// with OnData.
	s.materialize(&s.ip)
	s.closed = true
	s.free()
	s.out.Close(reason)
}

// account charges the budget with the capacity of the buffers; it closes
// the connection and returns false when the budget refuses.
func (s *Stream) account() bool {
	if s.Budget == nil {
		return true
	}
	total := int64(cap(s.dir[0].buf) + cap(s.dir[1].buf))
	delta := total - s.held
	switch {
	case delta > 0:
		if !s.Budget.reserve(delta) {
			s.close(fmt.Sprintf("memory budget of %d bytes exceeded", s.Budget.Limit()))
			return false
		}
	case delta < 0:
		s.Budget.release(-delta)
	}
	s.held = total
	return true
}

func (s *Stream) flushInjected() {
	for i := range s.inject {
		if len(s.inject[i]) > 0 && !s.closed {
			if s.ip.on && i == s.ip.dir {
				s.materialize(&s.ip)
			}
			s.out.Forward(i == 1, s.inject[i])
			s.inject[i] = s.inject[i][:0]
		}
		if cap(s.inject[i]) > shrinkAbove {
			s.inject[i] = nil
		}
	}
}

// OnData hands the stream the bytes that arrived in one direction (reply
// false: from the client; true: from the server). The slices are only read
// during the call. endStream says the direction has ended: it is passed on
// after the bytes the parser passes.
func (s *Stream) OnData(reply, endStream bool, data [][]byte) {
	s.onData(reply, endStream, data, false)
}

// OnDataInPlace is OnData for a caller that can let the bytes it was
// handed go on where they are (Envoy: a network filter that returns
// Continue without draining its buffer). When the parser passes every
// byte of data unchanged, as whole messages or the rest of one, and
// injects nothing, OnDataInPlace forwards nothing and returns true: the
// caller lets data continue. Otherwise it forwards what the parser lets
// through, as OnData does, and returns false: the caller discards data
// from its buffer. On the usual path of a policy that allows the traffic
// no byte is copied.
func (s *Stream) OnDataInPlace(reply, endStream bool, data [][]byte) bool {
	return s.onData(reply, endStream, data, true)
}

// inPlace is the state of one OnDataInPlace call while every operation so
// far passed the call's data from its start: placed bytes are passed but
// not forwarded yet.
type inPlace struct {
	on     bool
	dir    int // idx of the call's direction
	data   [][]byte
	placed int
}

// materialize forwards the placed bytes (the first ones of the call's
// data) and leaves the in-place mode: something other than a pass of the
// caller's bytes follows.
func (s *Stream) materialize(ip *inPlace) {
	if !ip.on {
		return
	}
	reply := ip.dir == 1
	ip.on = false
	n := ip.placed
	for _, b := range ip.data {
		if n == 0 {
			break
		}
		k := min(n, len(b))
		if k > 0 {
			s.out.Forward(reply, b[:k])
		}
		n -= k
	}
}

func (s *Stream) onData(reply, endStream bool, data [][]byte, allowInPlace bool) (kept bool) {
	if s.closed {
		return false
	}
	d := &s.dir[idx(reply)]
	// In place only when the view is the caller's data (no kept tail) and
	// no end has to be passed on after it.
	ip := &s.ip
	*ip = inPlace{on: allowInPlace && len(d.buf) == 0 && !endStream && !d.ended, dir: idx(reply), data: data}
	defer func() {
		clear(s.segs[:cap(s.segs)]) // hold no reference to the caller's data
		s.ip = inPlace{}
		if r := recover(); r != nil {
			s.close(fmt.Sprintf("parser panic: %v", r))
			kept = false
		}
	}()
	if d.ended {
		return false
	}

	// The view: the kept tail first, then the new data. When the parser
	// asked for more than the tail holds, the tail is first topped up to
	// what it asked for, so the parser sees it in one piece (those bytes
	// would be copied into the tail anyway if they did not complete it).
	segs := s.segs[:0]
	avail := 0
	first, off := 0, 0 // data[first][off:] is the first byte not yet in the view
	if len(d.buf) > 0 {
		if want := min(d.need, s.Limit); want > len(d.buf) {
			if !s.grow(d, want) {
				return false
			}
			for first < len(data) && len(d.buf) < want {
				b := data[first]
				k := min(len(b), want-len(d.buf))
				d.buf = append(d.buf, b[:k]...)
				if k == len(b) {
					first++
				} else {
					off = k
				}
			}
		}
		segs = append(segs, d.buf)
		avail += len(d.buf)
	}
	for i := first; i < len(data); i++ {
		b := data[i]
		if i == first {
			b = b[off:]
		}
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
				return false
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
			return false
		default:
			s.close(fmt.Sprintf("parser returned unknown op %d", op))
			return false
		}
		s.flushInjected()
		if s.closeAfter != "" {
			s.close(s.closeAfter)
			return false
		}
		if op == More {
			break
		}
	}
	s.flushInjected()
	if s.closed {
		return false
	}
	if s.ip.on {
		if avail == 0 {
			// Every byte passed unchanged: the caller lets data go on.
			d.buf = d.buf[:0]
			return true
		}
		s.materialize(&s.ip) // a tail is kept: the passed prefix is forwarded
	}
	if avail > s.Limit {
		s.close(fmt.Sprintf("more than %d bytes buffered", s.Limit))
		return false
	}
	s.keep(d, segs, avail)
	if s.Budget != nil && !s.account() {
		return false
	}
	if endStream {
		// The peer will send nothing more in this direction: an incomplete
		// message never completes. Pass the end on, as a proxy without a
		// parser would, so the other side can finish and close.
		d.ended = true
		d.buf, d.need = nil, 0
		s.account()
		if !s.closed {
			s.out.End(reply)
		}
	}
	return false
}

// grow makes room for want bytes in d.buf, charging the budget; it closes
// the connection and returns false when the budget refuses.
func (s *Stream) grow(d *streamDir, want int) bool {
	if cap(d.buf) >= want {
		return true
	}
	nb := make([]byte, len(d.buf), min(max(want, 2*cap(d.buf), 4096), max(want, d.need)))
	copy(nb, d.buf)
	d.buf = nb
	return s.account()
}

// consume takes n bytes off the front of segs, forwarding them when pass
// (or counting them as placed, in place).
func (s *Stream) consume(reply bool, segs [][]byte, n int, pass bool) [][]byte {
	if s.ip.on {
		if pass {
			s.ip.placed += n
			pass = false // advance the view only
		} else {
			s.materialize(&s.ip)
		}
	}
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
// The first segment may alias d.buf; copy handles the overlap. A buffer
// over 64 KiB that is mostly unused is replaced by a small one.
func (s *Stream) keep(d *streamDir, segs [][]byte, avail int) {
	if avail == 0 {
		if cap(d.buf) > shrinkAbove {
			d.buf = nil // do not pin a large buffer on an idle connection
		} else {
			d.buf = d.buf[:0]
		}
		return
	}
	if cap(d.buf) < avail || (cap(d.buf) > shrinkAbove && cap(d.buf) >= 4*max(avail, d.need)) {
		nb := make([]byte, 0, max(avail, min(2*cap(d.buf), max(avail, d.need)), 4096))
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
