package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/internal/hashing"
)

// statRegular returns the size of a regular host file.
func statRegular(p string) (int64, error) {
	st, err := os.Stat(p)
	if err != nil {
		return 0, err
	}
	if !st.Mode().IsRegular() {
		return 0, errors.New("not a regular file")
	}
	return st.Size(), nil
}

// ctxIO reads and writes through f until ctx is done, then fails every
// read and write with ctx's error, so that a long stage stops within one
// block of I/O after an interrupt.
type ctxIO struct {
	ctx context.Context
	f   *os.File
}

func (c ctxIO) ReadAt(p []byte, off int64) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.f.ReadAt(p, off)
}

// Fd is the file descriptor of the file behind c, so that holes of a
// sparse file are still found (not read) through c.
func (c ctxIO) Fd() uintptr { return c.f.Fd() }

func (c ctxIO) WriteAt(p []byte, off int64) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.f.WriteAt(p, off)
}

// boundedWriter confines writes to [off, off+limit) of w, so a filesystem
// writer can never spill into the next partition.
type boundedWriter struct {
	w     io.WriterAt
	off   int64
	limit int64
	name  string
	count *progressCounter
}

func (b *boundedWriter) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > b.limit || int64(len(p)) > b.limit-off {
		return 0, fmt.Errorf("%s: write of %d bytes at %d beyond the %d bytes it may use", b.name, len(p), off, b.limit)
	}
	n, err := b.w.WriteAt(p, b.off+off)
	b.count.add(int64(n))
	return n, err
}

// copySparse copies size bytes of src (from 0) to dst at dstOff, skipping
// holes, so a mostly empty partition image stays sparse in the disk.
func copySparse(ctx context.Context, dst *os.File, dstOff int64, src *os.File, size int64) error {
	return hashing.Extents(src, 0, size, func(off, n int64, hole bool) error {
		if hole {
			return nil
		}
		return copyRange(ctx, dst, dstOff+off, src, off, n)
	})
}

// copyRange copies n bytes, in the kernel when it can, 64 MiB at a time so
// that an interrupt stops it.
func copyRange(ctx context.Context, dst *os.File, dstOff int64, src *os.File, srcOff, n int64) error {
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		so, do := srcOff, dstOff
		c, err := unix.CopyFileRange(int(src.Fd()), &so, int(dst.Fd()), &do, int(min(n, 64<<20)), 0)
		if err != nil || c == 0 {
			// Fall back to a buffered copy.
			_, err := io.CopyBuffer(io.NewOffsetWriter(dst, dstOff), io.NewSectionReader(src, srcOff, n), make([]byte, 1<<20))
			return err
		}
		srcOff, dstOff, n = srcOff+int64(c), dstOff+int64(c), n-int64(c)
	}
	return nil
}
