package registry

import (
	"bytes"
	"errors"
	"io"
	"os"

	"github.com/kiln-os/kiln/internal/hashing"
)

// sparseReader reads a file's first size bytes, the holes as zeros
// without reading them from the file.
type sparseReader struct {
	f         *os.File
	off, size int64
	extEnd    int64 // end of the extent holding off
	hole      bool
}

// extentWindow bounds one search for the next extent.
const extentWindow = 1 << 30

var errStop = errors.New("stop")

func (r *sparseReader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	if r.off >= r.extEnd {
		err := hashing.Extents(r.f, r.off, min(extentWindow, r.size-r.off), func(off, n int64, hole bool) error {
			r.extEnd, r.hole = off+n, hole
			return errStop
		})
		if err != nil && err != errStop {
			return 0, err
		}
		if r.hole && r.extEnd == r.size {
			// A hole to the end, or the end of a file that shrank.
			if st, err := r.f.Stat(); err != nil {
				return 0, err
			} else if st.Size() < r.size {
				return 0, io.ErrUnexpectedEOF
			}
		}
	}
	n := int(min(int64(len(p)), r.extEnd-r.off))
	if r.hole {
		clear(p[:n])
	} else if m, err := r.f.ReadAt(p[:n], r.off); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the file shrank
		}
		r.off += int64(m)
		return m, err
	}
	r.off += int64(n)
	return n, nil
}

// sparseBlock is the unit sparseWriter leaves as a hole when all zero.
const sparseBlock = 4096

var zeroBlock = make([]byte, sparseBlock)

// sparseWriter writes a stream to a file at increasing offsets, leaving
// every aligned all-zero block a hole; finish sets the file's size.
type sparseWriter struct {
	f   *os.File
	off int64
}

func (w *sparseWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		// The first block: up to the next block boundary.
		n := min(len(p), int(sparseBlock-w.off%sparseBlock))
		if bytes.Equal(p[:n], zeroBlock[:n]) {
			w.off += int64(n)
			p = p[n:]
			continue
		}
		// A run of blocks holding data, written in one call.
		end := n
		for end < len(p) {
			next := min(end+sparseBlock, len(p))
			if bytes.Equal(p[end:next], zeroBlock[:next-end]) {
				break
			}
			end = next
		}
		if _, err := w.f.WriteAt(p[:end], w.off); err != nil {
			return total - len(p), err
		}
		w.off += int64(end)
		p = p[end:]
	}
	return total, nil
}

// finish gives the file its full size (a trailing hole has no blocks).
func (w *sparseWriter) finish() error { return w.f.Truncate(w.off) }
