package bsdiff

import (
	"bytes"
	"compress/bzip2"
	"errors"
	"fmt"
	"io"
)

// ErrCorrupt is wrapped by every error Patch returns for a malformed patch.
var ErrCorrupt = errors.New("bsdiff: corrupt patch")

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// NewSize returns the size of the file that patch produces, after checking
// the header.
func NewSize(patch []byte) (int64, error) {
	if len(patch) < headerSize || string(patch[:8]) != magic {
		return 0, corrupt("no BSDIFF40 header")
	}
	ctrlLen, diffLen, newSize := getOff(patch[8:]), getOff(patch[16:]), getOff(patch[24:])
	if ctrlLen < 0 || diffLen < 0 || newSize < 0 {
		return 0, corrupt("negative length in header")
	}
	if ctrlLen > int64(len(patch)-headerSize) || diffLen > int64(len(patch)-headerSize)-ctrlLen {
		return 0, corrupt("block lengths %d+%d exceed the %d-byte patch", ctrlLen, diffLen, len(patch))
	}
	return newSize, nil
}

// Patch applies patch to old and writes the result into dst, which must be
// exactly as long as the new file the patch declares. It never reads
// outside old, patch or dst, and rejects control entries that would move
// outside the new file; a hostile patch yields an error wrapping
// ErrCorrupt, never a panic.
func Patch(dst, old, patch []byte) error {
	newSize, err := NewSize(patch)
	if err != nil {
		return err
	}
	if newSize != int64(len(dst)) {
		return corrupt("patch makes %d bytes, want %d", newSize, len(dst))
	}
	ctrlLen, diffLen := getOff(patch[8:]), getOff(patch[16:])
	body := patch[headerSize:]
	ctrl := bzip2.NewReader(bytes.NewReader(body[:ctrlLen]))
	diff := bzip2.NewReader(bytes.NewReader(body[ctrlLen : ctrlLen+diffLen]))
	extra := bzip2.NewReader(bytes.NewReader(body[ctrlLen+diffLen:]))

	var newPos, oldPos int64
	oldSize := int64(len(old))
	var triple [24]byte
	// bsdiff emits at most one entry per byte of new data it scans, so more
	// entries than that mark a patch built to spin.
	entries, maxEntries := int64(0), newSize+16
	for newPos < newSize {
		if _, err := io.ReadFull(ctrl, triple[:]); err != nil {
			return corrupt("control block at new offset %d: %v", newPos, err)
		}
		x, y, z := getOff(triple[0:]), getOff(triple[8:]), getOff(triple[16:])
		if x < 0 || y < 0 || x > newSize-newPos || y > newSize-newPos-x {
			return corrupt("control entry (%d,%d,%d) at new offset %d leaves the %d-byte output", x, y, z, newPos, newSize)
		}
		if entries++; entries > maxEntries {
			return corrupt("more than %d control entries", maxEntries)
		}
		out := dst[newPos : newPos+x]
		if _, err := io.ReadFull(diff, out); err != nil {
			return corrupt("diff block at new offset %d: %v", newPos, err)
		}
		// Add the old bytes that lie inside the old file (bsdiff semantics:
		// positions outside add nothing).
		lo, hi := max(oldPos, 0), min(oldPos+x, oldSize)
		for i := lo; i < hi; i++ {
			out[i-oldPos] += old[i]
		}
		newPos += x
		oldPos += x
		if _, err := io.ReadFull(extra, dst[newPos:newPos+y]); err != nil {
			return corrupt("extra block at new offset %d: %v", newPos, err)
		}
		newPos += y
		if z > 1<<40 || z < -(1<<40) || oldPos+z > 1<<41 || oldPos+z < -(1<<41) {
			return corrupt("control entry moves the old position by %d", z)
		}
		oldPos += z
	}
	// Read each stream to its end so that its CRCs are checked and
	// trailing garbage is refused.
	for _, s := range []struct {
		name string
		r    io.Reader
	}{{"control", ctrl}, {"diff", diff}, {"extra", extra}} {
		var b [1]byte
		if n, err := io.ReadFull(s.r, b[:]); n != 0 || err != io.EOF {
			return corrupt("%s block has data past its end or is damaged (%v)", s.name, err)
		}
	}
	return nil
}
