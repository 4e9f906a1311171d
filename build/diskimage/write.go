package diskimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/kiln-os/kiln/internal/hashing"
	"github.com/kiln-os/kiln/layout"
)

// Options control a conversion. The output depends only on the raw
// image's content, Time and Name: never on Workers.
type Options struct {
	// Workers bounds the goroutines that read and compress; 0 uses every
	// core.
	Workers int
	// Time is the creation time a VHD footer records (a build passes
	// SOURCE_DATE_EPOCH); times before 2000, VHD's epoch, are recorded as
	// 2000.
	Time time.Time
	// Name is the file name a VMDK's descriptor gives its extent: the
	// image's own name. Default: the format's FileName.
	Name string
	// Progress, when set, is called with counts of raw bytes as they are
	// converted (holes count when they are passed over).
	Progress func(int64)
}

// Result describes a written image.
type Result struct {
	Format Format `json:"format"`
	// VirtualSize is the size of the disk the image holds: the raw
	// image's, rounded up where the format needs it (to 512 bytes for
	// qcow2, VMDK and VHDX; for VHD see VHDSize); the padding is zeros.
	VirtualSize int64 `json:"virtual_size"`
	// Size is the image file's size in bytes.
	Size int64 `json:"size"`
	// Digest is the chunked SHA-256 of the image file
	// (hashing.ChunkedAlgorithm); WriteFile sets it.
	Digest string `json:"digest,omitempty"`
}

// VirtualSize returns the size of the disk that format f holds for a raw
// image of size bytes.
func VirtualSize(f Format, size int64) int64 {
	switch f {
	case QCOW2, QCOW2Zstd, VMDK, VMDKSparse, VHDX, OVA:
		return roundUp(size, 512)
	case VHD, VHDDynamic:
		return VHDSize(size)
	}
	return size
}

// Write converts the raw image src into dst in format f. dst must be new
// and empty: runs of zeros are left as holes, which read as zeros. The
// image is Result.Size bytes long; its last bytes may be such a hole, so
// a file must be truncated to that size (WriteFile does).
func Write(ctx context.Context, dst io.WriterAt, src *Source, f Format, o Options) (*Result, error) {
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.Name == "" {
		o.Name = f.FileName()
	}
	var size int64
	var err error
	switch f {
	case Raw:
		size, err = writeRaw(ctx, dst, src, o)
	case QCOW2, QCOW2Zstd:
		size, err = writeQCOW2(ctx, dst, src, o, f == QCOW2Zstd)
	case VMDK:
		size, err = writeVMDKStream(ctx, dst, src, o)
	case VMDKSparse:
		size, err = writeVMDKSparse(ctx, dst, src, o)
	case VHD:
		size, err = writeVHDFixed(ctx, dst, src, o)
	case VHDDynamic:
		size, err = writeVHDDynamic(ctx, dst, src, o)
	case VHDX:
		size, err = writeVHDX(ctx, dst, src, o)
	case RawZstd:
		size, err = writeZstd(ctx, dst, src, o)
	case RawXZ:
		size, err = writeXZ(ctx, dst, src, o)
	case GCE:
		size, err = writeGCE(ctx, dst, src, o)
	case OVA:
		size, err = writeOVA(ctx, dst, src, o)
	default:
		return nil, fmt.Errorf("%w %s", ErrUnknownFormat, f)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f, err)
	}
	return &Result{Format: f, VirtualSize: VirtualSize(f, src.Size()), Size: size}, nil
}

// WriteFile converts src into a new file at path, written under a
// temporary name in path's directory and renamed into place only when it
// is whole: a failed or interrupted conversion leaves nothing behind. An
// existing file at path is replaced. The Result carries the file's
// digest.
func WriteFile(ctx context.Context, path string, src *Source, f Format, o Options) (res *Result, err error) {
	if o.Name == "" {
		o.Name = filepath.Base(path)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".kiln-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o644); err != nil {
		return nil, err
	}
	if res, err = Write(ctx, tmp, src, f, o); err != nil {
		return nil, err
	}
	if err := tmp.Truncate(res.Size); err != nil {
		return nil, err
	}
	if res.Digest, err = Digest(tmp, res.Size, o.Workers); err != nil {
		return nil, err
	}
	if err := tmp.Sync(); err != nil {
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, err
	}
	return res, nil
}

// Digest returns the chunked SHA-256 (hashing.ChunkedAlgorithm) of the
// first size bytes of r, hashed on workers goroutines.
func Digest(r io.ReaderAt, size int64, workers int) (string, error) {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	j := &hashing.Job{R: r, Size: size}
	hashing.Chunked([]*hashing.Job{j}, workers, nil)
	if j.Err != nil {
		return "", fmt.Errorf("diskimage: hashing: %w", j.Err)
	}
	return j.Sum, nil
}

// contentGUID derives a GUID for an image from its content ID.
func contentGUID(id [sha256.Size]byte, what string) layout.GUID {
	return layout.DeriveGUID(hex.EncodeToString(id[:]), what)
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// writeRaw copies the raw image's data, leaving its zeros as holes.
func writeRaw(ctx context.Context, dst io.WriterAt, src *Source, o Options) (int64, error) {
	p := &pipeline{src: src, bs: 1 << 20, workers: o.Workers, progress: o.Progress}
	_, err := p.run(ctx, func(b *block) error {
		return writeUnits(dst, b, b.off)
	})
	return src.Size(), err
}

// writeUnits writes the units of b that are not zeros at base + their
// offset in the block.
func writeUnits(dst io.WriterAt, b *block, base int64) error {
	for u, z := range b.zero {
		if z {
			continue
		}
		// Runs of data units in one write.
		if u > 0 && !b.zero[u-1] {
			continue
		}
		e := u
		for e < len(b.zero) && !b.zero[e] {
			e++
		}
		data := b.buf[u*unitSize : min(e*unitSize, len(b.buf))]
		if _, err := dst.WriteAt(data, base+int64(u*unitSize)); err != nil {
			return fmt.Errorf("diskimage: writing at %d: %w", base+int64(u*unitSize), err)
		}
	}
	return nil
}
