// Package bsdiff creates and applies BSDIFF40 patches, the format of Colin
// Percival's bsdiff 4.x that update_engine's SOURCE_BSDIFF operation and
// Debian's bspatch read.
//
// A patch is a 32-byte header — "BSDIFF40", then three signed 64-bit
// little-endian sign-magnitude numbers: the compressed length of the
// control block, the compressed length of the diff block, and the size of
// the new file — followed by three bzip2 streams. The control block is a
// list of triples (x, y, z): add x bytes of the diff block to x bytes of
// the old file, copy y bytes of the extra block, then move the old file
// position by z.
//
// Diff finds matches with a suffix array of the old file (SA-IS, linear
// time), so memory is about 5 bytes per old byte plus the new file; callers
// keep inputs bounded (the payload planner diffs file by file).
package bsdiff

import (
	"bytes"
	"encoding/binary"
	"errors"

	"github.com/kiln-os/kiln/build/payload/internal/bzip2"
	"github.com/kiln-os/kiln/build/payload/internal/suffix"
)

const magic = "BSDIFF40"

const headerSize = 32

// Diff returns a BSDIFF40 patch that turns old into new.
func Diff(old, new []byte) ([]byte, error) {
	if int64(len(old)) >= 1<<31-1 || int64(len(new)) >= 1<<31-1 {
		return nil, errors.New("bsdiff: input of 2 GiB or more")
	}
	sa := suffix.Array(old)
	var ctrl []byte
	diff := make([]byte, 0, len(new))
	extra := make([]byte, 0, len(new)/8)
	putTriple := func(x, y, z int) {
		var b [24]byte
		putOff(b[0:], int64(x))
		putOff(b[8:], int64(y))
		putOff(b[16:], int64(z))
		ctrl = append(ctrl, b[:]...)
	}

	oldSize, newSize := len(old), len(new)
	scan, pos, length := 0, 0, 0
	lastScan, lastPos, lastOffset := 0, 0, 0
	for scan < newSize {
		oldScore := 0
		scan += length
		scsc := scan
		for ; scan < newSize; scan++ {
			pos, length = search(sa, old, new[scan:])
			for ; scsc < scan+length; scsc++ {
				if scsc+lastOffset < oldSize && old[scsc+lastOffset] == new[scsc] {
					oldScore++
				}
			}
			if (length == oldScore && length != 0) || length > oldScore+8 {
				break
			}
			if scan+lastOffset < oldSize && old[scan+lastOffset] == new[scan] {
				oldScore--
			}
		}
		if length == oldScore && scan != newSize {
			continue
		}
		// Extend the previous match forwards and the current one backwards.
		lenF := 0
		for i, s, best := 0, 0, 0; lastScan+i < scan && lastPos+i < oldSize; {
			if old[lastPos+i] == new[lastScan+i] {
				s++
			}
			i++
			if s*2-i > best*2-lenF {
				best, lenF = s, i
			}
		}
		lenB := 0
		if scan < newSize {
			for i, s, best := 1, 0, 0; scan >= lastScan+i && pos >= i; i++ {
				if old[pos-i] == new[scan-i] {
					s++
				}
				if s*2-i > best*2-lenB {
					best, lenB = s, i
				}
			}
		}
		if lastScan+lenF > scan-lenB {
			overlap := lastScan + lenF - (scan - lenB)
			s, best, lenS := 0, 0, 0
			for i := 0; i < overlap; i++ {
				if new[lastScan+lenF-overlap+i] == old[lastPos+lenF-overlap+i] {
					s++
				}
				if new[scan-lenB+i] == old[pos-lenB+i] {
					s--
				}
				if s > best {
					best, lenS = s, i+1
				}
			}
			lenF += lenS - overlap
			lenB -= lenS
		}
		for i := 0; i < lenF; i++ {
			diff = append(diff, new[lastScan+i]-old[lastPos+i])
		}
		extra = append(extra, new[lastScan+lenF:scan-lenB]...)
		putTriple(lenF, (scan-lenB)-(lastScan+lenF), (pos-lenB)-(lastPos+lenF))
		lastScan, lastPos, lastOffset = scan-lenB, pos-lenB, pos-scan
	}

	cc, dc, ec := bzip2.Compress(ctrl), bzip2.Compress(diff), bzip2.Compress(extra)
	out := make([]byte, headerSize, headerSize+len(cc)+len(dc)+len(ec))
	copy(out, magic)
	putOff(out[8:], int64(len(cc)))
	putOff(out[16:], int64(len(dc)))
	putOff(out[24:], int64(newSize))
	out = append(out, cc...)
	out = append(out, dc...)
	out = append(out, ec...)
	return out, nil
}

// search returns the position and length of the longest prefix of t that
// occurs in old, by binary search over old's suffix array.
func search(sa []int32, old, t []byte) (pos, n int) {
	if len(sa) == 0 {
		return 0, 0
	}
	lo, hi := 0, len(sa)-1
	for hi-lo >= 2 {
		mid := lo + (hi-lo)/2
		p := int(sa[mid])
		if bytes.Compare(old[p:min(len(old), p+len(t))], t) < 0 {
			lo = mid
		} else {
			hi = mid
		}
	}
	x, y := matchLen(old[sa[lo]:], t), matchLen(old[sa[hi]:], t)
	if x >= y {
		return int(sa[lo]), x
	}
	return int(sa[hi]), y
}

func matchLen(a, b []byte) int {
	n := min(len(a), len(b))
	i := 0
	for i+8 <= n && binary.LittleEndian.Uint64(a[i:]) == binary.LittleEndian.Uint64(b[i:]) {
		i += 8
	}
	for i < n && a[i] == b[i] {
		i++
	}
	return i
}

// putOff stores x as bsdiff's 64-bit sign-magnitude little-endian number.
func putOff(b []byte, x int64) {
	u := uint64(x)
	if x < 0 {
		u = uint64(-x) | 1<<63
	}
	binary.LittleEndian.PutUint64(b, u)
}

// getOff reads a sign-magnitude number.
func getOff(b []byte) int64 {
	u := binary.LittleEndian.Uint64(b)
	x := int64(u &^ (1 << 63))
	if u&(1<<63) != 0 {
		return -x
	}
	return x
}
