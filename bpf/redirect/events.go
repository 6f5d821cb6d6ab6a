package redirect

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"

	"github.com/cilium/ebpf/ringbuf"
)

// The datapath's flow events (redirect.c, "Flow events"): the tc programs
// write a compact record to a ring buffer for
//   - a dropped packet, at most one per (source, destination, destination
//     port, protocol, reason, direction) per second (DropEventInterval);
//     the others are only counted in the verdict counters;
//   - a new flow (a conntrack entry created), once per enforced direction:
//     its policy verdict, allowed, redirected to a proxy, or audited (the
//     policy would have dropped it; the endpoint is in audit mode).
//
// Established packets emit nothing, so the per-packet cost of a flow is
// paid once. A full ring never blocks the datapath: the event is dropped
// and counted (EventsLost).

// EventKind says what an Event reports.
type EventKind uint8

// Event kinds (the datapath's EV_* values).
const (
	EventDrop    EventKind = 1
	EventVerdict EventKind = 2
)

func (k EventKind) String() string {
	switch k {
	case EventDrop:
		return "drop"
	case EventVerdict:
		return "policy-verdict"
	}
	return fmt.Sprintf("event(%d)", uint8(k))
}

// DropEventInterval is the least time between two drop events of one
// (source, destination, destination port, protocol, reason, direction).
const DropEventInterval = 1e9 // ns, DROP_EVENT_INTERVAL

// Event is one datapath flow event.
type Event struct {
	Kind EventKind
	// Reason is the drop reason of a drop; for a verdict, ReasonAllowed
	// or ReasonRedirected.
	Reason Reason
	// Verdict is Deny for a drop, else the flow's verdict in Direction
	// (Allow or Redirect).
	Verdict Verdict
	// Audit: the policy would have dropped the flow; audit mode let it
	// pass (Verdict is Allow).
	Audit bool
	// Direction is the direction of the policy that decided, relative to
	// Endpoint.
	Direction Direction
	// Proto is the IP protocol (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6); 0 when
	// the packet was dropped before it was parsed.
	Proto uint8
	// Source and Destination are the packet's addresses and ports (ICMP
	// echo: the identifier in the requester's port). Invalid when the
	// packet was dropped before it was parsed; Source is invalid too for
	// a connect or send the socket-level hooks denied (IfIndex 0: no
	// packet was built, the socket's address not bound yet).
	Source, Destination netip.AddrPort
	// SourceIdentity and DestinationIdentity are the identities the
	// datapath used, 0 when it did not look them up.
	SourceIdentity, DestinationIdentity uint32
	// Endpoint is the endpoint whose policy decided (0: none, e.g. a
	// packet dropped before its endpoint was known).
	Endpoint uint32
	// IfIndex is the interface the program ran on.
	IfIndex int
	// ProxyPort is the proxy port of a redirect.
	ProxyPort uint16
}

// eventSize is sizeof(struct flow_event).
const eventSize = 64

// DecodeEvent decodes one ring record (struct flow_event in the host's
// byte order; addresses and ports in network order).
func DecodeEvent(b []byte) (Event, error) {
	if len(b) < eventSize {
		return Event{}, fmt.Errorf("decode flow event: %d bytes, want %d", len(b), eventSize)
	}
	ne := binary.NativeEndian
	var ev Event
	ev.Kind = EventKind(b[54])
	if ev.Kind != EventDrop && ev.Kind != EventVerdict {
		return Event{}, fmt.Errorf("decode flow event: unknown kind %d", b[54])
	}
	ev.Reason = Reason(b[55])
	ev.Verdict = Verdict(b[56])
	ev.Audit = b[57] != 0
	ev.Direction = Direction(b[58] & 1)
	family, proto := b[59], b[60]
	ev.Proto = proto
	ev.SourceIdentity = ne.Uint32(b[36:])
	ev.DestinationIdentity = ne.Uint32(b[40:])
	ev.Endpoint = ne.Uint32(b[44:])
	ev.IfIndex = int(ne.Uint32(b[48:]))
	ev.ProxyPort = ne.Uint16(b[52:])
	sport, dport := binary.BigEndian.Uint16(b[32:]), binary.BigEndian.Uint16(b[34:])
	switch family {
	case afInet:
		ev.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[0:4])), sport)
		ev.Destination = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[16:20])), dport)
	case afInet6:
		ev.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[0:16])), sport)
		ev.Destination = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[16:32])), dport)
	case 0:
		// Dropped before the IP header was parsed.
	default:
		return Event{}, fmt.Errorf("decode flow event: unknown address family %d", family)
	}
	if ev.IfIndex == 0 && sport == 0 && ev.Source.Addr().IsUnspecified() {
		// A socket hook's denial (sock.c): no packet, the socket not
		// bound yet; the source is the endpoint's (Event.Endpoint).
		ev.Source = netip.AddrPort{}
	}
	return ev, nil
}

// EventStats counts what ReadEvents saw.
type EventStats struct {
	Read      atomic.Uint64 // events delivered
	Malformed atomic.Uint64 // records that did not decode (a layout mismatch)
}

// ReadEvents delivers the datapath's flow events to fn, in the order the
// ring holds them, until ctx is done (then it returns nil). fn runs on
// ReadEvents' goroutine and must not keep ev. Records that do not decode
// are counted in st (may be nil) and skipped.
func (d *Datapath) ReadEvents(ctx context.Context, st *EventStats, fn func(ev *Event)) error {
	rd, err := ringbuf.NewReader(d.objs.WardEvents)
	if err != nil {
		return fmt.Errorf("flow events: open ring: %w", err)
	}
	defer rd.Close()
	stop := context.AfterFunc(ctx, func() { _ = rd.Close() })
	defer stop()
	var rec ringbuf.Record
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, os.ErrClosed) && ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("flow events: read: %w", err)
		}
		ev, err := DecodeEvent(rec.RawSample)
		if err != nil {
			if st != nil {
				st.Malformed.Add(1)
			}
			continue
		}
		if st != nil {
			st.Read.Add(1)
		}
		fn(&ev)
	}
}

// EventsLost is the number of flow events the datapath dropped because
// the ring was full (summed over CPUs).
func (d *Datapath) EventsLost() (uint64, error) {
	var per []uint64
	zero := uint32(0)
	if err := d.objs.WardEventsLost.Lookup(&zero, &per); err != nil {
		return 0, fmt.Errorf("flow events lost: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// HubbleDropReason names a drop reason as Hubble does (the DropReason
// enum of Cilium's flow API, e.g. POLICY_DENIED, 133), the closest one
// where ward's reason has no exact counterpart; "" for a reason that is
// not a drop.
func (r Reason) HubbleDropReason() string {
	switch r {
	case ReasonPolicyDenied:
		return "POLICY_DENIED"
	case ReasonLockdown:
		// The endpoint's policy could not be written: no decision possible.
		return "NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION"
	case ReasonNoProxySocket:
		return "SOCKET_LOOKUP_FAILED"
	case ReasonFragment:
		return "IP_FRAGMENTATION_NOT_SUPPORTED"
	case ReasonMalformed:
		return "INVALID_PACKET_DROPPED"
	case ReasonSpoofed:
		return "INVALID_SOURCE_IP"
	case ReasonUnsupportedL3:
		return "INVALID_IPV6_EXTENSION_HEADER"
	case ReasonRedirectUnsupported:
		return "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL"
	case ReasonUnknownEndpoint, ReasonNoCgroupEndpoint:
		return "NO_MATCHING_LOCAL_CONTAINER_FOUND"
	case ReasonUnknownL3:
		return "UNSUPPORTED_L3_PROTOCOL"
	case ReasonVLAN:
		return "VLAN_FILTERED"
	}
	if r.Drop() {
		return "DROP_REASON_UNKNOWN"
	}
	return ""
}
