package build

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/kiln-os/kiln/build/manifest"
	"github.com/kiln-os/kiln/build/source"
	"github.com/kiln-os/kiln/build/source/oci"
	"github.com/kiln-os/kiln/build/tree"
)

// partitionTree resolves what goes into one partition: the source (if
// any), narrowed to Subdir, with the recipe's files placed over it. New
// directories and inline files get the build time (SOURCE_DATE_EPOCH),
// and every time later than it is clamped to it, whatever the source, so
// a checkout's fresh file times never reach the image.
//
// It returns the source's own tree too (nil without a source), before
// Subdir narrowed it: where the SBOM finds the package databases.
func partitionTree(ctx context.Context, r *Recipe, p *PartitionSpec, spool *source.Spool, epoch time.Time, log *slog.Logger) (*tree.Tree, *tree.Tree, *manifest.Source, error) {
	// Errors name the recipe's file, line and key: the source or file the
	// recipe names is at fault (exit 2), whatever went wrong reading it.
	key := "partitions." + p.Label
	failSource := func(err error) error {
		line := p.sourceLine
		if line == 0 {
			line = p.line
		}
		return &RecipeError{File: r.Path, Line: line, Key: key + ".source", Err: err}
	}
	t := tree.New(epoch)
	var full *tree.Tree
	var src *manifest.Source
	if p.Source != "" {
		kind, rest, _ := strings.Cut(p.Source, ":")
		budget, err := spoolBudget(r, p)
		if err != nil {
			return nil, nil, nil, failSource(err)
		}
		switch kind {
		case "dir":
			t, err = source.FromDir(r.resolve(rest))
		case "tar":
			t, err = spool.FromTar(r.resolve(rest), epoch, budget)
		default:
			spec := p.Source
			if kind == "oci" || kind == "oci-archive" || kind == "docker-archive" {
				// Relative paths are relative to the recipe.
				spec = kind + ":" + r.resolve(rest)
			}
			var img *oci.Image
			img, err = oci.FromImage(ctx, spool, spec, oci.Options{Mtime: epoch, Log: log, Budget: budget})
			if err == nil {
				t = img.Tree
				src = &manifest.Source{Partition: p.Label, Ref: p.Source, Digest: img.Digest, Layers: img.Layers}
			}
		}
		if err != nil {
			return nil, nil, nil, failSource(fmt.Errorf("%s: %w", p.Source, err))
		}
		if src == nil {
			src = &manifest.Source{Partition: p.Label, Ref: p.Source}
		}
		full = t
		if p.Subdir != "" && p.Subdir != "/" {
			sub, err := t.Sub(p.Subdir)
			if err != nil {
				return nil, nil, nil, &RecipeError{File: r.Path, Line: p.line, Key: key + ".subdir", Err: fmt.Errorf("%s of %s: %w", p.Subdir, p.Source, err)}
			}
			t = sub
		}
	}
	for _, f := range p.Files {
		n := &tree.Inode{Type: tree.Regular, Perm: f.Mode, UID: f.UID, GID: f.GID, Mtime: epoch}
		if f.From != "" {
			host := r.resolve(f.From)
			st, err := statRegular(host)
			if err != nil {
				return nil, nil, nil, &RecipeError{File: r.Path, Line: f.line, Key: key + ".files", Err: fmt.Errorf("%s: from %s: %w", f.Path, f.From, err)}
			}
			n.Size, n.Content = st, tree.HostFile(host)
		} else {
			n.Size, n.Content = int64(len(f.Content)), tree.Bytes(f.Content)
		}
		if err := t.Put(f.Path, n); err != nil {
			return nil, nil, nil, &RecipeError{File: r.Path, Line: f.line, Key: key + ".files", Err: fmt.Errorf("%s: %w", f.Path, err)}
		}
	}
	t.ClampTimes(epoch)
	return t, full, src, nil
}

// Spool bounds, as multiples of what a partition can hold: an ext4 or FAT
// partition never holds more file bytes than its size, but image layers
// may replace lower layers' files and tar headers take room, so twice
// that; squashfs compresses, and OS trees shrink 2.5 to 2.9 times with
// zstd level 3 (mksquashfs on Debian's /usr/share, /usr/lib/x86_64-linux-gnu
// and /usr/bin), so eight times.
const (
	spoolFactor         = 2
	spoolFactorSquashfs = 8
)

// spoolBudget bounds what partition p's source may spool (uncompressed
// tar streams), so a decompression bomb fails at once instead of filling
// the disk: the partition's filesystem bytes (its fs-size when the layout
// gives one) times spoolFactor, or spoolFactorSquashfs for squashfs.
func spoolBudget(r *Recipe, p *PartitionSpec) (*source.Budget, error) {
	table, err := r.Layout.Plan(r.Size, r.Seed)
	if err != nil {
		return nil, err
	}
	var size int64
	for _, e := range table.Partitions {
		if e.Label == p.Label {
			size = e.Size()
		}
	}
	if lp := r.Layout.Partition(p.Label); lp != nil && lp.FSSize > 0 {
		size = min(size, lp.FSSize)
	}
	if size <= 0 {
		return nil, fmt.Errorf("no partition %s in the layout", p.Label)
	}
	factor := int64(spoolFactor)
	if p.Filesystem == "squashfs" {
		factor = spoolFactorSquashfs
	}
	return &source.Budget{Limit: size * factor,
		For: fmt.Sprintf("partition %s takes %d bytes of %s; a source may spool %d times that", p.Label, size, p.Filesystem, factor)}, nil
}

// resolve makes a recipe-relative path absolute.
func (r *Recipe) resolve(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(r.Dir, p)
}
