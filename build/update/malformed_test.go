package update

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-os/kiln/build/payload"
	"github.com/kiln-os/kiln/build/verity"
	"github.com/kiln-os/kiln/layout"
)

// countingDisk counts the writes that reach the disk.
type countingDisk struct {
	*os.File
	writes int
}

func (d *countingDisk) WriteAt(p []byte, off int64) (int, error) {
	d.writes++
	return d.File.WriteAt(p, off)
}

// TestMalformedSignedPayloads: payloads that are validly signed but wrong
// — as a broken release pipeline could make them — are all refused, and
// every wrong thing that can be known without the data is known before
// the first write: the disk then is byte for byte as it was. What only
// the data shows (a whole-partition hash that does not match, two
// operations' destinations swapped) fails after writing began, with the
// slot out of the boot order. The test counts both kinds.
func TestMalformedSignedPayloads(t *testing.T) {
	f := newFixture(t, "1.0.0", "2.0.0")
	rel := f.rel["2.0.0"]
	img, fh, err := rel.image()
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	v := rel.Usr.Verity
	root, salt, _ := decodeVerity(v)
	size, _ := sigSize(f.signer)
	// malformed writes a full payload of release 2.0.0 whose plan change
	// has altered, signed with the release key.
	malformed := func(name string, change func(p *payload.Plan)) string {
		plan, err := payload.NewPlan(context.Background(), payload.Config{New: *img, NewVersion: "2.0.0", TempDir: f.dir,
			Verity: &payload.Verity{DataBlocks: v.DataBlocks, HashOffset: v.HashOffset, TreeBlocks: uint64(verity.HashTreeSize(v.DataBlocks)/payload.BlockSize) - 1,
				Salt: salt, RootHash: append([]byte(nil), root...)}})
		if err != nil {
			t.Fatal(err)
		}
		defer plan.Close()
		change(plan)
		out := filepath.Join(f.dir, name+".payload")
		pf, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		defer pf.Close()
		if _, err := payload.Write(pf, plan, Signer{S: f.signer, Size: size}); err != nil {
			t.Fatalf("%s: writing: %v", name, err)
		}
		return out
	}
	replaces := func(p *payload.Plan) []int {
		var out []int
		for i, op := range p.Ops {
			if op.Type != payload.OpZero && op.Type != payload.OpSourceCopy && op.DataLength > 0 {
				out = append(out, i)
			}
		}
		return out
	}
	cases := []struct {
		name        string
		change      func(p *payload.Plan)
		beforeWrite bool // refused before the first write
	}{
		{"an operation dropped", func(p *payload.Plan) { p.Ops = p.Ops[:len(p.Ops)-1] }, true},
		{"the first operation dropped", func(p *payload.Plan) { p.Ops = p.Ops[1:] }, true},
		{"one ZERO over the whole slot", func(p *payload.Plan) {
			p.Ops = []payload.Op{{Type: payload.OpZero, Dst: []payload.Extent{{Start: 0, Blocks: uint64(p.New.Size / payload.BlockSize)}}}}
		}, true},
		{"the manifest's version differs from the record's", func(p *payload.Plan) { p.Version = "2.0.1" }, true},
		{"the manifest's verity root flipped", func(p *payload.Plan) { p.Verity.RootHash[0] ^= 1 }, true},
		{"the new partition's hash flipped", func(p *payload.Plan) { p.New.Hash[0] ^= 1 }, false},
		{"two operations' destinations swapped", func(p *payload.Plan) {
			r := replaces(p)
			a, b := &p.Ops[r[0]], &p.Ops[r[len(r)-1]]
			a.Dst, b.Dst = b.Dst, a.Dst
		}, false},
	}
	before, after := 0, 0
	for _, c := range cases {
		pl := malformed(fmt.Sprint(len(c.name)), c.change)
		disk := f.disk(t, "1.0.0")
		pristine := sha256File(t, disk)
		d, err := layout.OpenDiskForWriting(disk)
		if err != nil {
			t.Fatal(err)
		}
		cd := &countingDisk{File: d.File}
		_, err = install(context.Background(), InstallOptions{Payload: pl, Disk: disk, Verifier: f.verify}, cd, d)
		d.Close()
		if err == nil {
			t.Errorf("%s: installed", c.name)
			continue
		}
		t.Logf("%s: refused after %d writes: %v", c.name, cd.writes, err)
		switch {
		case c.beforeWrite && (cd.writes != 0 || sha256File(t, disk) != pristine):
			t.Errorf("%s: refused only after %d writes; it is known before the first", c.name, cd.writes)
		case c.beforeWrite:
			before++
		default:
			after++
			if next, _, err := nextSlot(disk); err != nil || next != "USR-A" {
				t.Errorf("%s: after the refusal %s boots next (%v), want USR-A with USR-B out of the boot order", c.name, next, err)
			}
		}
	}
	t.Logf("%d of %d malformed signed payloads refused before the first write; %d (the data shows them) after writing began, the slot out of the boot order", before, len(cases), after)
}

// nextSlot returns the label of the slot that boots next.
func nextSlot(disk string) (string, string, error) {
	d, err := layout.OpenDisk(disk)
	if err != nil {
		return "", "", err
	}
	defer d.Close()
	tb, err := d.ReadTable()
	if err != nil {
		return "", "", err
	}
	for _, e := range tb.Slots() {
		if e.Label == "USR-B" && e.Slot().Priority != 0 {
			return "USR-B", e.Slot().String(), nil
		}
	}
	return "USR-A", "", nil
}

// sha256File is the hex SHA-256 of a file's bytes.
func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}
