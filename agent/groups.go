package agent

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/wardproxy/ward/policy/groups"
	"github.com/wardproxy/ward/policy/groups/aws"
)

// ToGroupsConfig is the node config's toGroups block: the cloud provider
// that resolves toGroups/fromGroups into derivative policies (Cilium's
// operator does it with --aws-* options).
type ToGroupsConfig struct {
	// AWS is the EC2 provider; without it policies with groups get no
	// derivative and the status says so.
	AWS *aws.Config `json:"aws,omitempty"`
	// Interval between refreshes of every derivative (a Go duration such
	// as "30s"); default 1m.
	Interval string `json:"interval,omitempty"`
}

// validate checks the block; p is its path in the config.
func (c *ToGroupsConfig) validate(p string) error {
	if c == nil || c.Interval == "" {
		return nil
	}
	d, err := time.ParseDuration(c.Interval)
	if err != nil || d <= 0 {
		return fmt.Errorf("%s.interval %q: want a positive duration such as \"1m\"", p, c.Interval)
	}
	return nil
}

// runGroups keeps the derivative policies of the policies with groups
// (policy/groups.Controller) in the engine's repository.
func (a *Agent) runGroups(ctx context.Context, g *errgroup.Group) {
	if a.eng == nil {
		return
	}
	c := &groups.Controller{Repo: a.eng.repo, Log: a.log, OnChange: func() { a.eng.publish(ctx) }}
	if tg := a.cfg.ToGroups; tg != nil {
		c.Interval, _ = time.ParseDuration(tg.Interval) // validated
		if tg.AWS != nil {
			p, err := aws.New(ctx, *tg.AWS)
			if err != nil {
				a.log.Warn("toGroups: aws provider", "error", err)
			} else {
				c.Provider = p
			}
		}
	}
	a.groups = c
	g.Go(func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("toGroups controller: panic: %v", r)
			}
		}()
		return c.Run(ctx)
	})
}
