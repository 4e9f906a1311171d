// Package diskimage converts a sparse raw disk image into the formats that
// hypervisors, clouds and downloads take: qcow2 (QEMU/KVM, OpenStack,
// KubeVirt), VMDK (vSphere, OVA), VHD (Azure, Hyper-V), VHDX (Hyper-V),
// compressed raw (.zst, .xz), GCE's tar.gz and OVA. One writer per format,
// in Go.
//
// Every writer streams from the raw image: the raw image's holes are found
// with SEEK_DATA/SEEK_HOLE and never read, data is read in fixed-size
// blocks on several goroutines and written in order, so memory stays
// bounded (a table of a few KiB per GiB of disk, and a few blocks in
// flight). Every writer is reproducible: the same raw image gives the same
// bytes, whatever the number of workers and whether its zeros are holes or
// written zeros. Identifiers the formats carry (VHD and VHDX GUIDs, the
// VMDK content ID) derive from the content; the VHD timestamp is the
// caller's (SOURCE_DATE_EPOCH).
//
// Open reads each format but the archives (gce, ova) back as the virtual
// disk it holds, so that an image can be checked against the raw image's
// digests.
package diskimage

import (
	"errors"
	"fmt"
	"strings"
)

// Format is an output format.
type Format uint8

// The formats. See docs/formats.md for what each is for.
const (
	// Raw is the sparse raw image itself (disk.img).
	Raw Format = iota
	// QCOW2 is qcow2 version 3, zero clusters not stored.
	QCOW2
	// QCOW2Zstd is QCOW2 with every cluster that shrinks compressed with
	// zstd (QEMU 5.1 and later read it).
	QCOW2Zstd
	// VMDK is a streamOptimized VMDK: deflate-compressed grains with
	// markers, what vSphere imports and OVA packages hold.
	VMDK
	// VMDKSparse is a monolithicSparse (hosted sparse extent) VMDK:
	// VMware Workstation and Fusion, and most tools that read VMDK.
	VMDKSparse
	// VHD is a fixed VHD by Azure's rules: the disk, a whole number of
	// MiB, then a 512-byte footer.
	VHD
	// VHDDynamic is a dynamic (sparse) VHD with 2 MiB blocks.
	VHDDynamic
	// VHDX is a dynamic VHDX (Hyper-V) with 2 MiB blocks.
	VHDX
	// RawZstd is the raw image compressed with zstd: independent frames
	// of 4 MiB, compressed on every core.
	RawZstd
	// RawXZ is the raw image compressed with xz: one stream of
	// independent 8 MiB blocks (as xz -T writes), compressed on every core.
	RawXZ
	// GCE is the raw image as GCE imports it: disk.raw, sparse, in a
	// gzip-compressed GNU (oldgnu) tar.
	GCE
	// OVA is an OVF package in a ustar archive: the OVF descriptor (UEFI
	// firmware), the streamOptimized VMDK, a SHA-256 manifest.
	OVA
	numFormats
)

var formatInfo = [numFormats]struct {
	name, file, qemu string
}{
	Raw:        {"raw", "disk.img", "raw"},
	QCOW2:      {"qcow2", "disk.qcow2", "qcow2"},
	QCOW2Zstd:  {"qcow2-zstd", "disk-zstd.qcow2", "qcow2"},
	VMDK:       {"vmdk", "disk.vmdk", "vmdk"},
	VMDKSparse: {"vmdk-sparse", "disk-sparse.vmdk", "vmdk"},
	VHD:        {"vhd", "disk.vhd", "vpc"},
	VHDDynamic: {"vhd-dynamic", "disk-dynamic.vhd", "vpc"},
	VHDX:       {"vhdx", "disk.vhdx", "vhdx"},
	RawZstd:    {"raw.zst", "disk.img.zst", ""},
	RawXZ:      {"raw.xz", "disk.img.xz", ""},
	GCE:        {"gce", "disk.tar.gz", ""},
	OVA:        {"ova", "disk.ova", ""},
}

// Formats returns every format, in order.
func Formats() []Format {
	out := make([]Format, numFormats)
	for i := range out {
		out[i] = Format(i)
	}
	return out
}

// String returns the format's name: "qcow2", "vhd-dynamic", "raw.zst".
func (f Format) String() string {
	if f < numFormats {
		return formatInfo[f].name
	}
	return fmt.Sprintf("Format(%d)", uint8(f))
}

// FileName returns the name a build gives the format's output:
// "disk.qcow2", "disk.img.zst".
func (f Format) FileName() string {
	if f < numFormats {
		return formatInfo[f].file
	}
	return ""
}

// QEMUFormat returns the name qemu-img gives the format ("vpc" for VHD),
// or "" for the compressed raw formats and the archives (gce, ova), which
// QEMU does not read.
func (f Format) QEMUFormat() string {
	if f < numFormats {
		return formatInfo[f].qemu
	}
	return ""
}

// ErrUnknownFormat is returned for a format name kiln does not write.
var ErrUnknownFormat = errors.New("diskimage: unknown format")

// ParseFormat parses a format name.
func ParseFormat(s string) (Format, error) {
	for i, fi := range formatInfo {
		if fi.name == s {
			return Format(i), nil
		}
	}
	return 0, fmt.Errorf("%w %q (want one of %s)", ErrUnknownFormat, s, strings.Join(names(), ", "))
}

// ParseFormats parses a comma-separated list of format names; a format
// named twice is an error.
func ParseFormats(s string) ([]Format, error) {
	var out []Format
	for _, n := range strings.Split(s, ",") {
		n = strings.TrimSpace(n)
		f, err := ParseFormat(n)
		if err != nil {
			return nil, err
		}
		for _, g := range out {
			if g == f {
				return nil, fmt.Errorf("diskimage: format %q named twice", n)
			}
		}
		out = append(out, f)
	}
	return out, nil
}

func names() []string {
	var out []string
	for _, fi := range formatInfo {
		out = append(out, fi.name)
	}
	return out
}
