package update

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestStorageReaderPastStaleCache: a loop device keeps a page cache of
// its own over the file behind it. Bytes read through the loop device,
// then changed in the file underneath, stay stale in that cache: a plain
// read of the loop device returns the old bytes. The read-back reader
// returns what the storage holds.
func TestStorageReaderPastStaleCache(t *testing.T) {
	const size = 8 << 20
	img := filepath.Join(t.TempDir(), "disk.img")
	old := bytes.Repeat([]byte("old!"), size/4)
	if err := os.WriteFile(img, old, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup (make test installs mount): %v\n%s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "--detach", dev).Run()
	loop, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer loop.Close()
	buf := make([]byte, size)
	if _, err := loop.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, old) {
		t.Fatalf("reading %s: %v", dev, err)
	}
	// The file changes underneath; the loop device's cache does not know.
	fresh := bytes.Repeat([]byte("new."), size/4)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(fresh, 0); err != nil {
		t.Fatal(err)
	}
	f.Sync()
	f.Close()
	if _, err := loop.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, old) {
		t.Fatalf("%s no longer serves stale bytes from its cache: the test cannot tell a cached read from a read of the storage", dev)
	}
	r, how, done, err := storageReader(loop, dev, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	t.Log(how)
	if !strings.HasPrefix(how, "O_DIRECT from "+img) {
		t.Errorf("the read-back is %q, not O_DIRECT from the file behind the loop device", how)
	}
	if _, err := r.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, fresh) {
		t.Fatalf("the read-back (%s) returned cached bytes, not the storage's: %q", how, buf[:8])
	}
}

// TestDirectReaderAnyRange: reads at any offset and length return the
// file's bytes, through O_DIRECT's aligned reads.
func TestDirectReaderAnyRange(t *testing.T) {
	const size = 3<<20 + 1234
	p := filepath.Join(t.TempDir(), "f")
	want := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	os.WriteFile(p, want, 0o644)
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatalf("this test needs a filesystem that takes O_DIRECT for its temporary files: %v", err)
	}
	defer f.Close()
	r := &directReader{f: f}
	for i := 0; i < 200; i++ {
		off := rng.Int64N(size)
		n := rng.IntN(3 << 20)
		got := make([]byte, n)
		m, err := r.ReadAt(got, off)
		end := min(off+int64(n), size)
		if m != int(end-off) || !bytes.Equal(got[:m], want[off:end]) || (end < off+int64(n)) != (err != nil) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", n, off, m, err)
		}
	}
}
