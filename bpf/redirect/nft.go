package redirect

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The proxies' own connections, marked for local delivery.
//
// An egress proxy's upstream connection leaves from the client pod's own
// address (Envoy's original_src, IP_TRANSPARENT), so the destination — on
// this node or another — sees the client and its identity, not the node.
// Its replies come back addressed to the pod. Without help the stack would
// forward them to the pod (and, when TCP early demux matched them to the
// proxy's socket first, drop them in ip_forward). Cilium's answer, kept
// here: a prerouting rule marks every TCP packet that belongs to a
// transparent socket of this namespace with MarkToProxy, and the proxy
// routing rule delivers it locally. The lookup happens before the NAT of a
// reply is undone and follows conntrack's original tuple, so replies to a
// masqueraded upstream are found too. Only sockets bound to one address
// match (socket wildcard 0): the proxies' wildcard listeners never capture
// a packet addressed to a pod.

// nftTableName is the nftables table of the proxy routing with table id.
func nftTableName(table int) string { return fmt.Sprintf("ward-proxy-%d", table) }

// InstallProxySocketMark adds (replacing a leftover) the inet table of
// proxy routing table id table holding the prerouting rule; undo deletes
// it. InstallProxyRouting calls it; bench/bpf too, to measure the rule.
func InstallProxySocketMark(table int) (undo func() error, err error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	name := nftTableName(table)
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
	// One transaction: a table left by a killed process keeps marking
	// until its rules are replaced, never a moment without.
	c.AddTable(t)
	ch := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle})
	c.FlushChain(ch)
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
		// meta l4proto tcp
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		// socket transparent 1
		&expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
		// socket wildcard 0
		&expr.Socket{Key: expr.SocketKeyWildcard, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
		// meta mark set MarkToProxy
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(MarkToProxy)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}})
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("nftables: table inet %s: %w", name, err)
	}
	return func() error {
		c, err := nftables.New()
		if err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
		c.DelTable(t)
		if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("nftables: delete table inet %s: %w", name, err)
		}
		return nil
	}, nil
}

// removeNFTTable deletes table name if it exists, in its own batch.
func removeNFTTable(c *nftables.Conn, name string) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return
	}
	for _, t := range tables {
		if t.Name == name {
			c.DelTable(t)
			_ = c.Flush()
		}
	}
}

// RemoveProxySocketMark removes the table InstallProxySocketMark added
// (in this process or an earlier one); a missing table is ignored.
func RemoveProxySocketMark(table int) {
	c, err := nftables.New()
	if err != nil {
		return
	}
	removeNFTTable(c, nftTableName(table))
}
