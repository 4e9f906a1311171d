// Package hashing computes SHA-256 over byte ranges of files, several
// ranges at once, reading holes of sparse files as zeros without reading
// them.
package hashing

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"sync"

	"golang.org/x/sys/unix"
)

// Job is one byte range to hash; Sum and Err are set by Ranges.
type Job struct {
	R    io.ReaderAt
	Off  int64
	Size int64
	Sum  string // hex SHA-256
	Err  error
}

// Ranges hashes the jobs with up to workers goroutines, each with a 1 MiB
// buffer; progress, when not nil, is called with byte counts as they are
// hashed (from several goroutines).
func Ranges(jobs []*Job, workers int, progress func(int64)) {
	ch := make(chan *Job)
	var wg sync.WaitGroup
	zeros := make([]byte, 1<<20)
	for range max(workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for j := range ch {
				h := sha256.New()
				j.Err = Extents(j.R, j.Off, j.Size, func(off, n int64, hole bool) error {
					for n > 0 {
						c := min(n, int64(len(buf)))
						if hole {
							h.Write(zeros[:c])
						} else {
							if _, err := j.R.ReadAt(buf[:c], off); err != nil {
								return err
							}
							h.Write(buf[:c])
						}
						if progress != nil {
							progress(c)
						}
						off, n = off+c, n-c
					}
					return nil
				})
				j.Sum = hex.EncodeToString(h.Sum(nil))
			}
		}()
	}
	for _, j := range jobs {
		ch <- j
	}
	close(ch)
	wg.Wait()
}

// Extents calls fn for the data and hole extents of [off, off+size) in
// order. A reader without a file descriptor (an Fd method, as *os.File
// has), or a file whose filesystem lacks SEEK_DATA, is one data extent.
func Extents(r io.ReaderAt, off, size int64, fn func(off, n int64, hole bool) error) error {
	f, ok := r.(interface{ Fd() uintptr })
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

// Span is one byte range of a reader.
type Span struct{ Off, Size int64 }

// Concat returns the hex SHA-256 of the spans of r, concatenated in order
// (holes of a sparse file read as zeros without reading them).
func Concat(r io.ReaderAt, spans []Span) (string, error) {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	zeros := make([]byte, len(buf))
	for _, s := range spans {
		err := Extents(r, s.Off, s.Size, func(off, n int64, hole bool) error {
			for n > 0 {
				c := min(n, int64(len(buf)))
				if hole {
					h.Write(zeros[:c])
				} else {
					if _, err := r.ReadAt(buf[:c], off); err != nil {
						return err
					}
					h.Write(buf[:c])
				}
				off, n = off+c, n-c
			}
			return nil
		})
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
