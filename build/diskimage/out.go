package diskimage

import (
	"fmt"
	"io"
)

// appender writes a file front to back through an io.WriterAt, in large
// writes; it can leave runs of zeros as holes (skip) and write earlier
// parts again (WriteAt, for headers known only at the end). Its error is
// sticky.
type appender struct {
	w   io.WriterAt
	off int64  // file offset of buf[0]
	buf []byte // pending bytes
	err error
}

const appendBuf = 1 << 20

func newAppender(w io.WriterAt, off int64) *appender {
	return &appender{w: w, off: off, buf: make([]byte, 0, appendBuf)}
}

// pos returns the offset of the next byte written.
func (a *appender) pos() int64 { return a.off + int64(len(a.buf)) }

func (a *appender) Write(p []byte) (int, error) {
	if a.err != nil {
		return 0, a.err
	}
	n := len(p)
	for len(p) > 0 {
		if len(a.buf) == 0 && len(p) >= appendBuf {
			// Large writes go straight through.
			if _, err := a.w.WriteAt(p, a.off); err != nil {
				a.err = fmt.Errorf("diskimage: writing at %d: %w", a.off, err)
				return 0, a.err
			}
			a.off += int64(len(p))
			return n, nil
		}
		c := copy(a.buf[len(a.buf):cap(a.buf)], p)
		a.buf = a.buf[:len(a.buf)+c]
		p = p[c:]
		if len(a.buf) == cap(a.buf) {
			if err := a.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

// flush writes the pending bytes.
func (a *appender) flush() error {
	if a.err != nil {
		return a.err
	}
	if len(a.buf) > 0 {
		if _, err := a.w.WriteAt(a.buf, a.off); err != nil {
			a.err = fmt.Errorf("diskimage: writing at %d: %w", a.off, err)
			return a.err
		}
		a.off += int64(len(a.buf))
		a.buf = a.buf[:0]
	}
	return nil
}

// skip leaves n bytes of zeros: a hole in a new file.
func (a *appender) skip(n int64) error {
	if err := a.flush(); err != nil {
		return err
	}
	a.off += n
	return nil
}

// zeros writes n zero bytes (short runs are written, long ones skipped).
func (a *appender) zeros(n int64) error {
	if n >= unitSize {
		return a.skip(n)
	}
	_, err := a.Write(zeroUnit[:n])
	return err
}

// writeBlock writes block b whole, its zero units as zeros, then zeros up
// to size bytes (the last block of a disk shorter than a whole block).
func (a *appender) writeBlock(b *block, size int64) error {
	for u, z := range b.zero {
		if z {
			if err := a.zeros(unitSize); err != nil {
				return err
			}
			continue
		}
		if _, err := a.Write(padUnit(b.unit(u))); err != nil {
			return err
		}
	}
	return a.zeros(size - int64(len(b.zero))*unitSize)
}

// align pads with zeros to a multiple of n.
func (a *appender) align(n int64) error {
	if r := a.pos() % n; r != 0 {
		return a.zeros(n - r)
	}
	return a.err
}

// WriteAt writes p at off, before or after the current position; pending
// bytes are flushed first.
func (a *appender) WriteAt(p []byte, off int64) (int, error) {
	if err := a.flush(); err != nil {
		return 0, err
	}
	if _, err := a.w.WriteAt(p, off); err != nil {
		a.err = fmt.Errorf("diskimage: writing at %d: %w", off, err)
		return 0, a.err
	}
	return len(p), nil
}
