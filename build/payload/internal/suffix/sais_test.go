package suffix

import (
	"bytes"
	"math/rand/v2"
	"sort"
	"testing"
)

func naive(t []byte) []int32 {
	sa := make([]int32, len(t))
	for i := range sa {
		sa[i] = int32(i)
	}
	sort.Slice(sa, func(i, j int) bool { return bytes.Compare(t[sa[i]:], t[sa[j]:]) < 0 })
	return sa
}

func TestArrayMatchesNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	inputs := [][]byte{nil, {0}, {1, 1}, []byte("banana"), []byte("mississippi"), bytes.Repeat([]byte("ab"), 100), bytes.Repeat([]byte{0}, 300), []byte("abracadabra abracadabra")}
	for i := 0; i < 500; i++ {
		n := r.IntN(600)
		alpha := 1 + r.IntN(5)
		if i%5 == 0 {
			alpha = 256
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(r.IntN(alpha))
		}
		inputs = append(inputs, b)
	}
	for _, in := range inputs {
		got, want := Array(in), naive(in)
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("input %q: SA differs at %d: got %v want %v", in, i, got, want)
			}
		}
	}
}

func BenchmarkArray4MiB(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(r.IntN(16))
	}
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		Array(buf)
	}
}
