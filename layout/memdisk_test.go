package layout

import (
	"errors"
	"io"
)

// memDisk is a disk in memory, for tests and fuzzing; it can fail a given
// write (an I/O error) or stop applying writes after some (a crash).
type memDisk struct {
	b []byte
	// failAt, when > 0, makes the failAt-th write fail with an I/O error.
	failAt int
	// crash, when set, drops every write after the crashAfter-th (the
	// machine lost power); the write at the cut keeps only its first half.
	crash      bool
	crashAfter int
	writes     int
	syncs      int
}

func newMemDisk(size int64) *memDisk { return &memDisk{b: make([]byte, size)} }

var errInjected = errors.New("injected I/O error")

func (m *memDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memDisk) WriteAt(p []byte, off int64) (int, error) {
	m.writes++
	if m.failAt > 0 && m.writes == m.failAt {
		return 0, errInjected
	}
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, errors.New("write outside the disk")
	}
	switch {
	case m.crash && m.writes > m.crashAfter+1:
		return len(p), nil
	case m.crash && m.writes == m.crashAfter+1:
		copy(m.b[off:], p[:len(p)/2]) // torn
		return len(p), nil
	}
	copy(m.b[off:], p)
	return len(p), nil
}

func (m *memDisk) Sync() error { m.syncs++; return nil }

// endsDisk is a read-only disk of size bytes holding head at its start,
// tail at its end and zeros between.
type endsDisk struct {
	size       int64
	head, tail []byte
}

func (d *endsDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= d.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && off+int64(n) < d.size {
		o := off + int64(n)
		switch tailStart := d.size - int64(len(d.tail)); {
		case o < int64(len(d.head)):
			n += copy(p[n:], d.head[o:])
		case o >= tailStart:
			n += copy(p[n:], d.tail[o-tailStart:])
		default:
			k := min(int64(len(p)-n), tailStart-o)
			clear(p[n : n+int(k)])
			n += int(k)
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
