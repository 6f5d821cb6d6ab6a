package kube

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// Client is the agent's connection to the API server: the clients, the
// informer factories every source shares, and what `ward status` says of
// the connection. Create it with New; register informers and Track them
// before Run.
type Client struct {
	// Kube and Dynamic are the typed and the dynamic clients.
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	// Informers is the typed informer factory (all namespaces, no resync):
	// sources take their informers from it so that each kind is listed and
	// watched once.
	Informers informers.SharedInformerFactory
	// DynamicInformers is the dynamic one, for custom resources (the
	// cilium.io/v2 policies).
	DynamicInformers dynamicinformer.DynamicSharedInformerFactory

	cfg  Config
	log  *slog.Logger
	rest *rest.Config

	mu          sync.Mutex
	tracked     map[string]tracked
	running     bool
	synced      chan struct{}
	syncedAt    time.Time
	connected   bool
	lastContact time.Time
	downSince   time.Time
	lastErr     string
	// notServedSet: the optional resources not served at the first sync
	// (cleared for each once its informer has synced).
	notServedSet map[string]bool
}

// RestConfig builds the client config of cfg: its kubeconfig file, or the
// in-cluster config when it names none.
func RestConfig(cfg Config) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if cfg.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubernetes.kubeconfig %s: %w", cfg.Kubeconfig, err)
		}
	} else if rc, err = rest.InClusterConfig(); err != nil {
		return nil, fmt.Errorf("kubernetes in-cluster config (set kubernetes.kubeconfig outside a pod): %w", err)
	}
	return rc, nil
}

// New builds the clients and factories of cfg (defaults filled for the
// node named node). It contacts nothing: Run does.
func New(cfg Config, node string, log *slog.Logger) (*Client, error) {
	cfg = cfg.WithDefaults(node)
	rc, err := RestConfig(cfg)
	if err != nil {
		return nil, err
	}
	return NewForConfig(rc, cfg, log)
}

// NewForConfig is New with a client config of the caller's (tests); cfg's
// defaults must be filled (WithDefaults).
func NewForConfig(rc *rest.Config, cfg Config, log *slog.Logger) (*Client, error) {
	if log == nil {
		log = slog.Default()
	}
	rc = rest.CopyConfig(rc)
	rc.QPS, rc.Burst = cfg.QPS, cfg.Burst
	rc.UserAgent = "wardd/" + cfg.NodeName
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	return &Client{
		Kube: cs, Dynamic: dc,
		Informers:        informers.NewSharedInformerFactory(cs, 0),
		DynamicInformers: dynamicinformer.NewDynamicSharedInformerFactory(dc, 0),
		cfg:              cfg, log: log, rest: rc,
		tracked: map[string]tracked{}, synced: make(chan struct{}),
	}, nil
}

// Config is the kubernetes block with its defaults filled.
func (c *Client) Config() Config { return c.cfg }

// Track names an informer of a source: Run waits for its first list
// before Synced, and Status counts its objects under name. Call it
// before Run.
func (c *Client) Track(name string, inf cache.SharedIndexInformer) {
	c.TrackHandler(name, inf, inf.HasSynced)
}

// TrackHandler is Track for a source that must also have handled the
// first list (synced is its handler registration's HasSynced): Synced
// then means the handler has seen every object of the first list.
func (c *Client) TrackHandler(name string, inf cache.SharedIndexInformer, synced cache.InformerSynced) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tracked[name] = tracked{name: name, inf: inf, synced: synced}
	// A failed list or watch (the API server is down, RBAC forbids it) is
	// shown in the status; the informer retries with backoff on its own.
	_ = inf.SetWatchErrorHandlerWithContext(func(_ context.Context, r *cache.Reflector, err error) {
		c.mu.Lock()
		c.lastErr = fmt.Sprintf("%s: %v", name, err)
		c.mu.Unlock()
		c.log.Warn("kubernetes watch", "resource", name, "error", err)
	})
}

// TrackOptional is TrackHandler for a custom resource that may not be
// served (its CRD is not installed): while the API server answers that
// gvr is not served, the resource counts as synced with no objects (and
// Status names it in NotServed), so that the agent does not wait for it
// forever; once it is served, the informer lists it and its objects
// arrive as additions.
func (c *Client) TrackOptional(name string, inf cache.SharedIndexInformer, synced cache.InformerSynced, gvr schema.GroupVersionResource) {
	c.TrackHandler(name, inf, synced)
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tracked[name]
	t.optional = &gvr
	c.tracked[name] = t
}

type tracked struct {
	name     string
	inf      cache.SharedIndexInformer
	synced   cache.InformerSynced
	optional *schema.GroupVersionResource
}

// Synced is closed once every tracked informer has listed its objects
// once.
func (c *Client) Synced() <-chan struct{} { return c.synced }

// Run starts the factories' informers, waits for the tracked ones' first
// list (closing Synced), and probes the API server every
// kubernetes.healthInterval until ctx is done; it then stops the
// informers and returns nil.
func (c *Client) Run(ctx context.Context) error {
	c.mu.Lock()
	c.running = true
	tracked := slices.Collect(maps.Values(c.tracked))
	c.mu.Unlock()
	c.Informers.Start(ctx.Done())
	c.DynamicInformers.Start(ctx.Done())
	defer c.Informers.Shutdown()
	defer c.DynamicInformers.Shutdown()
	go func() {
		if !c.waitSynced(ctx, tracked) {
			return
		}
		c.mu.Lock()
		c.syncedAt = time.Now()
		c.mu.Unlock()
		c.log.Info("kubernetes caches synced", "resources", len(tracked))
		close(c.synced)
	}()
	iv := c.cfg.healthInterval()
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		c.probe(ctx, iv)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// waitSynced waits until every tracked informer has synced or, for an
// optional resource, the API server says it does not serve it; false when
// ctx ends first.
func (c *Client) waitSynced(ctx context.Context, tracked []tracked) bool {
	for {
		all := true
		notServed := map[string]bool{}
		for _, t := range tracked {
			if t.synced() {
				continue
			}
			if t.optional != nil && c.notServed(ctx, *t.optional) {
				notServed[t.name] = true
				continue
			}
			all = false
		}
		if all {
			c.mu.Lock()
			c.notServedSet = notServed
			c.mu.Unlock()
			for name := range notServed {
				c.log.Warn("kubernetes resource not served (its CRD is not installed?): none of its objects are known", "resource", name)
			}
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// notServed reports whether the API server answers that it does not serve
// gvr (an error that is no such answer is not).
func (c *Client) notServed(ctx context.Context, gvr schema.GroupVersionResource) bool {
	list, err := c.Kube.Discovery().ServerResourcesForGroupVersion(gvr.GroupVersion().String())
	if apierrors.IsNotFound(err) {
		return true
	}
	if err != nil || list == nil {
		return false
	}
	for _, r := range list.APIResources {
		if r.Name == gvr.Resource {
			return false
		}
	}
	return true
}

// probe asks the API server's /readyz and records the answer.
func (c *Client) probe(ctx context.Context, timeout time.Duration) {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body, err := c.Kube.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(pctx)
	if ctx.Err() != nil {
		return
	}
	if err == nil && !bytes.Equal(bytes.TrimSpace(body), []byte("ok")) {
		err = fmt.Errorf("readyz: %q", body)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if err != nil {
		if c.connected || c.downSince.IsZero() {
			c.downSince = now
			c.log.Warn("kubernetes API server unreachable: enforcing the last state", "error", err)
		}
		c.connected = false
		c.lastErr = err.Error()
		return
	}
	if !c.connected && !c.lastContact.IsZero() {
		c.log.Info("kubernetes API server reachable again", "down", now.Sub(c.downSince).Round(time.Millisecond))
	}
	c.connected, c.lastContact, c.downSince = true, now, time.Time{}
}

// Status is the connection's state as `ward status` shows it.
type Status struct {
	// Connected: the last probe of the API server answered ready.
	Connected bool
	// Synced: every tracked informer has listed once; SyncedAt when.
	Synced   bool
	SyncedAt time.Time
	// LastContact is the last successful probe; DownSince the first
	// failed one of the current outage (zero when connected).
	LastContact, DownSince time.Time
	// LastError is the last probe's or watch's error.
	LastError string
	// Resources are the tracked informers' object counts, by name.
	Resources map[string]int
	// NotServed are the optional resources the API server did not serve
	// at the first sync and whose informer has not listed them since (a
	// CRD not installed).
	NotServed []string
}

// Status returns the connection's state.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := Status{Connected: c.connected, SyncedAt: c.syncedAt, Synced: !c.syncedAt.IsZero(),
		LastContact: c.lastContact, DownSince: c.downSince, LastError: c.lastErr, Resources: map[string]int{}}
	for name, t := range c.tracked {
		if c.notServedSet[name] && !t.synced() {
			st.NotServed = append(st.NotServed, name)
		}
		st.Resources[name] = len(t.inf.GetStore().ListKeys())
	}
	slices.Sort(st.NotServed)
	return st
}
