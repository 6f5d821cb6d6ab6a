package flow

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"sync/atomic"
	"time"
)

// Writer is a Sink that writes records as JSON lines to an io.Writer from
// its own goroutine (Run), so producers on Envoy's worker threads never
// block on I/O: when the queue is full the record is dropped and counted.
type Writer struct {
	w       io.Writer
	q       chan *Record
	dropped atomic.Uint64
	written atomic.Uint64
}

// NewWriter returns a Writer with a queue of size records (default 4096).
func NewWriter(w io.Writer, size int) *Writer {
	if size <= 0 {
		size = 4096
	}
	return &Writer{w: w, q: make(chan *Record, size)}
}

// Emit queues r without blocking.
func (w *Writer) Emit(r *Record) {
	select {
	case w.q <- r:
	default:
		w.dropped.Add(1)
	}
}

// Dropped returns how many records were dropped because the queue was full.
func (w *Writer) Dropped() uint64 { return w.dropped.Load() }

// Written returns how many records were written.
func (w *Writer) Written() uint64 { return w.written.Load() }

// Run writes queued records until ctx is done, flushing at least every
// 100 ms; it drains what is queued before returning.
func (w *Writer) Run(ctx context.Context) error {
	bw := bufio.NewWriter(w.w)
	enc := json.NewEncoder(bw)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	write := func(r *Record) {
		if enc.Encode(r) == nil {
			w.written.Add(1)
		}
	}
	for {
		select {
		case r := <-w.q:
			write(r)
		case <-tick.C:
			_ = bw.Flush()
		case <-ctx.Done():
			for {
				select {
				case r := <-w.q:
					write(r)
				default:
					return bw.Flush()
				}
			}
		}
	}
}
