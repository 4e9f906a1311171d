// Package manifest is the JSON description of a built image: what every
// partition holds, its hash, its dm-verity parameters and where its content
// came from. It is what gets signed and what verification checks against.
package manifest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/kiln-os/kiln/build/diskimage"
	"github.com/kiln-os/kiln/internal/hashing"
	"github.com/kiln-os/kiln/layout"
)

// FormatVersion is the manifest format written by this kiln for a build
// without converted images. Format 2 added the hashes of the bytes outside
// the partitions (Outside).
const FormatVersion = 2

// OutputsFormatVersion is the format of a manifest that lists converted
// images (Outputs): format 3. A kiln that reads only format 2 refuses it
// by its number, not by an unknown field.
const OutputsFormatVersion = 3

// DocumentsFormatVersion is the format of a manifest that lists the
// documents about the build (Documents: the SBOMs), with or without
// converted images: format 4. A kiln that reads only formats 2 and 3
// refuses it by its number.
const DocumentsFormatVersion = 4

// Manifest describes one image build.
type Manifest struct {
	Format          int         `json:"format"`
	Name            string      `json:"name"`
	Version         string      `json:"version"`
	Channel         string      `json:"channel,omitempty"`
	KilnVersion     string      `json:"kiln_version"`
	Layout          string      `json:"layout"`
	DiskGUID        layout.GUID `json:"disk_guid"`
	DiskSize        int64       `json:"disk_size"`
	SourceDateEpoch int64       `json:"source_date_epoch"`
	// DigestAlgorithm names how partitions are digested: always
	// hashing.ChunkedAlgorithm.
	DigestAlgorithm string `json:"digest_algorithm"`
	// Outside hashes every byte of the image that no partition holds, so
	// that with the partitions' hashes the manifest covers every byte.
	Outside    Outside     `json:"outside"`
	Partitions []Partition `json:"partitions"`
	Sources    []Source    `json:"sources,omitempty"`
	// Outputs are the images converted from the disk image (kiln build
	// --format), in the formats' order; in formats 3 and 4.
	Outputs []Output `json:"outputs,omitempty"`
	// Documents are the files about the build beside the image: the
	// SBOMs (sbom.spdx.json, sbom.cdx.json); only in format 4, which
	// always has them.
	Documents []Document `json:"documents,omitempty"`
}

// Document is a file about the build in its output directory.
type Document struct {
	// Name is the file's name ("sbom.spdx.json").
	Name string `json:"name"`
	// MediaType says what it is ("application/spdx+json").
	MediaType string `json:"media_type"`
	// Size is the file's size in bytes.
	Size int64 `json:"size"`
	// SHA256 is the SHA-256 of the file (hex), as sha256sum prints it.
	SHA256 string `json:"sha256"`
}

// Document returns the document with the given file name, or nil.
func (m *Manifest) Document(name string) *Document {
	for i := range m.Documents {
		if m.Documents[i].Name == name {
			return &m.Documents[i]
		}
	}
	return nil
}

// Output is an image converted from the disk image: a file beside it in
// the output directory.
type Output struct {
	// Name is the file's name in the output directory ("disk.qcow2").
	Name string `json:"name"`
	// Format is the diskimage format name ("qcow2", "vhd", "raw.zst").
	Format string `json:"format"`
	// Size is the file's size in bytes.
	Size int64 `json:"size"`
	// VirtualSize is the size of the disk the file holds: the disk
	// image's, or more where the format rounds it up (the rest is zeros).
	VirtualSize int64 `json:"virtual_size"`
	// Digest is the chunked SHA-256 (hex, DigestAlgorithm) of the file.
	Digest string `json:"digest"`
}

// Partition is one GPT entry of the image and what it holds.
type Partition struct {
	Number   int         `json:"number"`
	Label    string      `json:"label"`
	Type     layout.GUID `json:"type"`
	TypeName string      `json:"type_name"`
	GUID     layout.GUID `json:"guid"`
	Offset   int64       `json:"offset"`
	Size     int64       `json:"size"`
	// Digest is the chunked SHA-256 (hex) of all Size bytes of the
	// partition: the SHA-256 of the SHA-256 digests of its 1 MiB chunks
	// (internal/hashing.Chunked; split -b 1M --filter=sha256sum | cut
	// -c1-64 | xxd -r -p | sha256sum computes it too). Holes and zero runs
	// cost nothing to hash, and chunks hash in parallel.
	Digest     string `json:"digest"`
	Filesystem string `json:"filesystem,omitempty"`
	// FilesystemSize is the bytes the filesystem image occupies (the
	// verity data area, when Verity is set).
	FilesystemSize int64   `json:"filesystem_size,omitempty"`
	Verity         *Verity `json:"verity,omitempty"`
}

// Verity is the dm-verity setup of a partition, in veritysetup's terms.
type Verity struct {
	Algorithm     string `json:"algorithm"`
	RootHash      string `json:"root_hash"` // hex
	Salt          string `json:"salt"`      // hex
	DataBlockSize uint32 `json:"data_block_size"`
	HashBlockSize uint32 `json:"hash_block_size"`
	DataBlocks    uint64 `json:"data_blocks"`
	// HashOffset is the byte offset of the verity superblock inside the
	// partition (veritysetup --hash-offset); the data starts at 0.
	HashOffset int64 `json:"hash_offset"`
}

// Outside is the SHA-256 (hex) of each part of a disk image outside its
// partitions.
type Outside struct {
	// MBR is sector 0: the boot code and the protective MBR.
	MBR string `json:"mbr_sha256"`
	// PrimaryGPT is sectors 1–33: the primary header and entry array,
	// with every partition's initial slot attributes.
	PrimaryGPT string `json:"primary_gpt_sha256"`
	// BackupGPT is the last 33 sectors: the backup entry array and header.
	BackupGPT string `json:"backup_gpt_sha256"`
	// Gaps is every other byte outside the partitions, concatenated in
	// disk order (alignment gaps, the space after the last partition).
	Gaps string `json:"gaps_sha256"`
}

// OutsideSpans returns the byte ranges that each Outside hash covers for a
// disk laid out as t.
func OutsideSpans(t *layout.Table) (mbr, primary, backup hashing.Span, gaps []hashing.Span) {
	const sector = layout.SectorSize
	size := t.Size()
	mbr = hashing.Span{Off: 0, Size: sector}
	primary = hashing.Span{Off: sector, Size: 33 * sector}
	backup = hashing.Span{Off: size - 33*sector, Size: 33 * sector}
	parts := append([]layout.Entry(nil), t.Partitions...)
	sort.Slice(parts, func(i, j int) bool { return parts[i].Start < parts[j].Start })
	pos := int64(34 * sector)
	for _, e := range parts {
		if e.Offset() > pos {
			gaps = append(gaps, hashing.Span{Off: pos, Size: e.Offset() - pos})
		}
		pos = max(pos, e.Offset()+e.Size())
	}
	if end := backup.Off; end > pos {
		gaps = append(gaps, hashing.Span{Off: pos, Size: end - pos})
	}
	return mbr, primary, backup, gaps
}

// HashOutside hashes the bytes of the disk image r outside the partitions
// of t.
func HashOutside(r io.ReaderAt, t *layout.Table) (Outside, error) {
	mbr, primary, backup, gaps := OutsideSpans(t)
	var o Outside
	var err error
	for _, x := range []struct {
		dst   *string
		spans []hashing.Span
	}{{&o.MBR, []hashing.Span{mbr}}, {&o.PrimaryGPT, []hashing.Span{primary}}, {&o.BackupGPT, []hashing.Span{backup}}, {&o.Gaps, gaps}} {
		if *x.dst, err = hashing.Concat(r, x.spans); err != nil {
			return Outside{}, fmt.Errorf("hashing the bytes outside the partitions: %w", err)
		}
	}
	return o, nil
}

// Source is where a partition's content came from.
type Source struct {
	Partition string   `json:"partition"`
	Ref       string   `json:"ref"`
	Digest    string   `json:"digest,omitempty"` // image manifest digest
	Layers    []string `json:"layers,omitempty"`
}

// Output returns the output with the given file name, or nil.
func (m *Manifest) Output(name string) *Output {
	for i := range m.Outputs {
		if m.Outputs[i].Name == name {
			return &m.Outputs[i]
		}
	}
	return nil
}

// Partition returns the partition with the given label, or nil.
func (m *Manifest) Partition(label string) *Partition {
	for i := range m.Partitions {
		if m.Partitions[i].Label == label {
			return &m.Partitions[i]
		}
	}
	return nil
}

// Marshal encodes the manifest as indented JSON with a final newline; the
// same manifest always gives the same bytes.
func (m *Manifest) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// maxManifestSize bounds what Parse reads: a manifest is a few KiB.
const maxManifestSize = 16 << 20

// Parse decodes a manifest strictly (unknown fields are errors) and checks
// that its numbers are sane: offsets and sizes non-negative, partitions
// inside the disk, hashes of the right length.
func Parse(r io.Reader) (*Manifest, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if len(data) > maxManifestSize {
		return nil, fmt.Errorf("manifest: larger than %d bytes", maxManifestSize)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	switch {
	case m.Format != FormatVersion && m.Format != OutputsFormatVersion && m.Format != DocumentsFormatVersion:
		return nil, fmt.Errorf("manifest: format %d, this kiln reads %d, %d and %d (rebuild the image with this kiln)", m.Format, FormatVersion, OutputsFormatVersion, DocumentsFormatVersion)
	case m.Format == FormatVersion && len(m.Outputs) > 0:
		return nil, fmt.Errorf("manifest: format %d lists no outputs", m.Format)
	case m.Format == OutputsFormatVersion && len(m.Outputs) == 0:
		return nil, fmt.Errorf("manifest: format %d without outputs", m.Format)
	case m.Format != DocumentsFormatVersion && len(m.Documents) > 0:
		return nil, fmt.Errorf("manifest: format %d lists no documents", m.Format)
	case m.Format == DocumentsFormatVersion && len(m.Documents) == 0:
		return nil, fmt.Errorf("manifest: format %d without documents", m.Format)
	}
	if m.DiskSize <= 0 {
		return nil, fmt.Errorf("manifest: disk_size %d", m.DiskSize)
	}
	if m.DigestAlgorithm != hashing.ChunkedAlgorithm {
		return nil, fmt.Errorf("manifest: digest_algorithm %q, this kiln reads %q", m.DigestAlgorithm, hashing.ChunkedAlgorithm)
	}
	for _, h := range []string{m.Outside.MBR, m.Outside.PrimaryGPT, m.Outside.BackupGPT, m.Outside.Gaps} {
		if len(h) != 64 {
			return nil, fmt.Errorf("manifest: outside: sha256 %q is not 64 hex digits", h)
		}
	}
	for _, p := range m.Partitions {
		if p.Offset < 0 || p.Size <= 0 || p.Offset > m.DiskSize || p.Size > m.DiskSize-p.Offset {
			return nil, fmt.Errorf("manifest: partition %s: offset %d size %d outside a disk of %d bytes", p.Label, p.Offset, p.Size, m.DiskSize)
		}
		if len(p.Digest) != 64 {
			return nil, fmt.Errorf("manifest: partition %s: digest %q is not 64 hex digits", p.Label, p.Digest)
		}
		if v := p.Verity; v != nil {
			if v.DataBlockSize == 0 || v.HashOffset < 0 || v.HashOffset > p.Size || int64(v.DataBlocks) > p.Size/int64(v.DataBlockSize) {
				return nil, fmt.Errorf("manifest: partition %s: verity data blocks %d or hash offset %d outside the partition", p.Label, v.DataBlocks, v.HashOffset)
			}
		}
	}
	names := map[string]bool{}
	for _, o := range m.Outputs {
		if err := o.check(m.DiskSize); err != nil {
			return nil, fmt.Errorf("manifest: output %q: %w", o.Name, err)
		}
		if names[o.Name] {
			return nil, fmt.Errorf("manifest: output %q listed twice", o.Name)
		}
		names[o.Name] = true
	}
	for _, d := range m.Documents {
		if d.Name == "" || d.Name == "." || d.Name == ".." || strings.ContainsAny(d.Name, "/\\\x00") {
			return nil, fmt.Errorf("manifest: document %q: not a file name", d.Name)
		}
		if _, err := hex.DecodeString(d.SHA256); err != nil || len(d.SHA256) != 64 || d.Size < 0 {
			return nil, fmt.Errorf("manifest: document %q: size %d, sha256 %q", d.Name, d.Size, d.SHA256)
		}
		if names[d.Name] {
			return nil, fmt.Errorf("manifest: %q listed twice", d.Name)
		}
		names[d.Name] = true
	}
	return &m, nil
}

// check is what Parse requires of an output: a plain file name, a format
// kiln writes, sizes that can be, a digest of 64 hex digits.
func (o *Output) check(diskSize int64) error {
	if o.Name == "" || o.Name == "." || o.Name == ".." || strings.ContainsAny(o.Name, "/\\\x00") {
		return fmt.Errorf("not a file name for an output")
	}
	if f, err := diskimage.ParseFormat(o.Format); err != nil || f == diskimage.Raw {
		return fmt.Errorf("format %q is not a converted image's", o.Format)
	}
	if o.Size <= 0 || o.VirtualSize < diskSize {
		return fmt.Errorf("size %d or virtual size %d (the disk is %d bytes)", o.Size, o.VirtualSize, diskSize)
	}
	if _, err := hex.DecodeString(o.Digest); err != nil || len(o.Digest) != 64 {
		return fmt.Errorf("digest %q is not 64 hex digits", o.Digest)
	}
	return nil
}
