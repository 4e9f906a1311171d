package diskimage

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/klauspost/compress/gzip"
)

// Reading the archives kiln writes (gce, ova).
//
// An OVA is read in place: its ustar headers are walked (at most
// maxOVAMembers), the VMDK member is found, and the disk is read through
// that member as a streamOptimized VMDK, so Open gives random access as
// for a bare VMDK. A GCE archive is a gzip stream, which has no random
// access: Open refuses it (ErrUnsupported) and ExpandGCE writes the disk
// it holds into a sparse file instead.

// maxOVAMembers bounds the ustar headers an OVA reader walks: kiln's
// OVAs hold three members; the OVF spec's packages hold a descriptor,
// a manifest, a certificate and their disks.
const maxOVAMembers = 64

var ustarMagic = []byte("ustar\x00")

// isUstar reports whether head (a file's first 512 bytes) is a POSIX
// ustar header.
func isUstar(head []byte) bool {
	return len(head) >= 512 && bytes.Equal(head[257:263], ustarMagic)
}

// tarOctal parses a tar header's octal number field.
func tarOctal(b []byte) (int64, bool) {
	s := strings.TrimRight(strings.TrimLeft(string(b), " "), " \x00")
	if s == "" {
		return 0, true
	}
	n, err := strconv.ParseInt(s, 8, 64)
	return n, err == nil && n >= 0
}

// ovaMember is one member of an OVA: where its data lies in the file.
type ovaMember struct {
	name      string
	off, size int64
}

// ovaMembers walks the ustar headers of the OVA r (size bytes).
func ovaMembers(r io.ReaderAt, size int64) ([]ovaMember, error) {
	var out []ovaMember
	hdr := make([]byte, 512)
	for off := int64(0); ; {
		if len(out) == maxOVAMembers {
			return nil, formatErr(OVA, off, "more than %d members", maxOVAMembers)
		}
		if err := readFull(r, size, OVA, hdr, off, "a tar header"); err != nil {
			return nil, err
		}
		if bytes.Count(hdr, []byte{0}) == len(hdr) {
			if len(out) == 0 {
				return nil, formatErr(OVA, off, "no members")
			}
			return out, nil
		}
		if !isUstar(hdr) {
			return nil, formatErr(OVA, off+257, "member %d: not a ustar header", len(out)+1)
		}
		var sum int64
		for i, c := range hdr {
			if i >= 148 && i < 156 {
				c = ' '
			}
			sum += int64(c)
		}
		if want, ok := tarOctal(hdr[148:156]); !ok || want != sum {
			return nil, formatErr(OVA, off+148, "member %d: header checksum %q, the header sums to %o", len(out)+1, strings.Trim(string(hdr[148:156]), " \x00"), sum)
		}
		name := string(hdr[:100])
		if i := bytes.IndexByte(hdr[:100], 0); i >= 0 {
			name = string(hdr[:i])
		}
		if prefix := hdr[345:500]; prefix[0] != 0 {
			p := string(prefix)
			if i := strings.IndexByte(p, 0); i >= 0 {
				p = p[:i]
			}
			name = p + "/" + name
		}
		n, ok := tarOctal(hdr[124:136])
		if !ok {
			return nil, formatErr(OVA, off+124, "member %q: size field %q", name, strings.Trim(string(hdr[124:136]), " \x00"))
		}
		if t := hdr[156]; t != '0' && t != 0 {
			return nil, formatErr(OVA, off+156, "member %q: type %q (an OVA holds regular files)", name, t)
		}
		data := off + 512
		if n > size-data {
			return nil, formatErr(OVA, off+124, "member %q of %d bytes runs past the end of the %d-byte file", name, n, size)
		}
		out = append(out, ovaMember{name: name, off: data, size: n})
		off = data + (n+511)/512*512
	}
}

// openOVA reads the disk an OVA holds: its one VMDK member, which must be
// streamOptimized (the OVF's disk format); the OVF descriptor comes first,
// as the OVF specification requires.
func openOVA(r io.ReaderAt, size int64) (int64, virtualDisk, error) {
	members, err := ovaMembers(r, size)
	if err != nil {
		return 0, nil, err
	}
	if !strings.HasSuffix(members[0].name, ".ovf") {
		return 0, nil, formatErr(OVA, 0, "the first member is %q, not an OVF descriptor (.ovf)", members[0].name)
	}
	var disk *ovaMember
	for i := range members {
		if strings.HasSuffix(strings.ToLower(members[i].name), ".vmdk") {
			if disk != nil {
				return 0, nil, fmt.Errorf("%w: ova: two disks (%q, %q); kiln reads an OVA of one", ErrUnsupported, disk.name, members[i].name)
			}
			disk = &members[i]
		}
	}
	if disk == nil {
		return 0, nil, formatErr(OVA, -1, "no .vmdk member")
	}
	sec := io.NewSectionReader(r, disk.off, disk.size)
	f, err := probe(sec, disk.size)
	if err != nil {
		return 0, nil, fmt.Errorf("ova: %s: %w", disk.name, err)
	}
	if f != VMDK {
		return 0, nil, formatErr(OVA, disk.off, "member %q is %s, not a streamOptimized VMDK", disk.name, f)
	}
	vsize, d, err := openVMDK(sec, disk.size, VMDK)
	if err != nil {
		return 0, nil, fmt.Errorf("ova: %s: %w", disk.name, err)
	}
	return vsize, d, nil
}

// ErrGCEStream is returned by Open for a GCE archive, which is read as a
// stream (ExpandGCE), not in place.
var ErrGCEStream = fmt.Errorf("%w: a gce archive is a gzip stream with no random access (expand it: tar -xSzf, or kiln verify)", ErrUnsupported)

// checkGCEHead checks that the gzip file r starts with the tar header of
// disk.raw: the first 512 bytes it inflates to.
func checkGCEHead(r io.ReaderAt, size int64) error {
	zr, err := gzip.NewReader(io.NewSectionReader(r, 0, size))
	if err != nil {
		return formatErr(GCE, 0, "gzip header: %v", err)
	}
	hdr := make([]byte, 512)
	if _, err := io.ReadFull(zr, hdr); err != nil {
		return formatErr(GCE, -1, "the first tar header: %v", err)
	}
	name := hdr[:100]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	if string(name) != gceMember || (hdr[156] != tar.TypeGNUSparse && hdr[156] != tar.TypeReg) {
		return formatErr(GCE, -1, "the first member is %q of type %q, want %s, a regular or GNU sparse file", name, hdr[156], gceMember)
	}
	return nil
}

// ExpandGCE writes the disk the GCE archive r (size bytes) holds into
// dst, a new empty file, leaving its holes (and any block of zeros) as
// holes. The disk must be wantSize bytes (the size the signed manifest
// gives): a member of another size is refused before any of it is
// read, so a hostile archive cannot make ExpandGCE inflate more than
// that. The archive must hold disk.raw and nothing else.
func ExpandGCE(r io.ReaderAt, size int64, dst *os.File, wantSize int64) error {
	if err := checkGCEHead(r, size); err != nil {
		return err
	}
	zr, err := gzip.NewReader(io.NewSectionReader(r, 0, size))
	if err != nil {
		return formatErr(GCE, 0, "gzip header: %v", err)
	}
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		return formatErr(GCE, -1, "the tar header of %s: %v", gceMember, err)
	}
	if h.Size != wantSize {
		return formatErr(GCE, -1, "%s is %d bytes, want %d", gceMember, h.Size, wantSize)
	}
	if err := dst.Truncate(h.Size); err != nil {
		return fmt.Errorf("diskimage: gce: %w", err)
	}
	buf := make([]byte, 1<<20)
	var off int64
	for {
		n, err := io.ReadFull(tr, buf)
		if n > 0 {
			if !allZeros(buf[:n]) {
				if _, werr := dst.WriteAt(buf[:n], off); werr != nil {
					return fmt.Errorf("diskimage: gce: %w", werr)
				}
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return formatErr(GCE, -1, "%s at byte %d of the disk: %v", gceMember, off, err)
		}
	}
	if off != h.Size {
		return formatErr(GCE, -1, "%s ends at byte %d of %d", gceMember, off, h.Size)
	}
	if h2, err := tr.Next(); err == nil {
		return formatErr(GCE, -1, "a second member, %q (a GCE archive holds %s alone)", h2.Name, gceMember)
	} else if !errors.Is(err, io.EOF) {
		return formatErr(GCE, -1, "after %s: %v", gceMember, err)
	}
	return nil
}
