// Package verify checks a built disk image, or one partition image, offline
// against its signed manifest: the manifest's signature, the GPT, the
// SHA-256 of every partition and each dm-verity hash tree. Every check is
// reported, pass or fail, so a release engineer sees exactly what is wrong.
package verify

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/kiln-os/kiln/build/manifest"
	"github.com/kiln-os/kiln/build/verity"
	"github.com/kiln-os/kiln/internal/hashing"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

// Check is the verdict of one check.
type Check struct {
	Name   string `json:"name"`   // "signature", "gpt", "sha256 USR-A", "verity USR-A"
	OK     bool   `json:"ok"`     //
	Detail string `json:"detail"` // what was checked, or what is wrong
}

// Report is every check of one verification.
type Report struct {
	Checks []Check `json:"checks"`
	OK     bool    `json:"ok"`
}

func (r *Report) add(name string, err error, detail string) {
	c := Check{Name: name, OK: err == nil, Detail: detail}
	if err != nil {
		c.Detail = err.Error()
	}
	r.Checks = append(r.Checks, c)
}

func (r *Report) finish() *Report {
	r.OK = len(r.Checks) > 0
	for _, c := range r.Checks {
		r.OK = r.OK && c.OK
	}
	return r
}

// Options name what to verify against.
type Options struct {
	// Manifest is the manifest file; its signature is Manifest + ".sig".
	Manifest string
	// Verifier checks the manifest's signature.
	Verifier sign.Verifier
	// KeyName names the key in messages.
	KeyName string
	// Workers bounds parallel hashing; 0 uses every core.
	Workers int
}

// loadManifest verifies the signature first, then parses: an unsigned or
// tampered manifest is never trusted, not even to be parsed.
func loadManifest(ctx context.Context, r *Report, o Options) *manifest.Manifest {
	err := sign.VerifyFile(ctx, o.Verifier, o.Manifest, sign.SignaturePath(o.Manifest))
	r.add("signature", err, fmt.Sprintf("%s.sig verifies with %s", o.Manifest, o.KeyName))
	if err != nil {
		return nil
	}
	f, err := os.Open(o.Manifest)
	if err == nil {
		defer f.Close()
		var m *manifest.Manifest
		if m, err = manifest.Parse(f); err == nil {
			r.add("manifest", nil, fmt.Sprintf("%s %s (%s), %d partitions", m.Name, m.Version, m.Channel, len(m.Partitions)))
			return m
		}
	}
	r.add("manifest", err, "")
	return nil
}

// Disk verifies a whole disk image (or block device) at path.
func Disk(ctx context.Context, path string, o Options) (*Report, error) {
	r := &Report{}
	m := loadManifest(ctx, r, o)
	if m == nil {
		return r.finish(), nil
	}
	f, size, err := openSized(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if size != m.DiskSize {
		r.add("disk size", fmt.Errorf("%s is %d bytes, the manifest's image is %d bytes", path, size, m.DiskSize), "")
		return r.finish(), nil
	}
	t, err := layout.ReadTable(f)
	if err != nil {
		r.add("gpt", err, "")
		return r.finish(), nil
	}
	if err := checkGPT(t, m); err != nil {
		r.add("gpt", err, "")
		return r.finish(), nil
	}
	detail := fmt.Sprintf("disk GUID %s, %d partitions match the manifest", t.DiskGUID, len(t.Partitions))
	if t.FromBackup {
		r.add("gpt", errors.New("the primary GPT is damaged (the backup GPT matches the manifest)"), "")
	} else {
		r.add("gpt", nil, detail)
	}
	checkPartitions(ctx, r, f, m, m.Partitions, func(p *manifest.Partition) int64 { return p.Offset }, o)
	return r.finish(), nil
}

// Partition verifies a lone partition image (usr.img) at path against the
// manifest's partition with that label.
func Partition(ctx context.Context, path, label string, o Options) (*Report, error) {
	r := &Report{}
	m := loadManifest(ctx, r, o)
	if m == nil {
		return r.finish(), nil
	}
	p := m.Partition(label)
	if p == nil {
		r.add("partition", fmt.Errorf("the manifest has no partition %q", label), "")
		return r.finish(), nil
	}
	f, size, err := openSized(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if size != p.Size {
		r.add("size "+label, fmt.Errorf("%s is %d bytes, partition %s is %d bytes", path, size, label, p.Size), "")
		return r.finish(), nil
	}
	r.add("size "+label, nil, fmt.Sprintf("%d bytes", size))
	checkPartitions(ctx, r, f, m, []manifest.Partition{*p}, func(*manifest.Partition) int64 { return 0 }, o)
	return r.finish(), nil
}

// openSized opens an image file or block device and returns its size.
func openSized(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, size, nil
}

// checkGPT compares the table with the manifest, entry by entry.
func checkGPT(t *layout.Table, m *manifest.Manifest) error {
	if t.DiskGUID != m.DiskGUID {
		return fmt.Errorf("disk GUID %s, the manifest's image has %s (a manifest for another image?)", t.DiskGUID, m.DiskGUID)
	}
	if len(t.Partitions) != len(m.Partitions) {
		return fmt.Errorf("%d partitions, the manifest lists %d", len(t.Partitions), len(m.Partitions))
	}
	for i, e := range t.Partitions {
		p := m.Partitions[i]
		var diffs []string
		if e.Number != p.Number {
			diffs = append(diffs, fmt.Sprintf("number %d, manifest %d", e.Number, p.Number))
		}
		if e.Label != p.Label {
			diffs = append(diffs, fmt.Sprintf("label %q, manifest %q", e.Label, p.Label))
		}
		if e.Type != p.Type {
			diffs = append(diffs, fmt.Sprintf("type %s, manifest %s", e.Type, p.Type))
		}
		if e.GUID != p.GUID {
			diffs = append(diffs, fmt.Sprintf("GUID %s, manifest %s", e.GUID, p.GUID))
		}
		if e.Offset() != p.Offset {
			diffs = append(diffs, fmt.Sprintf("offset %d, manifest %d", e.Offset(), p.Offset))
		}
		if e.Size() != p.Size {
			diffs = append(diffs, fmt.Sprintf("size %d, manifest %d", e.Size(), p.Size))
		}
		if len(diffs) > 0 {
			return fmt.Errorf("partition %s: %v", e.Name(), diffs)
		}
	}
	return nil
}

// checkPartitions hashes every partition (in parallel) and checks every
// verity tree.
func checkPartitions(ctx context.Context, r *Report, f *os.File, m *manifest.Manifest, parts []manifest.Partition, offset func(*manifest.Partition) int64, o Options) {
	workers := o.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	jobs := make([]*hashing.Job, len(parts))
	for i := range parts {
		jobs[i] = &hashing.Job{R: f, Off: offset(&parts[i]), Size: parts[i].Size}
	}
	hashing.Ranges(jobs, workers, nil)
	for i, p := range parts {
		j := jobs[i]
		var err error
		switch {
		case j.Err != nil:
			err = fmt.Errorf("reading %s: %w", p.Label, j.Err)
		case j.Sum != p.SHA256:
			err = fmt.Errorf("%s: sha256 %s, the manifest says %s", p.Label, j.Sum, p.SHA256)
		}
		r.add("sha256 "+p.Label, err, fmt.Sprintf("%s: %d bytes, sha256 %.16s…", p.Label, p.Size, p.SHA256))
	}
	for i := range parts {
		p := &parts[i]
		if p.Verity == nil || ctx.Err() != nil {
			continue
		}
		r.add("verity "+p.Label, checkVerity(f, offset(p), p), fmt.Sprintf("%s: %d data blocks, root %s", p.Label, p.Verity.DataBlocks, p.Verity.RootHash))
	}
}

// checkVerity verifies the whole hash tree of one partition and that the
// superblock says what the manifest says.
func checkVerity(f *os.File, off int64, p *manifest.Partition) error {
	v := p.Verity
	root, err := hex.DecodeString(v.RootHash)
	if err != nil {
		return fmt.Errorf("%s: manifest root hash: %w", p.Label, err)
	}
	if v.HashOffset >= p.Size {
		return fmt.Errorf("%s: verity hash offset %d is outside the %d-byte partition", p.Label, v.HashOffset, p.Size)
	}
	// The file itself, not a section of it: verity then skips the holes
	// of a sparse image instead of reading them.
	sb, err := verity.Verify(f, off, off+v.HashOffset, root)
	if err != nil {
		return fmt.Errorf("%s: %w", p.Label, err)
	}
	if sb.DataBlocks != v.DataBlocks || hex.EncodeToString(sb.Salt) != v.Salt || sb.DataBlockSize != v.DataBlockSize || sb.HashBlockSize != v.HashBlockSize {
		return fmt.Errorf("%s: verity superblock (%d data blocks, salt %x) differs from the manifest (%d, %s)", p.Label, sb.DataBlocks, sb.Salt, v.DataBlocks, v.Salt)
	}
	return nil
}

// UsrPartition returns the manifest's USR content: its first
// verity-protected USR partition (USR-A in the built-in layouts).
func UsrPartition(m *manifest.Manifest) *manifest.Partition {
	for i := range m.Partitions {
		if p := &m.Partitions[i]; p.Type == layout.TypeCoreOSUsr && p.Verity != nil {
			return p
		}
	}
	return nil
}

// Slot verifies that the A/B slot with the given label on the disk at path
// holds exactly the USR content the signed manifest describes: same size,
// same SHA-256, and a whole verity tree that matches the manifest's root
// hash. It is what a slot must pass before it is marked bootable.
func Slot(ctx context.Context, path, label string, o Options) (*Report, error) {
	r := &Report{}
	m := loadManifest(ctx, r, o)
	if m == nil {
		return r.finish(), nil
	}
	usr := UsrPartition(m)
	if usr == nil {
		r.add("manifest", errors.New("the manifest describes no verity-protected USR partition"), "")
		return r.finish(), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	t, err := layout.ReadTable(f)
	if err != nil {
		r.add("gpt", err, "")
		return r.finish(), nil
	}
	e, err := t.Lookup(label)
	if err != nil {
		r.add("slot", err, "")
		return r.finish(), nil
	}
	if e.Type != layout.TypeCoreOSUsr {
		r.add("slot", fmt.Errorf("partition %s is not a USR slot (type %s)", e.Name(), layout.TypeName(e.Type)), "")
		return r.finish(), nil
	}
	if e.Size() != usr.Size {
		r.add("slot", fmt.Errorf("slot %s is %d bytes, the manifest's %s is %d bytes", e.Label, e.Size(), usr.Label, usr.Size), "")
		return r.finish(), nil
	}
	r.add("slot", nil, fmt.Sprintf("%s (partition %d) holds %s %s's %s", e.Label, e.Number, m.Name, m.Version, usr.Label))
	// The slot's bytes are checked against the manifest's USR partition.
	want := *usr
	want.Label = e.Label
	checkPartitions(ctx, r, f, m, []manifest.Partition{want}, func(*manifest.Partition) int64 { return e.Offset() }, o)
	return r.finish(), nil
}
