// Package npds holds ward's policy resource types, generated from npds.proto.
//
// Regenerate with `go generate ./xds/npds` (needs protoc from Debian's
// protobuf-compiler; protoc-gen-go is a go.mod tool).
package npds

import "strconv"

//go:generate sh -c "PATH=$(go env GOROOT)/bin:$PATH protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --go_out=. --go_opt=paths=source_relative npds.proto"

// Type URLs of the policy resources.
const (
	NetworkPolicyType      = "type.googleapis.com/ward.npds.v1.NetworkPolicy"
	NetworkPolicyHostsType = "type.googleapis.com/ward.npds.v1.NetworkPolicyHosts"
)

// GetName names a NetworkPolicyHosts resource by its identity, so the xDS
// caches can index it.
func (x *NetworkPolicyHosts) GetName() string {
	return strconv.FormatUint(uint64(x.GetIdentity()), 10)
}
