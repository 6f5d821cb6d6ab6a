package redirect

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/cilium/ebpf"
)

// netdevHook names the pinned links of from_netdev ("tcx-<ifindex>-netdev").
const netdevHook = "netdev"

// AttachDevice attaches from_netdev to tc ingress of one of the node's
// native devices (the interfaces other nodes and the world reach the
// node's pods through). It assigns the later packets of a flow that
// to_pod hairpinned to the ingress proxy to the proxy's socket, before the
// stack's TCP early demux finds that socket and the forwarding path drops
// the packet; everything else passes untouched. Without it, L7 ingress
// from off the node needs net.ipv4.tcp_early_demux=0 (README.md). The
// link is pinned like the endpoints' (a restart swaps the program in).
func (d *Datapath) AttachDevice(ifindex int) error {
	if ifindex <= 0 {
		return fmt.Errorf("attach device: invalid ifindex %d", ifindex)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.attachTCX(deviceLinkName(ifindex), ifindex, d.objs.FromNetdev, ebpf.AttachTCXIngress); err != nil {
		return fmt.Errorf("attach device: %w", err)
	}
	return nil
}

// DetachDevice detaches from_netdev from the device; a device without it
// is not an error.
func (d *Datapath) DetachDevice(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.detach(deviceLinkName(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("detach device %d: %w", ifindex, err)
	}
	return nil
}

func deviceLinkName(ifindex int) string { return "tcx-" + strconv.Itoa(ifindex) + "-" + netdevHook }
