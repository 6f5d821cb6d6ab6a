package dns

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the run when goroutines outlive the tests: every proxy,
// upstream and client a test starts must be stopped by it.
func TestMain(m *testing.M) {
	before := len(goroutines())
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(10 * time.Second)
		for len(goroutines()) > before && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if g := goroutines(); len(g) > before {
			fmt.Fprintf(os.Stderr, "goroutines leaked by the tests (%d before, %d after):\n%s\n", before, len(g), strings.Join(g, "\n\n"))
			code = 1
		}
	}
	os.Exit(code)
}

// goroutines returns the stacks of the goroutines that tests could leak:
// not the runtime's signal loop (started by the fuzzing engine).
func goroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "os/signal.signal_recv") {
			continue
		}
		out = append(out, g)
	}
	return out
}
