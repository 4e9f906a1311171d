// Package blockmap records where each file's data lies inside a filesystem
// image. Filesystem writers produce a Map; the delta planner reads two of
// them (old and new build) to turn unchanged files into copies and changed
// files into diffs against the old file's bytes.
package blockmap

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
)

// Extent is a run of bytes inside the image. For block-aligned filesystems
// (ext4) Offset and Length are multiples of the block size except for the
// tail of a file; for squashfs they cover compressed bytes.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// File is one regular file's data placement.
type File struct {
	Path    string   `json:"path"`    // slash-separated, relative to the filesystem root
	Size    int64    `json:"size"`    // logical (uncompressed) size in bytes
	Extents []Extent `json:"extents"` // in file order; empty for an empty or fully inline file
}

// Map is the block map of one filesystem image.
type Map struct {
	Filesystem string `json:"filesystem"` // "ext4", "squashfs", "vfat"
	BlockSize  int64  `json:"block_size"`
	ImageSize  int64  `json:"image_size"` // bytes of the filesystem image
	Files      []File `json:"files"`      // sorted by Path
	// Metadata are the image ranges that are not file data (superblocks,
	// inode tables, directories); useful for the planner's fallback.
	Metadata []Extent `json:"metadata,omitempty"`
}

// Sort orders Files by path.
func (m *Map) Sort() {
	sort.Slice(m.Files, func(i, j int) bool { return m.Files[i].Path < m.Files[j].Path })
}

// Validate checks that every extent lies inside the image and that the
// files are sorted and unique.
func (m *Map) Validate() error {
	if m.BlockSize <= 0 {
		return fmt.Errorf("blockmap: block_size %d is not positive", m.BlockSize)
	}
	for i, f := range m.Files {
		if i > 0 && m.Files[i-1].Path >= f.Path {
			return fmt.Errorf("blockmap: file %q: not sorted or duplicate", f.Path)
		}
		for _, e := range f.Extents {
			if e.Offset < 0 || e.Length < 0 || e.Offset > m.ImageSize || e.Length > m.ImageSize-e.Offset {
				return fmt.Errorf("blockmap: file %q: extent [%d,+%d) outside image of %d bytes", f.Path, e.Offset, e.Length, m.ImageSize)
			}
		}
	}
	return nil
}

// Write encodes the map as JSON.
func (m *Map) Write(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	return enc.Encode(m)
}

// Read decodes and validates a JSON map.
func Read(r io.Reader) (*Map, error) {
	var m Map
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("blockmap: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}
