package kube

// The cluster sources: pods, namespaces, services with their
// EndpointSlices, nodes and secrets, watched by informers of one shared
// factory, derived into what the agent's engine takes (Endpoint, Service,
// Node) and handed to a Sink.
//
// Informer handlers only mark a kind dirty and wake the flush loop (Run);
// the loop derives the whole list of a dirty kind from the informers'
// caches and hands it to the sink, which applies only what changed (the
// same incremental path as the node config's directories). Derived
// endpoints are cached per pod (by the pod's and its namespace's resource
// versions), so a flush after one pod event rebuilds one endpoint.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	listersdiscoveryv1 "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// Endpoint is a pod as a workload of the agent (agent.Endpoint's fields).
type Endpoint struct {
	// Name is namespace/name.
	Name string
	// ID is the endpoint's number, stable for the pod's lifetime and over
	// agent restarts for this node's pods (see endpointIDs).
	ID  uint64
	IPs []string
	// Labels are the identity labels (source k8s), the namespace label
	// excepted: it comes from Namespace.
	Labels    map[string]string
	Namespace string
	// Remote: a pod of another node (identity only).
	Remote bool
	// Interface is the host-side interface of a local pod: the one the
	// host routes the pod's IP to; empty while there is none.
	Interface string
	Ports     []Port
}

// Port is a named container port.
type Port struct {
	Name     string
	Port     uint16
	Protocol string
}

// Service is a Kubernetes service for toServices: with a selector it
// selects the pods it matches in its namespace; without one it stands for
// the addresses of its EndpointSlices.
type Service struct {
	Name, Namespace string
	Labels          map[string]string
	Selector        map[string]string
	Addresses       []string
}

// Node is another node of the cluster.
type Node struct {
	Name      string
	Addresses []string
	Labels    map[string]string
}

// Sink takes what the sources derive: package agent's engine, as its
// "kubernetes" source. Each call replaces the source's whole list; the
// sink applies what changed. Calls come from one goroutine (Run).
type Sink interface {
	SetEndpoints(eps []Endpoint)
	SetServices(svcs []Service)
	// SetNodes takes the other nodes, this node's own Node object (nil
	// while there is none: its labels are the host endpoint's, for
	// nodeSelector) and the kube-apiserver's addresses (the
	// default/kubernetes EndpointSlices: the kube-apiserver entity).
	SetNodes(nodes []Node, self *Node, apiserver []netip.Prefix)
}

// SourcesConfig configures the cluster sources.
type SourcesConfig struct {
	// NodeName is this node's name: pods with spec.nodeName equal to it
	// are local endpoints, the others remote; its own Node object is not
	// another node.
	NodeName string
	// ClusterName is the io.cilium.k8s.policy.cluster label of every pod;
	// default "default".
	ClusterName string
	// StateDir keeps the local pods' endpoint ids (kube-endpoint-ids.json)
	// over restarts; empty: not kept.
	StateDir string
	// Interface finds the host-side interface of a local pod's address;
	// default RouteInterface (the route to the address in this network
	// namespace).
	Interface func(netip.Addr) (string, error)
	Sink      Sink
	Logger    *slog.Logger
}

// Sources watches the cluster's pods, namespaces, services,
// EndpointSlices and nodes and feeds the sink.
type Sources struct {
	cfg     SourcesConfig
	log     *slog.Logger
	pods    listerscorev1.PodLister
	nss     listerscorev1.NamespaceLister
	svcs    listerscorev1.ServiceLister
	slices  listersdiscoveryv1.EndpointSliceLister
	nodes   listerscorev1.NodeLister
	synced  []cache.InformerSynced
	wake    chan struct{}
	dirtyEp atomic.Bool
	dirtySv atomic.Bool
	dirtyNd atomic.Bool
	ready   chan struct{} // closed after the first flush

	ids *endpointIDs
	// cache is the last derived endpoint of each pod (Run's goroutine).
	cache map[types.UID]cachedEndpoint

	mu     sync.Mutex
	status SourcesStatus
}

type cachedEndpoint struct {
	podRV, nsRV string
	ep          Endpoint
	ok          bool // the pod is an endpoint (has IPs, not host network)
}

// SourcesStatus is what the status shows of the sources.
type SourcesStatus struct {
	Pods, LocalPods, Services, Nodes int
	// WithoutIPs counts the pods skipped for having no IP yet (the first
	// few named in Notes).
	WithoutIPs int
	// WaitingForInterface are local pods whose interface is not there yet.
	WaitingForInterface []string
	Notes               []string
	LastSync            time.Time
}

// NewSources registers the sources' informers with factory (start the
// factory after, then Run). track, when not nil, is called with each
// informer (Client.Track: the agent's first publish waits for them).
func NewSources(factory informers.SharedInformerFactory, track func(string, cache.SharedIndexInformer), cfg SourcesConfig) (*Sources, error) {
	if cfg.Sink == nil {
		return nil, errors.New("kubernetes sources: no sink")
	}
	if cfg.ClusterName == "" {
		cfg.ClusterName = "default"
	}
	if cfg.Interface == nil {
		cfg.Interface = RouteInterface
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Sources{cfg: cfg, log: cfg.Logger, wake: make(chan struct{}, 1), ready: make(chan struct{}), cache: map[types.UID]cachedEndpoint{}}
	var err error
	if s.ids, err = loadEndpointIDs(cfg.StateDir); err != nil {
		return nil, err
	}
	on := func(flags ...*atomic.Bool) cache.ResourceEventHandler {
		mark := func() {
			for _, f := range flags {
				f.Store(true)
			}
			select {
			case s.wake <- struct{}{}:
			default:
			}
		}
		return cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { mark() },
			UpdateFunc: func(any, any) { mark() },
			DeleteFunc: func(any) { mark() },
		}
	}
	core := factory.Core().V1()
	for _, w := range []struct {
		name  string
		inf   cache.SharedIndexInformer
		flags []*atomic.Bool
	}{
		// Services select pods by their labels; a pod change can change
		// a selector-less service's nothing, so pods mark endpoints only.
		{"pods", core.Pods().Informer(), []*atomic.Bool{&s.dirtyEp}},
		{"namespaces", core.Namespaces().Informer(), []*atomic.Bool{&s.dirtyEp}},
		{"services", core.Services().Informer(), []*atomic.Bool{&s.dirtySv}},
		{"endpointslices", factory.Discovery().V1().EndpointSlices().Informer(), []*atomic.Bool{&s.dirtySv, &s.dirtyNd}},
		{"nodes", core.Nodes().Informer(), []*atomic.Bool{&s.dirtyNd}},
	} {
		if _, err := w.inf.AddEventHandler(on(w.flags...)); err != nil {
			return nil, fmt.Errorf("kubernetes sources: event handler: %w", err)
		}
		s.synced = append(s.synced, w.inf.HasSynced)
		if track != nil {
			track(w.name, w.inf)
		}
	}
	s.pods, s.nss, s.svcs, s.nodes = core.Pods().Lister(), core.Namespaces().Lister(), core.Services().Lister(), core.Nodes().Lister()
	s.slices = factory.Discovery().V1().EndpointSlices().Lister()
	s.dirtyEp.Store(true)
	s.dirtySv.Store(true)
	s.dirtyNd.Store(true)
	return s, nil
}

// Synced is closed once the sources handed their first complete lists to
// the sink (the informers' caches synced).
func (s *Sources) Synced() <-chan struct{} { return s.ready }

// Status returns the sources' status.
func (s *Sources) Status() SourcesStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.WaitingForInterface = slices.Clone(st.WaitingForInterface)
	st.Notes = slices.Clone(st.Notes)
	return st
}

// Run waits for the informers' caches, then feeds the sink on every change
// until ctx is done; a local pod waiting for its interface is looked at
// again every second.
func (s *Sources) Run(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), s.synced...) {
		return nil // ctx done
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	first := true
	for {
		s.flush()
		if first {
			close(s.ready)
			first = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
		case <-t.C:
			s.mu.Lock()
			waiting := len(s.status.WaitingForInterface) > 0
			s.mu.Unlock()
			if waiting {
				s.dirtyEp.Store(true)
			}
		}
	}
}

// flush hands every dirty kind's list to the sink.
func (s *Sources) flush() {
	if s.dirtyNd.Swap(false) {
		nodes, self, api := s.deriveNodes()
		s.cfg.Sink.SetNodes(nodes, self, api)
	}
	if s.dirtySv.Swap(false) {
		s.cfg.Sink.SetServices(s.deriveServices())
	}
	if s.dirtyEp.Swap(false) {
		s.cfg.Sink.SetEndpoints(s.deriveEndpoints())
	}
	s.mu.Lock()
	s.status.LastSync = time.Now()
	s.mu.Unlock()
}

// deriveEndpoints derives every pod's endpoint (cached per pod).
func (s *Sources) deriveEndpoints() []Endpoint {
	pods, err := s.pods.List(labels.Everything())
	if err != nil {
		s.log.Warn("kubernetes pods", "error", err)
		return nil
	}
	nsLabels := map[string]*corev1.Namespace{}
	if nss, err := s.nss.List(labels.Everything()); err == nil {
		for _, ns := range nss {
			nsLabels[ns.Name] = ns
		}
	}
	seen := make(map[types.UID]bool, len(pods))
	out := make([]Endpoint, 0, len(pods))
	var noIP []string
	var waiting []string
	local := 0
	for _, p := range pods {
		seen[p.UID] = true
		ns := nsLabels[p.Namespace]
		nsRV := ""
		if ns != nil {
			nsRV = ns.ResourceVersion
		}
		c, hit := s.cache[p.UID]
		if !hit || c.podRV != p.ResourceVersion || c.nsRV != nsRV || (c.ok && !c.ep.Remote && c.ep.Interface == "") {
			c = cachedEndpoint{podRV: p.ResourceVersion, nsRV: nsRV}
			c.ep, c.ok = s.podEndpoint(p, ns)
			s.cache[p.UID] = c
		}
		if !c.ok {
			if !p.Spec.HostNetwork && p.DeletionTimestamp == nil && len(podIPs(p)) == 0 {
				noIP = append(noIP, p.Namespace+"/"+p.Name)
			}
			continue
		}
		if !c.ep.Remote {
			local++
			if c.ep.Interface == "" {
				waiting = append(waiting, c.ep.Name)
			}
		}
		out = append(out, c.ep)
	}
	for uid := range s.cache {
		if !seen[uid] {
			delete(s.cache, uid)
		}
	}
	if err := s.ids.retain(seen); err != nil {
		s.log.Warn("kubernetes endpoint ids", "error", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	sort.Strings(noIP)
	sort.Strings(waiting)
	s.mu.Lock()
	s.status.Pods, s.status.LocalPods, s.status.WithoutIPs, s.status.WaitingForInterface = len(out), local, len(noIP), waiting
	s.status.Notes = nil
	if len(noIP) > 0 {
		s.status.Notes = append(s.status.Notes, fmt.Sprintf("%d pods without an IP yet are not endpoints: %s", len(noIP), strings.Join(firstN(noIP, 5), ", ")))
	}
	s.mu.Unlock()
	return out
}

func firstN(ss []string, n int) []string {
	if len(ss) > n {
		return append(ss[:n:n], "...")
	}
	return ss
}

// podEndpoint derives a pod's endpoint; false for a pod that is no
// endpoint: host network (the host), no IP yet, or terminated.
func (s *Sources) podEndpoint(p *corev1.Pod, ns *corev1.Namespace) (Endpoint, bool) {
	ips := podIPs(p)
	if p.Spec.HostNetwork || len(ips) == 0 || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return Endpoint{}, false
	}
	var nsl map[string]string
	if ns != nil {
		nsl = ns.Labels
	}
	ep := Endpoint{
		Name:      p.Namespace + "/" + p.Name,
		IPs:       ips,
		Labels:    PodLabels(p, nsl, s.cfg.ClusterName),
		Namespace: p.Namespace,
		Remote:    p.Spec.NodeName != s.cfg.NodeName,
		Ports:     PodPorts(p),
	}
	ep.ID = s.ids.id(p.UID, !ep.Remote)
	if !ep.Remote {
		if a, err := netip.ParseAddr(ips[0]); err == nil {
			ifname, err := s.cfg.Interface(a)
			if err == nil {
				ep.Interface = ifname
			}
		}
	}
	return ep, true
}

// podIPs returns status.podIPs (status.podIP when podIPs is empty).
func podIPs(p *corev1.Pod) []string {
	var out []string
	for _, ip := range p.Status.PodIPs {
		if ip.IP != "" {
			out = append(out, ip.IP)
		}
	}
	if len(out) == 0 && p.Status.PodIP != "" {
		out = append(out, p.Status.PodIP)
	}
	return out
}

// Label keys Cilium derives for a pod (pkg/k8s/apis/cilium.io/const.go).
const (
	labelServiceAccount = "io.cilium.k8s.policy.serviceaccount"
	labelCluster        = "io.cilium.k8s.policy.cluster"
	labelNamespaceLabel = "io.cilium.k8s.namespace.labels."
	labelPodNamespace   = "io.kubernetes.pod.namespace"
)

// PodLabels returns a pod's labels as Cilium 1.18 derives them for its
// identity (without the namespace label, which the agent adds from the
// endpoint's namespace): the pod's own labels, the namespace's labels as
// io.cilium.k8s.namespace.labels.<key>, the service account as
// io.cilium.k8s.policy.serviceaccount and the cluster as
// io.cilium.k8s.policy.cluster; all of source k8s. The policy
// repository's label filter (Cilium's identity-relevant labels) then
// drops pod-template-hash and the like.
func PodLabels(p *corev1.Pod, nsLabels map[string]string, cluster string) map[string]string {
	out := make(map[string]string, len(p.Labels)+len(nsLabels)+2)
	for k, v := range p.Labels {
		out[k] = v
	}
	for k, v := range nsLabels {
		out[labelNamespaceLabel+k] = v
	}
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	out[labelServiceAccount] = sa
	out[labelCluster] = cluster
	// A pod label cannot claim another namespace: the namespace label is
	// the agent's, from the pod's namespace.
	delete(out, labelPodNamespace)
	return out
}

// PodPorts returns the named container ports of a pod's containers.
func PodPorts(p *corev1.Pod) []Port {
	var out []Port
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == "" || cp.ContainerPort <= 0 || cp.ContainerPort > 65535 {
				continue
			}
			proto := string(cp.Protocol)
			if proto == "" {
				proto = "TCP"
			}
			out = append(out, Port{Name: cp.Name, Port: uint16(cp.ContainerPort), Protocol: proto})
		}
	}
	return out
}

// endpointIDs gives pods their endpoint ids. A local pod's id is the
// datapath's key of its programs, policy map entries and endpoint entry,
// all pinned: an agent that restarts must give each pod the id it had, or
// it would rewrite every endpoint and leave the previous entries to the
// garbage collection. So local ids are allocated (from localIDBase, above
// the node config's small numbers) and kept in the state directory by pod
// UID — a UID is never reused, and a pod deleted and recreated is a new
// UID, a new id. Remote pods' ids only name them in the agent's memory
// (the ipcache is keyed by address), from remoteIDBase, never persisted.
// Both ranges fit the datapath's 32-bit endpoint ids.
type endpointIDs struct {
	path       string
	local      map[types.UID]uint64
	remote     map[types.UID]uint64
	nextLocal  uint64
	nextRemote uint64
	dirty      bool
}

const (
	localIDBase  = 1 << 24
	remoteIDBase = 1 << 31
)

func loadEndpointIDs(dir string) (*endpointIDs, error) {
	ids := &endpointIDs{local: map[types.UID]uint64{}, remote: map[types.UID]uint64{}, nextLocal: localIDBase, nextRemote: remoteIDBase}
	if dir == "" {
		return ids, nil
	}
	ids.path = filepath.Join(dir, "kube-endpoint-ids.json")
	b, err := os.ReadFile(ids.path)
	if errors.Is(err, os.ErrNotExist) {
		return ids, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes endpoint ids: %w", err)
	}
	if err := json.Unmarshal(b, &ids.local); err != nil {
		return nil, fmt.Errorf("kubernetes endpoint ids %s: %w", ids.path, err)
	}
	for _, id := range ids.local {
		if id >= ids.nextLocal && id < remoteIDBase {
			ids.nextLocal = id + 1
		}
	}
	return ids, nil
}

// id returns the pod's id, allocating it.
func (ids *endpointIDs) id(uid types.UID, local bool) uint64 {
	if local {
		if id, ok := ids.local[uid]; ok {
			return id
		}
		id := ids.nextLocal
		ids.nextLocal++
		if ids.nextLocal >= remoteIDBase {
			ids.nextLocal = localIDBase
		}
		ids.local[uid] = id
		ids.dirty = true
		return id
	}
	if id, ok := ids.remote[uid]; ok {
		return id
	}
	id := ids.nextRemote
	ids.nextRemote++
	if ids.nextRemote > 1<<32-1 {
		ids.nextRemote = remoteIDBase
	}
	ids.remote[uid] = id
	return id
}

// retain forgets the pods not in live and saves the local ids when they
// changed (atomically, 0600).
func (ids *endpointIDs) retain(live map[types.UID]bool) error {
	for uid := range ids.local {
		if !live[uid] {
			delete(ids.local, uid)
			ids.dirty = true
		}
	}
	for uid := range ids.remote {
		if !live[uid] {
			delete(ids.remote, uid)
		}
	}
	if !ids.dirty || ids.path == "" {
		return nil
	}
	b, err := json.Marshal(ids.local)
	if err != nil {
		return err
	}
	tmp := ids.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, ids.path); err != nil {
		return err
	}
	ids.dirty = false
	return nil
}

// RouteInterface returns the interface of the host route (/32, /128) to
// addr in the main table of this network namespace: the host side of a
// pod's veth, as the CNI routes each pod (`ip route get` names it). A
// broader route (a subnet, the default) never counts: it would name the
// node's uplink, not the pod's interface.
func RouteInterface(addr netip.Addr) (string, error) {
	addr = addr.Unmap()
	family := syscall.AF_INET
	if addr.Is6() {
		family = syscall.AF_INET6
	}
	rib, err := syscall.NetlinkRIB(syscall.RTM_GETROUTE, family)
	if err != nil {
		return "", fmt.Errorf("route to %s: %w", addr, err)
	}
	msgs, err := syscall.ParseNetlinkMessage(rib)
	if err != nil {
		return "", fmt.Errorf("route to %s: %w", addr, err)
	}
	for _, m := range msgs {
		// struct rtmsg: family, dst_len, src_len, tos, table, protocol,
		// scope, type, flags (rtnetlink(7)).
		if m.Header.Type != syscall.RTM_NEWROUTE || len(m.Data) < syscall.SizeofRtMsg {
			continue
		}
		if int(m.Data[1]) != addr.BitLen() || m.Data[4] != syscall.RT_TABLE_MAIN || m.Data[7] != syscall.RTN_UNICAST {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			continue
		}
		var dst netip.Addr
		oif := 0
		for _, a := range attrs {
			switch a.Attr.Type {
			case syscall.RTA_DST:
				dst, _ = netip.AddrFromSlice(a.Value)
			case syscall.RTA_OIF:
				if len(a.Value) >= 4 {
					oif = int(binary.NativeEndian.Uint32(a.Value))
				}
			}
		}
		if dst != addr || oif == 0 {
			continue
		}
		ifc, err := net.InterfaceByIndex(oif)
		if err != nil {
			return "", fmt.Errorf("route to %s: interface %d: %w", addr, oif, err)
		}
		return ifc.Name, nil
	}
	return "", fmt.Errorf("route to %s: no host route", addr)
}
