package xzstream

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"
)

// xzDecode decodes with the xz tool (liblzma), the reference decoder.
func xzDecode(t *testing.T, enc []byte) ([]byte, error) {
	t.Helper()
	cmd := exec.Command("xz", "-dc")
	cmd.Stdin = bytes.NewReader(enc)
	return cmd.Output()
}

// structured returns n bytes with repeats at many distances and lengths,
// literals, and runs: what exercises every symbol kind of the coder.
func structured(rng *rand.Rand, n int) []byte {
	b := make([]byte, 0, n)
	for len(b) < n {
		switch k := rng.IntN(10); {
		case k < 3 || len(b) < 16: // literals
			for range rng.IntN(40) + 1 {
				b = append(b, byte(rng.IntN(256)))
			}
		case k < 5: // a run
			c := byte(rng.IntN(256))
			for range rng.IntN(600) + 1 {
				b = append(b, c)
			}
		default: // a copy from earlier, near or far
			d := 1 + rng.IntN(len(b))
			if rng.IntN(2) == 0 {
				d = 1 + rng.IntN(min(len(b), 64))
			}
			for range rng.IntN(300) + 2 {
				b = append(b, b[len(b)-d])
			}
		}
	}
	return b[:n]
}

// TestLZMA2EncoderChunks: kiln's LZMA2 coder's streams decode with xz
// (liblzma) to the input, for inputs that end chunks at each of LZMA2's
// limits (2 MiB unpacked: long runs; 64 KiB packed: random data), carry
// matches across chunks, and repeat data farther back than the
// dictionary (which a decoder refuses to reach); the optimal parser makes
// the same stream with its match finder on a goroutine of its own.
func TestLZMA2EncoderChunks(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	random := make([]byte, 300<<10)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	far := append(bytes.Clone(random[:20000]), structured(rng, 50000)...)
	far = append(far, random[:20000]...) // again, 70000 bytes back
	cases := []struct {
		name string
		data []byte
		dict int
	}{
		{"zeros 5 MiB", make([]byte, 5<<20), 1 << 20},
		{"random 300 KiB", random, 1 << 20},
		{"structured 3 MiB", structured(rng, 3<<20), 2 << 20},
		{"farther than the dictionary", far, 4096},
		{"one byte", []byte{42}, 4096},
		{"empty", nil, 4096},
	}
	for _, c := range cases {
		for _, fast := range []bool{true, false} {
			enc, err := Encode(c.data, Options{DictCap: c.dict, Fast: fast})
			if err != nil {
				t.Fatal(err)
			}
			got, err := xzDecode(t, enc)
			if err != nil || !bytes.Equal(got, c.data) {
				t.Errorf("%s (fast parser %v): xz -dc: %v, %d bytes (want %d), equal %v", c.name, fast, err, len(got), len(c.data), bytes.Equal(got, c.data))
			}
			if !fast {
				// The match finder on its own goroutine: the same stream.
				ahead, err := Encode(c.data, Options{DictCap: c.dict, AheadFinder: true})
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(ahead, enc) {
					t.Errorf("%s: the optimal parser's stream differs with AheadFinder (%d bytes, %d without)", c.name, len(ahead), len(enc))
				}
			}
			t.Logf("%s (fast parser %v): %d → %d bytes", c.name, fast, len(c.data), len(enc))
		}
	}
}

// TestLZMA2EncoderRandomInputs: many random inputs round-trip through
// kiln's coder and Reader (ulikunitz/xz's LZMA2 decoder), and every tenth
// through xz.
func TestLZMA2EncoderRandomInputs(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 9))
	for i := range 200 {
		data := structured(rng, 1+rng.IntN(100000))
		dict := 4096 << rng.IntN(6)
		enc, err := Encode(data, Options{DictCap: dict, X86: i%3 == 0, Fast: i%2 == 0})
		if err != nil {
			t.Fatal(err)
		}
		r, err := NewReader(bytes.NewReader(enc), 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("input %d (%d bytes, dict %d): Reader: %v, equal %v", i, len(data), dict, err, bytes.Equal(got, data))
		}
		if i%10 == 0 {
			if got, err := xzDecode(t, enc); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("input %d: xz -dc: %v", i, err)
			}
		}
	}
}

// TestLZMA2EncoderSmaller: on x86 code (a real program) kiln's fast
// parser makes a smaller stream than ulikunitz/xz's encoder, the reason it
// exists, and the optimal parser a smaller one than the fast parser.
func TestLZMA2EncoderSmaller(t *testing.T) {
	data := x86Inputs(t)["bash"]
	opt, _ := Encode(data, Options{DictCap: 2 << 20, X86: true})
	fast, _ := Encode(data, Options{DictCap: 2 << 20, X86: true, Fast: true})
	ul, _ := Encode(data, Options{DictCap: 2 << 20, X86: true, Ulikunitz: true})
	t.Logf("%d bytes: kiln optimal %d, kiln fast %d, ulikunitz/xz %d", len(data), len(opt), len(fast), len(ul))
	if len(fast) >= len(ul)*97/100 {
		t.Errorf("kiln's fast parser: %d bytes, ulikunitz/xz's %d: not 3 %% smaller", len(fast), len(ul))
	}
	if len(opt) >= len(fast)*99/100 {
		t.Errorf("kiln's optimal parser: %d bytes, the fast one %d: not 1 %% smaller", len(opt), len(fast))
	}
}

// TestEncodeContextStops: EncodeContext gives up with the context's error
// once it is done, with either parser, the finder ahead or not.
func TestEncodeContextStops(t *testing.T) {
	data := structured(rand.New(rand.NewPCG(4, 4)), 3<<20)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, o := range []Options{{DictCap: 1 << 20, Fast: true}, {DictCap: 1 << 20}, {DictCap: 1 << 20, AheadFinder: true, X86: true}} {
		if out, err := EncodeContext(ctx, data, o); err != context.Canceled || out != nil {
			t.Errorf("%+v: %d bytes, %v; want context.Canceled", o, len(out), err)
		}
	}
}

// TestEncodeInPlaceRestores: with InPlace the x86 filter runs over the
// caller's bytes and is undone before Encode returns, also when it gives
// up; the stream is the one a copy would give.
func TestEncodeInPlaceRestores(t *testing.T) {
	prog, err := os.ReadFile("/bin/bash")
	if err != nil {
		t.Fatal(err)
	}
	random := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(2, 2))
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for name, data := range map[string][]byte{"/bin/bash": prog, "random": random} {
		orig := bytes.Clone(data)
		want, err := Encode(data, Options{DictCap: 1 << 20, X86: true, Fast: true})
		if err != nil {
			t.Fatal(err)
		}
		got, err := EncodeContext(context.Background(), data, Options{DictCap: 1 << 20, X86: true, Fast: true, InPlace: true})
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: InPlace made another stream (%v)", name, err)
		}
		if !bytes.Equal(data, orig) {
			t.Errorf("%s: InPlace left the data changed", name)
		}
		if _, err := EncodeContext(done, data, Options{DictCap: 1 << 20, X86: true, InPlace: true}); err == nil || !bytes.Equal(data, orig) {
			t.Errorf("%s: given up (%v): the data is changed %v", name, err, !bytes.Equal(data, orig))
		}
	}
}
