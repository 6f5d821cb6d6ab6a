// Command http is ward's HTTP benchmark (issues 2 and 4): one Envoy, pinned
// to one worker thread and one CPU, with one listener per arm — router only,
// router + ward's HTTP filter (libward.so) with N rules where the request
// matches the last, router + Envoy's native RBAC filter with the equivalent
// rules, router + ext_authz to a Go gRPC service doing the same match. Arms are interleaved round by round in the same run. Throughput
// is wrk (closed loop, keep-alive); latency is an open-loop generator at a
// fixed rate (latency counted from the scheduled send time, so queueing is
// not hidden). It prints a markdown table with ratios to the router arm.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/wardproxy/ward/agent"
	httpf "github.com/wardproxy/ward/filters/http"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// goEnvList is extra environment for Envoy (the Go runtime inside it).
var goEnvList []string

type arm struct {
	name string
	port int
	rps  []float64
	h2   []float64 // h2load req/s over h2c
	p50  []time.Duration
	p99  []time.Duration
}

func main() {
	rounds := flag.Int("rounds", 3, "rounds (each runs every arm once)")
	dur := flag.Duration("d", 5*time.Second, "wrk duration per arm per round")
	conns := flag.Int("c", 32, "wrk connections")
	rules := flag.String("rules", "1", "comma-separated rule counts for the ward and RBAC arms")
	rateFrac := flag.Float64("rate", 0.5, "open-loop rate as a fraction of the router arm's wrk req/s")
	goEnv := flag.String("goenv", "", "extra environment for Envoy's Go runtime, e.g. GOMAXPROCS=1 (comma-separated)")
	flag.Parse()
	goEnvList = strings.Split(*goEnv, ",")
	if err := run(*rounds, *dur, *conns, *rules, *rateFrac); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func freePort() int {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ruleSet returns n HTTP rules; the benchmark request matches only the last.
func ruleSet(n int) []l7.HTTPRule {
	var rs []l7.HTTPRule
	for i := 0; i < n-1; i++ {
		rs = append(rs, l7.HTTPRule{Method: "GET", Path: fmt.Sprintf("/api/v%d/items/[0-9]+", i)})
	}
	return append(rs, l7.HTTPRule{Method: "GET", Path: "/public"})
}

func rbacFor(n int) *rbachttp.RBAC {
	var perms []*rbacconfig.Permission
	for _, r := range ruleSet(n) {
		path := &matcher.PathMatcher{Rule: &matcher.PathMatcher_Path{Path: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: r.Path}}}}}
		if !strings.ContainsAny(r.Path, "[+*") {
			path = &matcher.PathMatcher{Rule: &matcher.PathMatcher_Path{Path: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: r.Path}}}}
		}
		perms = append(perms, &rbacconfig.Permission{Rule: &rbacconfig.Permission_AndRules{AndRules: &rbacconfig.Permission_Set{Rules: []*rbacconfig.Permission{
			{Rule: &rbacconfig.Permission_Header{Header: &route.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: r.Method}}}}}},
			{Rule: &rbacconfig.Permission_UrlPath{UrlPath: path}},
		}}}})
	}
	return &rbachttp.RBAC{Rules: &rbacconfig.RBAC{Action: rbacconfig.RBAC_ALLOW, Policies: map[string]*rbacconfig.Policy{
		"allow": {Permissions: perms, Principals: []*rbacconfig.Principal{{Identifier: &rbacconfig.Principal_Any{Any: true}}}},
	}}}
}

func run(rounds int, dur time.Duration, conns int, rulesFlag string, rateFrac float64) error {
	root, _ := os.Getwd()
	envoyBin := filepath.Join(root, "build/envoy")
	dir, _ := os.MkdirTemp("", "ward-bench-")
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Upstream: a minimal Go HTTP server.
	ul, _ := net.Listen("tcp", "127.0.0.1:0")
	go http.Serve(ul, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })) //nolint:errcheck
	up := ul.Addr().(*net.TCPAddr)

	// The node is built through the agent (what wardd runs): it serves
	// xDS and supervises Envoy (one worker, pinned to CPU 0 below; the load
	// generators use CPU 1). The bench publishes its arms — ward's filter
	// beside the router-only, RBAC and ext_authz baselines, which are not
	// ward features — through the agent's xDS server.
	var env []string
	for _, e := range goEnvList {
		if e != "" {
			env = append(env, e)
		}
	}
	ag, err := agent.New(agent.Config{Node: "bench", StateDir: dir, Envoy: agent.EnvoyConfig{
		Binary: envoyBin, ModuleDir: filepath.Join(root, "build", "test"), // the test module: the no-op arm is ward.test.panic
		Concurrency: 1, LogLevel: "warn", Env: env,
	}}, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- ag.Run(ctx) }()
	defer func() { cancel(); <-agentDone }()
	select {
	case <-ag.Ready():
	case err := <-agentDone:
		return fmt.Errorf("agent: %w", err)
	case <-time.After(60 * time.Second):
		return errors.New("agent not ready after 60s")
	}
	if out, err := exec.Command("taskset", "-a", "-cp", "0", strconv.Itoa(ag.Envoy().PID())).CombinedOutput(); err != nil {
		return fmt.Errorf("taskset: %w: %s", err, out)
	}
	srv, node, sock := ag.XDS(), ag.Node(), ag.XDSSocket()
	res := xds.EnvoyResources{Clusters: []types.Resource{xds.StaticCluster("up", "127.0.0.1", uint32(up.Port), false)}}
	arms := []*arm{{name: "router only", port: freePort()}, {name: "no-op Go filter (libward.so)", port: freePort()}}
	var policies []*npds.NetworkPolicy
	res.Listeners = append(res.Listeners, must(xds.HTTPListener{Name: "router", Address: "127.0.0.1", Port: uint32(arms[0].port), Cluster: "up"}.Build()),
		// The module boundary alone: a filter that reads one header and continues.
		must(xds.HTTPListener{Name: "noop", Address: "127.0.0.1", Port: uint32(arms[1].port), Cluster: "up", Filters: []xds.ModuleFilter{{Name: "ward.test.panic", Config: []byte("{}")}}}.Build()))
	for _, f := range strings.Split(rulesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-rules %q", rulesFlag)
		}
		ep := fmt.Sprintf("ep%d", n)
		policies = append(policies, &npds.NetworkPolicy{Name: ep, IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, Rules: []*npds.PortNetworkPolicyRule{{
			L7: npds.HTTP(ruleSet(n)...),
		}}}}})
		cfg := fmt.Sprintf(`{"xds_socket":%q,"node":%q,"endpoint":%q,"port":80}`, sock, node, ep)
		w := &arm{name: fmt.Sprintf("ward filter, %d rule(s)", n), port: freePort()}
		r := &arm{name: fmt.Sprintf("native RBAC, %d rule(s)", n), port: freePort()}
		x := &arm{name: fmt.Sprintf("ext_authz (Go gRPC), %d rule(s)", n), port: freePort()}
		arms = append(arms, w, r, x)
		m, err := httpf.Compile(ruleSet(n), nil)
		if err != nil {
			return err
		}
		ap, err := serveAuthz(ctx, m)
		if err != nil {
			return err
		}
		res.Clusters = append(res.Clusters, xds.StaticCluster("authz"+f, "127.0.0.1", uint32(ap), true))
		res.Listeners = append(res.Listeners,
			must(xds.HTTPListener{Name: "ward" + f, Address: "127.0.0.1", Port: uint32(w.port), Cluster: "up", Filters: []xds.ModuleFilter{{Name: "ward.http", Config: []byte(cfg)}}}.Build()),
			must(xds.HTTPListener{Name: "rbac" + f, Address: "127.0.0.1", Port: uint32(r.port), Cluster: "up", RBAC: rbacFor(n)}.Build()),
			must(xds.HTTPListener{Name: "extauthz" + f, Address: "127.0.0.1", Port: uint32(x.port), Cluster: "up", ExtAuthzCluster: "authz" + f}.Build()))
	}
	if _, err := srv.SetEnvoyResources(ctx, node, res); err != nil {
		return err
	}
	srv.SetPolicies(policies)
	for _, a := range arms {
		if err := waitOK(fmt.Sprintf("http://127.0.0.1:%d/public", a.port), 60*time.Second); err != nil {
			b, _ := os.ReadFile(filepath.Join(dir, "envoy.log"))
			return fmt.Errorf("arm %s: %w\n%s", a.name, err, b)
		}
	}
	for r := 0; r < rounds; r++ {
		for _, a := range arms {
			rps, err := wrk(fmt.Sprintf("http://127.0.0.1:%d/public", a.port), dur, conns)
			if err != nil {
				return err
			}
			a.rps = append(a.rps, rps)
		}
	}
	for r := 0; r < rounds; r++ {
		for _, a := range arms {
			rps, err := h2load(fmt.Sprintf("http://127.0.0.1:%d/public", a.port), dur, conns)
			if err != nil {
				return err
			}
			a.h2 = append(a.h2, rps)
		}
	}
	rate := median(arms[0].rps) * rateFrac
	for r := 0; r < rounds; r++ {
		for _, a := range arms {
			p50, p99 := openLoop(fmt.Sprintf("http://127.0.0.1:%d/public", a.port), rate, dur)
			a.p50, a.p99 = append(a.p50, p50), append(a.p99, p99)
		}
	}
	cpu := cpuModel()
	fmt.Printf("\nHTTP/1.1, Envoy 1.40 with 1 worker pinned to CPU 0, wrk -t1 -c%d and the open-loop generator on CPU 1; %d rounds of %v per arm, interleaved; medians. %s, %s, %s.\n\n",
		conns, rounds, dur, time.Now().UTC().Format("2006-01-02"), cpu, runtime.Version())
	fmt.Printf("| arm | HTTP/1.1 req/s (wrk) | vs router | HTTP/2 req/s (h2load) | vs router | p50 @ %.0f req/s | p99 @ %.0f req/s | p99 vs router |\n|---|---|---|---|---|---|---|---|\n", rate, rate)
	base, baseH2, baseP99 := median(arms[0].rps), median(arms[0].h2), medianD(arms[0].p99)
	for _, a := range arms {
		fmt.Printf("| %s | %.0f | %.3f | %.0f | %.3f | %v | %v | %.2f |\n", a.name, median(a.rps), median(a.rps)/base, median(a.h2), median(a.h2)/baseH2,
			medianD(a.p50).Round(time.Microsecond), medianD(a.p99).Round(time.Microsecond), float64(medianD(a.p99))/float64(baseP99))
	}
	return nil
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func waitOK(url string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var reqSec = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

func wrk(url string, d time.Duration, c int) (float64, error) {
	out, err := exec.Command("taskset", "-c", "1", "wrk", "-t1", fmt.Sprintf("-c%d", c), fmt.Sprintf("-d%ds", int(d.Seconds())), url).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("wrk: %w: %s", err, out)
	}
	if strings.Contains(string(out), "Non-2xx") {
		return 0, fmt.Errorf("wrk saw non-2xx answers on %s:\n%s", url, out)
	}
	m := reqSec.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("wrk output: %s", out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

var h2Req = regexp.MustCompile(`finished in [^,]+, ([0-9.]+) req/s`)

// h2load measures HTTP/2 (h2c, prior knowledge) throughput with
// multiplexed streams.
func h2load(url string, d time.Duration, c int) (float64, error) {
	out, err := exec.Command("taskset", "-c", "1", "h2load", "-c", strconv.Itoa(max(c/8, 1)), "-m", "16",
		"-D", strconv.Itoa(int(d.Seconds())), url).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("h2load: %w: %s", err, out)
	}
	if !strings.Contains(string(out), "0 failed, 0 errored") {
		return 0, fmt.Errorf("h2load saw failures on %s:\n%s", url, out)
	}
	m := h2Req.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("h2load output: %s", out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// openLoop sends requests at a fixed rate for d over a pool of keep-alive
// connections and returns the p50 and p99 latency, measured from each
// request's scheduled time.
func openLoop(url string, rate float64, d time.Duration) (time.Duration, time.Duration) {
	interval := time.Duration(float64(time.Second) / rate)
	n := int(d / interval)
	tr := &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	defer tr.CloseIdleConnections()
	lat := make([]time.Duration, n)
	start := time.Now().Add(50 * time.Millisecond)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := 0; i < n; i++ {
		at := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(at))
		sem <- struct{}{}
		wg.Add(1)
		go func(i int, at time.Time) {
			defer wg.Done()
			defer func() { <-sem }()
			resp, err := cl.Get(url)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			lat[i] = time.Since(at)
		}(i, at)
	}
	wg.Wait()
	slices.Sort(lat)
	return lat[n/2], lat[n*99/100]
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianD(v []time.Duration) time.Duration {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return fmt.Sprintf("%s x%d", strings.TrimSpace(v), runtime.NumCPU())
		}
	}
	return "unknown CPU"
}
