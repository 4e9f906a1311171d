package diskimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/kiln-os/kiln/internal/xzstream"
)

// ErrFormat is returned for an image file that is not what its format
// says it is: a bad magic, a checksum that does not match, a table that
// points outside the file.
var ErrFormat = errors.New("diskimage: malformed image")

// ErrUnsupported is returned for a well-formed image that uses a feature
// kiln does not read (a backing file, a VHDX log to replay, ...).
var ErrUnsupported = errors.New("diskimage: unsupported image")

// ErrTooLarge is returned for a raw image larger than a format holds.
var ErrTooLarge = errors.New("diskimage: the raw image is larger than the format holds")

// FormatError says where an image is malformed.
type FormatError struct {
	Format Format
	Off    int64 // byte offset in the file, or -1
	Msg    string
}

func (e *FormatError) Error() string {
	if e.Off >= 0 {
		return fmt.Sprintf("diskimage: %s: %s at byte %#x", e.Format, e.Msg, e.Off)
	}
	return fmt.Sprintf("diskimage: %s: %s", e.Format, e.Msg)
}

// Is makes errors.Is(err, ErrFormat) match.
func (e *FormatError) Is(target error) bool { return target == ErrFormat }

func formatErr(f Format, off int64, format string, args ...any) error {
	return &FormatError{Format: f, Off: off, Msg: fmt.Sprintf(format, args...)}
}

var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// gzipMagic starts a gzip file (RFC 1952): ID1, ID2, CM deflate.
var gzipMagic = []byte{0x1f, 0x8b, 8}

// vmdkDescriptorMagic starts a VMDK descriptor file (monolithicFlat,
// twoGbMaxExtentSparse, ...), whose extents are other files.
var vmdkDescriptorMagic = []byte("# Disk DescriptorFile")

// Detect returns the format of the image file r (size bytes) by its
// magic numbers: Raw when it is none of the others. A file that starts
// with a format's magic (or ends with a VHD footer) is that format or an
// error, never Raw: its header is checked against the file's size and
// the format's limits (without reading its tables), and a truncated or
// malformed one gives an error wrapping ErrFormat that names the format
// and the field.
func Detect(r io.ReaderAt, size int64) (Format, error) {
	f, err := probe(r, size)
	if err != nil || f == Raw {
		return f, err
	}
	if f == RawZstd {
		// Open indexes every frame; the first frame's header is enough
		// to say the file is one.
		return f, checkZstdHead(r, size)
	}
	if f == GCE {
		return f, checkGCEHead(r, size)
	}
	if _, _, err := openFormat(r, size, f); err != nil {
		return f, err
	}
	return f, nil
}

// checkZstdHead checks the header of the first frame of a zstd file.
func checkZstdHead(r io.ReaderAt, size int64) error {
	hdr := make([]byte, min(size, 18))
	if err := readFull(r, size, RawZstd, hdr, 0, "the first frame header"); err != nil {
		return err
	}
	if _, _, _, err := zstdFrameHeader(hdr); err != nil {
		return formatErr(RawZstd, 0, "first frame header: %v", err)
	}
	return nil
}

// probe returns the format the file's magic numbers name.
func probe(r io.ReaderAt, size int64) (Format, error) {
	if size < 0 {
		return Raw, fmt.Errorf("diskimage: a file of %d bytes", size)
	}
	head := make([]byte, min(size, 512))
	if _, err := r.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return Raw, fmt.Errorf("diskimage: reading the first %d bytes: %w", len(head), err)
	}
	var tail []byte
	if size >= 512 {
		tail = make([]byte, 512)
		if _, err := r.ReadAt(tail, size-512); err != nil && !errors.Is(err, io.EOF) {
			return Raw, fmt.Errorf("diskimage: reading the last 512 bytes: %w", err)
		}
	}
	be := binary.BigEndian
	switch {
	case len(head) >= 4 && be.Uint32(head) == qcowMagic:
		if len(head) >= 105 && be.Uint64(head[72:])&qcowIncompatCompr != 0 && be.Uint32(head[100:]) > 104 && head[104] == qcowCompressZstd {
			return QCOW2Zstd, nil
		}
		return QCOW2, nil
	case len(head) >= 4 && binary.LittleEndian.Uint32(head) == vmdkMagic:
		if len(head) >= 12 && binary.LittleEndian.Uint32(head[8:])&vmdkFlagCompress != 0 {
			return VMDK, nil
		}
		return VMDKSparse, nil
	case bytes.HasPrefix(head, vmdkDescriptorMagic):
		return VMDKSparse, fmt.Errorf("%w: a VMDK descriptor file, whose extents are other files (kiln reads monolithicSparse and streamOptimized VMDKs, one file each)", ErrUnsupported)
	case bytes.HasPrefix(head, []byte("vhdxfile")):
		return VHDX, nil
	case bytes.HasPrefix(head, xzstream.Magic):
		return RawXZ, nil
	case bytes.HasPrefix(head, zstdMagic):
		return RawZstd, nil
	case bytes.HasPrefix(head, gzipMagic):
		// kiln's gzip output is the GCE archive; Detect checks that it
		// holds disk.raw.
		return GCE, nil
	case isUstar(head):
		return OVA, nil
	case bytes.HasPrefix(head, []byte("conectix")):
		// The footer's copy that starts a dynamic VHD (a fixed VHD has
		// none).
		if tail != nil && bytes.HasPrefix(tail, []byte("conectix")) && be.Uint32(tail[60:]) == vhdTypeFixed {
			return VHD, nil
		}
		return VHDDynamic, nil
	case tail != nil && bytes.HasPrefix(tail, []byte("conectix")):
		if be.Uint32(tail[60:]) == vhdTypeDynamic {
			return VHDDynamic, nil
		}
		return VHD, nil
	}
	return Raw, nil
}

// openFormat reads the structure of the image file r in format f.
func openFormat(r io.ReaderAt, size int64, f Format) (int64, virtualDisk, error) {
	switch f {
	case Raw:
		return size, rawDisk{r}, nil
	case QCOW2, QCOW2Zstd:
		return openQCOW2(r, size, f)
	case VMDK, VMDKSparse:
		return openVMDK(r, size, f)
	case VHD, VHDDynamic:
		return openVHD(r, size, f)
	case VHDX:
		return openVHDX(r, size)
	case RawZstd:
		return openZstd(r, size)
	case RawXZ:
		return openXZ(r, size)
	case OVA:
		return openOVA(r, size)
	case GCE:
		return 0, nil, ErrGCEStream
	}
	return 0, nil, fmt.Errorf("diskimage: no reader for format %d", f)
}
