package policyfilter

import (
	"context"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/proxylib"
)

// shipper returns the process's shipper to wardd's flow socket at path
// (one per path, started on first use, for the process's lifetime). The
// filters' Emit only queues: a full queue, a slow socket or a stopped
// wardd drops records (counted, and reported to wardd in the next batch
// that gets through); Envoy's workers never wait.
func (e *Env) shipper(path string) *flow.Shipper {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s, ok := e.ship[path]; ok {
		return s
	}
	s := flow.NewShipper(path, 0)
	if e.Logger != nil {
		var last string
		s.OnError = func(err error) {
			if msg := err.Error(); msg != last { // once per distinct error
				last = msg
				e.Logger.Log(proxylib.LogWarn, "ward flow records: "+msg)
			}
		}
	}
	if e.ship == nil {
		e.ship = map[string]*flow.Shipper{}
	}
	e.ship[path] = s
	go s.Run(context.Background())
	return s
}

// FlowsDropped returns the records every shipper of the process dropped.
func (e *Env) FlowsDropped() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	var n uint64
	for _, s := range e.ship {
		n += s.Dropped()
	}
	return n
}
