package update

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// directAlign is the alignment O_DIRECT reads keep: offsets, lengths and
// buffer addresses are multiples of it (the logical block size of every
// disk kiln writes is at most 4096).
const directAlign = 4096

// storageReader returns a reader of the disk dev (opened by path) whose
// reads come from its storage, not from any page cache: what was written
// is flushed first, then read with O_DIRECT, which bypasses the page
// cache. A loop device passes its reads through the page cache of the
// file behind it, so for a loop device that file is flushed and read with
// O_DIRECT instead, at the loop device's offset. Where the filesystem
// refuses O_DIRECT (tmpfs) the range's cached pages are dropped and the
// disk read as it is. how says which was done; close releases the reader.
func storageReader(dev device, path string, off, size int64) (r io.ReaderAt, how string, closeFn func(), err error) {
	if err := dev.Sync(); err != nil {
		return nil, "", nil, err
	}
	name, base := path, int64(0)
	if backing, loopOff, ok := loopBacking(dev); ok {
		name, base = backing, loopOff
	}
	f, err := os.OpenFile(name, os.O_RDONLY|unix.O_DIRECT, 0)
	if err == nil {
		if name != path {
			// The loop device's file: flush what the loop device wrote
			// to it.
			if err = f.Sync(); err != nil {
				f.Close()
				return nil, "", nil, fmt.Errorf("flushing %s: %w", name, err)
			}
			unix.Fadvise(int(f.Fd()), base+off, size, unix.FADV_DONTNEED)
		}
		// The written pages are of no more use: a slot's worth of memory
		// goes back (O_DIRECT reads do not fill the cache again).
		unix.Fadvise(int(dev.Fd()), off, size, unix.FADV_DONTNEED)
	}
	if err != nil {
		if !errors.Is(err, unix.EINVAL) {
			return nil, "", nil, err
		}
		// No O_DIRECT here: drop the range's pages (the loop device's and
		// its file's) and read through the page cache, which then holds
		// nothing of it.
		if err := unix.Fadvise(int(dev.Fd()), off, size, unix.FADV_DONTNEED); err != nil {
			return nil, "", nil, err
		}
		if name != path {
			if bf, err := os.Open(name); err == nil {
				bf.Sync()
				unix.Fadvise(int(bf.Fd()), base+off, size, unix.FADV_DONTNEED)
				bf.Close()
			}
		}
		return dev, "page cache dropped (O_DIRECT refused)", func() {}, nil
	}
	how = "O_DIRECT"
	if name != path {
		how = fmt.Sprintf("O_DIRECT from %s, the file behind %s", name, path)
	}
	return &directReader{f: f, base: base}, how, func() { f.Close() }, nil
}

// loopBacking returns the file behind dev when it is a loop device, and
// the loop device's offset into it, from /sys. The file named there must
// be the one the loop device holds (same device and inode numbers).
func loopBacking(dev device) (string, int64, bool) {
	var st unix.Stat_t
	if err := unix.Fstat(int(dev.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", 0, false
	}
	dir := fmt.Sprintf("/sys/dev/block/%d:%d/loop", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	b, err := os.ReadFile(filepath.Join(dir, "backing_file"))
	if err != nil {
		return "", 0, false
	}
	name := strings.TrimSpace(string(b))
	info, err := unix.IoctlLoopGetStatus64(int(dev.Fd()))
	if err != nil {
		return "", 0, false
	}
	var fst unix.Stat_t
	if err := unix.Stat(name, &fst); err != nil || fst.Dev != info.Device || fst.Ino != info.Inode {
		return "", 0, false
	}
	o, _ := os.ReadFile(filepath.Join(dir, "offset"))
	off, err := strconv.ParseInt(strings.TrimSpace(string(o)), 10, 64)
	if err != nil {
		return "", 0, false
	}
	return name, off, true
}

// directReader reads a file opened with O_DIRECT at any offset and
// length, through aligned reads of an aligned buffer. It is safe for
// concurrent use (the verity check reads on all cores).
type directReader struct {
	f    *os.File
	base int64 // added to every offset
	bufs sync.Pool
}

func (d *directReader) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		at := d.base + off + int64(n)
		start := at &^ (directAlign - 1)
		want := (at - start) + int64(len(p)-n)
		span := (want + directAlign - 1) &^ (directAlign - 1)
		span = min(span, directChunk)
		bp := d.buffer()
		buf := (*bp)[:span]
		m, err := d.f.ReadAt(buf, start)
		skip := int(at - start)
		if m > skip {
			n += copy(p[n:], buf[skip:m])
		}
		d.bufs.Put(bp)
		if err != nil {
			if n == len(p) {
				return n, nil
			}
			return n, err
		}
		if m < len(buf) && n < len(p) {
			return n, io.EOF
		}
	}
	return n, nil
}

// directChunk is the largest read directReader makes at once.
const directChunk = 1 << 20

// buffer returns a directChunk-byte buffer whose address is a multiple of
// directAlign.
func (d *directReader) buffer() *[]byte {
	if b, ok := d.bufs.Get().(*[]byte); ok {
		return b
	}
	raw := make([]byte, directChunk+directAlign)
	shift := 0
	if r := int(uintptr(unsafe.Pointer(&raw[0])) & (directAlign - 1)); r != 0 {
		shift = directAlign - r
	}
	b := raw[shift : shift+directChunk : shift+directChunk]
	return &b
}
