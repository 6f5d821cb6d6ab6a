// Command http is ward's HTTP benchmark (issues 2, 4 and 17): one Envoy,
// one worker, every thread pinned to CPU 0, with one listener per arm —
// router only; the module boundary alone as a no-op filter in Go
// (ward.test.panic of the test libward.so) and in C (bench/cnoop, built
// with clang at the start of the run); router + ward's HTTP filter with N
// rules where the request matches the last; router + Envoy's native RBAC
// filter with the equivalent rules; router + ext_authz to a Go gRPC
// service doing the same match. Arms are interleaved round by round in the
// same run. The headline is Envoy's CPU time per request (utime+stime of
// the Envoy process over each arm's run, divided by the requests the load
// generator completed), which survives a noisy shared machine far better
// than req/s; throughput (wrk closed loop, keep-alive; h2load over h2c)
// and open-loop latency at a fixed rate (counted from the scheduled send
// time, so queueing is not hidden) are secondary columns. It prints
// markdown tables with per-round ratios.
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

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	dmhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_modules/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/wardproxy/ward/agent"
	httpf "github.com/wardproxy/ward/filters/http"
	"github.com/wardproxy/ward/internal/procstat"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// goEnvList is extra environment for Envoy (the Go runtime inside it).
var goEnvList []string

// perfDir, if set, gets a perf recording of Envoy per arm.
var perfDir string

// modulePath is the test libward.so the Go arms load; armsFlag selects arms.
var modulePath, armsFlag string

// latency runs the open-loop rounds.
var latency = true

// grpcArms adds the gRPC arms (grpc.go) with their client's shape.
var (
	grpcArms               bool
	grpcConns, grpcStreams int
)

type arm struct {
	name string
	port int
	rps  []float64 // wrk req/s (HTTP/1.1)
	h2   []float64 // h2load req/s over h2c
	cpu  []float64 // Envoy CPU µs per completed request, HTTP/1.1 (wrk)
	cpu2 []float64 // same over h2c (h2load)
	p50  []time.Duration
	p99  []time.Duration
}

func main() {
	rounds := flag.Int("rounds", 5, "rounds (each runs every arm once)")
	dur := flag.Duration("d", 5*time.Second, "wrk duration per arm per round")
	conns := flag.Int("c", 32, "wrk connections")
	rules := flag.String("rules", "1", "comma-separated rule counts for the ward and RBAC arms")
	rateFrac := flag.Float64("rate", 0.5, "open-loop rate as a fraction of the router arm's wrk req/s")
	flag.StringVar(&perfDir, "perf", "", "after the rounds, record `dir`/<arm>.data with perf (call graphs of Envoy under wrk load, one run per arm; not in the tables)")
	goEnv := flag.String("goenv", "", "extra environment for Envoy's Go runtime, e.g. GOMAXPROCS=1 (comma-separated)")
	flag.StringVar(&modulePath, "module", "build/test/libward.so", "the libward.so (built with -tags wardtest) the Go arms load")
	flag.BoolVar(&latency, "latency", true, "also run the open-loop latency rounds")
	flag.BoolVar(&grpcArms, "grpc", false, "also run the gRPC unary arms (h2 router, ward with one rule) with a Go client")
	flag.IntVar(&grpcConns, "grpc-conns", 4, "gRPC client connections")
	flag.IntVar(&grpcStreams, "grpc-streams", 16, "concurrent gRPC calls per connection")
	flag.StringVar(&armsFlag, "arms", "", "run only the arms whose name matches this `regexp` (the router arm always runs)")
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
	modDir, err := moduleDir(root, dir)
	if err != nil {
		return err
	}
	ag, err := agent.New(agent.Config{Node: "bench", StateDir: dir, Envoy: agent.EnvoyConfig{
		Binary: envoyBin, ModuleDir: modDir,
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
	// This process (the upstream server, the ext_authz service, the
	// open-loop generator) runs beside the load generators on CPU 1, so
	// nothing of the bench competes with Envoy for CPU 0. Threads started
	// later inherit the mask.
	if out, err := exec.Command("taskset", "-a", "-cp", "1", strconv.Itoa(os.Getpid())).CombinedOutput(); err != nil {
		return fmt.Errorf("taskset: %w: %s", err, out)
	}
	srv, node, sock := ag.XDS(), ag.Node(), ag.XDSSocket()
	res := xds.EnvoyResources{Clusters: []types.Resource{xds.StaticCluster("up", "127.0.0.1", uint32(up.Port), false)}}
	arms := []*arm{{name: armRouter, port: freePort()}, {name: armGoNoop, port: freePort()}, {name: armCNoop, port: freePort()}}
	var policies []*npds.NetworkPolicy
	// The module boundary alone: a filter that reads one header and
	// continues, in Go (ward.test.panic of the test libward.so) and in C
	// (bench/cnoop, the same hooks doing the same work).
	cnoop := must(xds.HTTPListener{Name: "cnoop", Address: "127.0.0.1", Port: uint32(arms[2].port), Cluster: "up", Filters: []xds.ModuleFilter{{Name: "cnoop", Config: []byte("{}")}}}.Build())
	if err := setModule(cnoop, cnoopModule); err != nil {
		return err
	}
	res.Listeners = append(res.Listeners, must(xds.HTTPListener{Name: "router", Address: "127.0.0.1", Port: uint32(arms[0].port), Cluster: "up"}.Build()),
		must(xds.HTTPListener{Name: "noop", Address: "127.0.0.1", Port: uint32(arms[1].port), Cluster: "up", Filters: []xds.ModuleFilter{{Name: "ward.test.panic", Config: []byte("{}")}}}.Build()),
		cnoop)
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
	var garms []*grpcArm
	if grpcArms {
		gp, err := serveGRPC(ctx)
		if err != nil {
			return err
		}
		res.Clusters = append(res.Clusters, xds.StaticCluster("grpcup", "127.0.0.1", uint32(gp), true))
		garms = []*grpcArm{{name: "h2 router only", port: freePort()}, {name: "ward filter, 1 rule", port: freePort()}}
		policies = append(policies, &npds.NetworkPolicy{Name: "epgrpc", IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, Rules: []*npds.PortNetworkPolicyRule{{
			L7: npds.HTTP(l7.HTTPRule{Method: "POST", Path: grpcMethod}),
		}}}}})
		cfg := fmt.Sprintf(`{"xds_socket":%q,"node":%q,"endpoint":"epgrpc","port":80}`, sock, node)
		res.Listeners = append(res.Listeners,
			must(xds.HTTPListener{Name: "grpc-router", Address: "127.0.0.1", Port: uint32(garms[0].port), Cluster: "grpcup"}.Build()),
			must(xds.HTTPListener{Name: "grpc-ward", Address: "127.0.0.1", Port: uint32(garms[1].port), Cluster: "grpcup", Filters: []xds.ModuleFilter{{Name: "ward.http", Config: []byte(cfg)}}}.Build()))
	}
	if armsFlag != "" {
		re, err := regexp.Compile(armsFlag)
		if err != nil {
			return fmt.Errorf("-arms: %w", err)
		}
		arms = slices.DeleteFunc(arms, func(a *arm) bool { return a.name != armRouter && !re.MatchString(a.name) })
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
	for _, a := range garms {
		if err := waitGRPC(a.port, 60*time.Second); err != nil {
			return fmt.Errorf("arm gRPC %s: %w", a.name, err)
		}
	}
	pid := ag.Envoy().PID()
	for r := 0; r < rounds; r++ {
		for _, a := range arms {
			rps, us, err := cpuPerRequest(pid, func() (float64, int, error) {
				return wrk(fmt.Sprintf("http://127.0.0.1:%d/public", a.port), dur, conns)
			})
			if err != nil {
				return fmt.Errorf("%s: %w", a.name, err)
			}
			a.rps, a.cpu = append(a.rps, rps), append(a.cpu, us)
		}
	}
	for r := 0; r < rounds; r++ {
		for _, a := range arms {
			rps, us, err := cpuPerRequest(pid, func() (float64, int, error) {
				return h2load(fmt.Sprintf("http://127.0.0.1:%d/public", a.port), dur, conns)
			})
			if err != nil {
				return fmt.Errorf("%s: %w", a.name, err)
			}
			a.h2, a.cpu2 = append(a.h2, rps), append(a.cpu2, us)
		}
	}
	rate := median(arms[0].rps) * rateFrac
	for r := 0; r < rounds && latency; r++ {
		for _, a := range arms {
			p50, p99 := openLoop(fmt.Sprintf("http://127.0.0.1:%d/public", a.port), rate, dur)
			a.p50, a.p99 = append(a.p50, p50), append(a.p99, p99)
		}
	}
	for r := 0; r < rounds; r++ {
		for _, a := range garms {
			rps, us, err := cpuPerRequest(pid, func() (float64, int, error) { return grpcLoad(a.port, dur, grpcConns, grpcStreams) })
			if err != nil {
				return fmt.Errorf("gRPC %s: %w", a.name, err)
			}
			a.rps, a.cpu = append(a.rps, rps), append(a.cpu, us)
		}
	}
	var grate float64
	if len(garms) > 0 {
		grate = median(garms[0].rps) * rateFrac
	}
	for r := 0; r < rounds && latency && len(garms) > 0; r++ {
		for _, a := range garms {
			p50, p99, failed, err := grpcOpenLoop(a.port, grate, dur, grpcConns)
			if err != nil {
				return fmt.Errorf("gRPC %s: %w", a.name, err)
			}
			a.p50, a.p99, a.failed = append(a.p50, p50), append(a.p99, p99), a.failed+failed
		}
	}
	report(arms, rounds, dur, conns, rate, goEnvList)
	grpcReport(garms, grpcConns, grpcStreams, grate)
	if perfDir != "" {
		return perfRecord(pid, arms, dur, conns)
	}
	return nil
}

// perfRecord records Envoy (perf record -g) while wrk loads each arm, into
// perfDir/<n>-<arm>.data, and prints the files. Read them with
// `perf report -i FILE --no-children --sort dso,sym`.
func perfRecord(pid int, arms []*arm, dur time.Duration, conns int) error {
	if err := os.MkdirAll(perfDir, 0o755); err != nil {
		return fmt.Errorf("perf dir: %w", err)
	}
	fmt.Printf("\nperf recordings of Envoy under wrk (%v per arm):\n\n", dur)
	for i, a := range arms {
		name := strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
				return r
			}
			return '-'
		}, strings.ToLower(a.name))
		file := filepath.Join(perfDir, fmt.Sprintf("%02d-%s.data", i, name))
		rec := exec.Command("perf", "record", "-q", "-F", "999", "-g", "-p", strconv.Itoa(pid), "-o", file, "--", "sleep", strconv.Itoa(int(dur.Seconds())))
		var out strings.Builder
		rec.Stdout, rec.Stderr = &out, &out
		if err := rec.Start(); err != nil {
			return fmt.Errorf("perf record: %w", err)
		}
		_, _, werr := wrk(fmt.Sprintf("http://127.0.0.1:%d/public", a.port), dur, conns)
		if err := errors.Join(werr, rec.Wait()); err != nil {
			return fmt.Errorf("perf record %s: %w: %s", a.name, err, out.String())
		}
		fmt.Printf("- %s: %s\n", a.name, file)
	}
	return nil
}

// report prints the tables: Envoy CPU time per request first (the
// headline: it does not move with the machine's load the way req/s
// does), then throughput and open-loop latency.
func report(arms []*arm, rounds int, dur time.Duration, conns int, rate float64, env []string) {
	goenv := strings.Join(slices.DeleteFunc(slices.Clone(env), func(s string) bool { return s == "" }), " ")
	if goenv == "" {
		goenv = "Go runtime defaults"
	}
	fmt.Printf("\nEnvoy 1.40, 1 worker (--concurrency 1), every thread pinned to CPU 0; wrk -t1 -c%d (HTTP/1.1), h2load -c%d -m16 (h2c), the open-loop generator, the upstream and the ext_authz service on CPU 1; "+
		"%d interleaved rounds of %v per arm; %s. %s, %s, kernel %s, %s.\n\n",
		conns, max(conns/8, 1), rounds, dur, goenv, time.Now().UTC().Format("2006-01-02 15:04 MST"), cpuModel(), kernel(), runtime.Version())
	fmt.Println("Envoy CPU time per request: utime+stime of the Envoy process (all its threads, the Go runtime's included) from /proc/<pid>/stat over the arm's run, divided by the requests the load generator completed. " +
		"Median [min–max] over the rounds; ratios are per round against the same round's baseline arm, then median [min–max]. " +
		"The ext_authz arm's Go gRPC server runs outside Envoy: its CPU is not counted.")
	fmt.Println()
	fmt.Println("| arm | HTTP/1.1 µs/req | vs router | h2 µs/req | vs router |")
	fmt.Println("|---|--:|--:|--:|--:|")
	for _, a := range arms {
		fmt.Printf("| %s | %s | %s | %s | %s |\n", a.name, spread(a.cpu, 1), spread(ratios(a.cpu, arms[0].cpu), 2), spread(a.cpu2, 1), spread(ratios(a.cpu2, arms[0].cpu2), 2))
	}
	fmt.Println()
	fmt.Println("Ratios of CPU per request between arms (per round, median [min–max]):")
	fmt.Println()
	fmt.Println("| ratio | HTTP/1.1 | h2 | target |")
	fmt.Println("|---|--:|--:|--:|")
	byName := map[string]*arm{}
	for _, a := range arms {
		byName[a.name] = a
	}
	pair := func(label, num, den, target string) {
		n, d := byName[num], byName[den]
		if n == nil || d == nil {
			return
		}
		fmt.Printf("| %s | %s | %s | %s |\n", label, spread(ratios(n.cpu, d.cpu), 3), spread(ratios(n.cpu2, d.cpu2), 3), target)
	}
	pair("Go no-op / C no-op (the Go runtime crossing)", armGoNoop, armCNoop, "≤ 1.05")
	pair("C no-op / router (Envoy's module machinery)", armCNoop, armRouter, "—")
	pair("Go no-op / router", armGoNoop, armRouter, "—")
	for _, a := range arms {
		if n, ok := strings.CutPrefix(a.name, "ward filter, "); ok {
			pair("ward / native RBAC, "+n, a.name, "native RBAC, "+n, "≤ 1.05 (1000 rules: ≤ 0.5)")
			pair("ward / router, "+n, a.name, armRouter, "≤ 1.12")
		}
	}
	fmt.Println()
	fmt.Printf("Throughput and open-loop latency (secondary; open loop at %.0f req/s = %.0f%% of the router arm's wrk median):\n\n", rate, 100*rate/median(arms[0].rps))
	fmt.Printf("| arm | HTTP/1.1 req/s (wrk) | vs router | h2 req/s (h2load) | vs router | p50 | p99 | p99 vs router |\n|---|--:|--:|--:|--:|--:|--:|--:|\n")
	base, baseH2, baseP99 := median(arms[0].rps), median(arms[0].h2), medianD(arms[0].p99)
	for _, a := range arms {
		fmt.Printf("| %s | %.0f | %.3f | %.0f | %.3f | %v | %v | %.2f |\n", a.name, median(a.rps), median(a.rps)/base, median(a.h2), median(a.h2)/baseH2,
			medianD(a.p50).Round(time.Microsecond), medianD(a.p99).Round(time.Microsecond), float64(medianD(a.p99))/float64(baseP99))
	}
}

// Names of the arms the ratio table refers to.
const (
	armRouter = "router only"
	armGoNoop = "no-op Go filter (libward.so)"
	armCNoop  = "no-op C filter (libward_cnoop.so)"
)

// cpuPerRequest runs load (which returns req/s and the requests it
// completed) and returns req/s and Envoy's CPU µs per completed request.
func cpuPerRequest(pid int, load func() (float64, int, error)) (float64, float64, error) {
	before, err := procstat.CPU(pid)
	if err != nil {
		return 0, 0, err
	}
	rps, n, err := load()
	if err != nil {
		return 0, 0, err
	}
	after, err := procstat.CPU(pid)
	if err != nil {
		return 0, 0, err
	}
	if n <= 0 {
		return 0, 0, errors.New("no request completed")
	}
	return rps, float64(after-before) / float64(time.Microsecond) / float64(n), nil
}

func ratios(num, den []float64) []float64 {
	r := make([]float64, min(len(num), len(den)))
	for i := range r {
		r[i] = num[i] / den[i]
	}
	return r
}

// spread formats median [min–max] with prec decimals.
func spread(v []float64, prec int) string {
	if len(v) == 0 {
		return "—"
	}
	return fmt.Sprintf("%.*f [%.*f–%.*f]", prec, median(v), prec, slices.Min(v), prec, slices.Max(v))
}

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// cnoopModule is the C no-op module's name: Envoy loads lib<name>.so from
// the module directory.
const cnoopModule = "ward_cnoop"

// moduleDir makes Envoy's module directory for the bench under dir: the
// test libward.so (ward's filters and ward.test.panic; -module) and the C no-op
// module compiled from bench/cnoop with clang.
func moduleDir(root, dir string) (string, error) {
	md := filepath.Join(dir, "modules")
	if err := os.MkdirAll(md, 0o755); err != nil {
		return "", fmt.Errorf("module dir: %w", err)
	}
	mod := modulePath
	if !filepath.IsAbs(mod) {
		mod = filepath.Join(root, mod)
	}
	if err := os.Symlink(mod, filepath.Join(md, "libward.so")); err != nil {
		return "", fmt.Errorf("module dir: %w", err)
	}
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "clang"
	}
	out, err := exec.Command(cc, "-O2", "-fPIC", "-shared", "-Wall", "-Werror", "-o", filepath.Join(md, "lib"+cnoopModule+".so"),
		filepath.Join(root, "bench", "cnoop", "cnoop.c")).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build the C no-op module: %w: %s", err, out)
	}
	return md, nil
}

// setModule points every dynamic-module HTTP filter of l at module.
func setModule(l *listener.Listener, module string) error {
	for _, fc := range l.FilterChains {
		for _, f := range fc.Filters {
			var m hcm.HttpConnectionManager
			if err := f.GetTypedConfig().UnmarshalTo(&m); err != nil {
				return fmt.Errorf("set module: %w", err)
			}
			for _, hf := range m.HttpFilters {
				var d dmhttp.DynamicModuleFilter
				if hf.GetTypedConfig().MessageIs(&d) {
					if err := hf.GetTypedConfig().UnmarshalTo(&d); err != nil {
						return fmt.Errorf("set module: %w", err)
					}
					d.DynamicModuleConfig.Name = module
					a, err := anypb.New(&d)
					if err != nil {
						return fmt.Errorf("set module: %w", err)
					}
					hf.ConfigType = &hcm.HttpFilter_TypedConfig{TypedConfig: a}
				}
			}
			a, err := anypb.New(&m)
			if err != nil {
				return fmt.Errorf("set module: %w", err)
			}
			f.ConfigType = &listener.Filter_TypedConfig{TypedConfig: a}
		}
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

var wrkDone = regexp.MustCompile(`([0-9]+) requests in `)

// wrk returns HTTP/1.1 req/s and the requests completed.
func wrk(url string, d time.Duration, c int) (float64, int, error) {
	out, err := exec.Command("taskset", "-c", "1", "wrk", "-t1", fmt.Sprintf("-c%d", c), fmt.Sprintf("-d%ds", int(d.Seconds())), url).CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("wrk: %w: %s", err, out)
	}
	if strings.Contains(string(out), "Non-2xx") {
		return 0, 0, fmt.Errorf("wrk saw errors on %s:\n%s", url, out)
	}
	m, n := reqSec.FindSubmatch(out), wrkDone.FindSubmatch(out)
	if m == nil || n == nil {
		return 0, 0, fmt.Errorf("wrk output: %s", out)
	}
	rps, err1 := strconv.ParseFloat(string(m[1]), 64)
	done, err2 := strconv.Atoi(string(n[1]))
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("wrk output: %w", err)
	}
	return rps, done, nil
}

var (
	h2Req  = regexp.MustCompile(`finished in [^,]+, ([0-9.]+) req/s`)
	h2Done = regexp.MustCompile(`requests: [0-9]+ total, [0-9]+ started, ([0-9]+) done`)
)

// h2load measures HTTP/2 (h2c, prior knowledge) throughput with
// multiplexed streams.
func h2load(url string, d time.Duration, c int) (float64, int, error) {
	out, err := exec.Command("taskset", "-c", "1", "h2load", "-c", strconv.Itoa(max(c/8, 1)), "-m", "16",
		"-D", strconv.Itoa(int(d.Seconds())), url).CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("h2load: %w: %s", err, out)
	}
	if !strings.Contains(string(out), "0 failed, 0 errored") {
		return 0, 0, fmt.Errorf("h2load saw failures on %s:\n%s", url, out)
	}
	m, n := h2Req.FindSubmatch(out), h2Done.FindSubmatch(out)
	if m == nil || n == nil {
		return 0, 0, fmt.Errorf("h2load output: %s", out)
	}
	rps, err1 := strconv.ParseFloat(string(m[1]), 64)
	done, err2 := strconv.Atoi(string(n[1]))
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("h2load output: %w", err)
	}
	return rps, done, nil
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
	if len(v) == 0 {
		return 0
	}
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
