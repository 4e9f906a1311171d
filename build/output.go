package build

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build/diskimage"
	"github.com/kiln-os/kiln/build/provenance"
	"github.com/kiln-os/kiln/build/sbom"
)

// ErrOutput is returned when the output directory cannot take a build.
var ErrOutput = errors.New("output")

// ForeignFilesError is returned when the output directory holds files that
// no build wrote: kiln does not merge into, or replace, what it did not
// make.
type ForeignFilesError struct {
	Dir   string
	Names []string
}

func (e *ForeignFilesError) Error() string {
	return fmt.Sprintf("output: %s holds files kiln did not write (%s): build into a new or empty directory, or an earlier build's output", e.Dir, strings.Join(e.Names, ", "))
}

// Unwrap makes errors.Is(err, ErrOutput) match.
func (e *ForeignFilesError) Unwrap() error { return ErrOutput }

// outputNames are every file a build may leave in its output directory:
// the disk image, the USR image, the manifest, its signature, the block
// map, the SBOMs, the provenance, and the disk image converted to each
// format (--format).
var outputNames = func() []string {
	names := []string{DiskFile, UsrFile, ManifestFile, ManifestFile + ".sig", BlockMapFile, sbom.SPDXFile, sbom.CycloneDXFile, provenance.File}
	for _, f := range diskimage.Formats() {
		if n := f.FileName(); !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}()

// stagePrefix starts the name of a build's staging directory inside the
// output directory.
const stagePrefix = ".kiln-build-"

// output is the output directory of a running build: locked, holding the
// build's staging directory.
type output struct {
	dir     string
	stage   string
	lock    *os.File
	created bool
}

// openOutput prepares dir for a build. It must be missing (it is created),
// empty, or an earlier build's output: only kiln's output files and
// staging directories. It takes dir's exclusive lock (a second build into
// dir is refused while this one runs), removes the staging directories of
// earlier builds that were killed, and makes this build's.
func openOutput(dir string) (*output, error) {
	o := &output{dir: dir}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		o.created = true
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOutput, err)
	}
	lock, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOutput, err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s: another kiln build is writing into it", ErrOutput, dir)
		}
		return nil, fmt.Errorf("%w: locking %s: %w", ErrOutput, dir, err)
	}
	o.lock = lock
	entries, err := lock.ReadDir(-1)
	if err != nil {
		o.abort()
		return nil, fmt.Errorf("%w: %w", ErrOutput, err)
	}
	var foreign, stale []string
	for _, e := range entries {
		switch n := e.Name(); {
		case strings.HasPrefix(n, stagePrefix) && e.IsDir():
			stale = append(stale, n)
		case !slices.Contains(outputNames, n) || !e.Type().IsRegular():
			foreign = append(foreign, n)
		}
	}
	if len(foreign) > 0 {
		o.abort()
		return nil, &ForeignFilesError{Dir: dir, Names: foreign}
	}
	for _, n := range stale {
		// A build killed before it could clean up (its lock died with it).
		if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
			o.abort()
			return nil, fmt.Errorf("%w: removing %s left by an earlier build: %w", ErrOutput, n, err)
		}
	}
	if o.stage, err = os.MkdirTemp(dir, stagePrefix); err != nil {
		o.abort()
		return nil, fmt.Errorf("%w: %w", ErrOutput, err)
	}
	return o, nil
}

// commit replaces the directory's earlier output with the files names in
// the stage, whole: an earlier output file not among names (a signature
// of an earlier signed build, say) is removed first. It releases the lock.
func (o *output) commit(names []string) error {
	defer o.unlock()
	for _, n := range outputNames {
		if !slices.Contains(names, n) {
			if err := os.Remove(filepath.Join(o.dir, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%w: removing the earlier %s: %w", ErrOutput, n, err)
			}
		}
	}
	for _, n := range names {
		if err := os.Rename(filepath.Join(o.stage, n), filepath.Join(o.dir, n)); err != nil {
			return fmt.Errorf("%w: %w", ErrOutput, err)
		}
	}
	return os.RemoveAll(o.stage)
}

// abort removes the stage, and the directory when the build created it and
// it is empty; it releases the lock.
func (o *output) abort() {
	if o.stage != "" {
		os.RemoveAll(o.stage)
	}
	if o.created {
		os.Remove(o.dir)
	}
	o.unlock()
}

func (o *output) unlock() {
	if o.lock != nil {
		o.lock.Close()
		o.lock = nil
	}
}
