package policy

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// corpusRefused lists the files of Cilium's own example policies
// (testdata/cilium-1.18.5, collected from the public cilium/cilium tree at
// v1.18.5; see testdata/cilium-1.18.5/SOURCE.md) that ward refuses, with
// the text the refusal must contain. Every other file must validate: a
// policy Cilium 1.18 accepts without feature flags is accepted by ward.
var corpusRefused = map[string]string{
	// Cilium 1.18 refuses it too: "auth" is not a field of an egress rule
	// (the example predates the authentication field).
	"policies/auth/auth.yaml": `unknown field "auth"`,
	// Mutual authentication: ward does not enforce it, so it refuses it.
	"kubernetes/servicemesh/cnp-with-mutual-auth.yaml": "authentication (mutual authentication) is not supported by ward",
}

// corpusGated lists the files that need an agent option (as in Cilium):
// refused without it, accepted with it.
var corpusGated = map[string]Feature{
	"policies/l3/entities/customnodes.yaml": FeatureNodeSelectorLabels,
}

func TestCiliumExampleCorpus(t *testing.T) {
	root := filepath.Join("testdata", "cilium-1.18.5")
	seen := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		seen++
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		ps, perr := Parse(rel, data)
		want, refused := corpusRefused[rel]
		switch {
		case refused && perr == nil:
			t.Errorf("%s: accepted, want refused with %q", rel, want)
		case refused && !strings.Contains(perr.Error(), want):
			t.Errorf("%s: refused with %v, want %q", rel, perr, want)
		case !refused && perr != nil:
			t.Errorf("%s: refused: %v", rel, perr)
		case !refused && len(ps) == 0:
			t.Errorf("%s: no policy found", rel)
		}
		var gatedErr, allOnErr error
		for _, p := range ps {
			gatedErr = errors.Join(gatedErr, p.CheckFeatures(Features{}))
			allOnErr = errors.Join(allOnErr, p.CheckFeatures(Features{NodeSelectorLabels: true, ExtendedIPProtocols: true}))
		}
		if allOnErr != nil {
			t.Errorf("%s: refused with every option on: %v", rel, allOnErr)
		}
		if f, gated := corpusGated[rel]; gated != (gatedErr != nil) || (gated && !strings.Contains(gatedErr.Error(), string(f))) {
			t.Errorf("%s: without options: %v; want gated by %q: %v", rel, gatedErr, f, gated)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < 80 {
		t.Fatalf("corpus has %d files, want the 83 collected", seen)
	}
	for rel := range corpusRefused {
		if _, err := os.Stat(filepath.Join(root, rel)); err != nil {
			t.Errorf("corpusRefused names %s: %v", rel, err)
		}
	}
}
