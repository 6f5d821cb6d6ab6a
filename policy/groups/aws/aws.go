// Package aws resolves toGroups' aws selectors through the EC2 API, as
// Cilium's operator does (pkg/policy/groups/aws): security groups (by id or
// name) select the private IPs of the network interfaces in them, and their
// associated public IPs; labels select the instances with those tags and
// the IPs of their interfaces. It runs in wardd, never in Envoy.
package aws

import (
	"context"
	"fmt"
	"net/netip"
	"sort"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/wardproxy/ward/policy"
)

// Config is the node config's toGroups.aws block.
type Config struct {
	// Region is the default region; a group's own region wins. Empty:
	// the SDK's (AWS_REGION, the shared config).
	Region string `json:"region,omitempty"`
	// Endpoint overrides the EC2 endpoint (an EC2-compatible API such as
	// moto in tests, or a VPC endpoint). Empty: the region's.
	Endpoint string `json:"endpoint,omitempty"`
}

// Provider is the EC2 group provider. Credentials come from the SDK's
// default chain (environment, shared files, instance role).
type Provider struct {
	cfg  Config
	base awssdk.Config
}

// New loads the SDK configuration.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	base, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws: load config: %w", err)
	}
	return &Provider{cfg: cfg, base: base}, nil
}

func (p *Provider) client(region string) *ec2.Client {
	return ec2.NewFromConfig(p.base, func(o *ec2.Options) {
		if region != "" {
			o.Region = region
		}
		if p.cfg.Endpoint != "" {
			o.BaseEndpoint = awssdk.String(p.cfg.Endpoint)
		}
	})
}

// Addrs returns the addresses g.AWS selects, sorted and unique.
func (p *Provider) Addrs(ctx context.Context, g policy.Groups) ([]netip.Addr, error) {
	if g.AWS == nil {
		return nil, fmt.Errorf("aws: no aws selector")
	}
	c := p.client(g.AWS.Region)
	var out []netip.Addr
	ids := g.AWS.SecurityGroupsIds
	if len(g.AWS.SecurityGroupsNames) > 0 {
		// Names to ids first (DescribeSecurityGroups): a name may exist
		// in several VPCs, and not every EC2-compatible API filters
		// interfaces by group name.
		named, err := groupIDs(ctx, c, g.AWS.SecurityGroupsNames)
		if err != nil {
			return nil, err
		}
		if len(ids) > 0 {
			// Both given: an interface must match both (AND of filters,
			// as one DescribeNetworkInterfaces call with both would).
			var both []string
			for _, id := range ids {
				for _, n := range named {
					if id == n {
						both = append(both, id)
					}
				}
			}
			named = both
		}
		ids = named
		if len(ids) == 0 {
			ids = nil
		}
	}
	if len(ids) > 0 {
		in := &ec2.DescribeNetworkInterfacesInput{Filters: []ec2types.Filter{{Name: awssdk.String("group-id"), Values: ids}}}
		pg := ec2.NewDescribeNetworkInterfacesPaginator(c, in)
		for pg.HasMorePages() {
			page, err := pg.NextPage(ctx)
			if err != nil {
				return nil, fmt.Errorf("aws: describe network interfaces: %w", err)
			}
			for _, ni := range page.NetworkInterfaces {
				out = appendIPs(out, ni.PrivateIpAddresses)
			}
		}
	}
	if len(g.AWS.Labels) > 0 {
		in := &ec2.DescribeInstancesInput{}
		keys := make([]string, 0, len(g.AWS.Labels))
		for k := range g.AWS.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			in.Filters = append(in.Filters, ec2types.Filter{Name: awssdk.String("tag:" + k), Values: []string{g.AWS.Labels[k]}})
		}
		pg := ec2.NewDescribeInstancesPaginator(c, in)
		for pg.HasMorePages() {
			page, err := pg.NextPage(ctx)
			if err != nil {
				return nil, fmt.Errorf("aws: describe instances: %w", err)
			}
			for _, r := range page.Reservations {
				for _, inst := range r.Instances {
					for _, ni := range inst.NetworkInterfaces {
						for _, ip := range ni.PrivateIpAddresses {
							out = appendAddr(out, ip.PrivateIpAddress)
							if ip.Association != nil {
								out = appendAddr(out, ip.Association.PublicIp)
							}
						}
					}
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	uniq := out[:0]
	for i, a := range out {
		if i == 0 || a != out[i-1] {
			uniq = append(uniq, a)
		}
	}
	return uniq, nil
}

func appendIPs(out []netip.Addr, ips []ec2types.NetworkInterfacePrivateIpAddress) []netip.Addr {
	for _, ip := range ips {
		out = appendAddr(out, ip.PrivateIpAddress)
		if ip.Association != nil {
			out = appendAddr(out, ip.Association.PublicIp)
		}
	}
	return out
}

func appendAddr(out []netip.Addr, s *string) []netip.Addr {
	if a, err := netip.ParseAddr(awssdk.ToString(s)); err == nil {
		out = append(out, a.Unmap())
	}
	return out
}

// groupIDs returns the ids of the security groups with those names.
func groupIDs(ctx context.Context, c *ec2.Client, names []string) ([]string, error) {
	in := &ec2.DescribeSecurityGroupsInput{Filters: []ec2types.Filter{{Name: awssdk.String("group-name"), Values: names}}}
	var out []string
	pg := ec2.NewDescribeSecurityGroupsPaginator(c, in)
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("aws: describe security groups: %w", err)
		}
		for _, sg := range page.SecurityGroups {
			out = append(out, awssdk.ToString(sg.GroupId))
		}
	}
	return out, nil
}
