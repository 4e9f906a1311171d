package source

import (
	"bytes"
	"errors"
	"io"
	"os/exec"
	"testing"

	"github.com/ulikunitz/xz"
)

// FuzzXZ compares kiln's xz reader with ulikunitz/xz's on the same
// input: both decode it to the same bytes, or both refuse it (kiln also
// refuses dictionaries over MaxWindow, which that package allocates).
// Where they disagree, the xz tool decides: kiln must do what it does.
func FuzzXZ(f *testing.F) {
	for _, c := range []struct {
		data []byte
		cfg  xz.WriterConfig
	}{
		{[]byte("hello, xz"), xz.WriterConfig{}},
		{bytes.Repeat([]byte("abcdefgh"), 5000), xz.WriterConfig{CheckSum: xz.CRC32, BlockSize: 4096}},
		{bytes.Repeat([]byte{0}, 70000), xz.WriterConfig{CheckSum: xz.SHA256, DictCap: 1 << 16}},
		{nil, xz.WriterConfig{CheckSum: xz.None}},
	} {
		var buf bytes.Buffer
		w, err := c.cfg.NewWriter(&buf)
		if err != nil {
			f.Fatal(err)
		}
		w.Write(c.data)
		w.Close()
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 6 || !bytes.Equal(in[:6], xzMagic) {
			return
		}
		x, err := newXZReader(bytes.NewReader(in), 1<<20)
		var got []byte
		if err == nil {
			got, err = io.ReadAll(io.LimitReader(x, 8<<20))
		}
		if errors.Is(err, ErrWindow) {
			return
		}
		r, werr := xz.NewReader(bytes.NewReader(in))
		var want []byte
		if werr == nil {
			want, werr = io.ReadAll(io.LimitReader(r, 8<<20))
		}
		if (err == nil) == (werr == nil) && bytes.Equal(got, want) {
			return
		}
		cmd := exec.Command("xz", "-dc")
		cmd.Stdin = bytes.NewReader(in)
		tool, terr := cmd.Output()
		if (err == nil) != (terr == nil) || err == nil && !bytes.Equal(got, tool) {
			t.Fatalf("kiln: %d bytes, %v; ulikunitz/xz: %d bytes, %v; xz -dc: %d bytes, %v", len(got), err, len(want), werr, len(tool), terr)
		}
	})
}
