package xzstream

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"
	"testing/iotest"
)

// x86Inputs are data the BCJ filter has work on: a real x86-64 program,
// and random bytes dense with E8/E9 and 00/FF bytes, which exercise every
// branch of the filter's rules for close and overlapping candidates.
func x86Inputs(t *testing.T) map[string][]byte {
	t.Helper()
	prog, err := os.ReadFile("/bin/bash")
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(4, 2))
	dense := make([]byte, 1<<20)
	pick := []byte{0xe8, 0xe9, 0x00, 0xff, 0x01, 0x7f, 0x80}
	for i := range dense {
		if rng.IntN(3) == 0 {
			dense[i] = byte(rng.Uint32())
		} else {
			dense[i] = pick[rng.IntN(len(pick))]
		}
	}
	return map[string][]byte{"bash": prog[:min(len(prog), 2<<20)], "dense": dense, "short": {0xe8, 1, 2, 3}, "five": {0xe8, 1, 2, 3, 0}}
}

// python runs a Python 3 program with data on its standard input, with
// Debian's python3 (its lzma module is liblzma).
func python(t *testing.T, prog string, data []byte) []byte {
	t.Helper()
	cmd := exec.Command("/usr/bin/python3", "-c", prog) // Debian's, which make deps installs
	cmd.Stdin = bytes.NewReader(data)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3: %v", err)
	}
	return out
}

// TestX86MatchesLiblzma: the filter converts exactly as liblzma's (through
// Python's lzma module: x86 then LZMA2 encoded, LZMA2 alone decoded gives
// liblzma's filtered bytes).
func TestX86MatchesLiblzma(t *testing.T) {
	const prog = `import lzma, sys
d = sys.stdin.buffer.read()
c = lzma.compress(d, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 0}])
sys.stdout.buffer.write(lzma.decompress(c, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 0}]))`
	for name, data := range x86Inputs(t) {
		want := python(t, prog, data)
		got := bytes.Clone(data)
		newX86(0).filter(got, true)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: the filtered bytes differ from liblzma's (first at %d)", name, firstDiff(got, want))
		}
		if name == "bash" && bytes.Equal(got, data) {
			t.Errorf("%s: the filter changed nothing", name)
		}
	}
}

// TestEncodeRead: Encode's streams, with and without the filter, decode to
// the input with xz, with Python's lzma and with Reader (also one byte at a
// time, which exercises the filter's carried tail); Reader decodes xz's own
// x86 streams.
func TestEncodeRead(t *testing.T) {
	for name, data := range x86Inputs(t) {
		for _, x := range []bool{false, true} {
			enc, err := Encode(data, Options{DictCap: 1 << 20, X86: x})
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("xz", "-dc")
			cmd.Stdin = bytes.NewReader(enc)
			if out, err := cmd.Output(); err != nil || !bytes.Equal(out, data) {
				t.Errorf("%s x86=%v: xz -dc: %v, equal %v", name, x, err, bytes.Equal(out, data))
			}
			if out := python(t, "import lzma, sys; sys.stdout.buffer.write(lzma.decompress(sys.stdin.buffer.read()))", enc); !bytes.Equal(out, data) {
				t.Errorf("%s x86=%v: Python's lzma gives other bytes", name, x)
			}
			for _, oneByte := range []bool{false, true} {
				var in io.Reader = bytes.NewReader(enc)
				if oneByte {
					in = iotest.OneByteReader(in)
				}
				r, err := NewReader(in, 1<<20)
				if err != nil {
					t.Fatal(err)
				}
				var rd io.Reader = r
				if oneByte {
					rd = iotest.OneByteReader(r)
				}
				if out, err := io.ReadAll(rd); err != nil || !bytes.Equal(out, data) {
					t.Errorf("%s x86=%v one byte=%v: Reader: %v, equal %v", name, x, oneByte, err, bytes.Equal(out, data))
				}
			}
		}
		cmd := exec.Command("xz", "--x86", "--lzma2=preset=1", "-c")
		cmd.Stdin = bytes.NewReader(data)
		enc, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		r, err := NewReader(bytes.NewReader(enc), 8<<20)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := io.ReadAll(r); err != nil || !bytes.Equal(out, data) {
			t.Errorf("%s: xz --x86 stream: Reader: %v, equal %v", name, err, bytes.Equal(out, data))
		}
	}
}

// TestEncodeReproducible: the same input and options give the same bytes.
func TestEncodeReproducible(t *testing.T) {
	data := x86Inputs(t)["bash"]
	a, _ := Encode(data, Options{DictCap: 2 << 20, X86: true})
	b, _ := Encode(data, Options{DictCap: 2 << 20, X86: true})
	if !bytes.Equal(a, b) {
		t.Error("two encodings differ")
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
