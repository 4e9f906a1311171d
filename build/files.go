package build

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
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

// ReadAt lets writers that read back what they wrote do so.
func (b *boundedWriter) ReadAt(p []byte, off int64) (int, error) {
	r, ok := b.w.(io.ReaderAt)
	if !ok {
		return 0, errors.New("not readable")
	}
	if off < 0 || off >= b.limit {
		return 0, io.EOF
	}
	if int64(len(p)) > b.limit-off {
		p = p[:b.limit-off]
	}
	return r.ReadAt(p, b.off+off)
}

// copySparse copies size bytes of src (from 0) to dst at dstOff, skipping
// holes, so a mostly empty partition image stays sparse in the disk.
func copySparse(dst *os.File, dstOff int64, src *os.File, size int64) error {
	fd := int(src.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				return nil // only a hole is left
			}
			return copyRange(dst, dstOff+off, src, off, size-off)
		}
		if data >= size {
			return nil
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil || hole > size {
			hole = size
		}
		if err := copyRange(dst, dstOff+data, src, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyRange copies n bytes, in the kernel when it can.
func copyRange(dst *os.File, dstOff int64, src *os.File, srcOff, n int64) error {
	for n > 0 {
		so, do := srcOff, dstOff
		c, err := unix.CopyFileRange(int(src.Fd()), &so, int(dst.Fd()), &do, int(min(n, 1<<30)), 0)
		if err != nil || c == 0 {
			// Fall back to a buffered copy.
			_, err := io.CopyBuffer(io.NewOffsetWriter(dst, dstOff), io.NewSectionReader(src, srcOff, n), make([]byte, 1<<20))
			return err
		}
		srcOff, dstOff, n = srcOff+int64(c), dstOff+int64(c), n-int64(c)
	}
	return nil
}

// hashJob is one byte range to SHA-256.
type hashJob struct {
	r    io.ReaderAt
	off  int64
	size int64
	sum  string
	err  error
}

// hashRanges hashes the ranges, several at once, with a 1 MiB buffer each.
// Holes of sparse files are hashed as zeros without being read.
func hashRanges(jobs []*hashJob, workers int, count *progressCounter) {
	ch := make(chan *hashJob)
	var wg sync.WaitGroup
	zeros := make([]byte, 1<<20)
	for range max(workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for j := range ch {
				h := sha256.New()
				j.err = forEachExtent(j.r, j.off, j.size, func(off, n int64, hole bool) error {
					for n > 0 {
						c := min(n, int64(len(buf)))
						if hole {
							h.Write(zeros[:c])
						} else {
							if _, err := j.r.ReadAt(buf[:c], off); err != nil {
								return err
							}
							h.Write(buf[:c])
						}
						count.add(c)
						off, n = off+c, n-c
					}
					return nil
				})
				j.sum = hex.EncodeToString(h.Sum(nil))
			}
		}()
	}
	for _, j := range jobs {
		ch <- j
	}
	close(ch)
	wg.Wait()
}

// forEachExtent calls fn for the data and hole extents of [off, off+size)
// in order. A reader that is not a file (or a filesystem without
// SEEK_DATA) is one data extent.
func forEachExtent(r io.ReaderAt, off, size int64, fn func(off, n int64, hole bool) error) error {
	f, ok := r.(*os.File)
	if !ok {
		return fn(off, size, false)
	}
	fd := int(f.Fd())
	end := off + size
	for off < end {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return fn(off, end-off, true) // a hole to the end of the file
		}
		if err != nil {
			return fn(off, end-off, false)
		}
		data = min(data, end)
		if data > off {
			if err := fn(off, data-off, true); err != nil {
				return err
			}
			off = data
			continue
		}
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		hole = min(hole, end)
		if err := fn(off, hole-off, false); err != nil {
			return err
		}
		off = hole
	}
	return nil
}
