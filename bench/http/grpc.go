package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// The gRPC arms (-grpc): unary calls (grpc.health.v1.Health/Check) from an
// in-process Go client, through Envoy's h2 router alone and with ward's
// filter allowing the method by one rule, to a Go gRPC server. Issue 17's
// targets: ward ≤ 1.12× the router's CPU per call; p99 ≤ 1.1× the router's
// at half the router's rate.

// grpcMethod is the one method called; ward's rule allows it by path.
const grpcMethod = "/grpc.health.v1.Health/Check"

// grpcArm is one gRPC listener's results.
type grpcArm struct {
	name     string
	port     int
	rps, cpu []float64
	p50, p99 []time.Duration
	failed   int // open-loop calls that failed, all rounds
}

// serveGRPC starts the upstream gRPC server (the health service, serving)
// and returns its port.
func serveGRPC(ctx context.Context) (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("grpc upstream: %w", err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	go s.Serve(l) //nolint:errcheck // stopped with ctx
	go func() { <-ctx.Done(); s.Stop() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// grpcClients dials conns separate HTTP/2 connections to port.
func grpcClients(port, conns int) ([]healthpb.HealthClient, func(), error) {
	var cs []healthpb.HealthClient
	var ccs []*grpc.ClientConn
	closeAll := func() {
		for _, c := range ccs {
			c.Close()
		}
	}
	for i := 0; i < conns; i++ {
		cc, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", port), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("grpc dial: %w", err)
		}
		ccs = append(ccs, cc)
		cs = append(cs, healthpb.NewHealthClient(cc))
	}
	return cs, closeAll, nil
}

// grpcLoad runs conns×streams closed-loop callers for d and returns calls
// per second and the calls completed; any failed call is an error.
func grpcLoad(port int, d time.Duration, conns, streams int) (float64, int, error) {
	cs, closeAll, err := grpcClients(port, conns)
	if err != nil {
		return 0, 0, err
	}
	defer closeAll()
	// Warm the connections up outside the measurement.
	for _, c := range cs {
		if _, err := c.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
			return 0, 0, fmt.Errorf("grpc warm-up: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var done atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, conns*streams)
	start := time.Now()
	for _, c := range cs {
		for j := 0; j < streams; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					_, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
					if err != nil {
						// The run's end (its deadline is the only one a
						// call has) is no failure.
						if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Canceled {
							errc <- err
						}
						return
					}
					done.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	el := time.Since(start)
	close(errc)
	if err := <-errc; err != nil {
		return 0, 0, fmt.Errorf("grpc call: %w", err)
	}
	n := int(done.Load())
	return float64(n) / el.Seconds(), n, nil
}

// grpcOpenLoop calls at a fixed rate for d over conns connections and
// returns the p50 and p99 latency from each call's scheduled time and the
// calls that failed.
func grpcOpenLoop(port int, rate float64, d time.Duration, conns int) (time.Duration, time.Duration, int, error) {
	cs, closeAll, err := grpcClients(port, conns)
	if err != nil {
		return 0, 0, 0, err
	}
	defer closeAll()
	interval := time.Duration(float64(time.Second) / rate)
	n := int(d / interval)
	if n == 0 {
		return 0, 0, 0, errors.New("grpc open loop: rate too low")
	}
	lat := make([]time.Duration, n)
	var failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now().Add(50 * time.Millisecond)
	for i := 0; i < n; i++ {
		at := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(at))
		wg.Add(1)
		go func(i int, at time.Time) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := cs[i%len(cs)].Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				failed.Add(1)
			}
			lat[i] = time.Since(at)
		}(i, at)
	}
	wg.Wait()
	// A failed call (its 5 s deadline passed: the arm cannot keep up with
	// the rate) counts with the time it took, and is reported.
	slices.Sort(lat)
	return lat[n/2], lat[n*99/100], int(failed.Load()), nil
}

// grpcReport prints the gRPC table: CPU per call first, then calls/s and
// the open-loop latency.
func grpcReport(arms []*grpcArm, conns, streams int, rate float64) {
	if len(arms) < 2 {
		return
	}
	base := arms[0]
	fmt.Printf("\ngRPC unary (%s, empty request): %d HTTP/2 connections × %d concurrent calls from a Go client on CPU 1 (closed loop), then open loop at %.0f calls/s (half the router arm's median) for p50/p99 from the scheduled send time.\n\n",
		grpcMethod, conns, streams, rate)
	fmt.Println("| arm | CPU µs/call | vs h2 router (target ≤ 1.12) | calls/s | vs router | p50 | p99 | p99 vs router (target ≤ 1.1) | open-loop calls failed |")
	fmt.Println("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, a := range arms {
		p99r := "—"
		if len(a.p99) > 0 && len(base.p99) > 0 {
			p99r = spread(ratiosD(a.p99, base.p99), 2)
		}
		fmt.Printf("| %s | %s | %s | %.0f | %.3f | %v | %v | %s | %d |\n", a.name, spread(a.cpu, 1), spread(ratios(a.cpu, base.cpu), 3),
			median(a.rps), median(a.rps)/median(base.rps), medianD(a.p50).Round(time.Microsecond), medianD(a.p99).Round(time.Microsecond), p99r, a.failed)
	}
}

func ratiosD(num, den []time.Duration) []float64 {
	r := make([]float64, min(len(num), len(den)))
	for i := range r {
		r[i] = float64(num[i]) / float64(den[i])
	}
	return r
}

// waitGRPC waits until a call through port succeeds.
func waitGRPC(port int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		_, n, err := grpcLoad(port, 100*time.Millisecond, 1, 1)
		if err == nil && n > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no gRPC call succeeded: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
