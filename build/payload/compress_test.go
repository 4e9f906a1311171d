package payload

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
)

// TestCompressKeepsIncompressibleX86: x86 code that no compressor
// shrinks becomes a plain REPLACE of the bytes as they were, although xz
// tried them behind the x86 BCJ filter (which it runs in place), for
// every compression that uses xz.
func TestCompressKeepsIncompressibleX86(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	data := make([]byte, 256<<10)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	// Random bytes hold E8 (CALL) and E9 (JMP) bytes, a few with a target
	// whose top byte is 00 or FF: the filter rewrites those.
	for i := 0; i+5 < len(data); i += 4099 {
		data[i], data[i+4] = 0xe8, 0
	}
	orig := bytes.Clone(data)
	for _, c := range []Compression{CompressionXZ, CompressionXZMax, CompressionAuto} {
		b := bytes.Clone(orig)
		typ, out, err := newCompressor(c, true).compress(context.Background(), b, true)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, orig) {
			t.Errorf("%v: compress changed its input", c)
		}
		if typ != OpReplace {
			t.Errorf("%v: random data became %v", c, typ)
		}
		if !bytes.Equal(out, orig) {
			t.Errorf("%v: a REPLACE of %d bytes that are not the data", c, len(out))
		}
		t.Logf("%v: %v, %d bytes", c, typ, len(out))
	}
}
