package proxylib

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// recorder is a StreamOutput that records what a Stream emits.
type recorder struct {
	toServer, toClient []byte
	closed             string
	ended              [2]bool // End(false), End(true)
}

func (r *recorder) End(reply bool) {
	if r.ended[idx(reply)] {
		panic("end passed twice")
	}
	r.ended[idx(reply)] = true
}

func (r *recorder) Forward(reply bool, data []byte) {
	if r.closed != "" {
		panic("forward after close")
	}
	if r.ended[idx(reply)] {
		panic("forward after end")
	}
	if reply {
		r.toClient = append(r.toClient, data...)
	} else {
		r.toServer = append(r.toServer, data...)
	}
}

func (r *recorder) Close(reason string) { r.closed = reason }

// frameParser parses frames of one length byte and a payload. The first
// payload byte is the verdict: 'p' pass, 'd' drop, 'i' drop and inject the
// payload upper-cased toward the peer, 'e' error, 'b' pass in two steps
// (Pass of the header only, then the rest). Replies are passed whole.
type frameParser struct {
	conn Connection
	rest int // bytes of a 'b' frame still to pass
}

func (p *frameParser) OnData(reply, endStream bool, data [][]byte) (Op, int) {
	flat := bytes.Join(data, nil)
	if p.rest > 0 {
		n := p.rest
		p.rest = 0
		return Pass, n // the rest of a 'b' frame, possibly beyond the data
	}
	if len(flat) < 1 {
		return More, 1
	}
	n := int(flat[0]) + 1
	if len(flat) < 2 {
		return More, 1
	}
	switch flat[1] {
	case 'p':
		return Pass, n
	case 'd':
		return Drop, n
	case 'b':
		if n > 2 {
			p.rest = n - 2
			return Pass, 2
		}
		return Pass, n
	case 'i':
		if len(flat) < n {
			return More, n - len(flat)
		}
		p.conn.Inject(!reply, bytes.ToUpper(flat[1:n]))
		return Drop, n
	case 'e':
		return Error, ErrPolicyDenied
	}
	return Error, ErrInvalidFrame
}

func newTestStream(out StreamOutput) *Stream {
	return NewStream(StreamFactoryFunc(func(c Connection) Parser { return &frameParser{conn: c} }), out, &ConnInfo{})
}

func fr(verdict byte, payload string) []byte {
	return append([]byte{byte(len(payload) + 1), verdict}, payload...)
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

func TestStreamSplits(t *testing.T) {
	in := cat(fr('p', "hello"), fr('d', "secret"), fr('i', "deny"), fr('p', ""), fr('b', "xyz"), fr('p', "tail"))
	wantServer := cat(fr('p', "hello"), fr('p', ""), fr('b', "xyz"), fr('p', "tail"))
	wantClient := []byte("IDENY")
	// Every split of the input into three reads gives the same output.
	for i := 0; i <= len(in); i++ {
		for j := i; j <= len(in); j++ {
			var out recorder
			s := newTestStream(&out)
			s.OnData(false, false, [][]byte{in[:i]})
			s.OnData(false, false, [][]byte{in[i:j], nil})
			s.OnData(false, true, [][]byte{in[j:]})
			if out.closed != "" {
				t.Fatalf("split %d,%d: closed: %s", i, j, out.closed)
			}
			if !bytes.Equal(out.toServer, wantServer) || !bytes.Equal(out.toClient, wantClient) {
				t.Fatalf("split %d,%d: server %q client %q; want %q %q", i, j, out.toServer, out.toClient, wantServer, wantClient)
			}
		}
	}
}

func TestStreamManySlicesOneCall(t *testing.T) {
	var out recorder
	s := newTestStream(&out)
	in := cat(fr('p', "a"), fr('p', "bb"), fr('d', "c"))
	var slices [][]byte
	for i := range in {
		slices = append(slices, in[i:i+1])
	}
	s.OnData(false, false, slices)
	if want := cat(fr('p', "a"), fr('p', "bb")); !bytes.Equal(out.toServer, want) {
		t.Errorf("server got %q; want %q", out.toServer, want)
	}
}

func TestStreamDoesNotRetainCallerData(t *testing.T) {
	var out recorder
	s := newTestStream(&out)
	in := fr('p', "abcdef")
	buf := append([]byte(nil), in[:4]...)
	s.OnData(false, false, [][]byte{buf})
	for i := range buf {
		buf[i] = 'X' // the caller reuses its buffer
	}
	s.OnData(false, false, [][]byte{in[4:]})
	if !bytes.Equal(out.toServer, in) {
		t.Errorf("server got %q; want %q", out.toServer, in)
	}
}

func TestStreamBothDirectionsAndInjectOrder(t *testing.T) {
	var out recorder
	s := newTestStream(&out)
	// Reply direction: a pass then an injecting frame; the injection goes
	// toward the server.
	s.OnData(true, false, [][]byte{cat(fr('p', "r1"), fr('i', "x"))})
	s.OnData(false, false, [][]byte{fr('p', "q1")})
	if want := cat(fr('p', "r1")); !bytes.Equal(out.toClient, want) {
		t.Errorf("client got %q; want %q", out.toClient, want)
	}
	if want := cat([]byte("IX"), fr('p', "q1")); !bytes.Equal(out.toServer, want) {
		t.Errorf("server got %q; want %q", out.toServer, want)
	}
}

func TestStreamErrors(t *testing.T) {
	tests := []struct {
		name    string
		factory ParserFactory
		in      []byte
	}{
		{name: "parser error", in: cat(fr('p', "ok"), fr('e', ""))},
		{name: "unknown verdict", in: fr('?', "")},
		{name: "no parser", factory: StreamFactoryFunc(func(Connection) Parser { return nil }), in: fr('p', "")},
		{name: "panic", factory: StreamFactoryFunc(func(Connection) Parser { return panicParser{} }), in: []byte("x")},
		{name: "zero pass", factory: StreamFactoryFunc(func(Connection) Parser { return zeroParser{} }), in: []byte("x")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out recorder
			f := tt.factory
			if f == nil {
				f = StreamFactoryFunc(func(c Connection) Parser { return &frameParser{conn: c} })
			}
			s := NewStream(f, &out, &ConnInfo{})
			s.OnData(false, false, [][]byte{tt.in})
			s.OnData(false, false, [][]byte{fr('p', "after")})
			if out.closed == "" || !s.Closed() {
				t.Fatalf("not closed; server got %q", out.toServer)
			}
			if bytes.Contains(out.toServer, []byte("after")) {
				t.Errorf("forwarded data after close: %q", out.toServer)
			}
		})
	}
}

type panicParser struct{}

func (panicParser) OnData(bool, bool, [][]byte) (Op, int) { panic("boom") }

type zeroParser struct{}

func (zeroParser) OnData(bool, bool, [][]byte) (Op, int) { return Pass, 0 }

// moreParser always wants more.
type moreParser struct{}

func (moreParser) OnData(bool, bool, [][]byte) (Op, int) { return More, 1 }

func TestStreamLimit(t *testing.T) {
	var out recorder
	s := NewStream(StreamFactoryFunc(func(Connection) Parser { return moreParser{} }), &out, &ConnInfo{})
	s.Limit = 10
	s.OnData(false, false, [][]byte{make([]byte, 6)})
	if out.closed != "" {
		t.Fatalf("closed early: %s", out.closed)
	}
	s.OnData(false, false, [][]byte{make([]byte, 6)})
	if out.closed == "" {
		t.Fatal("buffered past the limit without closing")
	}
}

// TestStreamMoreSkipsCalls checks the parser is not called again until the
// bytes it asked for have arrived.
func TestStreamMoreSkipsCalls(t *testing.T) {
	calls := 0
	f := StreamFactoryFunc(func(Connection) Parser {
		return parserFunc(func(reply, end bool, data [][]byte) (Op, int) {
			calls++
			n := 0
			for _, b := range data {
				n += len(b)
			}
			if n < 100 {
				return More, 100 - n
			}
			return Pass, 100
		})
	})
	var out recorder
	s := NewStream(f, &out, &ConnInfo{})
	for range 100 {
		s.OnData(false, false, [][]byte{{1}})
	}
	if calls != 2 || len(out.toServer) != 100 {
		t.Errorf("parser called %d times, passed %d bytes; want 2 calls, 100 bytes", calls, len(out.toServer))
	}
}

type parserFunc func(reply, end bool, data [][]byte) (Op, int)

func (f parserFunc) OnData(reply, end bool, data [][]byte) (Op, int) { return f(reply, end, data) }

func FuzzStream(f *testing.F) {
	f.Add(cat(fr('p', "hello"), fr('d', "x"), fr('i', "deny"), fr('b', "abc")), uint64(1))
	f.Add([]byte{0xff, 'p'}, uint64(7))
	f.Fuzz(func(t *testing.T, in []byte, seed uint64) {
		// Reference: everything in one read.
		var ref recorder
		newTestStream(&ref).OnData(false, false, [][]byte{in})
		// The same bytes in random reads and slices.
		rng := rand.New(rand.NewPCG(seed, seed))
		var out recorder
		s := newTestStream(&out)
		for rest := in; len(rest) > 0; {
			k := rng.IntN(len(rest) + 1)
			chunk := rest[:k]
			rest = rest[k:]
			var slices [][]byte
			for len(chunk) > 0 {
				m := rng.IntN(len(chunk)) + 1
				slices = append(slices, append([]byte(nil), chunk[:m]...))
				chunk = chunk[m:]
			}
			s.OnData(false, false, slices)
		}
		// Output may only differ when closed (the error may come later
		// with less data), and then must be a prefix of the reference.
		if (ref.closed != "") != (out.closed != "") && ref.closed == "" {
			t.Fatalf("split input closed (%s) but whole input did not", out.closed)
		}
		if ref.closed == "" {
			if diff := cmp.Diff(string(ref.toServer), string(out.toServer)); diff != "" {
				t.Fatalf("server bytes differ (-whole +split):\n%s", diff)
			}
			if !bytes.Equal(ref.toClient, out.toClient) {
				t.Fatalf("client bytes differ: %q vs %q", ref.toClient, out.toClient)
			}
		} else if !bytes.HasPrefix(ref.toServer, out.toServer) && !bytes.HasPrefix(out.toServer, ref.toServer) {
			t.Fatalf("server bytes diverge: %q vs %q", ref.toServer, out.toServer)
		}
	})
}

func BenchmarkStream(b *testing.B) {
	for _, size := range []int{100, 1024, 16 << 10} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			payload := make([]byte, size)
			hdr := []byte{0, 0, 0, 0}
			// 4-byte big-endian length frames, passed whole.
			f := StreamFactoryFunc(func(Connection) Parser {
				return parserFunc(func(reply, end bool, data [][]byte) (Op, int) {
					var h [4]byte
					n := 0
					for _, d := range data {
						n += copy(h[n:], d)
						if n == 4 {
							break
						}
					}
					if n < 4 {
						return More, 4 - n
					}
					return Pass, 4 + int(h[0])<<24 | int(h[1])<<16 | int(h[2])<<8 | int(h[3])
				})
			})
			hdr[2], hdr[3] = byte(size>>8), byte(size)
			msg := append(hdr, payload...)
			// Reads that cut frames at odd places: 1.5 frames per read.
			in := bytes.Repeat(msg, 4)
			cut := len(msg) * 3 / 2
			s := NewStream(f, discardOutput{}, &ConnInfo{})
			b.ReportAllocs()
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				s.OnData(false, false, [][]byte{in[:cut]})
				s.OnData(false, false, [][]byte{in[cut:]})
			}
		})
	}
}

type discardOutput struct{}

func (discardOutput) Forward(bool, []byte) {}
func (discardOutput) End(bool)             {}
func (discardOutput) Close(string)         {}

func TestStreamCloseAfter(t *testing.T) {
	var out recorder
	f := StreamFactoryFunc(func(c Connection) Parser {
		return parserFunc(func(reply, end bool, data [][]byte) (Op, int) {
			c.Inject(true, []byte("bye"))
			c.(*Stream).CloseAfter("done")
			return Pass, 1
		})
	})
	s := NewStream(f, &out, &ConnInfo{})
	s.OnData(true, false, [][]byte{[]byte("xy")})
	if string(out.toClient) != "xbye" || out.closed != "done" {
		t.Errorf("client got %q, closed %q; want \"xbye\", \"done\"", out.toClient, out.closed)
	}
}

func TestStreamHalfClose(t *testing.T) {
	tests := []struct {
		name  string
		reply bool
		in    []byte
		want  []byte
	}{
		{name: "client ends after a frame", in: fr('p', "last"), want: fr('p', "last")},
		{name: "server ends after a frame", reply: true, in: fr('p', "last"), want: fr('p', "last")},
		{name: "client ends inside a frame", in: cat(fr('p', "ok"), fr('i', "partial")[:4]), want: fr('p', "ok")},
		{name: "end without data", in: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out recorder
			s := newTestStream(&out)
			s.OnData(tt.reply, true, [][]byte{tt.in})
			got := out.toServer
			if tt.reply {
				got = out.toClient
			}
			if !bytes.Equal(got, tt.want) || out.closed != "" {
				t.Errorf("forwarded %q, closed %q; want %q, open", got, out.closed, tt.want)
			}
			if !out.ended[idx(tt.reply)] || out.ended[idx(!tt.reply)] {
				t.Errorf("ended (client, server) = %v; want only the direction that ended", out.ended)
			}
			// The other direction still flows.
			s.OnData(!tt.reply, false, [][]byte{fr('p', "more")})
			if got := out.toServer; tt.reply && !bytes.Equal(got, fr('p', "more")) {
				t.Errorf("after the server's end the client sent %q; want %q", got, fr('p', "more"))
			}
		})
	}
}

// TestStreamContiguous checks that the bytes a parser asked for arrive as
// one slice, however they were split, so the parser never copies them.
func TestStreamContiguous(t *testing.T) {
	const size = 1000
	var seen []int
	f := StreamFactoryFunc(func(Connection) Parser {
		return parserFunc(func(reply, end bool, data [][]byte) (Op, int) {
			n := 0
			for _, b := range data {
				n += len(b)
			}
			if n < size {
				return More, size - n
			}
			seen = append(seen, len(data[0]))
			return Pass, size
		})
	})
	var out recorder
	s := NewStream(f, &out, &ConnInfo{})
	in := bytes.Repeat([]byte{'x'}, 2*size+10)
	for len(in) > 0 {
		k := min(len(in), 97)
		s.OnData(false, false, [][]byte{in[:k/2], in[k/2 : k]})
		in = in[k:]
	}
	if len(seen) != 2 || seen[0] < size || seen[1] < size || len(out.toServer) != 2*size {
		t.Errorf("first slice lengths at decision %v, passed %d; want two decisions seeing >= %d bytes in one slice", seen, len(out.toServer), size)
	}
}

func TestStreamBudget(t *testing.T) {
	var b Budget
	b.SetLimit(100 << 10)
	newStream := func(out *recorder) *Stream {
		s := NewStream(StreamFactoryFunc(func(Connection) Parser { return moreParser{} }), out, &ConnInfo{})
		s.Budget = &b
		return s
	}
	var o1, o2 recorder
	s1, s2 := newStream(&o1), newStream(&o2)
	s1.OnData(false, false, [][]byte{make([]byte, 60<<10)})
	if o1.closed != "" || b.Used() < 60<<10 {
		t.Fatalf("first stream: closed %q, budget used %d; want open, >= 60 KiB used", o1.closed, b.Used())
	}
	s2.OnData(false, false, [][]byte{make([]byte, 60<<10)})
	if o2.closed == "" || b.Closed() != 1 {
		t.Fatalf("second stream over budget: closed %q, budget closed %d; want closed, 1", o2.closed, b.Closed())
	}
	if o1.closed != "" {
		t.Errorf("the stream within budget was closed: %s", o1.closed)
	}
	s1.Release()
	if b.Used() != 0 {
		t.Errorf("budget used after release: %d; want 0", b.Used())
	}
}

// TestStreamShrinks checks a large frame's buffer is given back once the
// frame is consumed.
func TestStreamShrinks(t *testing.T) {
	var b Budget
	const size = 1 << 20
	f := StreamFactoryFunc(func(Connection) Parser {
		return parserFunc(func(reply, end bool, data [][]byte) (Op, int) {
			n := 0
			for _, d := range data {
				n += len(d)
			}
			if n < size {
				return More, size - n
			}
			return Pass, size
		})
	})
	var out recorder
	s := NewStream(f, &out, &ConnInfo{})
	s.Budget = &b
	in := make([]byte, size+10)
	peak := int64(0)
	for len(in) > 0 {
		k := min(len(in), 16<<10)
		s.OnData(false, false, [][]byte{in[:k]})
		peak = max(peak, b.Used())
		in = in[k:]
	}
	if len(out.toServer) != size {
		t.Fatalf("passed %d bytes; want %d", len(out.toServer), size)
	}
	if peak > 2*size {
		t.Errorf("peak buffered %d bytes for a %d-byte frame; want at most twice", peak, size)
	}
	if b.Used() > shrinkAbove {
		t.Errorf("after the frame the stream holds %d bytes; want at most %d", b.Used(), shrinkAbove)
	}
}

// inPlaceCall feeds one read through OnDataInPlace and, when the stream
// lets the bytes go on where they are, appends them to the direction's
// output as Envoy would (the filter returns Continue without draining).
func inPlaceCall(s *Stream, out *recorder, reply, end bool, data [][]byte) bool {
	kept := s.OnDataInPlace(reply, end, data)
	if kept {
		for _, b := range data {
			out.Forward(reply, b)
		}
	}
	return kept
}

// TestStreamInPlace: a read the parser passes whole goes on in place (no
// Forward, true); anything else — a kept tail, a drop, an injection toward
// the same peer, a close after a pass, the end of the direction — forwards
// as OnData does and returns false, the passed prefix first.
func TestStreamInPlace(t *testing.T) {
	tests := []struct {
		name       string
		reads      [][]byte
		want       []bool // OnDataInPlace's result per read
		wantServer []byte
		wantClient []byte
	}{
		{name: "whole frames", reads: [][]byte{cat(fr('p', "a"), fr('p', "bb"))}, want: []bool{true}, wantServer: cat(fr('p', "a"), fr('p', "bb"))},
		{name: "header over two reads", reads: [][]byte{fr('p', "abcdef")[:1], fr('p', "abcdef")[1:]}, want: []bool{false, false}, wantServer: fr('p', "abcdef")},
		{name: "passed before complete", reads: [][]byte{fr('p', "abcdef")[:3], fr('p', "abcdef")[3:]}, want: []bool{true, true}, wantServer: fr('p', "abcdef")},
		{name: "pass beyond the read", reads: [][]byte{fr('b', "abcdef")[:4], fr('b', "abcdef")[4:], fr('p', "z")}, want: []bool{true, true, true}, wantServer: cat(fr('b', "abcdef"), fr('p', "z"))},
		{name: "tail kept", reads: [][]byte{cat(fr('p', "a"), fr('i', "no")[:2]), fr('i', "no")[2:]}, want: []bool{false, false}, wantServer: fr('p', "a"), wantClient: []byte("INO")},
		{name: "drop", reads: [][]byte{cat(fr('p', "a"), fr('d', "x"), fr('p', "c"))}, want: []bool{false}, wantServer: cat(fr('p', "a"), fr('p', "c"))},
		{name: "inject toward the client", reads: [][]byte{cat(fr('p', "a"), fr('i', "no"), fr('p', "c"))}, want: []bool{false}, wantServer: cat(fr('p', "a"), fr('p', "c")), wantClient: []byte("INO")},
		{name: "error after a pass", reads: [][]byte{cat(fr('p', "a"), fr('e', ""))}, want: []bool{false}, wantServer: fr('p', "a")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out recorder
			s := newTestStream(&out)
			var got []bool
			for _, r := range tt.reads {
				got = append(got, inPlaceCall(s, &out, false, false, [][]byte{r}))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("in place per read (-want +got):\n%s", diff)
			}
			if !bytes.Equal(out.toServer, tt.wantServer) || !bytes.Equal(out.toClient, tt.wantClient) {
				t.Errorf("server %q client %q; want %q %q", out.toServer, out.toClient, tt.wantServer, tt.wantClient)
			}
		})
	}
	t.Run("end of direction", func(t *testing.T) {
		var out recorder
		s := newTestStream(&out)
		if inPlaceCall(s, &out, false, true, [][]byte{fr('p', "a")}) {
			t.Error("a read with the end of the direction went on in place; its end must be passed on by the stream")
		}
		if !bytes.Equal(out.toServer, fr('p', "a")) || !out.ended[0] {
			t.Errorf("server %q ended %v", out.toServer, out.ended[0])
		}
	})
}

// FuzzStreamInPlace: for any input and any split into reads and slices,
// OnDataInPlace (with the in-place reads appended as Envoy would) delivers
// exactly what OnData delivers, in the same order, and closes alike.
func FuzzStreamInPlace(f *testing.F) {
	f.Add(cat(fr('p', "hello"), fr('d', "x"), fr('i', "deny"), fr('b', "abc"), fr('p', "z")), uint64(1))
	f.Add(cat(fr('p', "a"), fr('p', "b"), fr('e', "")), uint64(3))
	f.Fuzz(func(t *testing.T, in []byte, seed uint64) {
		var ref, out recorder
		sr, so := newTestStream(&ref), newTestStream(&out)
		rng := rand.New(rand.NewPCG(seed, seed))
		for rest := in; len(rest) > 0; {
			k := rng.IntN(len(rest) + 1)
			chunk := rest[:k]
			rest = rest[k:]
			var slices [][]byte
			for len(chunk) > 0 {
				m := rng.IntN(len(chunk)) + 1
				slices = append(slices, append([]byte(nil), chunk[:m]...))
				chunk = chunk[m:]
			}
			reply := rng.IntN(4) == 0
			sr.OnData(reply, false, slices)
			inPlaceCall(so, &out, reply, false, slices)
		}
		if ref.closed != out.closed {
			t.Fatalf("closed %q; OnData closed %q", out.closed, ref.closed)
		}
		if !bytes.Equal(ref.toServer, out.toServer) || !bytes.Equal(ref.toClient, out.toClient) {
			t.Fatalf("in place delivered server %q client %q; OnData %q %q", out.toServer, out.toClient, ref.toServer, ref.toClient)
		}
	})
}
