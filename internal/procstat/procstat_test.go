package procstat

import (
	"os"
	"testing"
)

func TestTicks(t *testing.T) {
	// A command name with spaces and a ')' (Envoy names its worker threads
	// "wrk:worker_0"; any name may hold both); utime 1234, stime 56.
	line := "4242 (a) b (c d)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 9 0 100 1000 100 18446744073709551615\n"
	got, err := Ticks([]byte(line))
	if err != nil || got != 1290 {
		t.Fatalf("Ticks = %d, %v; want 1290", got, err)
	}
	for _, bad := range []string{"", "4242 no parens", "1 (x) S 1 2"} {
		if _, err := Ticks([]byte(bad)); err == nil {
			t.Errorf("Ticks(%q): no error", bad)
		}
	}
	// This process: parses, and its CPU time is not zero after some work.
	x := 0
	for i := range 50_000_000 {
		x += i
	}
	if d, err := CPU(os.Getpid()); err != nil || d <= 0 {
		t.Fatalf("CPU(self) = %v, %v (x=%d)", d, err, x)
	}
}
