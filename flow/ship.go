package flow

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"time"
)

// Batch is one line of the flow socket (wardd's flows.sock): the records
// a producer in another process (libward.so in Envoy) ships in one write,
// and how many records that producer dropped since its previous batch, so
// the receiver counts the loss too.
type Batch struct {
	Records []*Record `json:"records,omitempty"`
	Dropped uint64    `json:"dropped,omitempty"`
}

// Shipper is a Sink that ships records to a unix stream socket as JSON
// Batch lines. Emit never blocks: records go into a bounded queue that one
// goroutine (Run) drains in batches every FlushInterval; when the queue is
// full, the socket is slow (a write deadline) or the receiver is gone,
// records are dropped and counted. The sender reconnects with a backoff.
type Shipper struct {
	// Path is the receiver's unix socket.
	Path string
	// WriteTimeout bounds one batch's write; default 200 ms.
	WriteTimeout time.Duration
	// MaxBatch bounds the records of one batch (one write); default 1024.
	MaxBatch int
	// FlushInterval is how often the sender wakes to ship what is queued;
	// default 50 ms. Records reach wardd that much later; the queue must
	// hold what arrives meanwhile (the default 8192 records: 160k/s).
	FlushInterval time.Duration
	// OnError, when set, is told the sender's connection errors (not
	// per record).
	OnError func(error)

	q       chan *Record
	dropped atomic.Uint64
	shipped atomic.Uint64
	// reported is the drop count the receiver was told (the sender's).
	reported atomic.Uint64
}

// NewShipper returns a Shipper to path with a queue of size records
// (default 8192).
func NewShipper(path string, size int) *Shipper {
	if size <= 0 {
		size = 8192
	}
	return &Shipper{Path: path, q: make(chan *Record, size)}
}

// Emit queues r without blocking; a full queue drops it.
func (s *Shipper) Emit(r *Record) {
	select {
	case s.q <- r:
	default:
		s.dropped.Add(1)
	}
}

// Dropped returns how many records were dropped (queue full, socket slow or
// absent).
func (s *Shipper) Dropped() uint64 { return s.dropped.Load() }

// Shipped returns how many records were written to the socket.
func (s *Shipper) Shipped() uint64 { return s.shipped.Load() }

// Run ships queued records until ctx is done. A panic in the sender is
// recovered and the sender restarts, so a bad record costs its batch, not
// the process.
func (s *Shipper) Run(ctx context.Context) {
	for ctx.Err() == nil {
		if err := s.runOnce(ctx); err != nil && s.OnError != nil {
			s.OnError(err)
		}
	}
}

func (s *Shipper) runOnce(ctx context.Context) (err error) {
	var conn net.Conn
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("flow shipper: recovered: %v", r)
		}
		if conn != nil {
			conn.Close()
		}
	}()
	timeout := s.WriteTimeout
	if timeout <= 0 {
		timeout = 200 * time.Millisecond
	}
	maxBatch := s.MaxBatch
	if maxBatch <= 0 {
		maxBatch = 1024
	}
	every := s.FlushInterval
	if every <= 0 {
		every = 50 * time.Millisecond
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	backoff := 50 * time.Millisecond
	var nextDial time.Time
	var bw *bufio.Writer
	var b Batch
	var line []byte
	reported := s.reported.Load()
	for {
		// The sender wakes on the ticker, not per record: Emit is a
		// channel send that never wakes a goroutine, and a batch is one
		// write.
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		for len(s.q) > 0 {
			b.Records = b.Records[:0]
		fill:
			for len(b.Records) < maxBatch {
				select {
				case r := <-s.q:
					b.Records = append(b.Records, r)
				default:
					break fill
				}
			}
			if conn == nil && time.Now().Before(nextDial) {
				// The receiver was gone a moment ago: drop what is
				// queued until the next attempt.
				s.dropped.Add(uint64(len(b.Records)))
				clear(b.Records)
				continue
			}
			if conn == nil {
				c, err := net.DialTimeout("unix", s.Path, timeout)
				if err != nil {
					s.dropped.Add(uint64(len(b.Records)))
					clear(b.Records)
					nextDial, backoff = time.Now().Add(backoff), min(backoff*2, 2*time.Second)
					continue
				}
				conn, bw, backoff = c, bufio.NewWriterSize(c, 64<<10), 50*time.Millisecond
			}
			cur := s.dropped.Load()
			b.Dropped = cur - reported
			line = append(b.AppendJSON(line[:0]), '\n')
			_ = conn.SetWriteDeadline(time.Now().Add(timeout))
			bw.Write(line)
			if err := bw.Flush(); err != nil {
				s.dropped.Add(uint64(len(b.Records)))
				return fmt.Errorf("flow shipper: write %s: %w", s.Path, err)
			}
			s.shipped.Add(uint64(len(b.Records)))
			reported = cur
			s.reported.Store(cur)
			clear(b.Records)
		}
	}
}

// Tee is a Sink that hands each record to every non-nil sink.
func Tee(sinks ...Sink) Sink {
	var out []Sink
	for _, s := range sinks {
		if s != nil {
			out = append(out, s)
		}
	}
	switch len(out) {
	case 0:
		return nil
	case 1:
		return out[0]
	}
	return SinkFunc(func(r *Record) {
		for _, s := range out {
			s.Emit(r)
		}
	})
}
