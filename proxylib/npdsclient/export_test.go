package npdsclient

import discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

// ApplyDelta applies one delta response as the stream does (benchmarks and
// tests in package npdsclient_test).
func (c *Client) ApplyDelta(resp *discovery.DeltaDiscoveryResponse) error { return c.apply(resp) }

// WithHTTP and HTTPPaths are withHTTP and httpPaths for package
// npdsclient_test.
var (
	WithHTTP  = withHTTP
	HTTPPaths = httpPaths
)
