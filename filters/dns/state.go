package dns

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// DefaultStateFile is where wardd keeps the FQDN state, and where
// `ward fqdn` reads it from by default.
const DefaultStateFile = "/run/ward/fqdn-state.json"

// StateVersion is the version of the State format written.
const StateVersion = 1

// State is the persisted FQDN state: the cache entries (restored at start)
// and, for introspection, the identities written to the ipcache.
type State struct {
	Version   int          `json:"version"`
	Saved     time.Time    `json:"saved"`
	Selectors []string     `json:"selectors,omitempty"` // toFQDNs selector labels
	Entries   []CacheEntry `json:"entries"`
	IPs       []IPState    `json:"ips,omitempty"`
}

// IPState is one ipcache entry written by the proxy.
type IPState struct {
	IP        netip.Addr `json:"ip"`
	Identity  uint32     `json:"identity"`
	Selectors []string   `json:"selectors"`
}

// ReadState reads a state file.
func ReadState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read fqdn state: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("parse fqdn state %s: %w", path, err)
	}
	if st.Version != StateVersion {
		return nil, fmt.Errorf("fqdn state %s: version %d, want %d", path, st.Version, StateVersion)
	}
	return &st, nil
}

// WriteState writes st to path atomically (temporary file, then rename).
func WriteState(path string, st *State) error {
	b, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		return fmt.Errorf("encode fqdn state: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write fqdn state: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".fqdn-state-*")
	if err != nil {
		return fmt.Errorf("write fqdn state: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write fqdn state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write fqdn state: %w", err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("write fqdn state: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write fqdn state: %w", err)
	}
	return nil
}

// State returns a snapshot of the proxy's FQDN state.
func (p *Proxy) State() *State {
	st := &State{Version: StateVersion, Saved: time.Now().UTC(), Entries: p.cache.Entries()}
	for _, s := range p.upd.selectors.Load().list {
		st.Selectors = append(st.Selectors, s.label)
	}
	p.upd.mu.Lock()
	for ip, a := range p.upd.applied {
		st.IPs = append(st.IPs, IPState{IP: ip, Identity: a.identity, Selectors: splitKey(a.key)})
	}
	p.upd.mu.Unlock()
	slices.SortFunc(st.IPs, func(a, b IPState) int { return a.IP.Compare(b.IP) })
	return st
}

func (p *Proxy) save() error {
	if p.cfg.StateFile == "" {
		return nil
	}
	return WriteState(p.cfg.StateFile, p.State())
}

func (p *Proxy) saveIfDirty() {
	cacheDirty := p.cache.takeDirty()
	ipcacheDirty := p.upd.dirty.Swap(false)
	if p.cfg.StateFile == "" || !cacheDirty && !ipcacheDirty {
		return
	}
	if err := p.save(); err != nil {
		p.log.Warn("fqdn state not saved", "path", p.cfg.StateFile, "error", err)
	}
}

func (p *Proxy) restore() error {
	if p.cfg.StateFile == "" {
		return nil
	}
	st, err := ReadState(p.cfg.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	p.cache.Restore(st.Entries, time.Now())
	// The ipcache may still hold what the previous run wrote (BPF maps
	// outlive wardd): mark it as applied with an unknown selector set, so
	// the first reconciliation rewrites or deletes every such IP.
	p.upd.mu.Lock()
	for _, s := range st.IPs {
		if s.IP.IsValid() {
			p.upd.applied[s.IP.Unmap()] = applied{key: staleKey, identity: s.Identity}
		}
	}
	p.upd.mu.Unlock()
	return nil
}

// staleKey marks an ipcache entry restored from the state file; it never
// equals a real selector key.
const staleKey = "\x00stale"
