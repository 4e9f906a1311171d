package squashfs

import (
	"testing"

	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/internal/treetest"
)

// BenchmarkWrite measures the writer on a random tree (compressible text,
// random bytes and zero runs), writing to a discarding io.WriterAt. The
// bytes per second are content bytes.
func BenchmarkWrite(b *testing.B) {
	tr := treetest.Random(11, treetest.Options{Files: 400, MaxSize: 2 << 20})
	for _, c := range []struct {
		name string
		o    Options
	}{
		{"zstd3", Options{}},
		{"zstd3-1worker", Options{Workers: 1}},
		{"gzip6", Options{Compression: Gzip, Level: 6}},
	} {
		b.Run(c.name, func(b *testing.B) {
			benchWrite(b, tr, c.o)
		})
	}
}

func benchWrite(b *testing.B, tr *tree.Tree, o Options) {
	b.SetBytes(tr.Stats().Bytes)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Write(discard{}, tr, o); err != nil {
			b.Fatal(err)
		}
	}
}
