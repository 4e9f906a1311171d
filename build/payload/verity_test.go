package payload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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

// TestVerityTreeModes: by default the payload writes the tree like any
// other data (every block written once, minor version 4 for a delta, no
// hash_tree_* fields) and Apply checks it; with VerityTreeByClient (deltas
// only) no operation writes a tree block, the payload is minor version 6
// with hash_tree_* fields, and Apply computes the tree and leaves the
// superblock block as the payload wrote it. Both end with the new image
// byte for byte.
func TestVerityTreeModes(t *testing.T) {
	oldFiles, newFiles := releases(1)
	oldImg, oldMap := buildImage(oldFiles, 8<<20, 1)
	newImg, newMap := buildImage(newFiles, 8<<20, 2)
	dataBlocks := uint64(len(newImg)/BlockSize) - 40
	oldImg, _ = withTree(t, oldImg, dataBlocks)
	newImg, v := withTree(t, newImg, dataBlocks)
	// Something after the 512-byte superblock, in its block (as a signed
	// slot record would be): computing the tree must not erase it.
	copy(newImg[v.HashOffset+1024:], "kept after the superblock")
	lo := uint64(v.HashOffset/BlockSize) + 1
	for _, tc := range []struct {
		full bool
		mode VerityTree
	}{{true, VerityTreeInPayload}, {false, VerityTreeInPayload}, {false, VerityTreeByClient}} {
		name := fmt.Sprintf("full=%v tree=%v", tc.full, tc.mode)
		cfg := Config{New: Image{R: bytes.NewReader(newImg), Size: int64(len(newImg)), Map: newMap}, NewVersion: "2", Verity: v, VerityTree: tc.mode}
		if !tc.full {
			cfg.Old, cfg.OldVersion = &Image{R: bytes.NewReader(oldImg), Size: int64(len(oldImg)), Map: oldMap}, "1"
		}
		plan := mustPlan(t, cfg)
		treeWritten := false
		for _, op := range plan.Ops {
			for _, e := range op.Dst {
				if e.Start < lo+v.TreeBlocks && e.Start+e.Blocks > lo {
					treeWritten = true
				}
			}
		}
		if treeWritten != (tc.mode == VerityTreeInPayload) {
			t.Errorf("%s: operations write tree blocks: %v", name, treeWritten)
		}
		data := mustWrite(t, plan, RSASigner{testKey()})
		plan.Close()
		p, err := Open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		wantMinor := map[VerityTree]uint32{VerityTreeInPayload: DeltaMinorVersion, VerityTreeByClient: VerityMinorVersion}[tc.mode]
		if tc.full {
			wantMinor = FullMinorVersion
		}
		pu := p.Manifest.Partitions[0]
		if got := p.Manifest.GetMinorVersion(); got != wantMinor {
			t.Errorf("%s: minor version %d, want %d", name, got, wantMinor)
		}
		if (pu.HashTreeExtent != nil) != (tc.mode == VerityTreeByClient) || (pu.KilnHashTreeExtent != nil) != (tc.mode == VerityTreeInPayload) {
			t.Errorf("%s: hash_tree_extent %v, kiln_hash_tree_extent %v", name, pu.HashTreeExtent, pu.KilnHashTreeExtent)
		}
		if p.Partitions[0].VerityTree != tc.mode {
			t.Errorf("%s: read back as %v", name, p.Partitions[0].VerityTree)
		}
		dst := &memImage{b: append([]byte(nil), oldImg...)}
		var src io.ReaderAt
		if !tc.full {
			src = bytes.NewReader(oldImg)
		}
		if _, err := Apply(context.Background(), p, src, dst, ApplyOptions{Verifier: RSAVerifier{&testKey().PublicKey}}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(dst.b, newImg) {
			t.Fatalf("%s: applied image differs", name)
		}
	}
	// The client-computed tree needs minor version 6: never a full payload.
	if _, err := NewPlan(context.Background(), Config{New: Image{R: bytes.NewReader(newImg), Size: int64(len(newImg))}, NewVersion: "2", Verity: v, VerityTree: VerityTreeByClient}); err == nil {
		t.Error("full payload with the client-computed tree planned")
	}
	// A payload whose recorded root does not match what the data gives is
	// refused at the tree, before the whole-partition hash, in both modes.
	bad := *v
	bad.RootHash = bytes.Repeat([]byte{9}, 32)
	for _, mode := range []VerityTree{VerityTreeInPayload, VerityTreeByClient} {
		plan := mustPlan(t, Config{New: Image{R: bytes.NewReader(newImg), Size: int64(len(newImg)), Map: newMap}, NewVersion: "2", Verity: &bad,
			Old: &Image{R: bytes.NewReader(oldImg), Size: int64(len(oldImg)), Map: oldMap}, OldVersion: "1", VerityTree: mode})
		data := mustWrite(t, plan, RSASigner{testKey()})
		plan.Close()
		p, err := Open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		dst := &memImage{b: make([]byte, len(newImg))}
		if _, err := Apply(context.Background(), p, bytes.NewReader(oldImg), dst, ApplyOptions{Verifier: RSAVerifier{&testKey().PublicKey}}); !errors.Is(err, ErrVerityRoot) {
			t.Fatalf("tree %v, wrong root: %v", mode, err)
		}
	}
}
