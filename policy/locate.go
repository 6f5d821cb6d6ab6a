package policy

import (
	"strconv"
	"strings"
)

// locate returns the 1-based line of the field at path (as FieldError.Path
// spells it: spec.ingress[1].toPorts[0]) in a block-style YAML document, or
// the line of its deepest ancestor found; 0 when nothing is found. It is a
// best-effort, indentation-based search: flow-style collections ({...},
// [...]) end it at the collection's line.
func locate(doc []byte, path string) int {
	if path == "" {
		return 0
	}
	lines := strings.Split(string(doc), "\n")
	type tok struct {
		key string
		idx int // -1: a key
	}
	var toks []tok
	for _, part := range strings.Split(path, ".") {
		key, rest, _ := strings.Cut(part, "[")
		if key != "" {
			toks = append(toks, tok{key: key, idx: -1})
		}
		for rest != "" {
			n, after, _ := strings.Cut(rest, "]")
			i, err := strconv.Atoi(n)
			if err != nil {
				return 0
			}
			toks = append(toks, tok{idx: i})
			_, rest, _ = strings.Cut(after, "[")
		}
	}
	// cur is the line of the current node, parent its indentation: its
	// children are the following lines indented deeper (or, for an item
	// "- k: v", the keys at the item's content column).
	cur, parent, content := -1, -1, -1
	found := 0
	for _, t := range toks {
		next, nextParent, nextContent := -1, -1, -1
		if t.idx < 0 {
			// Same line as a sequence item: "- key: ...".
			if cur >= 0 && content >= 0 && keyAt(lines[cur][content:], t.key) {
				next, nextParent, nextContent = cur, content, -1
			} else {
				childIndent := -1
				if content >= 0 {
					childIndent = content // siblings of the item line's key
				}
				for i := cur + 1; i < len(lines); i++ {
					ind, body := indentOf(lines[i])
					if body == "" || strings.HasPrefix(body, "#") {
						continue
					}
					limit := parent
					if content >= 0 {
						limit = content - 1
					}
					if ind <= limit {
						break
					}
					if childIndent < 0 {
						childIndent = ind
					}
					if ind == childIndent && keyAt(body, t.key) {
						next, nextParent = i, ind
						break
					}
				}
			}
		} else {
			if cur < 0 {
				return found
			}
			itemIndent, n := -1, -1
			for i := cur + 1; i < len(lines); i++ {
				ind, body := indentOf(lines[i])
				if body == "" || strings.HasPrefix(body, "#") {
					continue
				}
				if itemIndent < 0 {
					if !strings.HasPrefix(body, "-") || ind < parent {
						break
					}
					itemIndent = ind
				}
				if ind < itemIndent || (ind == itemIndent && !strings.HasPrefix(body, "-")) {
					break
				}
				if ind == itemIndent {
					n++
					if n == t.idx {
						next, nextParent = i, ind
						rest := strings.TrimLeft(body[1:], " ")
						nextContent = ind + len(body) - len(rest)
						break
					}
				}
			}
		}
		if next < 0 {
			return found
		}
		cur, parent, content = next, nextParent, nextContent
		found = cur + 1
	}
	return found
}

func indentOf(line string) (int, string) {
	body := strings.TrimLeft(line, " ")
	return len(line) - len(body), strings.TrimRight(body, " \t\r")
}

// keyAt reports whether s starts with "key:" (quoted or not).
func keyAt(s, key string) bool {
	for _, q := range []string{"", `"`, `'`} {
		if strings.HasPrefix(s, q+key+q+":") {
			return true
		}
	}
	return false
}
