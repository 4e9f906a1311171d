package diskimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math"
)

// An OVA is a POSIX ustar archive of an OVF package, as DSP0243 (OVF)
// requires: the descriptor first, then the files it references in its
// order, then the manifest. kiln's holds disk.ovf, disk.vmdk (the
// streamOptimized VMDK kiln writes as --format vmdk) and disk.mf (the
// SHA-256 of the other two, in the "SHA256(name)= hex" lines ovftool
// writes and VirtualBox checks). The members' names are fixed, not taken
// from the output's name, so that an OVA's bytes depend only on the disk
// and SOURCE_DATE_EPOCH (each member's mtime).
//
// The VMDK is written in place, straight into the archive, and the
// descriptor, which carries its size, only after it: the descriptor's
// length is fixed in advance as the length it has with the largest sizes,
// and a shorter one is padded with spaces after </Envelope> (whitespace
// that XML allows after the root element). The manifest's digest of the
// VMDK is read back from the archive once it is whole.
const (
	ovaOVF   = "disk.ovf"
	ovaVMDK  = "disk.vmdk"
	ovaMF    = "disk.mf"
	ovaName  = "kiln"
	ovaCPUs  = 2
	ovaMemMB = 2048
)

// ustarHeader returns the ustar header of a regular file member.
func ustarHeader(name string, size, mtime int64) ([]byte, error) {
	h, err := tarHeader(name, size, mtime, "ustar\x0000")
	if err != nil {
		return nil, err
	}
	tarNumber(h[329:337], 0) // devmajor
	tarNumber(h[337:345], 0) // devminor
	tarChecksum(h)
	return h, nil
}

// writeOVA writes the raw image as an OVA. dst must also be an
// io.ReaderAt (a file): the VMDK's digest is read back from it.
func writeOVA(ctx context.Context, dst io.WriterAt, src *Source, o Options) (int64, error) {
	r, ok := dst.(io.ReaderAt)
	if !ok {
		return 0, fmt.Errorf("the destination cannot be read back (write to a file)")
	}
	capacity := VirtualSize(VMDK, src.Size())
	params := ovfParams{VMDK: ovaVMDK, Capacity: capacity, Name: ovaName, CPUs: ovaCPUs, MemoryMiB: ovaMemMB,
		VMDKSize: math.MaxInt64, Populated: math.MaxInt64}
	longest, err := ovfDescriptor(params)
	if err != nil {
		return 0, err
	}
	ovfLen := int64(len(longest))
	vmdkHdr := 512 + roundUp(ovfLen, 512)
	vmdkOff := vmdkHdr + 512
	vo := o
	vo.Name = ovaVMDK
	vmdkSize, grains, err := writeVMDKStreamGrains(ctx, &offsetWriter{dst, vmdkOff}, src, vo)
	if err != nil {
		return 0, err
	}
	params.VMDKSize = vmdkSize
	params.Populated = min(grains*unitSize, capacity)
	ovf, err := ovfDescriptor(params)
	if err != nil {
		return 0, err
	}
	if pad := ovfLen - int64(len(ovf)); pad > 0 {
		ovf = append(ovf[:len(ovf)-1], bytes.Repeat([]byte{' '}, int(pad))...)
		ovf = append(ovf, '\n')
	}
	mtime := o.Time.Unix()
	h, err := ustarHeader(ovaOVF, ovfLen, mtime)
	if err != nil {
		return 0, err
	}
	if _, err := dst.WriteAt(append(h, ovf...), 0); err != nil {
		return 0, fmt.Errorf("writing the descriptor: %w", err)
	}
	if h, err = ustarHeader(ovaVMDK, vmdkSize, mtime); err != nil {
		return 0, err
	}
	if _, err := dst.WriteAt(h, vmdkHdr); err != nil {
		return 0, fmt.Errorf("writing the VMDK's header: %w", err)
	}
	// The manifest: the descriptor's digest and the VMDK's, read back.
	vmdkSum := sha256.New()
	if _, err := io.CopyBuffer(vmdkSum, io.NewSectionReader(r, vmdkOff, vmdkSize), make([]byte, 1<<20)); err != nil {
		return 0, fmt.Errorf("reading the VMDK back: %w", err)
	}
	ovfSum := sha256.Sum256(ovf)
	mf := fmt.Appendf(nil, "SHA256(%s)= %s\nSHA256(%s)= %s\n", ovaOVF, hex.EncodeToString(ovfSum[:]), ovaVMDK, hex.EncodeToString(vmdkSum.Sum(nil)))
	mfHdr := vmdkOff + roundUp(vmdkSize, 512)
	if h, err = ustarHeader(ovaMF, int64(len(mf)), mtime); err != nil {
		return 0, err
	}
	if _, err := dst.WriteAt(append(h, mf...), mfHdr); err != nil {
		return 0, fmt.Errorf("writing the manifest: %w", err)
	}
	// Two zero blocks end the archive; GNU tar pads it to whole records.
	end := mfHdr + 512 + roundUp(int64(len(mf)), 512) + 1024
	return roundUp(end, tarRecord), nil
}

// offsetWriter writes through w at off bytes further.
type offsetWriter struct {
	w   io.WriterAt
	off int64
}

func (o *offsetWriter) WriteAt(p []byte, off int64) (int, error) {
	return o.w.WriteAt(p, off+o.off)
}
