// Package verify checks disks offline. Two checks, for two kinds of disk:
//
//   - Image: a built image, byte for byte, against its signed manifest:
//     MBR, both GPT copies, the gaps, every partition's SHA-256 and
//     dm-verity tree. What a release engineer runs before shipping.
//   - Deployed: a disk in use, whose ESP, OEM, ROOT and slot attributes
//     change as it runs: the GPT's health and geometry and every USR
//     slot's signed release record and dm-verity tree — the read-only
//     parts — and nothing writable.
//
// Image also checks an image converted from a built one (kiln build
// --format: qcow2, VMDK, VHD, VHDX, raw.zst, raw.xz): its digest as the
// manifest lists it, and its content, read through its format, as above.
// Partition checks a lone partition image (usr.img), and Slot whether a
// slot holds a manifest's USR content. Every check is reported, pass or
// fail, so a release engineer sees exactly what is wrong.
package verify

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/kiln-os/kiln/build/diskimage"
	"github.com/kiln-os/kiln/build/manifest"
	"github.com/kiln-os/kiln/build/slot"
	"github.com/kiln-os/kiln/build/verity"
	"github.com/kiln-os/kiln/internal/hashing"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

// Check is the verdict of one check.
type Check struct {
	Name string `json:"name"` // "signature", "gpt", "digest USR-A", "verity USR-A"
	OK   bool   `json:"ok"`   //
	// Warn marks a check that passed with something the user should
	// repair (a deployed disk's damaged spare GPT copy).
	Warn   bool   `json:"warn,omitempty"`
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
			checkDocuments(r, o, m)
			return m
		}
	}
	r.add("manifest", err, "")
	return nil
}

// Image verifies a built disk image (or a block device written from one)
// byte for byte against its signed manifest: the MBR, both GPT copies
// (with every partition's initial slot attributes), the gaps between and
// after the partitions, and every partition's SHA-256 and dm-verity tree.
// A deployed disk fails it as soon as anything writable was written (see
// Deployed). An image converted from the disk image (qcow2, VMDK, VHD,
// VHDX, raw.zst, raw.xz: whatever diskimage.Detect finds) is verified as
// such (see converted).
func Image(ctx context.Context, path string, o Options) (*Report, error) {
	d, err := layout.OpenDisk(path) // the image first: a missing image is not a missing signature
	if err != nil {
		return nil, err
	}
	defer d.Close()
	f, err := diskimage.Detect(d.File, d.Size)
	if err != nil {
		if errors.Is(err, diskimage.ErrFormat) || errors.Is(err, diskimage.ErrUnsupported) {
			if rep := malformedOutput(ctx, d, err, o); rep != nil {
				return rep, nil
			}
		}
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if f != diskimage.Raw {
		return converted(ctx, d, f, o)
	}
	r := &Report{}
	m := loadManifest(ctx, r, o)
	if m == nil {
		return r.finish(), nil
	}
	if d.Size != m.DiskSize {
		r.add("disk size", fmt.Errorf("%s is %d bytes, the manifest's image is %d bytes", path, d.Size, m.DiskSize), "")
		return r.finish(), nil
	}
	checkDisk(ctx, r, d.File, path, m, o)
	return r.finish(), nil
}

// checkDisk checks the disk d (m.DiskSize bytes) against the manifest:
// the GPT, the bytes outside the partitions, every partition.
func checkDisk(ctx context.Context, r *Report, d io.ReaderAt, name string, m *manifest.Manifest, o Options) {
	t, ok := checkTable(r, d, m.DiskSize, name, m, false)
	if !ok {
		return
	}
	got, err := manifest.HashOutside(d, t)
	if err != nil {
		// An image that cannot be read (a converted image through its
		// format, say) fails.
		r.add("outside", err, "")
		return
	}
	for _, c := range []struct{ name, got, want, what string }{
		{"mbr", got.MBR, m.Outside.MBR, "sector 0: boot code and protective MBR"},
		{"primary gpt", got.PrimaryGPT, m.Outside.PrimaryGPT, "sectors 1-33: header, entries, initial slot attributes"},
		{"backup gpt", got.BackupGPT, m.Outside.BackupGPT, "the last 33 sectors"},
		{"gaps", got.Gaps, m.Outside.Gaps, "every byte outside the partitions and GPTs"},
	} {
		var err error
		if c.got != c.want {
			err = fmt.Errorf("%s: sha256 %.16s…, the manifest says %.16s… (%s changed)", c.name, c.got, c.want, c.what)
		}
		r.add(c.name, err, c.what)
	}
	checkPartitions(ctx, r, d, m, m.Partitions, func(p *manifest.Partition) int64 { return p.Offset }, o)
}

// converted verifies an image converted from a built disk image (kiln
// build --format) against the signed manifest: the manifest lists it (by
// its file name, in its format); the file has the listed size and digest;
// and read through its format it holds the disk image byte for byte —
// the zeros a format pads the disk with, the MBR, both GPTs, the gaps,
// every partition's digest and dm-verity tree. A changed file fails the
// digest check; the content checks then say whether the disk it holds
// changed too.
func converted(ctx context.Context, d *layout.Disk, f diskimage.Format, o Options) (*Report, error) {
	r := &Report{}
	m := loadManifest(ctx, r, o)
	if m == nil {
		return r.finish(), nil
	}
	name := filepath.Base(d.Path)
	out := m.Output(name)
	if out == nil {
		var names []string
		for _, o := range m.Outputs {
			names = append(names, o.Name)
		}
		listed := "none"
		if len(names) > 0 {
			listed = strings.Join(names, ", ")
		}
		r.add("output", fmt.Errorf("%s is a %s image; the manifest lists no output of that name (it lists %s)", d.Path, f, listed), "")
		return r.finish(), nil
	}
	if out.Format != f.String() {
		r.add("output", fmt.Errorf("%s is a %s image, the manifest lists a %s", d.Path, f, out.Format), "")
		return r.finish(), nil
	}
	r.add("output", nil, fmt.Sprintf("%s: %s, listed in the manifest", name, f))
	checkOutputDigest(r, d, name, out, o)

	disk, virtualSize, closeDisk, err := openConverted(d, f, out.VirtualSize)
	if err == nil && (virtualSize != out.VirtualSize || virtualSize < m.DiskSize) {
		err = fmt.Errorf("%s holds a disk of %d bytes, the manifest says %d (of a %d-byte image)", name, virtualSize, out.VirtualSize, m.DiskSize)
	}
	if closeDisk != nil {
		defer closeDisk()
	}
	r.add("format "+name, err, fmt.Sprintf("%s holds a disk of %d bytes", f, out.VirtualSize))
	if err != nil {
		return r.finish(), nil
	}
	if virtualSize > m.DiskSize {
		r.add("padding", checkZeros(disk, m.DiskSize, virtualSize), fmt.Sprintf("bytes %d to %d, which %s adds to the disk, are zeros", m.DiskSize, virtualSize, f))
	}
	checkDisk(ctx, r, disk, name, m, o)
	return r.finish(), nil
}

// checkOutputDigest checks the converted image d, named name, against
// the manifest's out: its size and digest.
func checkOutputDigest(r *Report, d *layout.Disk, name string, out *manifest.Output, o Options) {
	var err error
	if d.Size != out.Size {
		err = fmt.Errorf("%s is %d bytes, the manifest says %d", name, d.Size, out.Size)
	} else if sum, herr := diskimage.Digest(d.File, d.Size, o.Workers); herr != nil {
		err = fmt.Errorf("reading %s: %w", name, herr)
	} else if sum != out.Digest {
		err = fmt.Errorf("%s: digest %s, the manifest says %s", name, sum, out.Digest)
	}
	r.add("digest "+name, err, fmt.Sprintf("%s: %d bytes, digest %.16s…", name, out.Size, out.Digest))
}

// malformedOutput reports on an image file that carries a format's magic
// but that format's reader refuses (detectErr). When the signed manifest
// lists an output of its name, that is a changed output: failed checks
// (its digest, its format), not bad input. It returns nil when the
// manifest lists no such output, for the caller to refuse the file.
func malformedOutput(ctx context.Context, d *layout.Disk, detectErr error, o Options) *Report {
	r := &Report{}
	m := loadManifest(ctx, r, o)
	name := filepath.Base(d.Path)
	if m == nil {
		r.add("format "+name, fmt.Errorf("reading %s: %w", d.Path, detectErr), "")
		return r.finish()
	}
	out := m.Output(name)
	if out == nil {
		return nil
	}
	r.add("output", nil, fmt.Sprintf("%s: listed in the manifest as %s", name, out.Format))
	checkOutputDigest(r, d, name, out, o)
	r.add("format "+name, fmt.Errorf("reading %s: %w", d.Path, detectErr), "")
	return r.finish()
}

// openConverted returns the disk the converted image d (format f) holds
// and its size. Every format is read in place but GCE's gzip stream,
// which is expanded into an unlinked sparse temporary file, and only when
// it holds a disk of wantSize bytes (the signed manifest's), so that a
// hostile archive cannot make verify inflate more than the image.
func openConverted(d *layout.Disk, f diskimage.Format, wantSize int64) (io.ReaderAt, int64, func(), error) {
	if f != diskimage.GCE {
		im, err := diskimage.Open(d.File, d.Size)
		if err != nil {
			return nil, 0, nil, err
		}
		return im.ReaderAt(), im.VirtualSize, nil, nil
	}
	tmp, err := os.CreateTemp("", "kiln-verify-*.raw")
	if err != nil {
		return nil, 0, nil, fmt.Errorf("expanding %s: %w", d.Path, err)
	}
	os.Remove(tmp.Name())
	if err := diskimage.ExpandGCE(d.File, d.Size, tmp, wantSize); err != nil {
		tmp.Close()
		return nil, 0, nil, err
	}
	return tmp, wantSize, func() { tmp.Close() }, nil
}

// checkZeros reads [off, end) of r and requires zeros.
func checkZeros(r io.ReaderAt, off, end int64) error {
	buf := make([]byte, 1<<20)
	for off < end {
		n := min(int64(len(buf)), end-off)
		if _, err := r.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		for i, b := range buf[:n] {
			if b != 0 {
				return fmt.Errorf("byte %d is %#x, not zero", off+int64(i), b)
			}
		}
		off += n
	}
	return nil
}

// checkTable reads the GPT of the disk d (size bytes), compares the
// partitions' geometry with the manifest's, and requires both copies
// valid and the same (for a deployed disk, see addDeployedGPT).
func checkTable(r *Report, d io.ReaderAt, size int64, name string, m *manifest.Manifest, deployed bool) (*layout.Table, bool) {
	t, err := layout.ReadTableAt(d, size, name)
	if err != nil {
		r.add("gpt", err, "")
		return nil, false
	}
	if err := checkGPT(t, m); err != nil {
		r.add("gpt", err, "")
		return nil, false
	}
	detail := fmt.Sprintf("disk GUID %s, %d partitions match the manifest", t.DiskGUID, len(t.Partitions))
	if deployed {
		addDeployedGPT(r, t, detail)
	} else {
		r.add("gpt", t.Copies.Err(), "both copies valid; "+detail)
	}
	return t, true
}

// addDeployedGPT reports the GPT copies of a deployed disk. A write
// interrupted by a crash or a kill (kiln writes the backup copy, then the
// primary) can leave one copy damaged, or both valid and different; the
// copy readers use (the primary when valid, as firmware, the kernel, cgpt
// and kiln's boot path do) still holds a whole table, old or new, so the
// check passes with a warning naming the damage and the repair. Only a
// disk with no valid copy, which ReadTable refuses, fails it.
func addDeployedGPT(r *Report, t *layout.Table, detail string) {
	damage := t.Copies.Err()
	if damage == nil {
		r.add("gpt", nil, "both copies valid; "+detail)
		return
	}
	used := map[bool]string{true: "backup", false: "primary"}[t.FromBackup()]
	r.Checks = append(r.Checks, Check{Name: "gpt", OK: true, Warn: true, Detail: fmt.Sprintf(
		"%v; the %s copy is valid and is the one read (%s); the next kiln command that writes the disk repairs the other, as do sgdisk -e and cgpt repair",
		damage, used, detail)})
}

// DeployedOptions name what a deployed disk is checked against.
type DeployedOptions struct {
	// Verifier checks the slots' release records.
	Verifier sign.Verifier
	// KeyName names the key in messages.
	KeyName string
	// Manifest, when set, is a signed manifest of any release built with
	// this layout: the GPT's geometry is compared with it.
	Manifest string
}

// Deployed verifies a deployed disk: what must not change while it runs.
// The GPT read must be valid (and, given a manifest, lay out the
// partitions it lists; slot attributes are state and are not compared; a
// damaged or differing spare copy is a warning, see addDeployedGPT); every USR slot in the boot order (priority above 0) must
// hold a release record with a valid signature and a whole dm-verity tree
// matching the record's root hash. Writable partitions (ESP, OEM, ROOT)
// and slots out of the boot order (empty, being written) are not checked.
func Deployed(ctx context.Context, path string, o DeployedOptions) (*Report, error) {
	r := &Report{}
	d, err := layout.OpenDisk(path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	var t *layout.Table
	if o.Manifest != "" {
		m := loadManifest(ctx, r, Options{Manifest: o.Manifest, Verifier: o.Verifier, KeyName: o.KeyName})
		if m == nil {
			return r.finish(), nil
		}
		var ok bool
		if t, ok = checkTable(r, d.File, d.Size, d.Path, m, true); !ok {
			return r.finish(), nil
		}
	} else {
		if t, err = d.ReadTable(); err != nil {
			r.add("gpt", err, "")
			return r.finish(), nil
		}
		addDeployedGPT(r, t, fmt.Sprintf("disk GUID %s, %d partitions", t.DiskGUID, len(t.Partitions)))
	}
	if len(t.Slots()) == 0 {
		r.add("slots", errors.New("the disk has no USR slot"), "")
	}
	for _, e := range t.Slots() {
		if ctx.Err() != nil {
			break
		}
		if e.Slot().Priority == 0 {
			// Out of the boot order: empty, or being written, or given up.
			r.add("slot "+e.Label, nil, fmt.Sprintf("%s: out of the boot order (priority 0), not checked", e.Label))
			continue
		}
		area := io.NewSectionReader(d.File, e.Offset(), e.Size())
		rec, err := slot.Read(area, e.Size())
		if errors.Is(err, slot.ErrNoVerity) || errors.Is(err, slot.ErrNoRecord) {
			r.add("slot "+e.Label, fmt.Errorf("%s is in the boot order (%s) but holds no release: %v", e.Label, e.Slot(), err), "")
			continue
		}
		if err == nil {
			err = rec.Verify(o.Verifier)
		}
		if err != nil {
			r.add("slot "+e.Label, fmt.Errorf("%s: %w", e.Label, err), "")
			continue
		}
		v := rec.Record.Verity
		r.add("slot "+e.Label, nil, fmt.Sprintf("%s: %s %s, release record signed by %s", e.Label, rec.Record.Name, rec.Record.Version, o.KeyName))
		root, err := v.Root()
		if err == nil {
			_, err = verity.Verify(area, 0, v.HashOffset, root)
		}
		if err != nil {
			err = fmt.Errorf("%s: %w", e.Label, err)
		}
		r.add("verity "+e.Label, err, fmt.Sprintf("%s: %d data blocks, root %s", e.Label, v.DataBlocks, v.RootHash))
	}
	return r.finish(), nil
}

// Partition verifies a lone partition image (usr.img) at path against the
// manifest's partition with that label.
func Partition(ctx context.Context, path, label string, o Options) (*Report, error) {
	d, err := layout.OpenDisk(path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	f, size := d.File, d.Size
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
	if size != p.Size {
		r.add("size "+label, fmt.Errorf("%s is %d bytes, partition %s is %d bytes", path, size, label, p.Size), "")
		return r.finish(), nil
	}
	r.add("size "+label, nil, fmt.Sprintf("%d bytes", size))
	checkPartitions(ctx, r, f, m, []manifest.Partition{*p}, func(*manifest.Partition) int64 { return 0 }, o)
	return r.finish(), nil
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
func checkPartitions(ctx context.Context, r *Report, f io.ReaderAt, m *manifest.Manifest, parts []manifest.Partition, offset func(*manifest.Partition) int64, o Options) {
	workers := o.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	jobs := make([]*hashing.Job, len(parts))
	for i := range parts {
		jobs[i] = &hashing.Job{R: f, Off: offset(&parts[i]), Size: parts[i].Size}
	}
	hashing.Chunked(jobs, workers, nil)
	for i, p := range parts {
		j := jobs[i]
		var err error
		switch {
		case j.Err != nil:
			err = fmt.Errorf("reading %s: %w", p.Label, j.Err)
		case j.Sum != p.Digest:
			err = fmt.Errorf("%s: digest %s, the manifest says %s", p.Label, j.Sum, p.Digest)
		}
		r.add("digest "+p.Label, err, fmt.Sprintf("%s: %d bytes, digest %.16s…", p.Label, p.Size, p.Digest))
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
func checkVerity(f io.ReaderAt, off int64, p *manifest.Partition) error {
	v := p.Verity
	root, err := hex.DecodeString(v.RootHash)
	if err != nil {
		return fmt.Errorf("%s: manifest root hash: %w", p.Label, err)
	}
	if v.HashOffset >= p.Size {
		return fmt.Errorf("%s: verity hash offset %d is outside the %d-byte partition", p.Label, v.HashOffset, p.Size)
	}
	// The file itself, not a section of it: verity then skips the holes
	// of a sparse image (a file) instead of reading them.
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
	d, err := layout.OpenDisk(path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	f := d.File
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
	t, err := d.ReadTable()
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
