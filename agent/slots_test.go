package agent

import (
	"fmt"
	"testing"
)

func newSlotsDatapath() *datapath {
	return &datapath{cfg: DatapathConfig{}.withDefaults(), slots: map[uint64]int{}, egress: map[uint64]uint16{}, kafka: map[uint64]uint16{}}
}

// TestSlots: each local endpoint gets the lowest free slot (its egress
// listeners' offset from their base ports), keeps it while it lives, and a
// gone endpoint's slot goes to the next newcomer, lowest first.
func TestSlots(t *testing.T) {
	d := newSlotsDatapath()
	for id := uint64(1); id <= 5; id++ {
		d.assign(id)
	}
	d.assign(3) // again: unchanged
	slot := func(id uint64) int {
		p, ok := d.egressPort(id)
		k, kok := d.egressKafkaPort(id)
		if !ok || !kok {
			t.Fatalf("endpoint %d has no ports", id)
		}
		n := int(p - d.cfg.EgressHTTPBasePort)
		if int(k-d.cfg.EgressKafkaBasePort) != n {
			t.Fatalf("endpoint %d: HTTP slot %d, Kafka slot %d", id, n, k-d.cfg.EgressKafkaBasePort)
		}
		return n
	}
	for id := uint64(1); id <= 5; id++ {
		if got := slot(id); got != int(id-1) {
			t.Errorf("endpoint %d: slot %d, want %d", id, got, id-1)
		}
	}
	d.release(4)
	d.release(2)
	d.release(99) // unknown: nothing
	d.assign(6)
	d.assign(7)
	d.assign(8)
	if a, b, c := slot(6), slot(7), slot(8); a != 1 || b != 3 || c != 5 {
		t.Errorf("newcomers got slots %d, %d, %d; want 1, 3, 5 (the freed ones lowest first, then a new one)", a, b, c)
	}
	if _, ok := d.egressPort(4); ok {
		t.Error("a released endpoint keeps its port")
	}
}

// BenchmarkAssign10000: slots for 10,000 endpoints arriving at once (a
// node's first publish on a large node). It used to scan every slot for
// each newcomer (quadratic).
func BenchmarkAssign10000(b *testing.B) {
	for b.Loop() {
		d := newSlotsDatapath()
		for id := range uint64(10000) {
			d.assign(id)
		}
		if len(d.slots) != 10000 {
			b.Fatal(fmt.Sprint(len(d.slots)))
		}
	}
}
