package xzstream

import (
	"os"
	"testing"
)

// BenchmarkEncode codes 8 MiB of a real program (x86 filter, 2 MiB
// dictionary) with each parser; it reports the output size.
func BenchmarkEncode(b *testing.B) {
	prog, err := os.ReadFile("/bin/bash")
	if err != nil {
		b.Fatal(err)
	}
	var data []byte
	for len(data) < 8<<20 {
		data = append(data, prog...)
	}
	data = data[:8<<20]
	if f := os.Getenv("KILN_BENCH_FILE"); f != "" {
		if data, err = os.ReadFile(f); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		o    Options
	}{{"fast", Options{DictCap: 2 << 20, X86: true, Fast: true}}, {"optimal", Options{DictCap: 2 << 20, X86: true}}, {"ulikunitz", Options{DictCap: 2 << 20, X86: true, Ulikunitz: true}}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			var n int
			for b.Loop() {
				out, err := Encode(data, c.o)
				if err != nil {
					b.Fatal(err)
				}
				n = len(out)
			}
			b.ReportMetric(float64(n), "out-bytes")
		})
	}
}
