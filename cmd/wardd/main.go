// Command wardd is ward's node agent: flags and the node configuration
// file become an agent.Config, and agent.Run does the rest (xDS, the eBPF
// datapath, the DNS proxy, Envoy's supervision). See package agent and
// docs/node-config.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/wardproxy/ward/agent"
)

func main() {
	cfg, lvl, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "wardd: %v\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	a, err := agent.New(cfg, log)
	if err == nil {
		err = a.Run(ctx)
	}
	if err != nil {
		log.Error("wardd failed", "error", err)
		os.Exit(1)
	}
}

// parseFlags turns the command line into the agent's configuration.
func parseFlags(args []string) (agent.Config, slog.Level, error) {
	fs := flag.NewFlagSet("wardd", flag.ContinueOnError)
	stateDir := fs.String("state-dir", "/var/run/ward", "directory for the xDS socket, status socket, bootstrap and Envoy log")
	config := fs.String("config", "", "node configuration file in YAML or JSON (docs/node-config.md)")
	envoy := fs.String("envoy", "", "envoy binary (default: build/envoy or .venv/bin/envoy, then PATH)")
	moduleDir := fs.String("module-dir", "", "directory holding libward.so (default: build/ of the working directory)")
	admin := fs.String("envoy-admin", "", "Envoy admin address: a unix socket path (default <state-dir>/envoy-admin.sock) or a loopback ip:port")
	keep := fs.Bool("envoy-keep-running", false, "leave Envoy running when wardd stops (the next wardd adopts it)")
	noEnvoy := fs.Bool("no-envoy", false, "serve xDS only; do not start Envoy")
	external := fs.Bool("envoy-external", false, "write Envoy's bootstrap to the state directory but do not start Envoy: it runs elsewhere (the Kubernetes Envoy DaemonSet)")
	concurrency := fs.Int("concurrency", 0, "Envoy worker threads (0: one per core)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	node := fs.String("node", "", "the node's name, overriding the config's node (the Kubernetes chart passes spec.nodeName)")
	if err := fs.Parse(args); err != nil {
		return agent.Config{}, 0, err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return agent.Config{}, 0, fmt.Errorf("--log-level: %w", err)
	}
	var cfg agent.Config
	if *config != "" {
		var err error
		if cfg, err = agent.LoadConfig(*config); err != nil {
			return agent.Config{}, 0, err
		}
	}
	if *node != "" {
		cfg.Node = *node
	}
	cfg.StateDir = *stateDir
	cfg.Envoy = agent.EnvoyConfig{Disabled: *noEnvoy, External: *external, Binary: *envoy, ModuleDir: *moduleDir, Admin: *admin, Concurrency: *concurrency, KeepRunning: *keep}
	return cfg, lvl, nil
}
