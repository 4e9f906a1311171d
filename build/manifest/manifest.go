// Package manifest is the JSON description of a built image: what every
// partition holds, its hash, its dm-verity parameters and where its content
// came from. It is what gets signed and what verification checks against.
package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"github.com/kiln-os/kiln/layout"
)

// FormatVersion is the manifest format written by this kiln.
const FormatVersion = 1

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
	Partitions      []Partition `json:"partitions"`
	Sources         []Source    `json:"sources,omitempty"`
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
	// SHA256 is the hex SHA-256 of all Size bytes of the partition.
	SHA256     string `json:"sha256"`
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

// Source is where a partition's content came from.
type Source struct {
	Partition string   `json:"partition"`
	Ref       string   `json:"ref"`
	Digest    string   `json:"digest,omitempty"` // image manifest digest
	Layers    []string `json:"layers,omitempty"`
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
	if m.Format != FormatVersion {
		return nil, fmt.Errorf("manifest: format %d, this kiln reads %d", m.Format, FormatVersion)
	}
	if m.DiskSize <= 0 {
		return nil, fmt.Errorf("manifest: disk_size %d", m.DiskSize)
	}
	for _, p := range m.Partitions {
		if p.Offset < 0 || p.Size <= 0 || p.Offset > m.DiskSize || p.Size > m.DiskSize-p.Offset {
			return nil, fmt.Errorf("manifest: partition %s: offset %d size %d outside a disk of %d bytes", p.Label, p.Offset, p.Size, m.DiskSize)
		}
		if len(p.SHA256) != 64 {
			return nil, fmt.Errorf("manifest: partition %s: sha256 %q is not 64 hex digits", p.Label, p.SHA256)
		}
		if v := p.Verity; v != nil {
			if v.DataBlockSize == 0 || v.HashOffset < 0 || v.HashOffset > p.Size || int64(v.DataBlocks) > p.Size/int64(v.DataBlockSize) {
				return nil, fmt.Errorf("manifest: partition %s: verity data blocks %d or hash offset %d outside the partition", p.Label, v.DataBlocks, v.HashOffset)
			}
		}
	}
	return &m, nil
}
