package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// peakRSSEnv runs kiln with args and extra environment under GNU time and
// returns its peak RSS in bytes (see peakRSS).
func peakRSSEnv(t *testing.T, env []string, args ...string) int64 {
	t.Helper()
	rep := filepath.Join(t.TempDir(), "rss")
	cmd := exec.Command("/usr/bin/time", append([]string{"-f", "%M", "-o", rep, kiln}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kiln %v: %v\n%s", args, err, out)
	}
	b, err := os.ReadFile(rep)
	kb, err2 := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || err2 != nil {
		t.Fatalf("GNU time: %v %v %q", err, err2, b)
	}
	return kb * 1024
}
