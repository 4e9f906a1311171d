package payload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"

	um "github.com/kiln-os/kiln/build/payload/updatemetadata"
)

func TestOpTypeNames(t *testing.T) {
	for v := range um.InstallOperation_Type_name {
		if _, ok := opNames[OpType(v)]; !ok {
			t.Errorf("operation type %d has no name", v)
		}
		if OpType(v).String() != um.InstallOperation_Type(v).String() {
			t.Errorf("OpType(%d) = %v, protobuf says %v", v, OpType(v), um.InstallOperation_Type(v))
		}
	}
	if OpZstd != 14 || OpReplaceXZ != 8 || OpZero != 6 || OpSourceBsdiff != 5 || OpSourceCopy != 4 {
		t.Error("operation type numbers differ from update_engine's")
	}
	for _, c := range []Compression{CompressionAuto, CompressionXZ, CompressionZstd, CompressionNone, CompressionBZ2} {
		if got, err := ParseCompression(c.String()); err != nil || got != c {
			t.Errorf("compression %v does not round-trip", c)
		}
	}
}

func TestFullRoundTrip(t *testing.T) {
	_, newFiles := releases(1)
	img, m := buildImage(newFiles, 8<<20, 2)
	for _, comp := range []Compression{CompressionAuto, CompressionXZ, CompressionZstd, CompressionNone, CompressionBZ2} {
		t.Run(comp.String(), func(t *testing.T) {
			plan := mustPlan(t, Config{New: Image{R: bytes.NewReader(img), Size: int64(len(img)), Map: m}, NewVersion: "2.0.0", Compression: comp})
			if plan.MinorVersion != FullMinorVersion || plan.Old != nil {
				t.Fatal("full plan has a minor version or old partition")
			}
			payload := mustWrite(t, plan, RSASigner{testKey()})
			p, err := Open(bytes.NewReader(payload), int64(len(payload)))
			if err != nil {
				t.Fatal(err)
			}
			for _, op := range p.Partitions[0].Ops {
				t := OpType(op.GetType())
				if t.readsSource() || t == OpZero {
					panic("full payload uses " + t.String())
				}
			}
			dst := &memImage{}
			res, err := Apply(context.Background(), p, nil, dst, ApplyOptions{Verifier: RSAVerifier{&testKey().PublicKey}})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(dst.b, img) {
				t.Fatal("applied full payload differs from the image")
			}
			if res.Version != "2.0.0" || res.NewHash != sha256.Sum256(img) {
				t.Fatalf("result %+v", res)
			}
			t.Logf("%v: image %d bytes, payload %d bytes, %d ops", comp, len(img), len(payload), len(p.Partitions[0].Ops))
		})
	}
}

func deltaImages(t testing.TB, scale int) (oldImg, newImg []byte, oldCfg, newCfg Image) {
	oldFiles, newFiles := releases(scale)
	size := int64(16<<20) * int64(scale)
	oldImg, om := buildImage(oldFiles, size, 1)
	newImg, nm := buildImage(newFiles, size, 2)
	return oldImg, newImg, Image{R: bytes.NewReader(oldImg), Size: size, Map: om}, Image{R: bytes.NewReader(newImg), Size: size, Map: nm}
}

func TestDeltaRoundTrip(t *testing.T) {
	oldImg, newImg, oldI, newI := deltaImages(t, 1)
	full := mustWrite(t, mustPlan(t, Config{New: newI, NewVersion: "2"}))
	for _, tc := range []struct {
		name string
		maps bool
	}{{"blockmaps", true}, {"blockhashes", false}} {
		t.Run(tc.name, func(t *testing.T) {
			o, n := oldI, newI
			if !tc.maps {
				o.Map, n.Map = nil, nil
			}
			plan := mustPlan(t, Config{Old: &o, New: n, OldVersion: "1", NewVersion: "2", MaxDiffSize: 1 << 20})
			payload := mustWrite(t, plan, RSASigner{testKey()})
			p, err := Open(bytes.NewReader(payload), int64(len(payload)))
			if err != nil {
				t.Fatal(err)
			}
			if p.Manifest.GetMinorVersion() != DeltaMinorVersion {
				t.Fatalf("minor version %d", p.Manifest.GetMinorVersion())
			}
			sum := Inspect(context.Background(), p, RSAVerifier{&testKey().PublicKey})
			if sum.SignatureStatus != "valid" || sum.Kind != "delta" {
				t.Fatalf("summary %+v", sum)
			}
			types := map[string]int{}
			for _, st := range sum.Partitions[0].OpsByType {
				types[st.Type] = st.Count
				t.Logf("%-13s %4d ops, %8d data bytes, %9d dst bytes", st.Type, st.Count, st.DataBytes, st.DstBytes)
			}
			for _, want := range []string{"SOURCE_COPY", "SOURCE_BSDIFF", "ZERO"} {
				if types[want] == 0 {
					t.Errorf("no %s operation", want)
				}
			}
			// Compressed operations are smaller than what they write.
			for i, op := range p.Partitions[0].Ops {
				ot := OpType(op.GetType())
				if (ot == OpZstd || ot == OpReplaceXZ) && int64(op.GetDataLength()) >= blocksOf(extentsOf(op.DstExtents))*BlockSize {
					t.Errorf("operation %d: %v data %d bytes not smaller than destination", i, ot, op.GetDataLength())
				}
				if ot.readsSource() && len(op.GetSrcSha256Hash()) != 32 {
					t.Errorf("operation %d: no source hash", i)
				}
			}
			dst := &memImage{b: bytes.Repeat([]byte{0xee}, len(newImg))} // a used passive slot
			if _, err := Apply(context.Background(), p, bytes.NewReader(oldImg), dst, ApplyOptions{Verifier: RSAVerifier{&testKey().PublicKey}}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(dst.b, newImg) {
				t.Fatal("apply(delta, old) differs from new")
			}
			t.Logf("delta %d bytes, full %d bytes", len(payload), len(full))
			if len(payload)*3 > len(full) {
				t.Errorf("delta of %d bytes is not much smaller than the full payload of %d", len(payload), len(full))
			}
		})
	}
}

func TestDeterministic(t *testing.T) {
	_, _, oldI, newI := deltaImages(t, 1)
	var first []byte
	for _, w := range []int{1, 2, 5} {
		o := oldI
		plan := mustPlan(t, Config{Old: &o, New: newI, NewVersion: "2", Workers: w, MaxDiffSize: 1 << 20})
		out := mustWrite(t, plan, RSASigner{testKey()})
		if first == nil {
			first = out
		} else if !bytes.Equal(first, out) {
			t.Fatalf("payload with %d workers differs", w)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	img := Image{R: bytes.NewReader(make([]byte, 8192)), Size: 8192}
	bad := map[string]Config{
		"no new":      {NewVersion: "1"},
		"odd size":    {New: Image{R: img.R, Size: 5000}, NewVersion: "1"},
		"no version":  {New: img},
		"old no r":    {New: img, Old: &Image{Size: 8192}, NewVersion: "1"},
		"compression": {New: img, NewVersion: "1", Compression: 9},
	}
	for name, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
	}
	good := Config{New: img, NewVersion: "1"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
}

// An interrupted Apply, run again, completes the partition: operations
// read only the source and the payload.
func TestApplyResumes(t *testing.T) {
	oldImg, newImg, oldI, newI := deltaImages(t, 1)
	plan := mustPlan(t, Config{Old: &oldI, New: newI, NewVersion: "2", MaxDiffSize: 1 << 20})
	payload := mustWrite(t, plan, RSASigner{testKey()})
	p, err := Open(bytes.NewReader(payload), int64(len(payload)))
	if err != nil {
		t.Fatal(err)
	}
	opts := ApplyOptions{Verifier: RSAVerifier{&testKey().PublicKey}}
	total := len(p.Partitions[0].Ops)
	for _, stopAt := range []int{1, total / 3, total - 1} {
		dst := &memImage{b: bytes.Repeat([]byte{0xee}, len(newImg))}
		ctx, cancel := context.WithCancel(context.Background())
		o := opts
		o.Progress = func(done, _ int) {
			if done == stopAt {
				cancel()
			}
		}
		res, err := Apply(ctx, p, bytes.NewReader(oldImg), dst, o)
		if !errors.Is(err, context.Canceled) || res.Ops != stopAt {
			t.Fatalf("stop at %d: got %v after %d ops", stopAt, err, res.Ops)
		}
		if bytes.Equal(dst.b, newImg) {
			t.Fatalf("stop at %d: partition already complete", stopAt)
		}
		if _, err := Apply(context.Background(), p, bytes.NewReader(oldImg), dst, opts); err != nil {
			t.Fatalf("resume after %d: %v", stopAt, err)
		}
		if !bytes.Equal(dst.b, newImg) {
			t.Fatalf("resume after %d: partition differs", stopAt)
		}
	}
}

func TestCheckVersionRefusesDowngrade(t *testing.T) {
	img, m := buildImage(nil, 1<<20, 1)
	payload := mustWrite(t, mustPlan(t, Config{New: Image{R: bytes.NewReader(img), Size: 1 << 20, Map: m}, NewVersion: "1.0.0"}))
	p, err := Open(bytes.NewReader(payload), int64(len(payload)))
	if err != nil {
		t.Fatal(err)
	}
	errOld := errors.New("downgrade")
	dst := &memImage{}
	_, err = Apply(context.Background(), p, nil, dst, ApplyOptions{SkipSignature: true, CheckVersion: func(v string) error {
		if v != "1.0.0" {
			t.Errorf("version %q", v)
		}
		return errOld
	}})
	if !errors.Is(err, errOld) || len(dst.b) != 0 {
		t.Fatalf("got %v, %d bytes written", err, len(dst.b))
	}
}

// TestVerityAndVersionsRoundTrip: the hash-tree fields and the source
// version a plan records come back from Open and Inspect.
func TestVerityAndVersionsRoundTrip(t *testing.T) {
	oldFiles, newFiles := releases(1)
	oldImg, oldMap := buildImage(oldFiles, 8<<20, 1)
	newImg, newMap := buildImage(newFiles, 8<<20, 2)
	v := &Verity{DataBlocks: 1500, HashOffset: 1600 * BlockSize, TreeBlocks: 13, Salt: []byte("salt"), RootHash: bytes.Repeat([]byte{7}, 32)}
	for _, mode := range []VerityTree{VerityTreeInPayload, VerityTreeByClient} {
		plan := mustPlan(t, Config{
			Old:        &Image{R: bytes.NewReader(oldImg), Size: int64(len(oldImg)), Map: oldMap},
			New:        Image{R: bytes.NewReader(newImg), Size: int64(len(newImg)), Map: newMap},
			OldVersion: "1.0.0", NewVersion: "1.1.0", Verity: v, VerityTree: mode,
		})
		data := mustWrite(t, plan)
		plan.Close()
		p, err := Open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		part := p.Partitions[0]
		if part.OldVersion != "1.0.0" || part.Version != "1.1.0" {
			t.Errorf("versions %q -> %q", part.OldVersion, part.Version)
		}
		// The salt is upstream's field, recorded when the client computes
		// the tree; a carried tree has it in its superblock.
		salt := v.Salt
		if mode == VerityTreeInPayload {
			salt = nil
		}
		if g := part.Verity; g == nil || part.VerityTree != mode || g.DataBlocks != v.DataBlocks || g.HashOffset != v.HashOffset || g.TreeBlocks != v.TreeBlocks ||
			!bytes.Equal(g.Salt, salt) || !bytes.Equal(g.RootHash, v.RootHash) {
			t.Errorf("tree %v: verity %+v (%v), want %+v", mode, part.Verity, part.VerityTree, v)
		}
		s := Inspect(context.Background(), p, nil)
		if s.Partitions[0].OldVersion != "1.0.0" || s.Partitions[0].VerityRoot != strings.Repeat("07", 32) || s.Partitions[0].VerityTree != mode.String() {
			t.Errorf("tree %v: inspect %+v", mode, s.Partitions[0])
		}
	}
}
