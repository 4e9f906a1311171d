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

// Detect returns the format of the image file r (size bytes) by its
// magic numbers: Raw when it is none of the others.
func Detect(r io.ReaderAt, size int64) (Format, error) {
	head := make([]byte, min(size, 512))
	if _, err := r.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return Raw, err
	}
	var tail []byte
	if size >= 1024 {
		tail = make([]byte, 512)
		if _, err := r.ReadAt(tail, size-512); err != nil && !errors.Is(err, io.EOF) {
			return Raw, err
		}
	}
	switch {
	case len(head) >= 112 && binary.BigEndian.Uint32(head) == qcowMagic:
		if binary.BigEndian.Uint64(head[72:])&qcowIncompatCompr != 0 && binary.BigEndian.Uint32(head[100:]) > 104 && head[104] == qcowCompressZstd {
			return QCOW2Zstd, nil
		}
		return QCOW2, nil
	case len(head) >= 12 && binary.LittleEndian.Uint32(head) == vmdkMagic:
		if binary.LittleEndian.Uint32(head[8:])&vmdkFlagCompress != 0 {
			return VMDK, nil
		}
		return VMDKSparse, nil
	case bytes.HasPrefix(head, []byte("vhdxfile")):
		return VHDX, nil
	case bytes.HasPrefix(head, xzstream.Magic):
		return RawXZ, nil
	case bytes.HasPrefix(head, zstdMagic):
		return RawZstd, nil
	case len(head) == 512 && bytes.HasPrefix(head, []byte("conectix")) && binary.BigEndian.Uint32(head[60:]) == vhdTypeDynamic:
		return VHDDynamic, nil
	case tail != nil && bytes.HasPrefix(tail, []byte("conectix")):
		if binary.BigEndian.Uint32(tail[60:]) == vhdTypeDynamic {
			return VHDDynamic, nil
		}
		return VHD, nil
	}
	return Raw, nil
}
