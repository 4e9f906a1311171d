package bsdiff

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// mutate returns a copy of b with insertions, deletions and byte changes.
func mutate(r *rand.Rand, b []byte, edits int) []byte {
	out := append([]byte(nil), b...)
	for i := 0; i < edits; i++ {
		p := r.IntN(len(out) + 1)
		switch r.IntN(3) {
		case 0:
			ins := make([]byte, r.IntN(64))
			for j := range ins {
				ins[j] = byte(r.Uint32())
			}
			out = append(out[:p], append(ins, out[p:]...)...)
		case 1:
			n := min(r.IntN(64), len(out)-p)
			out = append(out[:p], out[p+n:]...)
		default:
			if p < len(out) {
				out[p] ^= byte(1 + r.IntN(255))
			}
		}
	}
	return out
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.IntN(40)) // compressible, with repeats
	}
	return b
}

func pairs() map[string][2][]byte {
	r := rand.New(rand.NewPCG(7, 8))
	base := randomBytes(r, 200000)
	return map[string][2][]byte{
		"empty-both": {nil, nil},
		"empty-old":  {nil, []byte("hello world")},
		"empty-new":  {[]byte("hello world"), nil},
		"identical":  {base, base},
		"edited":     {base, mutate(r, base, 50)},
		"unrelated":  {randomBytes(r, 5000), randomBytes(r, 7000)},
		"zeros":      {make([]byte, 100000), append(make([]byte, 50000), append([]byte("x"), make([]byte, 60000)...)...)},
		"repetitive": {bytes.Repeat([]byte("abcdefgh"), 20000), bytes.Repeat([]byte("abcdefgi"), 21000)},
	}
}

func TestRoundTrip(t *testing.T) {
	for name, p := range pairs() {
		patch, err := Diff(p[0], p[1])
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(p[1]))
		if err := Patch(got, p[0], patch); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(got, p[1]) {
			t.Fatalf("%s: patched output differs", name)
		}
		t.Logf("%s: old %d new %d patch %d", name, len(p[0]), len(p[1]), len(patch))
	}
}

// Our patches apply with Debian's bspatch, and bsdiff's apply with Patch.
func TestInteropWithBsdiffTools(t *testing.T) {
	dir := t.TempDir()
	for name, p := range pairs() {
		if len(p[0]) == 0 || len(p[1]) == 0 {
			continue // Debian's bsdiff and bspatch mmap their inputs and fail on empty files
		}
		oldF, newF := filepath.Join(dir, name+".old"), filepath.Join(dir, name+".new")
		ours, theirs, out := filepath.Join(dir, name+".ours"), filepath.Join(dir, name+".theirs"), filepath.Join(dir, name+".out")
		must(t, os.WriteFile(oldF, p[0], 0o644))
		must(t, os.WriteFile(newF, p[1], 0o644))
		patch, err := Diff(p[0], p[1])
		must(t, err)
		must(t, os.WriteFile(ours, patch, 0o644))
		if b, err := exec.Command("bspatch", oldF, out, ours).CombinedOutput(); err != nil {
			t.Fatalf("%s: bspatch rejected our patch: %v: %s", name, err, b)
		}
		got, err := os.ReadFile(out)
		must(t, err)
		if !bytes.Equal(got, p[1]) {
			t.Fatalf("%s: bspatch output of our patch differs", name)
		}
		if b, err := exec.Command("bsdiff", oldF, newF, theirs).CombinedOutput(); err != nil {
			t.Fatalf("%s: bsdiff: %v: %s", name, err, b)
		}
		tp, err := os.ReadFile(theirs)
		must(t, err)
		got = make([]byte, len(p[1]))
		if err := Patch(got, p[0], tp); err != nil {
			t.Fatalf("%s: Patch of bsdiff's patch: %v", name, err)
		}
		if !bytes.Equal(got, p[1]) {
			t.Fatalf("%s: Patch of bsdiff's patch differs", name)
		}
		t.Logf("%s: ours %d bytes, bsdiff's %d", name, len(patch), len(tp))
	}
}

func TestMultiMiBInReasonableTime(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	old := randomBytes(r, 8<<20)
	// A binary-like file: structured, with a few hundred edits.
	for i := 0; i < len(old); i += 4096 {
		copy(old[i:], []byte("\x7fELF header-ish block marker"))
	}
	new := mutate(r, old, 400)
	start := time.Now()
	patch, err := Diff(old, new)
	must(t, err)
	d := time.Since(start)
	got := make([]byte, len(new))
	must(t, Patch(got, old, patch))
	if !bytes.Equal(got, new) {
		t.Fatal("8 MiB round trip differs")
	}
	t.Logf("8 MiB diff in %v, patch %d bytes", d, len(patch))
	if d > 60*time.Second {
		t.Fatalf("diff of 8 MiB took %v", d)
	}
}

func TestHostilePatches(t *testing.T) {
	old := []byte("the old file contents")
	good, err := Diff(old, []byte("the new file contents!"))
	must(t, err)
	cases := map[string][]byte{
		"empty":     nil,
		"short":     good[:20],
		"magic":     append([]byte("BSDIFF41"), good[8:]...),
		"truncated": good[:len(good)-5],
	}
	neg := append([]byte(nil), good...)
	neg[15] |= 0x80
	cases["negative ctrl len"] = neg
	huge := append([]byte(nil), good...)
	huge[14] = 0x7f
	cases["ctrl len beyond patch"] = huge
	for name, p := range cases {
		err := Patch(make([]byte, 22), old, p)
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got %v, want ErrCorrupt", name, err)
		}
	}
	if err := Patch(make([]byte, 5), old, good); !errors.Is(err, ErrCorrupt) {
		t.Errorf("wrong size: got %v", err)
	}
}

func FuzzPatch(f *testing.F) {
	for _, p := range pairs() {
		if len(p[1]) < 5000 {
			patch, _ := Diff(p[0], p[1])
			f.Add(p[0], patch)
		}
	}
	f.Fuzz(func(t *testing.T, old, patch []byte) {
		n, err := NewSize(patch)
		if err != nil || n > 1<<20 {
			return
		}
		_ = Patch(make([]byte, n), old, patch)
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
