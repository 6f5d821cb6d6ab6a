package envoykafka

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/wardproxy/ward/conformance/kafka"
	"github.com/wardproxy/ward/conformance/stack"
	"github.com/wardproxy/ward/policy/l7"
)

// soakConns is how many client connections TestSoakThroughEnvoy opens and
// closes.
const soakConns = 10000

// TestSoakThroughEnvoy opens and closes 10,000 connections with a real
// client (franz-go: connect, ApiVersions, close) through the real Envoy
// with ward.kafka in front of a real broker. Afterwards no connection of
// the listener is left in CLOSE-WAIT, no upstream connection to the broker
// is left open, and Envoy's RSS is within 64 MiB of where it was after a
// warm-up.
func TestSoakThroughEnvoy(t *testing.T) {
	start := time.Now()
	s := stack.Start(t, stack.Options{})
	lport := stack.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", lport)
	broker := kafka.StartBroker(t, kafka.BrokerConfig{Advertise: map[string]string{"SOAK": addr}})
	kafkaListenerOn(t, s, lport, broker.ListenerAddr("SOAK"), 1001, nil,
		l7.KafkaRule{APIKey: "apiversions"}, l7.KafkaRule{APIKey: "metadata"})
	brokerPort := port(t, broker.ListenerAddr("SOAK"))

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var failed atomic.Int64
	var firstErr atomic.Value
	run := func(n, workers int) {
		var wg sync.WaitGroup
		var next atomic.Int64
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(n) && ctx.Err() == nil {
					cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.DialTimeout(10*time.Second))
					if err == nil {
						err = cl.Ping(ctx) // one connection: ApiVersions
						cl.Close()
					}
					if err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err)
					}
				}
			}()
		}
		wg.Wait()
	}
	settled := func() bool {
		return tcpStates(t, int(lport), 0)["08"] == 0 && tcpStates(t, 0, brokerPort)["01"] == 0
	}

	run(200, 8) // warm-up: Envoy's and the Go runtime's steady state
	if !waitUntil(settled) {
		t.Fatalf("after the warm-up: listener sockets %v, upstream sockets %v", tcpStates(t, int(lport), 0), tcpStates(t, 0, brokerPort))
	}
	pid := s.Proc.PID()
	before := rssKiB(t, pid)
	soakStart := time.Now()
	run(soakConns, 16)
	soakTime := time.Since(soakStart)
	if ctx.Err() != nil {
		t.Fatalf("soak did not finish in time: %v", ctx.Err())
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d client connections failed; first: %v", n, soakConns+200, firstErr.Load())
	}
	if !waitUntil(settled) {
		t.Errorf("after %d connections: listener sockets by state %v (08 = CLOSE-WAIT), upstream sockets to the broker %v (01 = established); want none left",
			soakConns, tcpStates(t, int(lport), 0), tcpStates(t, 0, brokerPort))
	}
	after := rssKiB(t, pid)
	total := s.Stat(t, fmt.Sprintf("listener.127.0.0.1_%d.downstream_cx_total", lport))
	t.Logf("%d connections in %v (%d through the listener); Envoy RSS %d KiB before, %d KiB after; whole test %v",
		soakConns, soakTime.Round(time.Millisecond), total, before, after, time.Since(start).Round(time.Second))
	if total < soakConns {
		t.Errorf("the listener saw %d connections; want at least %d", total, soakConns)
	}
	if after-before > 64<<10 {
		t.Errorf("Envoy's RSS grew by %d KiB over the soak; want within 64 MiB", after-before)
	}
}
