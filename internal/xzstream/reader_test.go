package xzstream

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
// refuses dictionaries over its limit, which that package allocates).
// Where they disagree, the xz tool decides: kiln must do what it does
// (ulikunitz/xz has no x86 BCJ filter; xz has).
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
	for _, x86 := range []bool{false, true} {
		enc, err := Encode([]byte("\xe8\x01\x02\x03\x00 call, then \xe9\xff\xff\xff\xff jump"), Options{DictCap: 4096, X86: x86})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 6 || !bytes.Equal(in[:6], Magic) {
			return
		}
		x, err := NewReader(bytes.NewReader(in), 1<<20)
		var got []byte
		if err == nil {
			got, err = io.ReadAll(io.LimitReader(x, 8<<20))
		}
		if errors.Is(err, ErrDictionary) {
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
