package build

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/kiln-os/kiln/build/blockmap"
	"github.com/kiln-os/kiln/build/diskimage"
	"github.com/kiln-os/kiln/build/fs/ext4"
	"github.com/kiln-os/kiln/build/fs/fat"
	"github.com/kiln-os/kiln/build/fs/squashfs"
	"github.com/kiln-os/kiln/build/manifest"
	"github.com/kiln-os/kiln/build/slot"
	"github.com/kiln-os/kiln/build/source"
	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/build/verity"
	"github.com/kiln-os/kiln/internal/hashing"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
	"github.com/kiln-os/kiln/sign/secureboot"
)

// Output file names inside the output directory.
const (
	DiskFile     = "disk.img"
	UsrFile      = "usr.img"
	ManifestFile = "manifest.json"
	BlockMapFile = "usr.blockmap.json"
)

// Options control a build.
type Options struct {
	// OutDir receives disk.img, usr.img, manifest.json and the USR block
	// map. It is created if missing; files are written to a temporary
	// directory inside it and renamed into place only when the whole build
	// succeeded.
	OutDir string
	// SourceDateEpoch is the time of everything the build creates
	// (directories, inline files, superblocks); it is also recorded.
	SourceDateEpoch time.Time
	// KilnVersion is recorded in the manifest.
	KilnVersion string
	Progress    Progress
	Log         *slog.Logger
	// Workers bounds parallel work; 0 uses every core.
	Workers int
	// Signer, when set, signs each USR slot's release record and the
	// manifest (manifest.json.sig) before the outputs are moved into
	// place. Unsigned builds cannot be installed by payload apply.
	Signer sign.Signer
	// SecureBoot, when set, signs the EFI binaries a bootable build writes
	// (Authenticode): the chooser on the ESP, and the slot's kernel when
	// the recipe's boot.sign-kernel asks.
	SecureBoot *secureboot.Key
	// Formats are the formats the disk image is converted to, each into
	// its diskimage file name beside disk.img (disk.qcow2, disk.vhd, ...)
	// and listed in the manifest. Raw is disk.img itself, always written.
	Formats []diskimage.Format
}

// Result describes a finished build.
type Result struct {
	Manifest *manifest.Manifest
	// Paths of the outputs.
	Disk, Usr, ManifestPath, BlockMap string
	// Signature is the manifest's signature file, when it was signed.
	Signature string
	// Stages are the durations of the build's stages, in order.
	Stages []StageTime
}

// StageTime is how long one stage took.
type StageTime struct {
	Name     string        `json:"name"`
	Duration time.Duration `json:"duration_ns"`
	Bytes    int64         `json:"bytes"`
}

// usrSpec returns the partition whose image is written out alone as
// usr.img: the recipe's first verity-protected partition (USR-A).
func usrSpec(r *Recipe) *PartitionSpec {
	for _, p := range r.Partitions {
		if p.Verity {
			return p
		}
	}
	return nil
}

// Build runs the whole pipeline for a recipe.
func Build(ctx context.Context, r *Recipe, opts Options) (*Result, error) {
	if opts.Progress == nil {
		opts.Progress = NoProgress{}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	b := &builder{r: r, opts: opts, log: opts.Log}
	return b.run(ctx)
}

// builder carries what the stages share: the recipe, options, the staging
// directory and the stage clock. Stages pass their results as values.
type builder struct {
	r       *Recipe
	opts    Options
	log     *slog.Logger
	stages  []StageTime
	current *StageTime
	started time.Time
	counter *progressCounter
}

func (b *builder) start(name string, total int64) *progressCounter {
	b.end()
	b.stages = append(b.stages, StageTime{Name: name})
	b.current = &b.stages[len(b.stages)-1]
	b.started = time.Now()
	b.counter = &progressCounter{p: b.opts.Progress}
	b.opts.Progress.Start(name, total)
	b.log.Debug("stage start", "stage", name, "bytes", total)
	return b.counter
}

func (b *builder) end() {
	if b.current == nil {
		return
	}
	b.current.Duration = time.Since(b.started)
	b.current.Bytes = b.counter.total.Load()
	b.opts.Progress.End()
	b.log.Debug("stage end", "stage", b.current.Name, "duration", b.current.Duration, "bytes", b.current.Bytes)
	b.current = nil
}

// run is the build, stage by stage: sources → trees, the disk, the
// filesystems and verity, the digests, the converted images, the
// manifest; then the outputs replace OutDir's. Every stage reads and writes through ctx, so an
// interrupt stops the build within one block of I/O.
func (b *builder) run(ctx context.Context) (res *Result, err error) {
	table, err := b.r.Layout.Plan(b.r.Size, b.r.Seed)
	if err != nil {
		return nil, err
	}
	out, err := openOutput(b.opts.OutDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			out.abort() // nothing of a failed build stays behind
		}
	}()
	spool, err := source.NewSpool(out.stage)
	if err != nil {
		return nil, err
	}
	defer spool.Close()

	trees, sourceTrees, sources, err := b.readSources(ctx, spool)
	if err != nil {
		return nil, err
	}
	if err := b.addBoot(trees); err != nil {
		return nil, err
	}
	diskPath := filepath.Join(out.stage, DiskFile)
	if err := layout.CreateDisk(diskPath, table); err != nil {
		if errors.Is(err, layout.ErrTooLarge) {
			return nil, fmt.Errorf("recipe size %s: %s's filesystem holds no file that large: %w", layout.FormatSize(table.Size()), b.opts.OutDir, layout.ErrTooLarge)
		}
		return nil, err
	}
	disk, err := os.OpenFile(diskPath, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer disk.Close()
	m := &manifest.Manifest{
		Format: manifest.FormatVersion, Name: b.r.Name, Version: b.r.Version, Channel: b.r.Channel,
		KilnVersion: b.opts.KilnVersion, Layout: b.r.Layout.Name, DiskGUID: table.DiskGUID,
		DiskSize: table.Size(), SourceDateEpoch: b.opts.SourceDateEpoch.Unix(), DigestAlgorithm: hashing.ChunkedAlgorithm, Sources: sources,
	}
	usr, err := b.writePartitions(ctx, out.stage, disk, table, trees, m)
	if err != nil {
		return nil, err
	}
	defer usr.close()
	if err := b.digest(ctx, disk, table, m); err != nil {
		return nil, err
	}
	converted, err := b.convert(ctx, out.stage, disk, m)
	if err != nil {
		return nil, err
	}
	documents, err := b.writeSBOMs(out.stage, trees, sourceTrees, m)
	if err != nil {
		return nil, err
	}
	names, err := b.writeManifest(ctx, out.stage, disk, m, usr)
	if err != nil {
		return nil, err
	}
	prov, err := b.writeProvenance(out.stage, m)
	if err != nil {
		return nil, err
	}
	names = append(append(append(names, converted...), documents...), prov...)
	b.end()
	usr.close()
	disk.Close()
	spool.Close()
	if err := out.commit(names); err != nil {
		return nil, err
	}
	res = &Result{Manifest: m, Disk: filepath.Join(b.opts.OutDir, DiskFile), ManifestPath: filepath.Join(b.opts.OutDir, ManifestFile), Stages: b.stages}
	if b.opts.Signer != nil {
		res.Signature = res.ManifestPath + ".sig"
	}
	if usr.file != nil {
		res.Usr = filepath.Join(b.opts.OutDir, UsrFile)
		res.BlockMap = filepath.Join(b.opts.OutDir, BlockMapFile)
	}
	return res, nil
}

// readSources reads every partition's sources into a tree (stage
// "sources").
func (b *builder) readSources(ctx context.Context, spool *source.Spool) (map[string]*tree.Tree, map[string]sourceTree, []manifest.Source, error) {
	b.start("sources", 0)
	trees := map[string]*tree.Tree{}
	sourceTrees := map[string]sourceTree{}
	var sources []manifest.Source
	for _, p := range b.r.Partitions {
		if err := ctx.Err(); err != nil {
			return nil, nil, nil, err
		}
		t, full, src, err := partitionTree(ctx, b.r, p, spool, b.opts.SourceDateEpoch, b.log)
		if err != nil {
			return nil, nil, nil, err
		}
		trees[p.Label] = t
		if full != nil {
			sourceTrees[p.Label] = sourceTree{tree: full, subdir: p.Subdir}
		}
		if src != nil {
			sources = append(sources, *src)
		}
		b.log.Info("source read", "partition", p.Label, "entries", t.Stats().Entries, "bytes", t.Stats().Bytes)
	}
	return trees, sourceTrees, sources, nil
}

// usrOutput is the verity-protected USR partition written on its own:
// usr.img and its block map (both nil when the recipe has none).
type usrOutput struct {
	file *os.File
	m    *blockmap.Map
}

func (u *usrOutput) close() {
	if u.file != nil {
		u.file.Close()
	}
}

// writePartitions writes every partition the recipe fills (stages
// "filesystem LABEL" and "verity LABEL") and lists them all in m.
func (b *builder) writePartitions(ctx context.Context, stage string, disk *os.File, table *layout.Table, trees map[string]*tree.Tree, m *manifest.Manifest) (*usrOutput, error) {
	specs := map[string]*PartitionSpec{}
	for _, p := range b.r.Partitions {
		specs[p.Label] = p
	}
	usrSpec := usrSpec(b.r)
	usr := &usrOutput{}
	dev := ctxIO{ctx, disk}
	for _, e := range table.Partitions {
		mp := manifest.Partition{Number: e.Number, Label: e.Label, Type: e.Type, TypeName: layout.TypeName(e.Type),
			GUID: e.GUID, Offset: e.Offset(), Size: e.Size()}
		if p := specs[e.Label]; p != nil {
			if err := ctx.Err(); err != nil {
				usr.close()
				return nil, err
			}
			var err error
			if p == usrSpec {
				usr.file, usr.m, err = b.writeUsr(ctx, stage, p, b.r.Layout.Partition(e.Label), e, trees[e.Label], &mp)
				if err == nil {
					if err = copySparse(ctx, disk, e.Offset(), usr.file, e.Size()); err != nil {
						err = fmt.Errorf("%s: copying into the disk: %w", e.Label, err)
					}
				}
			} else {
				err = b.writeFS(&boundedWriter{w: dev, off: e.Offset(), limit: e.Size(), name: e.Label}, p, e, trees[e.Label], &mp)
			}
			if err != nil {
				usr.close()
				return nil, err
			}
		}
		m.Partitions = append(m.Partitions, mp)
	}
	return usr, nil
}

// digest sets every partition's chunked digest (stage "hash").
func (b *builder) digest(ctx context.Context, disk *os.File, table *layout.Table, m *manifest.Manifest) error {
	var jobs []*hashing.Job
	for _, e := range table.Partitions {
		jobs = append(jobs, &hashing.Job{R: ctxIO{ctx, disk}, Off: e.Offset(), Size: e.Size()})
	}
	hashing.Chunked(jobs, b.opts.Workers, b.start("hash", table.Size()).add)
	for i, j := range jobs {
		if j.Err != nil {
			return fmt.Errorf("%s: hashing: %w", m.Partitions[i].Label, j.Err)
		}
		m.Partitions[i].Digest = j.Sum
	}
	var err error
	if m.Outside, err = manifest.HashOutside(disk, table); err != nil {
		return err
	}
	return nil
}

// convert writes the disk image in each format of Options.Formats (stages
// "convert FORMAT"), lists each file in m (name, format, sizes, digest)
// and returns their names.
func (b *builder) convert(ctx context.Context, stage string, disk *os.File, m *manifest.Manifest) ([]string, error) {
	var names []string
	var src *diskimage.Source
	// In the formats' own order, whatever order they were asked in: the
	// manifest is the same.
	formats := slices.Clone(b.opts.Formats)
	slices.Sort(formats)
	for _, f := range slices.Compact(formats) {
		if f == diskimage.Raw {
			continue // disk.img itself
		}
		if src == nil {
			var err error
			if src, err = diskimage.NewSource(disk, m.DiskSize); err != nil {
				return nil, err
			}
		}
		c := b.start("convert "+f.String(), m.DiskSize)
		name := f.FileName()
		res, err := diskimage.WriteFile(ctx, filepath.Join(stage, name), src, f,
			diskimage.Options{Workers: b.opts.Workers, Time: b.opts.SourceDateEpoch, Name: name, Progress: c.add})
		if err != nil {
			return nil, fmt.Errorf("converting the disk image: %w", err)
		}
		m.Outputs = append(m.Outputs, manifest.Output{Name: name, Format: f.String(), Size: res.Size, VirtualSize: res.VirtualSize, Digest: res.Digest})
		names = append(names, name)
		b.log.Info("converted", "format", f, "file", name, "bytes", res.Size, "digest", res.Digest)
	}
	if len(m.Outputs) > 0 {
		m.Format = manifest.OutputsFormatVersion
	}
	return names, nil
}

// writeManifest writes the manifest, the USR block map and the signature
// into the stage (stages "manifest" and "sign") and returns the names of
// every output.
func (b *builder) writeManifest(ctx context.Context, stage string, disk *os.File, m *manifest.Manifest, usr *usrOutput) ([]string, error) {
	b.start("manifest", 0)
	data, err := m.Marshal()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(stage, ManifestFile), data, 0o644); err != nil {
		return nil, err
	}
	names := []string{DiskFile, ManifestFile}
	if usr.m != nil {
		f, err := os.Create(filepath.Join(stage, BlockMapFile))
		if err != nil {
			return nil, err
		}
		if err := usr.m.Write(f); err != nil {
			f.Close()
			return nil, err
		}
		if err := f.Close(); err != nil {
			return nil, err
		}
		names = append(names, UsrFile, BlockMapFile)
	}
	if err := disk.Sync(); err != nil {
		return nil, err
	}
	if b.opts.Signer != nil {
		b.start("sign", 0)
		if err := sign.SignFile(ctx, b.opts.Signer, filepath.Join(stage, ManifestFile)); err != nil {
			return nil, fmt.Errorf("signing the manifest: %w", err)
		}
		names = append(names, ManifestFile+".sig")
	}
	return names, nil
}

// ErrUnstorable marks a tree that a filesystem cannot store as it is (a
// time, id, name, xattr or device number out of its range): the input is
// at fault, not the build.
var ErrUnstorable = errors.New("build: the tree cannot be stored as it is")

// unstorable are the writers' errors about what a tree holds.
var unstorable = []error{
	ext4.ErrTree, ext4.ErrTooManyLinks, ext4.ErrXattr,
	squashfs.ErrTooManyIDs, squashfs.ErrXattrName, squashfs.ErrDevice, squashfs.ErrTime, squashfs.ErrInode,
	squashfs.ErrName, squashfs.ErrDirLink, squashfs.ErrInodeType,
	fat.ErrUnsupportedType, fat.ErrInvalidName, fat.ErrDuplicateName, fat.ErrFileTooLarge, fat.ErrDirFull,
	tree.ErrLinux,
}

// unstorableError keeps a writer's message and adds ErrUnstorable.
type unstorableError struct{ err error }

func (u unstorableError) Error() string   { return u.err.Error() }
func (u unstorableError) Unwrap() []error { return []error{ErrUnstorable, u.err} }

// fsIDs derives a filesystem's UUID and hash seed from the build seed.
func fsIDs(seed, label string) (uuid, hashSeed [16]byte) {
	return layout.DeriveGUID(seed, "fs-uuid", label), layout.DeriveGUID(seed, "fs-hash-seed", label)
}

// writeFS writes one partition's filesystem through w (sized to the
// partition) and records it in mp.
func (b *builder) writeFS(w *boundedWriter, p *PartitionSpec, e layout.Entry, t *tree.Tree, mp *manifest.Partition) error {
	c := b.start("filesystem "+e.Label, t.Stats().Bytes)
	w.count = c
	m, err := writeFilesystem(w, b.r, p, e, t, e.Size(), b.opts, false)
	if err != nil {
		return err
	}
	mp.Filesystem, mp.FilesystemSize = p.Filesystem, m.ImageSize
	return nil
}

// writeFilesystem runs the writer the spec names.
func writeFilesystem(w *boundedWriter, r *Recipe, p *PartitionSpec, e layout.Entry, t *tree.Tree, size int64, opts Options, readOnly bool) (*blockmap.Map, error) {
	label := p.FSLabel
	if label == "" {
		label = e.Label
	}
	uuid, hashSeed := fsIDs(r.Seed, e.Label)
	var m *blockmap.Map
	var err error
	switch p.Filesystem {
	case "ext4":
		m, err = ext4.Write(w, t, ext4.Options{Size: size, ReadOnly: readOnly, UUID: uuid, HashSeed: hashSeed,
			Label: truncate(label, 16), Mtime: opts.SourceDateEpoch, Sparse: !readOnly})
	case "squashfs":
		o := squashfs.Options{Level: p.Level, Mtime: opts.SourceDateEpoch, Workers: opts.Workers}
		if p.Compression == "gzip" {
			o.Compression = squashfs.Gzip
		}
		m, err = squashfs.Write(w, t, o)
	case "vfat":
		vid := layout.DeriveGUID(r.Seed, "fat-volume-id", e.Label)
		m, err = fat.Write(w, t, fat.Options{Size: size, Label: truncate(label, 11), VolumeID: uint32(vid[0])<<24 | uint32(vid[1])<<16 | uint32(vid[2])<<8 | uint32(vid[3]),
			Mtime: opts.SourceDateEpoch, HiddenSectors: uint32(e.Start)})
	default:
		err = fmt.Errorf("unknown filesystem %q", p.Filesystem)
	}
	if err != nil {
		for _, u := range unstorable {
			if errors.Is(err, u) {
				err = unstorableError{err}
				break
			}
		}
		if strings.HasPrefix(err.Error(), p.Filesystem+": ") {
			return nil, fmt.Errorf("%s: %w", e.Label, err) // the writer names itself
		}
		return nil, fmt.Errorf("%s: %s: %w", e.Label, p.Filesystem, err)
	}
	return m, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// writeUsr writes the verity-protected USR partition into its own image
// file (usr.img, the size of the partition): the filesystem from byte 0,
// zero-padded to the layout's fs-size when it gives one (so the hash tree
// sits at the fixed offset the boot code expects), then the dm-verity
// superblock and hash tree.
func (b *builder) writeUsr(ctx context.Context, stage string, p *PartitionSpec, lp *layout.Partition, e layout.Entry, t *tree.Tree, mp *manifest.Partition) (*os.File, *blockmap.Map, error) {
	f, err := os.OpenFile(filepath.Join(stage, UsrFile), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, nil, err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	if err := f.Truncate(e.Size()); err != nil {
		return nil, nil, err
	}
	// The filesystem may use what the hash tree leaves of the partition.
	limit := e.Size() - verity.HashTreeSize(uint64(e.Size()/4096))
	if lp.FSSize > 0 {
		if lp.FSSize+verity.HashTreeSize(uint64(lp.FSSize/4096)) > e.Size() {
			return nil, nil, fmt.Errorf("%s: fs-size %d leaves no room for the verity hash tree in a %d-byte partition", e.Label, lp.FSSize, e.Size())
		}
		limit = lp.FSSize
	}
	c := b.start("filesystem "+e.Label, t.Stats().Bytes)
	w := &boundedWriter{w: ctxIO{ctx, f}, limit: limit, name: e.Label, count: c}
	fsSize := int64(0)
	if p.Filesystem == "ext4" && lp.FSSize > 0 {
		fsSize = lp.FSSize // a fixed-size ext4, as Container Linux's fs_blocks
	}
	m, err := writeFilesystem(w, b.r, p, e, t, fsSize, b.opts, true)
	if err != nil {
		return nil, nil, err
	}
	dataSize := (m.ImageSize + 4095) / 4096 * 4096
	if lp.FSSize > 0 {
		dataSize = lp.FSSize
	}
	if dataSize > limit {
		return nil, nil, fmt.Errorf("%s: %s image of %d bytes exceeds the %d bytes available before the verity hash tree", e.Label, p.Filesystem, m.ImageSize, limit)
	}
	mp.Filesystem, mp.FilesystemSize = p.Filesystem, m.ImageSize

	// A verity data area larger than the filesystem (a layout's fixed
	// fs-size) gets a pointer to the superblock in its first block after
	// the filesystem, so the slot's record can be found from the slot
	// alone (see slot.Locate).
	fsEnd, err := slot.FilesystemEnd(f, e.Size())
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", e.Label, err)
	}
	if at := (fsEnd + 4095) / 4096 * 4096; at < dataSize {
		if _, err := f.WriteAt(slot.Pointer(dataSize), at); err != nil {
			return nil, nil, err
		}
	}

	b.start("verity "+e.Label, dataSize)
	// The salt derives from the recipe's name, not its version, so it stays
	// the same from release to release: a delta then carries only the hash
	// blocks whose data changed (a new salt changes every one of them).
	salt := verity.SaltFromSeed([]byte(b.r.Name + "/verity/" + e.Label))
	params := verity.Params{DataBlocks: uint64(dataSize / 4096), Salt: salt, UUID: layout.DeriveGUID(b.r.Seed, "verity-uuid", e.Label)}
	root, err := verity.Format(ctxIO{ctx, f}, 0, dataSize, params)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: verity: %w", e.Label, err)
	}
	b.counter.add(dataSize)
	mp.Verity = &manifest.Verity{Algorithm: "sha256", RootHash: hex.EncodeToString(root), Salt: hex.EncodeToString(salt),
		DataBlockSize: 4096, HashBlockSize: 4096, DataBlocks: params.DataBlocks, HashOffset: dataSize}

	// The slot's signed release record, beside the verity superblock.
	rec := &slot.Record{Name: b.r.Name, Version: b.r.Version, Channel: b.r.Channel, RollbackFloor: b.r.RollbackFloor, Verity: slot.Verity{
		Algorithm: "sha256", RootHash: mp.Verity.RootHash, Salt: mp.Verity.Salt, DataBlockSize: 4096, HashBlockSize: 4096,
		DataBlocks: params.DataBlocks, HashOffset: dataSize}}
	enc, err := slot.Encode(rec, b.opts.Signer)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", e.Label, err)
	}
	if err := slot.Write(f, dataSize, enc); err != nil {
		return nil, nil, fmt.Errorf("%s: writing the release record: %w", e.Label, err)
	}
	ok = true
	return f, m, nil
}
