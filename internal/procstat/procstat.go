// Package procstat reads a process's CPU time (user + system, all its
// threads) from /proc/<pid>/stat: the benchmarks' CPU time per request of
// Envoy.
package procstat

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
var clockTick = func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil || v <= 0 {
		return 100
	}
	return v
}()

// CPU returns the CPU time (user + system) the process has used, all its
// threads included.
func CPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read stat: %w", err)
	}
	ticks, err := Ticks(b)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(float64(ticks) / clockTick * float64(time.Second)), nil
}

// Ticks returns utime+stime (clock ticks) of a /proc/<pid>/stat line.
func Ticks(b []byte) (uint64, error) {
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted after its last closing parenthesis, which field 3
	// (state) follows.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("parse stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("parse stat: %d fields", len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64) // field 14, utime
	st, err2 := strconv.ParseUint(f[12], 10, 64) // field 15, stime
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parse stat: %w", err)
	}
	return ut + st, nil
}
