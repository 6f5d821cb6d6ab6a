package kube

import (
	"maps"
	"net/netip"
	"slices"
	"sort"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// deriveServices derives every service for toServices: a service with a
// selector selects the pods it matches (the repository resolves it); a
// selector-less one (the endpoints of a database outside the cluster, an
// ExternalName-less manual service) stands for the addresses of its
// EndpointSlices, as Cilium's toServices does.
func (s *Sources) deriveServices() []Service {
	svcs, err := s.svcs.List(labels.Everything())
	if err != nil {
		s.log.Warn("kubernetes services", "error", err)
		return nil
	}
	var eps []*discoveryv1.EndpointSlice
	if len(svcs) > 0 {
		if eps, err = s.slices.List(labels.Everything()); err != nil {
			s.log.Warn("kubernetes endpointslices", "error", err)
		}
	}
	addrs := sliceAddresses(eps)
	out := make([]Service, 0, len(svcs))
	for _, svc := range svcs {
		out = append(out, serviceOf(svc, addrs[svc.Namespace+"/"+svc.Name]))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	s.mu.Lock()
	s.status.Services = len(out)
	s.mu.Unlock()
	return out
}

// serviceOf converts a service; addrs are its EndpointSlices' addresses
// (used only without a selector).
func serviceOf(svc *corev1.Service, addrs []string) Service {
	out := Service{Name: svc.Name, Namespace: svc.Namespace, Labels: maps.Clone(svc.Labels)}
	if len(svc.Spec.Selector) > 0 {
		out.Selector = maps.Clone(svc.Spec.Selector)
		return out
	}
	out.Addresses = addrs
	return out
}

// sliceAddresses returns the addresses of the endpoints of every
// service's EndpointSlices (label kubernetes.io/service-name), by
// namespace/name, sorted and unique. An endpoint whose ready condition is
// false is left out (Cilium's backends are the ready ones).
func sliceAddresses(eps []*discoveryv1.EndpointSlice) map[string][]string {
	out := map[string][]string{}
	for _, es := range eps {
		name := es.Labels[discoveryv1.LabelServiceName]
		if name == "" {
			continue
		}
		key := es.Namespace + "/" + name
		for _, ep := range es.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				if _, err := netip.ParseAddr(a); err == nil {
					out[key] = append(out[key], a)
				}
			}
		}
	}
	for k, v := range out {
		slices.Sort(v)
		out[k] = slices.Compact(v)
	}
	return out
}
