package test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPayloadGenerateInterrupted: SIGINT stops `payload generate` within
// about a second, with exit 130 and "interrupted", leaving nothing in the
// output directory, for each compression, xz-max's solid runs of new
// files among them (they take many seconds each to code).
func TestPayloadGenerateInterrupted(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	os.WriteFile(filepath.Join(dir, "small.yaml"), []byte(smallLayout), 0o644)
	// Release 2 adds 24 MiB of text: compressible, so the coders work.
	rng := rand.New(rand.NewPCG(5, 5))
	words := make([]string, 3000)
	for i := range words {
		b := make([]byte, 3+rng.IntN(8))
		for j := range b {
			b[j] = byte('a' + rng.IntN(26))
		}
		words[i] = string(b)
	}
	var outs []string
	for rel := 1; rel <= 2; rel++ {
		usr := filepath.Join(dir, fmt.Sprintf("usr%d", rel), "share")
		os.MkdirAll(usr, 0o755)
		os.WriteFile(filepath.Join(usr, "README"), []byte("release\n"), 0o644)
		for f := 0; rel == 2 && f < 12; f++ {
			var b bytes.Buffer
			for b.Len() < 2<<20 {
				b.WriteString(words[rng.IntN(len(words))])
				b.WriteByte(" \n"[rng.IntN(12)/11])
			}
			os.WriteFile(filepath.Join(usr, fmt.Sprintf("text-%02d", f)), b.Bytes(), 0o644)
		}
		recipe := filepath.Join(dir, fmt.Sprintf("r%d.yaml", rel))
		os.WriteFile(recipe, []byte(fmt.Sprintf("name: rel\nversion: 1.%d.0\nlayout: small.yaml\npartitions:\n  USR-A: {source: \"dir:usr%d\"}\n  ROOT: {}\n", rel, rel)), 0o644)
		out := filepath.Join(dir, fmt.Sprintf("out%d", rel))
		if r := kilnEnv(t, []string{"SOURCE_DATE_EPOCH=1700000000"}, "build", "-q", recipe, "-o", out, "--sign", key+".key"); r.code != 0 {
			t.Fatalf("build: %s", r.stderr)
		}
		outs = append(outs, out)
	}
	for _, c := range []struct {
		compression string
		after       time.Duration
	}{{"xz-max", 2 * time.Second}, {"xz", 500 * time.Millisecond}, {"bz2", 500 * time.Millisecond}, {"zstd", 300 * time.Millisecond}} {
		pdir := filepath.Join(dir, "payloads-"+c.compression)
		os.MkdirAll(pdir, 0o755)
		cmd := exec.Command(kiln, "payload", "generate", "--from", outs[0], "--to", outs[1],
			"-o", filepath.Join(pdir, "update.payload"), "--key", key+".key", "--compression", c.compression, "--client", "kiln")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(c.after)
		sent := time.Now()
		cmd.Process.Signal(syscall.SIGINT)
		err := cmd.Wait()
		stopped := time.Since(sent)
		code := cmd.ProcessState.ExitCode()
		if code == 0 && c.compression != "xz-max" {
			t.Logf("--compression xz: the payload was done before %v", c.after)
			continue
		}
		if code != 130 || !strings.Contains(stderr.String(), "interrupted by") {
			t.Errorf("--compression %s: exit %d (%v), stderr %q; want 130 and \"interrupted\"", c.compression, code, err, stderr.String())
		}
		if stopped > 1500*time.Millisecond {
			t.Errorf("--compression %s: stopped %v after SIGINT", c.compression, stopped)
		}
		if names := dirNames(t, pdir); len(names) != 0 {
			t.Errorf("--compression %s: the interrupted generation left %v", c.compression, names)
		}
		t.Logf("--compression %s: SIGINT after %v: exit %d in %v", c.compression, c.after, code, stopped)
	}
}
