package proxylib

import (
	"fmt"
	"sort"
	"sync"
)

// HTTPConfigFactory builds an HTTP filter configuration from the filter_config
// bytes of the Envoy filter (StringValue/BytesValue arrive unwrapped).
type HTTPConfigFactory func(config []byte) (HTTPFilterConfig, error)

// NetworkConfigFactory builds a network filter configuration.
type NetworkConfigFactory func(config []byte) (NetworkFilterConfig, error)

// The registry is the only mutable package state (like database/sql's
// drivers): filters register from init in the module's main package, and
// abi looks them up by the filter_name Envoy passes.
var registry struct {
	sync.RWMutex
	http    map[string]HTTPConfigFactory
	network map[string]NetworkConfigFactory
}

// RegisterHTTP makes an HTTP filter available under name. It panics when
// the name is taken (a programming error caught at start-up).
func RegisterHTTP(name string, f HTTPConfigFactory) {
	registry.Lock()
	defer registry.Unlock()
	if registry.http == nil {
		registry.http = map[string]HTTPConfigFactory{}
	}
	if _, dup := registry.http[name]; dup {
		panic("proxylib: duplicate HTTP filter " + name)
	}
	registry.http[name] = f
}

// RegisterNetwork makes a network filter available under name.
func RegisterNetwork(name string, f NetworkConfigFactory) {
	registry.Lock()
	defer registry.Unlock()
	if registry.network == nil {
		registry.network = map[string]NetworkConfigFactory{}
	}
	if _, dup := registry.network[name]; dup {
		panic("proxylib: duplicate network filter " + name)
	}
	registry.network[name] = f
}

// NewHTTPConfig builds the named HTTP filter's configuration.
func NewHTTPConfig(name string, config []byte) (HTTPFilterConfig, error) {
	registry.RLock()
	f, ok := registry.http[name]
	registry.RUnlock()
	if !ok {
		return nil, fmt.Errorf("unknown HTTP filter %q (registered: %v)", name, HTTPFilters())
	}
	return f(config)
}

// NewNetworkConfig builds the named network filter's configuration.
func NewNetworkConfig(name string, config []byte) (NetworkFilterConfig, error) {
	registry.RLock()
	f, ok := registry.network[name]
	registry.RUnlock()
	if !ok {
		return nil, fmt.Errorf("unknown network filter %q (registered: %v)", name, NetworkFilters())
	}
	return f(config)
}

// HTTPFilters lists the registered HTTP filter names, sorted.
func HTTPFilters() []string {
	registry.RLock()
	defer registry.RUnlock()
	return sortedKeys(registry.http)
}

// NetworkFilters lists the registered network filter names, sorted.
func NetworkFilters() []string {
	registry.RLock()
	defer registry.RUnlock()
	return sortedKeys(registry.network)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
