package bzip2

import (
	"bytes"
	stdbzip2 "compress/bzip2"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func testInputs() map[string][]byte {
	r := rand.New(rand.NewPCG(5, 6))
	rnd := func(n, alpha int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.IntN(alpha))
		}
		return b
	}
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog 0123456789\n"), 40000)
	return map[string][]byte{
		"empty":    nil,
		"one":      {'x'},
		"run4":     []byte("aaaa"),
		"run255":   bytes.Repeat([]byte{'z'}, 255),
		"run256":   bytes.Repeat([]byte{'z'}, 256),
		"zeros":    make([]byte, 3<<20),
		"random":   rnd(1<<20, 256),
		"lowalpha": rnd(2<<20, 3),
		"text":     text,
		"allbytes": func() []byte {
			b := make([]byte, 256*40)
			for i := range b {
				b[i] = byte(i)
			}
			return b
		}(),
		"mixedruns": func() []byte {
			var b []byte
			for i := 0; i < 300000; i++ {
				b = append(b, bytes.Repeat([]byte{byte(i)}, 1+i%9)...)
			}
			return b
		}(),
	}
}

func TestRoundTripStdlib(t *testing.T) {
	for name, in := range testInputs() {
		c := Compress(in)
		out, err := io.ReadAll(stdbzip2.NewReader(bytes.NewReader(c)))
		if err != nil {
			t.Fatalf("%s: decompress: %v", name, err)
		}
		if !bytes.Equal(out, in) {
			t.Fatalf("%s: round trip differs (%d vs %d bytes)", name, len(out), len(in))
		}
		t.Logf("%s: %d -> %d", name, len(in), len(c))
	}
}

// The reference decoder must accept the stream too (and check its CRCs).
func TestBzip2Tool(t *testing.T) {
	dir := t.TempDir()
	for name, in := range testInputs() {
		p := filepath.Join(dir, name+".bz2")
		if err := os.WriteFile(p, Compress(in), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("bzip2", "-dc", p).Output()
		if err != nil {
			t.Fatalf("%s: bzip2 -d: %v", name, err)
		}
		if !bytes.Equal(out, in) {
			t.Fatalf("%s: bzip2 -d output differs", name)
		}
	}
}

func TestWriteAfterClose(t *testing.T) {
	w := NewWriter(io.Discard)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("x")); err != ErrClosed {
		t.Fatalf("got %v, want ErrClosed", err)
	}
}

// TestCompressContext: CompressContext, which feeds the writer 256 KiB at
// a time, makes Compress's bytes (runs and blocks cross the pieces), and
// gives up with the context's error once it is done.
func TestCompressContext(t *testing.T) {
	in := testInputs()
	// A run across each 256 KiB boundary.
	runs := make([]byte, 1<<20)
	for i := range runs {
		runs[i] = byte(i / 1000)
	}
	in["runs across pieces"] = runs
	for name, b := range in {
		got, err := CompressContext(context.Background(), b)
		if err != nil {
			t.Fatal(err)
		}
		if want := Compress(b); !bytes.Equal(got, want) {
			t.Errorf("%s: CompressContext made %d bytes, Compress %d, not the same", name, len(got), len(want))
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := CompressContext(ctx, in["random"]); err != context.Canceled {
		t.Errorf("a done context: %v, want context.Canceled", err)
	}
}
