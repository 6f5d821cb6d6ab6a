// Package groups resolves toGroups/fromGroups (Cilium's "Locking Down
// External Access Using AWS Metadata") the way Cilium's operator does: a
// Provider turns each group into the addresses of the cloud resources it
// selects, and the policy gets a derivative policy whose rules carry those
// addresses as toCIDRSet/fromCIDRSet. The parent's group rules select
// nothing by themselves (policy.Groups), so until a derivative exists the
// traffic is denied.
//
// The Controller (run by wardd) keeps the derivatives of every policy with
// groups in the repository: it resolves them when a policy appears or
// changes and again every interval, so the enforced CIDRs follow the
// provider's resources. A provider error keeps the last derivative (as
// Cilium keeps its last derivative CNP) and is reported in the status.
package groups

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"

	"github.com/wardproxy/ward/policy"
)

// Provider resolves a group into addresses.
type Provider interface {
	Addrs(ctx context.Context, g policy.Groups) ([]netip.Addr, error)
}

// LabelDerivedFrom marks a derivative policy with its parent's key (as
// Cilium's io.cilium.network.policy.parent.uuid).
const LabelDerivedFrom = "io.cilium.network.policy.kind"

// DerivativeName is the name of p's derivative: the parent's name with a
// "-groups-" suffix and a digest of its key (Cilium: name-groups-UID).
func DerivativeName(p *policy.Policy) string {
	sum := sha256.Sum256([]byte(p.Key().String()))
	return p.Metadata.Name + "-groups-" + hex.EncodeToString(sum[:4])
}

// Derivative returns p's derivative policy: the rules of p that have group
// sections, each keeping only those sections with the groups replaced by
// the addresses prov resolves (as /32 and /128 CIDRs). A section whose
// groups resolve to no address is left out (it selects nothing), never
// turned into "every peer". It returns nil when p has no groups or they
// resolve to no address.
func Derivative(ctx context.Context, p *policy.Policy, prov Provider) (*policy.Policy, error) {
	if !p.HasGroups() {
		return nil, nil
	}
	// A deep copy through JSON: the parent stays untouched.
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("copy %s: %w", p.Key(), err)
	}
	var d policy.Policy
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("copy %s: %w", p.Key(), err)
	}
	d.Metadata.Name = DerivativeName(p)
	if d.Metadata.Labels == nil {
		d.Metadata.Labels = map[string]string{}
	}
	d.Metadata.Labels[LabelDerivedFrom] = "derivative"
	resolve := func(gs []policy.Groups) ([]policy.CIDRRule, error) {
		var addrs []netip.Addr
		for _, g := range gs {
			a, err := prov.Addrs(ctx, g)
			if err != nil {
				return nil, err
			}
			addrs = append(addrs, a...)
		}
		slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
		addrs = slices.Compact(addrs)
		out := make([]policy.CIDRRule, 0, len(addrs))
		for _, a := range addrs {
			out = append(out, policy.CIDRRule{CIDR: netip.PrefixFrom(a, a.BitLen()).String()})
		}
		return out, nil
	}
	var rules []*policy.Rule
	for _, r := range d.Rules() {
		in, err := sections(r.Ingress, func(x *policy.IngressRule) *[]policy.Groups { return &x.FromGroups },
			func(x *policy.IngressRule) *[]policy.CIDRRule { return &x.FromCIDRSet }, resolve)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.Key(), err)
		}
		inDeny, err := sections(r.IngressDeny, func(x *policy.IngressDenyRule) *[]policy.Groups { return &x.FromGroups },
			func(x *policy.IngressDenyRule) *[]policy.CIDRRule { return &x.FromCIDRSet }, resolve)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.Key(), err)
		}
		eg, err := sections(r.Egress, func(x *policy.EgressRule) *[]policy.Groups { return &x.ToGroups },
			func(x *policy.EgressRule) *[]policy.CIDRRule { return &x.ToCIDRSet }, resolve)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.Key(), err)
		}
		egDeny, err := sections(r.EgressDeny, func(x *policy.EgressDenyRule) *[]policy.Groups { return &x.ToGroups },
			func(x *policy.EgressDenyRule) *[]policy.CIDRRule { return &x.ToCIDRSet }, resolve)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.Key(), err)
		}
		if len(in)+len(inDeny)+len(eg)+len(egDeny) == 0 {
			continue
		}
		r.Ingress, r.IngressDeny, r.Egress, r.EgressDeny = in, inDeny, eg, egDeny
		rules = append(rules, r)
	}
	d.Spec, d.Specs = nil, rules
	if len(rules) == 1 {
		d.Spec, d.Specs = rules[0], nil
	}
	if len(rules) == 0 {
		// Every group resolved to nothing: no derivative (the parent's
		// group rules select nothing).
		return nil, nil
	}
	// Through Parse, as any policy the repository takes: validated and
	// normalized.
	b, err = json.Marshal(&d)
	if err != nil {
		return nil, fmt.Errorf("derivative of %s: %w", p.Key(), err)
	}
	out, err := policy.ParseOne(p.File, b)
	if err != nil {
		return nil, fmt.Errorf("derivative of %s: %w", p.Key(), err)
	}
	return out, nil
}

type resolver func([]policy.Groups) ([]policy.CIDRRule, error)

// sections keeps the sections of rs that have groups, their groups
// replaced by the resolved CIDR set; those that resolve to nothing are
// left out.
func sections[T any](rs []T, groups func(*T) *[]policy.Groups, cidrs func(*T) *[]policy.CIDRRule, resolve resolver) ([]T, error) {
	var out []T
	for _, r := range rs {
		g := groups(&r)
		if len(*g) == 0 {
			continue
		}
		set, err := resolve(*g)
		if err != nil {
			return nil, err
		}
		if len(set) == 0 {
			continue
		}
		*g, *cidrs(&r) = nil, set
		out = append(out, r)
	}
	return out, nil
}
