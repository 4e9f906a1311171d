package hashing

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestChunkedMatchesCoreutils: the chunked digest of a sparse file with
// data, zero runs, holes and a short last chunk is what split, sha256sum
// and xxd compute, as the package documents.
func TestChunkedMatchesCoreutils(t *testing.T) {
	p := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(9*ChunkSize + 12345)
	f.Truncate(size)
	data := make([]byte, 3*ChunkSize/2)
	rand.Read(data)
	f.WriteAt(data, 0)                              // chunk 0 and half of 1
	f.WriteAt(make([]byte, ChunkSize), 3*ChunkSize) // written zeros: chunk 3
	f.WriteAt(data[:100], 5*ChunkSize+ChunkSize-50) // across chunks 5 and 6
	f.WriteAt(data[:1000], 9*ChunkSize+1)           // the short last chunk
	f.Close()
	f, _ = os.Open(p)
	defer f.Close()
	for _, w := range []int{1, 3} {
		j := &Job{R: f, Off: 0, Size: size}
		Chunked([]*Job{j}, w, nil)
		if j.Err != nil {
			t.Fatal(j.Err)
		}
		out, err := exec.Command("sh", "-c", "split -b 1M --filter=sha256sum "+p+" | cut -c1-64 | xxd -r -p | sha256sum").Output()
		if err != nil {
			t.Fatalf("coreutils: %v (make test installs xxd)", err)
		}
		if want := strings.Fields(string(out))[0]; j.Sum != want {
			t.Fatalf("%d workers: chunked %s, coreutils %s", w, j.Sum, want)
		}
	}
	// A range inside the file, as a partition of a disk.
	j := &Job{R: f, Off: 2 * ChunkSize, Size: 5*ChunkSize + 7}
	Chunked([]*Job{j}, 2, nil)
	out, _ := exec.Command("sh", "-c", "dd if="+p+" bs=1M skip=2 count=6 status=none | head -c 5242887 | split -b 1M --filter=sha256sum | cut -c1-64 | xxd -r -p | sha256sum").Output()
	if want := strings.Fields(string(out))[0]; j.Sum != want {
		t.Fatalf("range: chunked %s, coreutils %s", j.Sum, want)
	}
}
