package payload

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	mrand "math/rand/v2"
	"sync"
	"testing"

	"github.com/kiln-os/kiln/build/blockmap"
	um "github.com/kiln-os/kiln/build/payload/updatemetadata"
	"google.golang.org/protobuf/proto"
)

var testKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

// memImage is a growable in-memory partition: a Target.
type memImage struct{ b []byte }

func (m *memImage) WriteAt(p []byte, off int64) (int, error) {
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memImage) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(m.b).ReadAt(p, off)
}

// synthFile is one file of a synthetic filesystem image.
type synthFile struct {
	path string
	data []byte
}

// content returns n bytes of compressible, file-specific data (like a
// binary: structured with repeats, not random).
func content(r *mrand.Rand, n int) []byte {
	words := []string{"lib", "usr", "share", "\x00\x00\x00\x01", "ELF", "main", "func", "\x7f\x45", "0123", "config", "\xff\xfe", "kiln"}
	var b bytes.Buffer
	for b.Len() < n {
		switch r.IntN(4) {
		case 0:
			var x [8]byte
			binary.LittleEndian.PutUint64(x[:], r.Uint64())
			b.Write(x[:])
		default:
			b.WriteString(words[r.IntN(len(words))])
		}
	}
	return b.Bytes()[:n]
}

// edit changes a few places of b, with insertions and deletions.
func edit(r *mrand.Rand, b []byte, n int) []byte {
	out := append([]byte(nil), b...)
	for i := 0; i < n; i++ {
		p := r.IntN(len(out))
		switch r.IntN(3) {
		case 0:
			out = append(out[:p], append(content(r, 1+r.IntN(40)), out[p:]...)...)
		case 1:
			out = append(out[:p], out[min(len(out), p+r.IntN(40)):]...)
		default:
			out[p] ^= 0x5a
		}
	}
	return out
}

// buildImage lays files out like a write-once filesystem: metadata blocks
// first (derived from the file list, so they change a little between
// releases), then file data, every third file split in two extents with a
// gap, zero blocks in the gaps and at the end.
func buildImage(files []synthFile, size int64, seed uint64) ([]byte, *blockmap.Map) {
	img := make([]byte, size)
	m := &blockmap.Map{Filesystem: "synthetic", BlockSize: BlockSize, ImageSize: size}
	// Metadata: 16 blocks listing names and sizes, plus a "superblock" with a seed.
	var meta bytes.Buffer
	binary.Write(&meta, binary.LittleEndian, seed)
	for _, f := range files {
		meta.WriteString(f.path)
		binary.Write(&meta, binary.LittleEndian, int64(len(f.data)))
	}
	copy(img[:16*BlockSize], meta.Bytes())
	m.Metadata = []blockmap.Extent{{Offset: 0, Length: 16 * BlockSize}}
	off := int64(16 * BlockSize)
	for i, f := range files {
		bf := blockmap.File{Path: f.path, Size: int64(len(f.data))}
		parts := [][]byte{f.data}
		if i%3 == 0 && len(f.data) > 2*BlockSize {
			cut := (len(f.data) / 2) &^ (BlockSize - 1)
			parts = [][]byte{f.data[:cut], f.data[cut:]}
		}
		for _, p := range parts {
			if len(p) == 0 {
				continue
			}
			copy(img[off:], p)
			bf.Extents = append(bf.Extents, blockmap.Extent{Offset: off, Length: int64(len(p))})
			off += (int64(len(p)) + BlockSize - 1) &^ (BlockSize - 1)
			off += BlockSize * int64(i%2) // a gap
		}
		m.Files = append(m.Files, bf)
	}
	if off > size {
		panic("synthetic image too small")
	}
	m.Sort()
	return img, m
}

// releases returns two synthetic releases: changed, added, removed,
// renamed (same and changed content), moved and large files.
func releases(scale int) (old, new []synthFile) {
	r := mrand.New(mrand.NewPCG(11, 12))
	for i := 0; i < 40; i++ {
		f := synthFile{path: "usr/lib/lib" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + ".so", data: content(r, (1+r.IntN(40))*1000*scale)}
		old = append(old, f)
	}
	big := synthFile{path: "usr/bin/big", data: content(r, 3<<20*scale/2)}
	old = append(old, big, synthFile{path: "usr/share/removed.txt", data: content(r, 30000)},
		synthFile{path: "usr/share/oldname.dat", data: content(r, 50000)},
		synthFile{path: "usr/share/doc/renamed-changed.conf", data: content(r, 70000)})
	for i, f := range old[:40] {
		switch i % 4 {
		case 0: // unchanged
			new = append(new, f)
		case 1: // changed
			new = append(new, synthFile{f.path, edit(r, f.data, 20)})
		case 2: // unchanged but listed after an insertion (moves in the image)
			new = append(new, f)
		case 3: // grown
			new = append(new, synthFile{f.path, append(edit(r, f.data, 5), content(r, 10000)...)})
		}
	}
	new = append(new,
		synthFile{"usr/bin/big", edit(r, big.data, 50)},
		synthFile{"usr/share/added.bin", content(r, 120000)},
		synthFile{"usr/share/newname.dat", old[len(old)-2].data},
		synthFile{"usr/share/renamed-changed.conf", edit(r, old[len(old)-1].data, 10)},
		synthFile{"usr/share/zeros", make([]byte, 64*BlockSize)},
	)
	return old, new
}

// rewrite re-encodes a payload with the manifest changed by fn, unsigned.
func rewrite(t testing.TB, payload []byte, fn func(m *um.DeltaArchiveManifest)) []byte {
	t.Helper()
	p, err := Open(bytes.NewReader(payload), int64(len(payload)))
	if err != nil {
		t.Fatal(err)
	}
	m := proto.Clone(p.Manifest).(*um.DeltaArchiveManifest)
	m.SignaturesOffset, m.SignaturesSize = nil, nil
	fn(m)
	mb, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, headerSize)
	copy(out, Magic)
	binary.BigEndian.PutUint64(out[4:], MajorVersion)
	binary.BigEndian.PutUint64(out[12:], uint64(len(mb)))
	out = append(out, mb...)
	return append(out, payload[p.DataOffset:p.DataOffset+p.DataSize]...)
}

func mustPlan(t testing.TB, cfg Config) *Plan {
	t.Helper()
	p, err := NewPlan(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func mustWrite(t testing.TB, p *Plan, signers ...Signer) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := Write(&buf, p, signers...)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("Write reported %d bytes, wrote %d", n, buf.Len())
	}
	return buf.Bytes()
}
