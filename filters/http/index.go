package http

import "strings"

// pathIndex finds the rules a request's path may match without trying
// every rule: each rule is filed in a radix tree under the literal text its
// path expression starts with (or under each string of a small finite
// language, e.g. gRPC method paths), rules without a path or a literal
// prefix at the root. A lookup walks the request path once and tries only
// the rules filed under a prefix of it, lowest index first.
type pathIndex struct {
	root node
}

type node struct {
	label string  // edge label from the parent
	first []byte  // first byte of each kid's label
	kids  []*node //
	rules []int32 // rules filed here, ascending
}

func buildIndex(rules []rule) pathIndex {
	var ix pathIndex
	for i := range rules {
		r := &rules[i]
		if r.broken {
			continue
		}
		if r.path.lits != nil {
			for _, l := range r.path.lits {
				ix.root.insert(l, int32(i))
			}
			continue
		}
		ix.root.insert(r.path.prefix, int32(i))
	}
	return ix
}

func (n *node) insert(key string, ri int32) {
	for {
		if key == "" {
			if k := len(n.rules); k == 0 || n.rules[k-1] != ri {
				n.rules = append(n.rules, ri)
			}
			return
		}
		i := strings.IndexByte(string(n.first), key[0])
		if i < 0 {
			n.first = append(n.first, key[0])
			n.kids = append(n.kids, &node{label: key, rules: []int32{ri}})
			return
		}
		k := n.kids[i]
		cp := commonPrefix(k.label, key)
		if cp < len(k.label) {
			mid := &node{label: k.label[:cp], first: []byte{k.label[cp]}, kids: []*node{k}}
			k.label = k.label[cp:]
			n.kids[i] = mid
			k = mid
		}
		n, key = k, key[cp:]
	}
}

func commonPrefix(a, b string) int {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// lookup returns the index of the first rule matching req, or -1.
func (ix *pathIndex) lookup(rules []rule, req *Request) int {
	best := -1
	path := req.Path
	n := &ix.root
	for {
		for _, ri := range n.rules {
			if best >= 0 && int(ri) >= best {
				break
			}
			if rules[ri].matchBase(req) {
				best = int(ri)
				break
			}
		}
		if path == "" {
			return best
		}
		i := strings.IndexByte(string(n.first), path[0])
		if i < 0 {
			return best
		}
		n = n.kids[i]
		if !strings.HasPrefix(path, n.label) {
			return best
		}
		path = path[len(n.label):]
	}
}
