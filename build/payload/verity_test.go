package payload

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/kiln-os/kiln/build/verity"
)

// withTree appends a dm-verity tree to an image: data in the first
// dataBlocks, superblock and levels after them, as kiln builds USR.
func withTree(t *testing.T, img []byte, dataBlocks uint64) ([]byte, *Verity) {
	t.Helper()
	out := &memImage{b: append([]byte(nil), img...)}
	hashOffset := int64(dataBlocks) * BlockSize
	salt := []byte("payload-test-salt")
	root, err := verity.Format(out, 0, hashOffset, verity.Params{DataBlocks: dataBlocks, Salt: salt, UUID: [16]byte{1, 2, 3}})
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(out.b)) > int64(len(img)) {
		t.Fatalf("tree does not fit: image %d, tree ends at %d", len(img), len(out.b))
	}
	return out.b, &Verity{DataBlocks: dataBlocks, HashOffset: hashOffset,
		TreeBlocks: uint64(verity.HashTreeSize(dataBlocks)/BlockSize) - 1, Salt: salt, RootHash: root}
}

// TestVerityTreeComputedOnApply: the payload carries no tree block; Apply
// computes the tree from the data it wrote, checks the root and ends with
// the new image byte for byte.
func TestVerityTreeComputedOnApply(t *testing.T) {
	oldFiles, newFiles := releases(1)
	oldImg, oldMap := buildImage(oldFiles, 8<<20, 1)
	newImg, newMap := buildImage(newFiles, 8<<20, 2)
	dataBlocks := uint64(len(newImg)/BlockSize) - 40
	oldImg, _ = withTree(t, oldImg, dataBlocks)
	newImg, v := withTree(t, newImg, dataBlocks)
	for _, full := range []bool{true, false} {
		cfg := Config{New: Image{R: bytes.NewReader(newImg), Size: int64(len(newImg)), Map: newMap}, NewVersion: "2", Verity: v}
		if !full {
			cfg.Old, cfg.OldVersion = &Image{R: bytes.NewReader(oldImg), Size: int64(len(oldImg)), Map: oldMap}, "1"
		}
		plan := mustPlan(t, cfg)
		lo := uint64(v.HashOffset/BlockSize) + 1
		for _, op := range plan.Ops {
			for _, e := range op.Dst {
				if e.Start < lo+v.TreeBlocks && e.Start+e.Blocks > lo {
					t.Fatalf("full=%v: operation %v writes tree blocks %v", full, op.Type, e)
				}
			}
		}
		data := mustWrite(t, plan, RSASigner{testKey()})
		plan.Close()
		p, err := Open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		dst := &memImage{b: append([]byte(nil), oldImg...)}
		var src *bytes.Reader
		if !full {
			src = bytes.NewReader(oldImg)
		}
		opts := ApplyOptions{Verifier: RSAVerifier{&testKey().PublicKey}}
		if full {
			_, err = Apply(context.Background(), p, nil, dst, opts)
		} else {
			_, err = Apply(context.Background(), p, src, dst, opts)
		}
		if err != nil {
			t.Fatalf("full=%v: %v", full, err)
		}
		if !bytes.Equal(dst.b, newImg) {
			t.Fatalf("full=%v: applied image differs", full)
		}
	}
	// A payload whose recorded root does not match what the data gives is
	// refused at the tree, before the whole-partition hash.
	bad := *v
	bad.RootHash = bytes.Repeat([]byte{9}, 32)
	plan := mustPlan(t, Config{New: Image{R: bytes.NewReader(newImg), Size: int64(len(newImg)), Map: newMap}, NewVersion: "2", Verity: &bad})
	data := mustWrite(t, plan, RSASigner{testKey()})
	plan.Close()
	p, err := Open(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	dst := &memImage{b: make([]byte, len(newImg))}
	if _, err := Apply(context.Background(), p, nil, dst, ApplyOptions{Verifier: RSAVerifier{&testKey().PublicKey}}); !errors.Is(err, ErrVerityRoot) {
		t.Fatalf("wrong root: %v", err)
	}
}
