package fat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kiln-os/kiln/build/blockmap"
)

// FAT entry values.
const (
	fatMedia = 0xF8       // fixed disk
	fatEOC   = 0x0FFFFFFF // end of a cluster chain
)

// dataBufSize bounds the memory used to copy file data; it is a multiple
// of every cluster size.
const dataBufSize = 1 << 20

// maxWorkers caps the goroutines that copy file data (and so the copy
// buffers in memory).
const maxWorkers = 4

// fatChunk is how many bytes of FAT are built and written at once.
const fatChunk = 64 << 10

var le = binary.LittleEndian

// writer serialises a layout; it decides nothing about what goes where.
type writer struct {
	w     io.WriterAt
	g     geometry
	p     *layout
	opts  Options
	label [11]byte
}

func (wr *writer) write() error {
	// (1) reserved sectors: boot sector, FSInfo and their backups
	if err := wr.writeReserved(); err != nil {
		return fmt.Errorf("writing boot sectors: %w", err)
	}
	// (2) both FATs
	if err := wr.writeFATs(); err != nil {
		return fmt.Errorf("writing FAT: %w", err)
	}
	// (3) directories, from cluster 2 on
	if err := wr.writeDirs(); err != nil {
		return err
	}
	// (4) file data, each file contiguous
	if err := wr.writeFiles(); err != nil {
		return err
	}
	// (5) the volume's last sector, so the image has its full length
	end := int64(wr.g.totalSectors) * sectorSize
	if wr.g.clusterOffset(rootCluster+wr.p.used) < end {
		if _, err := wr.w.WriteAt(make([]byte, sectorSize), end-sectorSize); err != nil {
			return fmt.Errorf("writing last sector: %w", err)
		}
	}
	return nil
}

// bootSector returns sector 0 (and its backup at sector 6).
func (wr *writer) bootSector() []byte {
	g := wr.g
	b := make([]byte, sectorSize)
	copy(b[0:], []byte{0xEB, 0x58, 0x90}) // jmp to the boot code, nop
	copy(b[3:11], "MSWIN4.1")             // the OEM name fatgen103 recommends
	le.PutUint16(b[11:], sectorSize)      // BPB_BytsPerSec
	b[13] = byte(g.secPerCluster)         // BPB_SecPerClus
	le.PutUint16(b[14:], reservedSectors) // BPB_RsvdSecCnt
	b[16] = numFATs                       // BPB_NumFATs
	// BPB_RootEntCnt, BPB_TotSec16 and BPB_FATSz16 are 0 on FAT32.
	b[21] = fatMedia // BPB_Media
	spt, heads := chs(g.totalSectors)
	le.PutUint16(b[24:], spt)                   // BPB_SecPerTrk
	le.PutUint16(b[26:], heads)                 // BPB_NumHeads
	le.PutUint32(b[28:], wr.opts.HiddenSectors) // BPB_HiddSec
	le.PutUint32(b[32:], g.totalSectors)        // BPB_TotSec32
	le.PutUint32(b[36:], g.fatSectors)          // BPB_FATSz32
	// BPB_ExtFlags 0: the FATs are mirrored. BPB_FSVer 0.0.
	le.PutUint32(b[44:], rootCluster)      // BPB_RootClus
	le.PutUint16(b[48:], fsInfoSector)     // BPB_FSInfo
	le.PutUint16(b[50:], backupBootSec)    // BPB_BkBootSec
	b[64] = 0x80                           // BS_DrvNum: hard disk
	b[66] = 0x29                           // BS_BootSig: the next three fields are present
	le.PutUint32(b[67:], wr.opts.VolumeID) // BS_VolID
	copy(b[71:82], wr.label[:])            // BS_VolLab, as in the root directory
	copy(b[82:90], "FAT32   ")             // BS_FilSysType, informational only
	// Boot code: this volume does not boot; halt if a BIOS jumps here.
	copy(b[90:], []byte{0xFA, 0xF4, 0xEB, 0xFD}) // cli; hlt; jmp hlt
	b[510], b[511] = 0x55, 0xAA
	return b
}

// chs picks the informational disk geometry: 32 sectors per track as
// mkfs.fat does when that divides the volume (mtools checks it), else the
// largest divisor up to 63.
func chs(total uint32) (spt, heads uint16) {
	spt = 32
	if total%32 != 0 {
		for d := uint32(63); d >= 1; d-- {
			if total%d == 0 {
				spt = uint16(d)
				break
			}
		}
	}
	return spt, 64
}

// fsInfo returns the FSInfo sector (and its backup at sector 7): the free
// cluster count and, as its hint, the last cluster allocated.
func (wr *writer) fsInfo() []byte {
	b := make([]byte, sectorSize)
	le.PutUint32(b[0:], 0x41615252)   // FSI_LeadSig
	le.PutUint32(b[484:], 0x61417272) // FSI_StrucSig
	le.PutUint32(b[488:], wr.g.clusters-wr.p.used)
	le.PutUint32(b[492:], rootCluster+wr.p.used-1)
	le.PutUint32(b[508:], 0xAA550000) // FSI_TrailSig
	return b
}

func (wr *writer) writeReserved() error {
	b := make([]byte, reservedSectors*sectorSize)
	boot, info := wr.bootSector(), wr.fsInfo()
	copy(b[0:], boot)
	copy(b[fsInfoSector*sectorSize:], info)
	copy(b[backupBootSec*sectorSize:], boot)
	copy(b[(backupBootSec+fsInfoSector)*sectorSize:], info)
	_, err := wr.w.WriteAt(b, 0)
	return err
}

// writeFATs writes both FAT copies a chunk at a time. Clusters are
// allocated in one run from cluster 2, so an entry points at the next
// cluster except at the end of a directory or file.
func (wr *writer) writeFATs() error {
	ends := make([]uint32, 0, len(wr.p.dirs)+len(wr.p.files))
	for _, d := range wr.p.dirs {
		ends = append(ends, d.first+d.clusters-1)
	}
	for _, f := range wr.p.files {
		if f.clusters > 0 {
			ends = append(ends, f.first+f.clusters-1)
		}
	}
	last := rootCluster + wr.p.used // first free cluster
	size := int64(wr.g.fatSectors) * sectorSize
	buf := make([]byte, fatChunk)
	e := 0
	for off := int64(0); off < size; off += fatChunk {
		n := min(fatChunk, size-off)
		chunk := buf[:n]
		first := uint32(off / 4)
		for i := range uint32(n / 4) {
			c := first + i
			var v uint32
			switch {
			case c == 0:
				v = 0x0FFFFF00 | fatMedia
			case c == 1:
				v = fatEOC
			case c < last:
				v = c + 1
				if c == ends[e] {
					v = fatEOC
					e++
				}
			}
			le.PutUint32(chunk[4*i:], v)
		}
		for k := range numFATs {
			if _, err := wr.w.WriteAt(chunk, wr.g.fatOffset(k)+off); err != nil {
				return err
			}
		}
	}
	return nil
}

func (wr *writer) writeDirs() error {
	var buf []byte
	for _, d := range wr.p.dirs {
		n := int64(d.clusters) * wr.g.clusterSize()
		if int64(cap(buf)) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		clear(buf)
		wr.fillDir(buf, d)
		if _, err := wr.w.WriteAt(buf, wr.g.clusterOffset(d.first)); err != nil {
			return fmt.Errorf("writing directory %s: %w", displayPath(d.path), err)
		}
	}
	return nil
}

// fillDir encodes directory d's entries into buf.
func (wr *writer) fillDir(buf []byte, d *dirNode) {
	pos := 0
	put := func(name [11]byte, lcase, attr byte, mtime time.Time, cluster uint32, size uint32) {
		putShortEntry(buf[pos:pos+dirEntrySize], name, lcase, attr, mtime, cluster, size)
		pos += dirEntrySize
	}
	if d.parent == nil {
		put(wr.label, 0, attrVolumeID, labelTime(wr.opts), 0, 0)
	} else {
		dot := [11]byte{'.', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '}
		put(dot, 0, attrDir, d.mtime, d.first, 0)
		dot[1] = '.'
		parent := d.parent.first
		if d.parent.parent == nil {
			parent = 0 // ".." of a top-level directory names the root as 0
		}
		put(dot, 0, attrDir, d.mtime, parent, 0)
	}
	for _, c := range d.children {
		if c.name.long != nil {
			putLongEntries(buf[pos:], c.name)
			pos += (c.name.slots() - 1) * dirEntrySize
		}
		if c.dir != nil {
			put(c.name.short, c.name.lcase, attrDir, c.mtime, c.dir.first, 0)
		} else {
			put(c.name.short, c.name.lcase, attrArchive, c.mtime, c.file.first, uint32(c.file.inode.Size))
		}
	}
}

func labelTime(opts Options) time.Time {
	if opts.Mtime.IsZero() {
		return fatEpoch
	}
	return opts.Mtime
}

func putShortEntry(e []byte, name [11]byte, lcase, attr byte, mtime time.Time, cluster, size uint32) {
	date, tm, tenth := dosTime(mtime)
	copy(e[0:11], name[:])
	e[11] = attr
	e[12] = lcase
	e[13] = tenth                             // DIR_CrtTimeTenth
	le.PutUint16(e[14:], tm)                  // DIR_CrtTime
	le.PutUint16(e[16:], date)                // DIR_CrtDate
	le.PutUint16(e[18:], date)                // DIR_LstAccDate
	le.PutUint16(e[20:], uint16(cluster>>16)) // DIR_FstClusHI
	le.PutUint16(e[22:], tm)                  // DIR_WrtTime
	le.PutUint16(e[24:], date)                // DIR_WrtDate
	le.PutUint16(e[26:], uint16(cluster))     // DIR_FstClusLO
	le.PutUint32(e[28:], size)                // DIR_FileSize
}

// dosTime encodes t (as UTC) in FAT's date and 2-second time fields, with
// the creation time's extra hundredths. Times before 1980 or after 2107
// are clamped to the range FAT can hold.
func dosTime(t time.Time) (date, tm uint16, tenth byte) {
	t = t.UTC()
	switch {
	case t.Before(fatEpoch):
		t = fatEpoch
	case t.Year() > 2107:
		t = time.Date(2107, 12, 31, 23, 59, 58, 0, time.UTC)
	}
	date = uint16(t.Year()-1980)<<9 | uint16(t.Month())<<5 | uint16(t.Day())
	tm = uint16(t.Hour())<<11 | uint16(t.Minute())<<5 | uint16(t.Second()/2)
	tenth = byte(t.Second()%2*100 + t.Nanosecond()/10_000_000)
	return date, tm, tenth
}

// writeFiles copies every file's content into its clusters, zeroing the
// tail of each file's last cluster. Files have fixed, disjoint places, so
// a few workers copy them at once (io.WriterAt allows parallel writes to
// disjoint ranges), each through one bounded buffer; the bytes written do
// not depend on the order. The error reported is that of the first
// failing file in layout order.
func (wr *writer) writeFiles() error {
	var files []*fileNode
	for _, f := range wr.p.files {
		if f.clusters > 0 {
			files = append(files, f)
		}
	}
	workers := min(len(files), maxWorkers)
	errs := make([]error, len(files))
	var next atomic.Int64
	var failed atomic.Bool
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			buf := make([]byte, dataBufSize)
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= len(files) {
					return
				}
				if err := wr.copyFile(files[i], buf); err != nil {
					errs[i] = fmt.Errorf("writing %s: %w", files[i].path, err)
					failed.Store(true)
				}
			}
		})
	}
	wg.Wait()
	return firstError(errs)
}

func firstError(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (wr *writer) copyFile(f *fileNode, buf []byte) error {
	size, cs := f.inode.Size, wr.g.clusterSize()
	if f.inode.Content == nil {
		return fmt.Errorf("%w: no content for %d bytes", ErrContentSize, size)
	}
	r, err := f.inode.Content.Open()
	if err != nil {
		return err
	}
	defer r.Close()
	off := wr.g.clusterOffset(f.first)
	for done := int64(0); done < size; {
		n := min(int64(len(buf)), size-done)
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: content ended before %d bytes", ErrContentSize, size)
			}
			return err
		}
		out := buf[:n]
		if done+n == size {
			padded := (n + cs - 1) / cs * cs
			clear(buf[n:padded])
			out = buf[:padded]
		}
		if _, err := wr.w.WriteAt(out, off+done); err != nil {
			return err
		}
		done += n
	}
	var one [1]byte
	switch _, err := io.ReadFull(r, one[:]); {
	case err == nil:
		return fmt.Errorf("%w: content is longer than %d bytes", ErrContentSize, size)
	case !errors.Is(err, io.EOF):
		return err
	}
	return r.Close()
}

// volumeLabel validates and pads the label.
func volumeLabel(s string) ([11]byte, error) {
	var l [11]byte
	if s == "" {
		s = DefaultLabel
	}
	if len(s) > len(l) || strings.TrimSpace(s) == "" || s[0] == ' ' {
		return l, fmt.Errorf("%w: %q", ErrInvalidLabel, s)
	}
	for i := range l {
		l[i] = ' '
	}
	for i := 0; i < len(s); i++ {
		c := upperASCII(s[i])
		if c != ' ' && !validShortChar(c) {
			return l, fmt.Errorf("%w: %q has the character %q", ErrInvalidLabel, s, s[i])
		}
		l[i] = c
	}
	return l, nil
}

// blockMap reports every file's clusters and the metadata area (reserved
// sectors, FATs and directories, which are contiguous).
func (wr *writer) blockMap() *blockmap.Map {
	m := &blockmap.Map{
		Filesystem: "vfat",
		BlockSize:  wr.g.clusterSize(),
		ImageSize:  int64(wr.g.totalSectors) * sectorSize,
		Files:      make([]blockmap.File, 0, len(wr.p.files)),
		Metadata:   []blockmap.Extent{{Offset: 0, Length: wr.g.clusterOffset(rootCluster + wr.p.dirClusters)}},
	}
	for _, f := range wr.p.files {
		bf := blockmap.File{Path: f.path, Size: f.inode.Size}
		if f.clusters > 0 {
			bf.Extents = []blockmap.Extent{{Offset: wr.g.clusterOffset(f.first), Length: f.inode.Size}}
		}
		m.Files = append(m.Files, bf)
	}
	m.Sort()
	return m
}
