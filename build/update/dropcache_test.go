package update

import (
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// resident counts the pages of f's first size bytes in the page cache.
func resident(t *testing.T, f *os.File, size int) int {
	t.Helper()
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (size+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// TestDropCacheReadsPastTheCache: after dropCache, none of the range is in
// the page cache, so the read-back that follows comes from the device.
func TestDropCacheReadsPastTheCache(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "slot"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 8 << 20
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i)
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if n := resident(t, f, size); n == 0 {
		t.Fatal("the written pages are not cached: the test cannot tell")
	}
	if err := dropCache(f, 0, size); err != nil {
		t.Fatal(err)
	}
	if n := resident(t, f, size); n != 0 {
		t.Fatalf("%d pages still cached after dropCache", n)
	}
	got := make([]byte, size)
	if _, err := f.ReadAt(got, 0); err != nil || string(got) != string(b) {
		t.Fatalf("read back: %v", err)
	}
}
