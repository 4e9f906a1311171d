package payload

import (
	"bytes"
	"context"
	"testing"
)

// BenchmarkGenerateDelta plans and writes a delta between two synthetic
// 64 MiB images with block maps.
func BenchmarkGenerateDelta(b *testing.B) {
	_, _, oldI, newI := deltaImages(b, 4)
	b.SetBytes(newI.Size)
	for b.Loop() {
		plan, err := NewPlan(context.Background(), Config{Old: &oldI, New: newI, NewVersion: "2"})
		if err != nil {
			b.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := Write(&buf, plan, RSASigner{testKey()}); err != nil {
			b.Fatal(err)
		}
		plan.Close()
		b.ReportMetric(float64(buf.Len()), "payload-bytes")
	}
}

// BenchmarkApplyDelta applies that delta (signature, source hash, all
// operations, final hash).
func BenchmarkApplyDelta(b *testing.B) {
	oldImg, _, oldI, newI := deltaImages(b, 4)
	plan := mustPlan(b, Config{Old: &oldI, New: newI, NewVersion: "2", Compression: CompressionZstd})
	payload := mustWrite(b, plan, RSASigner{testKey()})
	p, err := Open(bytes.NewReader(payload), int64(len(payload)))
	if err != nil {
		b.Fatal(err)
	}
	dst := &memImage{b: make([]byte, newI.Size)}
	b.SetBytes(newI.Size)
	for b.Loop() {
		if _, err := Apply(context.Background(), p, bytes.NewReader(oldImg), dst, ApplyOptions{Verifier: RSAVerifier{&testKey().PublicKey}}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApplyFull applies a full zstd payload of the 64 MiB image.
func BenchmarkApplyFull(b *testing.B) {
	_, _, _, newI := deltaImages(b, 4)
	plan := mustPlan(b, Config{New: newI, NewVersion: "2", Compression: CompressionZstd})
	payload := mustWrite(b, plan, RSASigner{testKey()})
	p, err := Open(bytes.NewReader(payload), int64(len(payload)))
	if err != nil {
		b.Fatal(err)
	}
	dst := &memImage{b: make([]byte, newI.Size)}
	b.SetBytes(newI.Size)
	for b.Loop() {
		if _, err := Apply(context.Background(), p, nil, dst, ApplyOptions{Verifier: RSAVerifier{&testKey().PublicKey}}); err != nil {
			b.Fatal(err)
		}
	}
}
