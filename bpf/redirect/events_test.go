package redirect

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/internal/testenv"
)

func TestDecodeEvent(t *testing.T) {
	src, dst := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	s4, d4 := src.As4(), dst.As4()
	raw := datapathFlowEvent{
		Sport: htons(40000), Dport: htons(80), SrcIdentity: 5001, DstIdentity: 5002, EpId: 7, Ifindex: 3,
		ProxyPort: 15001, Type: uint8(EventVerdict), Reason: uint8(ReasonRedirected), Verdict: uint8(Redirect),
		Audit: 1, Dir: uint8(Egress), Family: afInet, Proto: ProtoTCP,
	}
	raw.Saddr[0] = binary.NativeEndian.Uint32(s4[:])
	raw.Daddr[0] = binary.NativeEndian.Uint32(d4[:])
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.NativeEndian, &raw); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != eventSize {
		t.Fatalf("sizeof(struct flow_event) = %d; want %d", buf.Len(), eventSize)
	}
	got, err := DecodeEvent(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := Event{
		Kind: EventVerdict, Reason: ReasonRedirected, Verdict: Redirect, Audit: true, Direction: Egress, Proto: ProtoTCP,
		Source: netip.AddrPortFrom(src, 40000), Destination: netip.AddrPortFrom(dst, 80),
		SourceIdentity: 5001, DestinationIdentity: 5002, Endpoint: 7, IfIndex: 3, ProxyPort: 15001,
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("DecodeEvent (-want +got):\n%s", diff)
	}

	// IPv6.
	v6 := netip.MustParseAddr("fd00::1")
	b16 := v6.As16()
	for i := range raw.Saddr {
		raw.Saddr[i] = binary.NativeEndian.Uint32(b16[i*4:])
	}
	raw.Family = afInet6
	buf.Reset()
	_ = binary.Write(&buf, binary.NativeEndian, &raw)
	if got, err := DecodeEvent(buf.Bytes()); err != nil || got.Source.Addr() != v6 {
		t.Errorf("DecodeEvent(ipv6) = %v, %v; want source %v", got.Source, err, v6)
	}

	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"short", buf.Bytes()[:eventSize-1]},
		{"unknown kind", func() []byte { b := bytes.Clone(buf.Bytes()); b[54] = 9; return b }()},
		{"unknown family", func() []byte { b := bytes.Clone(buf.Bytes()); b[59] = 3; return b }()},
	} {
		if _, err := DecodeEvent(tc.b); err == nil {
			t.Errorf("DecodeEvent(%s) = nil error; want one", tc.name)
		}
	}
}

// eventEnv loads the datapath with two enforced endpoints on lo (what
// BPF_PROG_TEST_RUN sees): client (1, identity 5001) may reach server (2,
// identity 5002) on TCP 80.
func eventEnv(t *testing.T, cfg Config) (d *Datapath, client, server netip.Addr) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		Cleanup(dir)
		unix.Unmount(dir, unix.MNT_DETACH)
	})
	cfg.PinDir = dir
	d, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	client, server = netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2")
	for _, ep := range []Endpoint{
		{ID: 1, IP: client, IfIndex: 1, Identity: 5001, EnforceEgress: true, EnforceIngress: true},
		{ID: 2, IP: server, IfIndex: 1, Identity: 5002, EnforceEgress: true, EnforceIngress: true},
	} {
		setEndpoint(t, d, ep)
		if err := d.IPCache().Upsert(netip.PrefixFrom(ep.IP, 32), ep.Identity); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SetPolicy(1, []PolicyEntry{{PolicyKey: PolicyKey{Direction: Egress, Identity: 5002, Proto: ProtoTCP}, Verdict: Allow}}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetPolicy(2, []PolicyEntry{{PolicyKey: PolicyKey{Direction: Ingress, Identity: 5001, Port: 80, Proto: ProtoTCP}, Verdict: Allow}}); err != nil {
		t.Fatal(err)
	}
	return d, client, server
}

// setEndpoint writes an endpoint's entry without attaching programs.
func setEndpoint(t *testing.T, d *Datapath, ep Endpoint) {
	t.Helper()
	d.mu.Lock()
	d.eps[ep.ID] = ep
	err := d.writeEndpoint(ep)
	d.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
}

// drain returns the events in the ring now.
func drain(t *testing.T, d *Datapath) []Event {
	t.Helper()
	rd, err := ringbuf.NewReader(d.objs.WardEvents)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	rd.SetDeadline(time.Now())
	var out []Event
	for {
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		ev, err := DecodeEvent(rec.RawSample)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
}

func run(t *testing.T, d *Datapath, pkt []byte) uint32 {
	t.Helper()
	ret, _, err := d.objs.FromPod.Test(pkt)
	if err != nil {
		t.Fatal(err)
	}
	return ret
}

const (
	actOK   = 0 // TC_ACT_OK
	actShot = 2 // TC_ACT_SHOT
)

// TestFlowEvents checks which packets emit events: a new flow one verdict
// event per enforced direction, its established packets none, a policy
// drop one event per second per (source, destination, port), and in audit
// mode a would-be drop passes with an audited verdict event.
func TestFlowEvents(t *testing.T) {
	d, client, server := eventEnv(t, Config{})
	ap := func(a netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(a, p) }
	cmpOpts := cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })

	if got := run(t, d, tcpPacket(client, server, 40000, 80)); got != actOK {
		t.Fatalf("new allowed flow: verdict %d; want %d", got, actOK)
	}
	want := []Event{
		{Kind: EventVerdict, Reason: ReasonAllowed, Verdict: Allow, Direction: Egress, Proto: ProtoTCP, Source: ap(client, 40000), Destination: ap(server, 80),
			SourceIdentity: 5001, DestinationIdentity: 5002, Endpoint: 1, IfIndex: 1},
		{Kind: EventVerdict, Reason: ReasonAllowed, Verdict: Allow, Direction: Ingress, Proto: ProtoTCP, Source: ap(client, 40000), Destination: ap(server, 80),
			SourceIdentity: 5001, DestinationIdentity: 5002, Endpoint: 2, IfIndex: 1},
	}
	if diff := cmp.Diff(want, drain(t, d), cmpOpts); diff != "" {
		t.Errorf("new flow events (-want +got):\n%s", diff)
	}
	for range 3 {
		run(t, d, tcpPacket(client, server, 40000, 80))
	}
	if got := drain(t, d); len(got) != 0 {
		t.Errorf("established packets emitted %v; want nothing", got)
	}

	// Denied by the server's ingress policy (port 81): one event for
	// three packets (new source ports too), all three counted.
	for i := range 3 {
		if got := run(t, d, tcpPacket(client, server, uint16(40001+i), 81)); got != actShot {
			t.Fatalf("denied flow: verdict %d; want %d", got, actShot)
		}
	}
	want = []Event{{Kind: EventDrop, Reason: ReasonPolicyDenied, Verdict: Deny, Direction: Ingress, Proto: ProtoTCP,
		Source: ap(client, 40001), Destination: ap(server, 81), Endpoint: 2, IfIndex: 1}}
	if diff := cmp.Diff(want, drain(t, d), cmpOpts); diff != "" {
		t.Errorf("drop events (-want +got):\n%s", diff)
	}
	if n, err := d.Count(ReasonPolicyDenied); err != nil || n != 3 {
		t.Errorf("policy-denied count = %d, %v; want 3", n, err)
	}

	// The server in audit mode: port 82 passes and is reported audited;
	// the client stays enforcing.
	setEndpoint(t, d, Endpoint{ID: 2, IP: server, IfIndex: 1, Identity: 5002, EnforceEgress: true, EnforceIngress: true, Audit: true})
	if got := run(t, d, tcpPacket(client, server, 40010, 82)); got != actOK {
		t.Fatalf("audited flow: verdict %d; want %d (pass)", got, actOK)
	}
	got := drain(t, d)
	want = []Event{
		want[0], // placeholder, replaced below
		{Kind: EventVerdict, Reason: ReasonAllowed, Verdict: Allow, Audit: true, Direction: Ingress, Proto: ProtoTCP, Source: ap(client, 40010), Destination: ap(server, 82),
			SourceIdentity: 5001, DestinationIdentity: 5002, Endpoint: 2, IfIndex: 1},
	}
	want[0] = Event{Kind: EventVerdict, Reason: ReasonAllowed, Verdict: Allow, Direction: Egress, Proto: ProtoTCP, Source: ap(client, 40010), Destination: ap(server, 82),
		SourceIdentity: 5001, DestinationIdentity: 5002, Endpoint: 1, IfIndex: 1}
	if diff := cmp.Diff(want, got, cmpOpts); diff != "" {
		t.Errorf("audit events (-want +got):\n%s", diff)
	}
	// The client's egress is not in audit mode: to another identity it
	// drops.
	if got := run(t, d, tcpPacket(client, netip.MustParseAddr("192.0.2.1"), 40011, 80)); got != actShot {
		t.Errorf("egress of an enforcing endpoint: verdict %d; want %d", got, actShot)
	}
	if got := drain(t, d); len(got) != 1 || got[0].Kind != EventDrop || got[0].Direction != Egress || got[0].Endpoint != 1 {
		t.Errorf("egress drop events = %+v; want one egress drop of endpoint 1", got)
	}
}

// TestFlowEventsRingFull fills a one-page ring: the datapath never
// blocks, every event that did not fit is counted lost.
func TestFlowEventsRingFull(t *testing.T) {
	d, client, server := eventEnv(t, Config{EventRingSize: uint32(os.Getpagesize())})
	const flows = 200 // 2 events each, far more than a page holds
	for i := range flows {
		if got := run(t, d, tcpPacket(client, server, uint16(30000+i), 80)); got != actOK {
			t.Fatalf("flow %d: verdict %d; want %d", i, got, actOK)
		}
	}
	lost, err := d.EventsLost()
	if err != nil {
		t.Fatal(err)
	}
	read := uint64(len(drain(t, d)))
	if lost == 0 || read == 0 || read+lost != 2*flows {
		t.Errorf("read %d + lost %d; want both > 0 and %d in all", read, lost, 2*flows)
	}
}

// TestNoEvents: with the events compiled out nothing is emitted, and drops
// are still counted.
func TestNoEvents(t *testing.T) {
	d, client, server := eventEnv(t, Config{NoEvents: true})
	run(t, d, tcpPacket(client, server, 40000, 80))
	run(t, d, tcpPacket(client, server, 40001, 81))
	if got := drain(t, d); len(got) != 0 {
		t.Errorf("events with NoEvents: %v; want none", got)
	}
	if n, err := d.Count(ReasonPolicyDenied); err != nil || n != 1 {
		t.Errorf("policy-denied count = %d, %v; want 1", n, err)
	}
}

// TestReadEvents checks the reader delivers decoded events and returns
// nil once its context is done.
func TestReadEvents(t *testing.T) {
	d, client, server := eventEnv(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan Event, 8)
	done := make(chan error, 1)
	var st EventStats
	go func() { done <- d.ReadEvents(ctx, &st, func(ev *Event) { got <- *ev }) }()
	run(t, d, tcpPacket(client, server, 40001, 81))
	ev := <-got
	if ev.Kind != EventDrop || ev.Reason != ReasonPolicyDenied || ev.Destination.Port() != 81 {
		t.Errorf("ReadEvents delivered %+v; want the policy drop to port 81", ev)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("ReadEvents after cancel = %v; want nil", err)
	}
	if st.Read.Load() != 1 || st.Malformed.Load() != 0 {
		t.Errorf("stats read %d malformed %d; want 1, 0", st.Read.Load(), st.Malformed.Load())
	}
}

// TestDropEventIPv6ExtensionHeader: a packet dropped for what follows its
// IPv6 header (an MLD report's hop-by-hop header) is reported with its
// addresses.
func TestDropEventIPv6ExtensionHeader(t *testing.T) {
	d, _, _ := eventEnv(t, Config{})
	src, dst := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("ff02::16")
	pkt := ip6Packet(0)
	s16, d16 := src.As16(), dst.As16()
	copy(pkt[14+8:], s16[:])
	copy(pkt[14+24:], d16[:])
	if got := run(t, d, pkt); got != actShot {
		t.Fatalf("verdict %d; want %d", got, actShot)
	}
	evs := drain(t, d)
	if len(evs) != 1 || evs[0].Kind != EventDrop || evs[0].Reason != ReasonUnsupportedL3 ||
		evs[0].Source.Addr() != src || evs[0].Destination.Addr() != dst {
		t.Errorf("events = %+v; want one unsupported-l3 drop from %s to %s", evs, src, dst)
	}
}
