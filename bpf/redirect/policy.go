package redirect

import (
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Direction is the policy direction relative to the endpoint.
type Direction uint8

// Directions (the values the datapath uses).
const (
	Ingress Direction = 0
	Egress  Direction = 1
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Verdict is a policy map verdict.
type Verdict uint8

// Verdicts (the values the datapath uses).
const (
	Allow    Verdict = 1
	Deny     Verdict = 2
	Redirect Verdict = 3
)

func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	case Redirect:
		return "redirect"
	}
	return "verdict(" + strconv.Itoa(int(v)) + ")"
}

// IP protocol numbers for PolicyKey.Proto.
const (
	ProtoAny  = 0
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// PolicyKey selects traffic of one endpoint. Zero fields are wildcards:
// Identity 0 is any remote identity, Proto 0 any protocol (only with Port
// 0), Port 0 (with PortWild 0) any port. For ICMP and ICMPv6, Port is the
// ICMP type.
//
// A key covers a power-of-two aligned block of ports: the PortWild low
// bits of Port are ignored, so Port 8000 with PortWild 3 covers 8000-8007
// (Port must have those bits clear). PortBlocks splits any range into
// such blocks (at most 30 for 1-65535), which is how a range is written
// without one entry per port.
//
// The policy map is an LPM trie: for a new flow the datapath takes the
// longest (most specific) entry for the remote identity and the longest
// for any identity. A Deny in either wins; otherwise the remote identity's
// entry decides, else the any-identity one; none is a drop when the
// direction is enforced. Within one identity a Deny also wins over the
// more specific entries it covers (SetPolicy turns those into Deny).
type PolicyKey struct {
	Direction Direction
	Identity  uint32
	Port      uint16
	PortWild  uint8
	Proto     uint8
}

// anyPort reports whether the key covers every port.
func (k PolicyKey) anyPort() bool { return (k.Port == 0 && k.PortWild == 0) || k.PortWild >= 16 }

// normalized returns the key's canonical form (every any-port key is
// Port 0, PortWild 0; any protocol has no port).
func (k PolicyKey) normalized() PolicyKey {
	if k.anyPort() {
		k.Port, k.PortWild = 0, 0
	}
	return k
}

// Mirrors of POLICY_PREFIX_* in datapath.h.
const (
	policyPrefixFixed = 72
	policyPrefixProto = 80
)

func htons(v uint16) uint16 { return v<<8 | v>>8 } // bpfel only

func (k PolicyKey) mapKey(ep uint32, gen uint8) datapathPolicyKey {
	k = k.normalized()
	plen := uint32(policyPrefixFixed)
	if k.Proto != ProtoAny {
		plen = policyPrefixProto
		if !k.anyPort() {
			plen += 16 - uint32(k.PortWild)
		}
	}
	return datapathPolicyKey{Prefixlen: plen, EndpointId: ep, Identity: k.Identity, Direction: uint8(k.Direction) | gen<<1, Proto: k.Proto, Dport: htons(k.Port)}
}

func policyKeyFromMap(k datapathPolicyKey) (PolicyKey, uint8) {
	pk := PolicyKey{Direction: Direction(k.Direction & 1), Identity: k.Identity}
	if k.Prefixlen > policyPrefixFixed {
		pk.Proto = k.Proto
	}
	if k.Prefixlen > policyPrefixProto {
		pk.Port, pk.PortWild = htons(k.Dport), uint8(16-(k.Prefixlen-policyPrefixProto))
	}
	return pk, k.Direction >> 1
}

// covering returns the shorter keys of the same direction and identity
// that cover k (its LPM ancestors), most specific first.
func (k PolicyKey) covering() []PolicyKey {
	k = k.normalized()
	if k.Proto == ProtoAny {
		return nil
	}
	var out []PolicyKey
	if !k.anyPort() {
		for w := k.PortWild + 1; w < 16; w++ {
			out = append(out, PolicyKey{Direction: k.Direction, Identity: k.Identity, Proto: k.Proto, Port: k.Port &^ (1<<w - 1), PortWild: w})
		}
		out = append(out, PolicyKey{Direction: k.Direction, Identity: k.Identity, Proto: k.Proto})
	}
	return append(out, PolicyKey{Direction: k.Direction, Identity: k.Identity})
}

// PortBlock is one power-of-two aligned block of ports: Port..Port+2^Wild-1.
type PortBlock struct {
	Port uint16
	Wild uint8
}

// PortBlocks splits lo..hi into the fewest aligned blocks (the prefix
// decomposition an LPM key needs). lo 0 with hi 65535 is one block, Wild 16.
func PortBlocks(lo, hi uint16) []PortBlock {
	if hi < lo {
		return nil
	}
	var out []PortBlock
	cur := uint32(lo)
	for cur <= uint32(hi) {
		w := uint8(0)
		for w < 16 {
			size := uint32(1) << (w + 1)
			if cur&(size-1) != 0 || cur+size-1 > uint32(hi) {
				break
			}
			w++
		}
		out = append(out, PortBlock{Port: uint16(cur), Wild: w})
		cur += uint32(1) << w
	}
	return out
}

// PolicyEntry is one policy map entry.
type PolicyEntry struct {
	PolicyKey
	Verdict Verdict
	// ProxyPort is the transparent listener's port for Redirect (TCP
	// redirects go to a TCP listener, UDP ones to a UDP socket, on
	// 0.0.0.0 or 127.0.0.1 in wardd's namespace).
	ProxyPort uint16
}

type policyVal struct {
	Verdict   Verdict
	ProxyPort uint16
}

func (e PolicyEntry) validate() error {
	switch e.Verdict {
	case Allow, Deny:
		if e.ProxyPort != 0 {
			return fmt.Errorf("%v: proxy port set on a %v entry", e.PolicyKey, e.Verdict)
		}
	case Redirect:
		if e.ProxyPort == 0 {
			return fmt.Errorf("%v: redirect without a proxy port", e.PolicyKey)
		}
		if e.Proto != ProtoTCP && e.Proto != ProtoUDP {
			return fmt.Errorf("%v: redirect needs proto TCP or UDP", e.PolicyKey)
		}
	default:
		return fmt.Errorf("%v: unknown verdict %d", e.PolicyKey, e.Verdict)
	}
	if e.Direction != Ingress && e.Direction != Egress {
		return fmt.Errorf("%v: unknown direction %d", e.PolicyKey, e.Direction)
	}
	if e.Proto == ProtoAny && (e.Port != 0 || e.PortWild != 0) {
		return fmt.Errorf("%v: a port needs a protocol", e.PolicyKey)
	}
	if e.PortWild > 16 {
		return fmt.Errorf("%v: port wildcard of %d bits (at most 16)", e.PolicyKey, e.PortWild)
	}
	if e.PortWild < 16 && e.Port&(1<<e.PortWild-1) != 0 {
		return fmt.Errorf("%v: port %d is not aligned to its %d-bit wildcard", e.PolicyKey, e.Port, e.PortWild)
	}
	return nil
}

// SetPolicy makes the endpoint's policy map entries exactly entries,
// written as a new generation that goes live atomically (see the package
// doc). Entries with the same key merge, Deny winning; an entry covered by
// a Deny of the same identity (a shorter key) becomes a Deny. A change
// bumps the policy revision, so every tracked flow is decided again under
// the new policy by its next packet. When the entries
// do not fit (the per-endpoint budget or the map's capacity), the endpoint
// is locked down (all its traffic dropped) and the error wraps
// ErrPolicyMapFull; a later SetPolicy that fits lifts the lockdown.
func (d *Datapath) SetPolicy(endpointID uint32, entries []PolicyEntry) error {
	if endpointID == 0 {
		return errors.New("set policy: endpoint id 0 is reserved")
	}
	want := make(map[PolicyKey]policyVal, len(entries))
	var errs []error
	for _, e := range entries {
		if err := e.validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		nv := policyVal{e.Verdict, e.ProxyPort}
		k := e.PolicyKey.normalized()
		if old, ok := want[k]; ok {
			switch {
			case old.Verdict == Deny:
			case e.Verdict == Deny:
				want[k] = nv
			case old != nv:
				errs = append(errs, fmt.Errorf("%v: conflicting entries %v/%d and %v/%d", k, old.Verdict, old.ProxyPort, e.Verdict, e.ProxyPort))
			}
			continue
		}
		want[k] = nv
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("set policy %d: %w", endpointID, err)
	}
	// A longest-prefix lookup would let a more specific allow hide a
	// shorter deny of the same identity: deny wins.
	for k, v := range want {
		if v.Verdict == Deny {
			continue
		}
		for _, c := range k.covering() {
			if cv, ok := want[c]; ok && cv.Verdict == Deny {
				want[k] = policyVal{Verdict: Deny}
				break
			}
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if len(want) > d.cfg.MaxPolicyEntriesPerEndpoint {
		lerr := d.lockdown(endpointID, true)
		return errors.Join(fmt.Errorf("set policy %d: %d entries exceed the per-endpoint budget of %d: endpoint locked down: %w",
			endpointID, len(want), d.cfg.MaxPolicyEntriesPerEndpoint, ErrPolicyMapFull), lerr)
	}
	p := d.pol[endpointID]
	if p == nil {
		p = &epPolicy{}
		d.pol[endpointID] = p
	}
	if maps.Equal(p.live, want) && !d.locked[endpointID] {
		return nil
	}
	if err := d.gcStale(false); err != nil {
		return fmt.Errorf("set policy %d: %w", endpointID, err)
	}
	// The other generation may still be read by a program that loaded the
	// endpoint's flags just before the last flip: wait out the grace
	// period, then clear it.
	if err := d.clearStale(endpointID, p, true); err != nil {
		return fmt.Errorf("set policy %d: %w", endpointID, err)
	}
	next := 1 - p.gen
	written, err := d.writeGen(endpointID, next, want)
	if errors.Is(err, errMapFull) {
		// Room may be held by other endpoints' previous generations.
		err = errors.Join(d.deleteGen(endpointID, next, written), d.gcStale(true))
		if err == nil {
			written, err = d.writeGen(endpointID, next, want)
		}
	}
	if err != nil {
		derr := d.deleteGen(endpointID, next, written) // never went live
		if errors.Is(err, errMapFull) {
			lerr := d.lockdown(endpointID, true)
			return errors.Join(fmt.Errorf("set policy %d: policy map at capacity (%d entries): endpoint locked down: %w",
				endpointID, d.objs.WardPolicy.MaxEntries(), ErrPolicyMapFull), lerr, derr)
		}
		return errors.Join(fmt.Errorf("set policy %d: %w", endpointID, err), derr)
	}
	// Flip: one atomic update of the endpoint entry.
	old := p.live
	p.gen, p.live, p.stale, p.flipped = next, want, old, time.Now()
	delete(d.locked, endpointID)
	if err := d.writeEndpointFlags(endpointID); err != nil {
		return fmt.Errorf("set policy %d: flip generation: %w", endpointID, err)
	}
	if err := d.bumpPolicyRev(); err != nil {
		return fmt.Errorf("set policy %d: %w", endpointID, err)
	}
	return nil
}

// bumpPolicyRev makes every conntrack entry stale: the next packet of
// each flow's opening direction is decided again. Called with d.mu.
func (d *Datapath) bumpPolicyRev() error {
	var zero, rev uint32
	if err := d.objs.WardPolicyRev.Lookup(&zero, &rev); err != nil {
		return fmt.Errorf("read policy revision: %w", err)
	}
	rev++
	if err := d.objs.WardPolicyRev.Update(&zero, &rev, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("bump policy revision: %w", err)
	}
	return nil
}

// Lockdown drops all traffic to and from the endpoint (veth or cgroup)
// until a later SetPolicy for it succeeds. The agent calls it when it
// cannot produce the endpoint's entries (policymap.Entries failed) or
// SetPolicy failed for a reason other than ErrPolicyMapFull (which locks
// down by itself), so a policy that could not be written never leaves the
// previous one, or none, in force. An endpoint not added yet is locked
// down when it is added.
func (d *Datapath) Lockdown(endpointID uint32) error {
	if endpointID == 0 {
		return errors.New("lockdown: endpoint id 0 is reserved")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lockdown(endpointID, true)
}

// policyGrace bounds how long a datapath program can still be reading a
// generation after the flip away from it (programs run to completion in
// microseconds; the margin covers a descheduled vCPU).
const policyGrace = 100 * time.Millisecond

var errMapFull = errors.New("map full")

// writeGen writes entries under a generation, returning the keys written.
func (d *Datapath) writeGen(id uint32, gen uint8, entries map[PolicyKey]policyVal) ([]PolicyKey, error) {
	written := make([]PolicyKey, 0, len(entries))
	for k, v := range entries {
		mk := k.mapKey(id, gen)
		mv := datapathPolicyValue{Verdict: uint8(v.Verdict), ProxyPort: v.ProxyPort}
		if err := d.objs.WardPolicy.Update(&mk, &mv, ebpf.UpdateAny); err != nil {
			if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
				return written, errMapFull
			}
			return written, fmt.Errorf("update %v: %w", k, err)
		}
		written = append(written, k)
	}
	return written, nil
}

func (d *Datapath) deleteGen(id uint32, gen uint8, keys []PolicyKey) error {
	for _, k := range keys {
		mk := k.mapKey(id, gen)
		if err := d.objs.WardPolicy.Delete(&mk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %v: %w", k, err)
		}
	}
	return nil
}

// clearStale deletes an endpoint's previous generation once the grace
// period since its flip has passed, waiting for it when wait is set.
// Called with d.mu.
func (d *Datapath) clearStale(id uint32, p *epPolicy, wait bool) error {
	if len(p.stale) == 0 {
		return nil
	}
	if left := policyGrace - time.Since(p.flipped); left > 0 {
		if !wait {
			return nil
		}
		time.Sleep(left)
	}
	if err := d.deleteGen(id, 1-p.gen, slices.Collect(maps.Keys(p.stale))); err != nil {
		return fmt.Errorf("clear previous generation: %w", err)
	}
	p.stale = nil
	return nil
}

// gcStale clears every endpoint's previous generation that is past the
// grace period (all of them, waiting, when wait is set). Called with d.mu.
func (d *Datapath) gcStale(wait bool) error {
	var errs []error
	for id, p := range d.pol {
		errs = append(errs, d.clearStale(id, p, wait))
	}
	return errors.Join(errs...)
}

// epPolicy is one endpoint's policy in the map: the live generation's
// entries and the other generation's leftovers.
type epPolicy struct {
	gen     uint8
	live    map[PolicyKey]policyVal
	stale   map[PolicyKey]policyVal
	flipped time.Time // when gen went live
}

// Policy returns the endpoint's current entries.
func (d *Datapath) Policy(endpointID uint32) []PolicyEntry {
	d.mu.Lock()
	defer d.mu.Unlock()
	var live map[PolicyKey]policyVal
	if p := d.pol[endpointID]; p != nil {
		live = p.live
	}
	out := make([]PolicyEntry, 0, len(live))
	for k, v := range live {
		out = append(out, PolicyEntry{PolicyKey: k, Verdict: v.Verdict, ProxyPort: v.ProxyPort})
	}
	return out
}

// lockdown sets or clears the endpoint's lockdown flag. Called with d.mu.
func (d *Datapath) lockdown(id uint32, on bool) error {
	if on {
		d.locked[id] = true
		d.log.Warn("endpoint locked down: its policy could not be written", "endpoint", id)
	} else {
		delete(d.locked, id)
		d.log.Info("endpoint lockdown lifted", "endpoint", id)
	}
	return d.writeEndpointFlags(id)
}

// writeEndpointFlags rewrites the endpoint's entry (veth or cgroup) with
// its current flags: enforcement, lockdown, policy generation. Called
// with d.mu.
func (d *Datapath) writeEndpointFlags(id uint32) error {
	if id == HostEndpointID {
		return d.writeHost()
	}
	// An endpoint can have both entries (CgroupEndpoint.TCRedirect).
	var errs []error
	if ep, ok := d.eps[id]; ok {
		errs = append(errs, d.writeEndpoint(ep))
	}
	if st, ok := d.cgeps[id]; ok {
		errs = append(errs, d.writeCgroupEndpoint(st))
	}
	return errors.Join(errs...)
}

// genFlag is the EP_POLICY_GEN bit for an endpoint. Called with d.mu.
func (d *Datapath) genFlag(id uint32) uint32 {
	if p := d.pol[id]; p != nil && p.gen == 1 {
		return epPolicyGen
	}
	return 0
}

// Reason is why the datapath passed or dropped a packet.
type Reason uint32

// Reasons (indexes of the metrics map; see redirect.c).
const (
	ReasonAllowed             Reason = 0
	ReasonEstablished         Reason = 1
	ReasonReply               Reason = 2
	ReasonNotEnforced         Reason = 3
	ReasonNonIP               Reason = 4
	ReasonRedirected          Reason = 5
	ReasonProxy               Reason = 6
	ReasonPolicyDenied        Reason = 7
	ReasonLockdown            Reason = 8
	ReasonNoProxySocket       Reason = 9
	ReasonFragment            Reason = 10
	ReasonMalformed           Reason = 11
	ReasonSpoofed             Reason = 12
	ReasonUnsupportedL3       Reason = 13
	ReasonRedirectUnsupported Reason = 14
	ReasonUnknownEndpoint     Reason = 15
	ReasonSockShortcut        Reason = 16 // sk_msg moved payload socket to socket (bytes = payload)
	ReasonUnknownL3           Reason = 17 // not IPv4, IPv6 or ARP (to or from a pod)
	ReasonVLAN                Reason = 18 // VLAN-tagged frame
	ReasonNeighbourDiscovery  Reason = 19 // ICMPv6 ND, hop limit 255, link scope: passed
	ReasonNoCgroupEndpoint    Reason = 20 // socket level: no registered cgroup at or above the task's
	ReasonHairpin             Reason = 21 // to_pod: an ingress redirect from off the node, handed to the veth's ingress (then counted redirected)

	numReasons        = 32 // R_MAX
	metricsDirections = 2
	firstDrop         = ReasonPolicyDenied
)

var reasonNames = [...]string{
	"allowed", "established", "reply", "not-enforced", "non-ip", "redirected", "proxy-upstream",
	"policy-denied", "lockdown", "no-proxy-socket", "fragment", "malformed", "spoofed-source",
	"unsupported-l3", "redirect-unsupported", "unknown-endpoint", "sock-shortcut",
	"unknown-l3", "vlan", "neighbour-discovery", "no-cgroup-endpoint", "hairpin",
}

func (r Reason) String() string {
	if r == ReasonHostAudit {
		return "host-audit"
	}
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "reason(" + strconv.Itoa(int(r)) + ")"
}

// Drop reports whether packets counted under r were dropped.
func (r Reason) Drop() bool {
	return r >= firstDrop && r != ReasonSockShortcut && r != ReasonNeighbourDiscovery && r != ReasonHairpin && r != ReasonHostAudit
}

// Counter is one (reason, direction) verdict counter summed over CPUs.
type Counter struct {
	Reason    Reason
	Direction Direction
	Packets   uint64
	Bytes     uint64
}

// Counters returns the non-zero verdict counters.
func (d *Datapath) Counters() ([]Counter, error) {
	return readCounters(d.objs.WardMetrics)
}

// PinnedCounters reads the counters of the datapath pinned under pinDir
// without loading anything (for `ward bpf counters`).
func PinnedCounters(pinDir string) ([]Counter, error) {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, datapathMapWardMetrics), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open pinned counters: %w", err)
	}
	defer m.Close()
	return readCounters(m)
}

func readCounters(m *ebpf.Map) ([]Counter, error) {
	var out []Counter
	for i := uint32(0); i < numReasons*metricsDirections; i++ {
		var per []datapathMetricsValue
		if err := m.Lookup(&i, &per); err != nil {
			return nil, fmt.Errorf("read counters: %w", err)
		}
		c := Counter{Reason: Reason(i / 2), Direction: Direction(i % 2)}
		for _, v := range per {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
		}
		if c.Packets != 0 {
			out = append(out, c)
		}
	}
	return out, nil
}

// Count returns the packets counted for a reason in both directions.
func (d *Datapath) Count(r Reason) (uint64, error) {
	cs, err := d.Counters()
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range cs {
		if c.Reason == r {
			n += c.Packets
		}
	}
	return n, nil
}

// Routing is the policy-routing rule that delivers packets marked
// MarkToProxy locally, to the socket bpf_sk_assign chose (as iptables
// TPROXY needs too). Zero fields take the defaults.
type Routing struct {
	// Table is the routing table holding "local 0.0.0.0/0 dev lo"
	// (default 2004, Cilium's proxy table).
	Table int
	// Priority is the rule's preference (default 9000).
	Priority int
}

func (r Routing) withDefaults() Routing {
	if r.Table == 0 {
		r.Table = 2004
	}
	if r.Priority == 0 {
		r.Priority = 9000
	}
	return r
}

func (r Routing) ruleArgs(family, op string) []string {
	return []string{family, "rule", op, "fwmark", fmt.Sprintf("%#x/%#x", MarkToProxy, MarkMask),
		"lookup", strconv.Itoa(r.Table), "pref", strconv.Itoa(r.Priority)}
}

func (r Routing) routeArgs(family, op string) []string {
	dst := "0.0.0.0/0"
	if family == "-6" {
		dst = "::/0"
	}
	return []string{family, "route", op, "local", dst, "dev", "lo", "table", strconv.Itoa(r.Table)}
}

// InstallProxyRouting adds the rules and local routes (IPv4 and IPv6, with
// the ip command) and the nftables rule that marks the packets of the
// proxies' own transparent connections (nft.go); undo removes them. It is
// idempotent: a rule identical to the one it would add (left by a
// previous process killed before its undo, say) is adopted, not an error,
// and the routes and the nftables rule are replaced. undo removes adopted
// rules too. Two callers using distinct tables never undo
// each other.
func InstallProxyRouting(r Routing) (undo func() error, err error) {
	r = r.withDefaults()
	var done [][]string
	var sockUndo func() error
	undo = func() error {
		var errs []error
		for i := len(done) - 1; i >= 0; i-- {
			if done[i] == nil {
				errs = append(errs, sockUndo())
				continue
			}
			errs = append(errs, runIP(done[i]...))
		}
		return errors.Join(errs...)
	}
	sockUndo, err = InstallProxySocketMark(r.Table)
	if err != nil {
		return nil, fmt.Errorf("proxy routing: %w", err)
	}
	done = append(done, nil) // the nftables table: undone last
	for _, fam := range []string{"-4", "-6"} {
		if err := runIP(r.routeArgs(fam, "replace")...); err != nil {
			return nil, errors.Join(fmt.Errorf("proxy routing: %w", err), undo())
		}
		done = append(done, r.routeArgs(fam, "del"))
		have, err := r.ruleInstalled(fam)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("proxy routing: %w", err), undo())
		}
		if !have {
			if err := runIP(r.ruleArgs(fam, "add")...); err != nil {
				// Lost a race with another installer of the same rule?
				if have, lerr := r.ruleInstalled(fam); lerr != nil || !have {
					return nil, errors.Join(fmt.Errorf("proxy routing: %w", err), undo())
				}
			}
		}
		done = append(done, r.ruleArgs(fam, "del"))
	}
	return undo, nil
}

// ruleInstalled reports whether the exact rule InstallProxyRouting adds
// is present.
func (r Routing) ruleInstalled(family string) (bool, error) {
	args := r.ruleArgs(family, "list")
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)) != "", nil
}

// RemoveProxyRouting removes rules and routes InstallProxyRouting added in
// an earlier process (for `ward bpf cleanup`); missing ones are ignored.
func RemoveProxyRouting(r Routing) {
	r = r.withDefaults()
	RemoveProxySocketMark(r.Table)
	for _, fam := range []string{"-4", "-6"} {
		for runIP(r.ruleArgs(fam, "del")...) == nil {
		}
		_ = runIP(r.routeArgs(fam, "del")...)
	}
}

func runIP(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
