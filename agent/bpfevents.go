package agent

import (
	"context"
	"fmt"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/flow"
)

// The BPF datapath's flow events (drops, and the policy verdict of each
// new flow) become flow records of the agent's flow stream, beside the
// proxies' and the DNS proxy's: bpf/redirect writes them to a ring buffer,
// runBPFEvents reads it and hands each record to the Hub, which describes
// both ends (labels, names) as for every other producer.

// runBPFEvents reads the datapath's events until ctx is done. A failure to
// read is logged and ends the reader, never the agent: enforcement does
// not depend on it.
func (a *Agent) runBPFEvents(ctx context.Context) (err error) {
	defer func() {
		if p := recover(); p != nil {
			a.log.Error("bpf flow events: reader panic", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			err = nil
		}
	}()
	sink := a.obs.hub
	ipc := a.dp.dp.IPCache()
	if rerr := a.dp.dp.ReadEvents(ctx, &a.dp.events, func(ev *redirect.Event) {
		r := bpfRecord(ev, time.Now(), ipc.Lookup)
		if !ev.Source.IsValid() && ev.Endpoint != 0 && a.eng != nil {
			// A socket hook's denial: the source is the endpoint.
			if w, ok := a.eng.wl.Load().byID[uint64(ev.Endpoint)]; ok {
				r.Source = endpointSide(w.Addrs, ev.Destination.Addr().Is4(), ipc.Lookup)
			}
		}
		sink.Emit(r)
	}); rerr != nil {
		a.log.Warn("bpf flow events: reader stopped", "error", rerr)
	}
	return nil
}

// bpfRecord turns a datapath event into a flow record. identity resolves
// an address the datapath did not look up (the BPF ipcache's answer).
func bpfRecord(ev *redirect.Event, now time.Time, identity func(netip.Addr) (uint32, bool)) *flow.Record {
	r := &flow.Record{Time: now, Proto: "l3l4", Direction: flow.Ingress, Verdict: flow.Allowed}
	if ev.Direction == redirect.Egress {
		r.Direction = flow.Egress
	}
	switch {
	case ev.Kind == redirect.EventDrop:
		r.Verdict = flow.Denied
		r.Reason = ev.Reason.HubbleDropReason()
	case ev.Audit:
		r.Verdict = flow.Audited
		r.Reason = "audit mode: would be POLICY_DENIED"
	case ev.Verdict == redirect.Redirect:
		r.Reason = fmt.Sprintf("redirected to proxy port %d", ev.ProxyPort)
	}
	r.L4 = &flow.L4{Protocol: l4Name(ev.Proto)}
	side := func(ap netip.AddrPort, id uint32) flow.Endpoint {
		if !ap.IsValid() {
			return flow.Endpoint{}
		}
		e := flow.Endpoint{IP: ap.Addr().String(), Port: ap.Port(), Identity: id}
		if e.Identity == 0 && identity != nil {
			e.Identity, _ = identity(ap.Addr())
		}
		if r.L4.Protocol == "ICMP" || r.L4.Protocol == "ICMPv6" {
			e.Port = 0
		}
		return e
	}
	r.Source = side(ev.Source, ev.SourceIdentity)
	r.Destination = side(ev.Destination, ev.DestinationIdentity)
	if r.L4.Protocol == "" {
		r.L4 = nil
	}
	return r
}

// endpointSide is a flow's side for an endpoint with addrs, by its
// address of the family (IPv4 or not) of the flow's other side.
func endpointSide(addrs []netip.Addr, v4 bool, identity func(netip.Addr) (uint32, bool)) flow.Endpoint {
	for _, a := range addrs {
		if a.Is4() == v4 {
			e := flow.Endpoint{IP: a.String()}
			if identity != nil {
				e.Identity, _ = identity(a)
			}
			return e
		}
	}
	return flow.Endpoint{}
}

func l4Name(proto uint8) string {
	switch proto {
	case 6:
		return "TCP"
	case 17:
		return "UDP"
	case 132:
		return "SCTP"
	case 1:
		return "ICMP"
	case 58:
		return "ICMPv6"
	}
	return ""
}
