package main

import (
	"os"
	"slices"
	"testing"
)

func TestStatTicks(t *testing.T) {
	// A command name with spaces and a ')' (Envoy names its worker threads
	// "wrk:worker_0"; any name may hold both); utime 1234, stime 56.
	line := "4242 (a) b (c d)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 9 0 100 1000 100 18446744073709551615\n"
	got, err := statTicks([]byte(line))
	if err != nil || got != 1290 {
		t.Fatalf("statTicks = %d, %v; want 1290", got, err)
	}
	for _, bad := range []string{"", "4242 no parens", "1 (x) S 1 2"} {
		if _, err := statTicks([]byte(bad)); err == nil {
			t.Errorf("statTicks(%q): no error", bad)
		}
	}
	// The real file of this process parses.
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := statTicks(b); err != nil {
		t.Fatalf("/proc/self/stat: %v", err)
	}
}

func TestRatiosAndSpread(t *testing.T) {
	r := ratios([]float64{2, 3, 8}, []float64{1, 2, 4})
	if !slices.Equal(r, []float64{2, 1.5, 2}) {
		t.Fatalf("ratios = %v", r)
	}
	if got := spread(r, 2); got != "2.00 [1.50–2.00]" {
		t.Fatalf("spread = %q", got)
	}
	if got := spread(nil, 1); got != "—" {
		t.Fatalf("spread(nil) = %q", got)
	}
}
