package payload

import (
	"bytes"
	"context"
	mrand "math/rand/v2"
	"slices"
	"testing"
)

// TestSolidRuns: a full payload's file data goes into REPLACE operations
// of up to solidBlocks that span several files, ELF objects first, then
// the rest (by path), whatever their order on disk,
// each file's blocks whole and in file order; the payload applies to the
// exact image.
func TestSolidRuns(t *testing.T) {
	r := mrand.New(mrand.NewPCG(5, 6))
	var files []synthFile
	// On disk, kinds alternate: elf, text, elf, script, ...
	for i := 0; i < 24; i++ {
		var f synthFile
		switch i % 3 {
		case 0:
			f = synthFile{path: "usr/lib/lib" + string(rune('a'+i)) + ".so", data: append([]byte("\x7fELF"), content(r, 9000+i*700)...)}
		case 1:
			f = synthFile{path: "usr/share/doc/" + string(rune('a'+i)) + ".txt", data: content(r, 5000+i*300)}
		default:
			f = synthFile{path: "usr/bin/tool" + string(rune('a'+i)), data: append([]byte("#!/bin/sh\n"), content(r, 3000+i*100)...)}
		}
		files = append(files, f)
	}
	img, m := buildImage(files, 4<<20, 3)
	plan := mustPlan(t, Config{New: Image{R: bytes.NewReader(img), Size: int64(len(img)), Map: m}, NewVersion: "1", Compression: CompressionXZ})

	// Which file and kind each block belongs to.
	owner := map[uint64]string{}
	for i := range m.Files {
		for _, b := range fileBlocks(&m.Files[i], uint32(len(img)/BlockSize)) {
			owner[uint64(b)] = m.Files[i].Path
		}
	}
	kind := func(p string) string {
		for _, f := range files {
			if f.path == p {
				return fileKind(f.data[:4])
			}
		}
		return ""
	}
	var solid *Op
	for i := range plan.Ops {
		op := &plan.Ops[i]
		if len(op.Dst) > 1 && owner[op.Dst[0].Start] != "" {
			solid = op
			break
		}
	}
	if solid == nil {
		t.Fatalf("no operation spans several files: %d ops", len(plan.Ops))
	}
	var order []string
	for _, e := range solid.Dst {
		for b := e.Start; b < e.Start+e.Blocks; b++ {
			if p := owner[b]; len(order) == 0 || order[len(order)-1] != p {
				order = append(order, p)
			}
		}
	}
	if len(order) < 3 {
		t.Fatalf("the solid run holds %d files, want several: %v", len(order), order)
	}
	kinds := make([]string, len(order))
	for i, p := range order {
		kinds[i] = kind(p)
	}
	if !slices.IsSorted(kinds) {
		t.Errorf("files in a solid run are not grouped by kind: %v (%v)", kinds, order)
	}
	for i := 1; i < len(order); i++ {
		if kinds[i] == kinds[i-1] && order[i] < order[i-1] {
			t.Errorf("files of one kind are not in path order: %v", order)
		}
	}
	// Every file appears once, whole: no file is split between runs that
	// interleave with others.
	seen := map[string]bool{}
	for _, p := range order {
		if seen[p] {
			t.Errorf("%s appears twice in one run: %v", p, order)
		}
		seen[p] = true
	}

	payload := mustWrite(t, plan, RSASigner{testKey()})
	p, err := Open(bytes.NewReader(payload), int64(len(payload)))
	if err != nil {
		t.Fatal(err)
	}
	dst := &memImage{}
	if _, err := Apply(context.Background(), p, nil, dst, ApplyOptions{Verifier: RSAVerifier{&testKey().PublicKey}}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.b, img) {
		t.Fatal("the applied payload differs from the image")
	}
}
