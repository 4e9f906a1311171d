package payload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"

	um "github.com/kiln-os/kiln/build/payload/updatemetadata"
	"github.com/kiln-os/kiln/internal/xzstream"
	"google.golang.org/protobuf/proto"
)

// Payload is a parsed and validated payload. Nothing in it has been
// trusted yet: signatures and data hashes are checked by Verify and Apply.
type Payload struct {
	Manifest     *um.DeltaArchiveManifest
	Partitions   []Partition
	Size         int64 // bytes of the payload file
	MetadataSize int64 // header + manifest: what the metadata signature covers
	// MetadataSignatureSize is the size of the metadata Signatures message
	// that follows the manifest (0 when unsigned).
	MetadataSignatureSize int64
	DataOffset            int64 // where the data area starts in the file
	DataSize              int64 // bytes of operation data
	// Signed reports a payload signature at Manifest.signatures_offset.
	Signed bool

	r                  io.ReaderAt
	metadataSignatures *um.Signatures
	payloadSignatures  *um.Signatures
}

// Partition is one PartitionUpdate of a payload.
type Partition struct {
	Name    string
	Version string
	// OldVersion is a delta's source release version ("" when not recorded).
	OldVersion string
	// Verity is the new partition's hash tree, when recorded; VerityTree
	// says whether the operations write it or the client computes it.
	Verity     *Verity
	VerityTree VerityTree
	Old        *PartitionInfo // nil in a full payload
	New        PartitionInfo
	Ops        []*um.InstallOperation
}

// Full reports whether the payload is a full payload (minor version 0).
func (p *Payload) Full() bool { return p.Manifest.GetMinorVersion() == FullMinorVersion }

// Open reads a payload's header, manifest and signatures from r and
// validates them before anything uses them: the magic and major version;
// manifest and signature sizes against the file and fixed limits; the
// protobuf; block size; minor version; each partition's sizes and hashes;
// each operation's type, extents (inside the new partition, and inside the
// old one for source operations), byte lengths and data location (inside
// the data area, contiguous in operation order, as update_engine requires),
// data and source hashes; and that no two operations write the same block.
// Each violation is a *FormatError.
func Open(r io.ReaderAt, size int64) (*Payload, error) {
	if size < headerSize {
		return nil, formatErr(0, "file of %d bytes is shorter than the %d-byte header", size, headerSize)
	}
	var hdr [headerSize]byte
	if err := readAt(r, hdr[:], 0); err != nil {
		return nil, fmt.Errorf("payload: reading header: %w", err)
	}
	if string(hdr[:4]) != Magic {
		return nil, formatErr(0, "bad magic %q, want %q", hdr[:4], Magic)
	}
	if v := binary.BigEndian.Uint64(hdr[4:]); v != MajorVersion {
		return nil, formatErr(4, "unsupported major version %d, want %d", v, MajorVersion)
	}
	manifestSize := binary.BigEndian.Uint64(hdr[12:])
	if manifestSize == 0 || manifestSize > MaxManifestSize || manifestSize > uint64(size-headerSize) {
		return nil, formatErr(12, "manifest size %d out of bounds (file %d bytes, limit %d)", manifestSize, size, MaxManifestSize)
	}
	metaSigSize := int64(binary.BigEndian.Uint32(hdr[20:]))
	p := &Payload{Size: size, r: r, MetadataSize: headerSize + int64(manifestSize), MetadataSignatureSize: metaSigSize}
	if metaSigSize > MaxSignaturesSize || metaSigSize > size-p.MetadataSize {
		return nil, formatErr(20, "metadata signature size %d out of bounds (limit %d, %d bytes left)", metaSigSize, MaxSignaturesSize, size-p.MetadataSize)
	}
	p.DataOffset = p.MetadataSize + metaSigSize

	mb := make([]byte, manifestSize)
	if err := readAt(r, mb, headerSize); err != nil {
		return nil, fmt.Errorf("payload: reading manifest: %w", err)
	}
	p.Manifest = &um.DeltaArchiveManifest{}
	if err := proto.Unmarshal(mb, p.Manifest); err != nil {
		return nil, formatErr(headerSize, "manifest does not decode: %v", err)
	}
	if metaSigSize > 0 {
		var err error
		if p.metadataSignatures, err = readSignatures(r, p.MetadataSize, metaSigSize); err != nil {
			return nil, err
		}
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	return p, nil
}

func readSignatures(r io.ReaderAt, off, n int64) (*um.Signatures, error) {
	b := make([]byte, n)
	if err := readAt(r, b, off); err != nil {
		return nil, fmt.Errorf("payload: reading signatures: %w", err)
	}
	s := &um.Signatures{}
	if err := proto.Unmarshal(b, s); err != nil {
		return nil, formatErr(off, "signatures do not decode: %v", err)
	}
	if len(s.Signatures) == 0 {
		return nil, formatErr(off, "signatures message holds no signature")
	}
	for i, sg := range s.Signatures {
		if len(sg.Data) == 0 || (sg.UnpaddedSignatureSize != nil && int(sg.GetUnpaddedSignatureSize()) > len(sg.Data)) {
			return nil, formatErr(off, "signature %d: %d bytes with unpadded size %d", i, len(sg.Data), sg.GetUnpaddedSignatureSize())
		}
	}
	return s, nil
}

func (p *Payload) validate() error {
	m := p.Manifest
	if bs := m.GetBlockSize(); bs != BlockSize {
		return formatErr(-1, "block size %d, want %d", bs, BlockSize)
	}
	minor := m.GetMinorVersion()
	full := minor == FullMinorVersion
	if !full && (minor < 2 || minor > 9) {
		return formatErr(-1, "unsupported minor version %d", minor)
	}
	if len(m.Partitions) == 0 {
		return formatErr(-1, "no partitions")
	}
	dataEnd := p.Size - p.DataOffset // bytes available for data and signatures
	names := map[string]bool{}
	var next uint64 // where the next operation's data must start
	for pi, pu := range m.Partitions {
		name := pu.GetPartitionName()
		where := fmt.Sprintf("partition %d (%q)", pi, name)
		if name == "" || names[name] {
			return formatErr(-1, "%s: missing or duplicate name", where)
		}
		names[name] = true
		part := Partition{Name: name, Version: pu.GetVersion(), Ops: pu.Operations}
		ni := pu.GetNewPartitionInfo()
		if ni == nil || ni.GetSize() == 0 || ni.GetSize()%BlockSize != 0 || ni.GetSize() > math.MaxInt64/2 || len(ni.GetHash()) != sha256.Size {
			return formatErr(-1, "%s: new_partition_info needs a size that is a positive multiple of %d and a 32-byte hash", where, BlockSize)
		}
		part.New = PartitionInfo{Size: int64(ni.GetSize())}
		copy(part.New.Hash[:], ni.GetHash())
		var oldBlocks uint64
		if oi := pu.GetOldPartitionInfo(); oi != nil {
			if full {
				return formatErr(-1, "%s: full payload has old_partition_info", where)
			}
			if oi.GetSize() == 0 || oi.GetSize()%BlockSize != 0 || oi.GetSize() > math.MaxInt64/2 || len(oi.GetHash()) != sha256.Size {
				return formatErr(-1, "%s: old_partition_info needs a size that is a positive multiple of %d and a 32-byte hash", where, BlockSize)
			}
			part.Old = &PartitionInfo{Size: int64(oi.GetSize())}
			copy(part.Old.Hash[:], oi.GetHash())
			oldBlocks = oi.GetSize() / BlockSize
		} else if !full {
			return formatErr(-1, "%s: delta payload without old_partition_info", where)
		}
		newBlocks := ni.GetSize() / BlockSize
		part.OldVersion = pu.GetKilnOldVersion()
		if v, mode, err := verityOf(pu, newBlocks); err != nil {
			return formatErr(-1, "%s: %v", where, err)
		} else {
			part.Verity, part.VerityTree = v, mode
		}
		if part.VerityTree == VerityTreeByClient && minor < VerityMinorVersion {
			return formatErr(-1, "%s: hash_tree_* fields need minor version %d, payload is minor version %d", where, VerityMinorVersion, minor)
		}
		var dsts []Extent
		for oi, op := range pu.Operations {
			where := fmt.Sprintf("%s operation %d", where, oi)
			if op.Type == nil {
				return formatErr(-1, "%s: no type", where)
			}
			t := OpType(op.GetType())
			if _, ok := opNames[t]; !ok || t == OpMove || t == OpBsdiff {
				return formatErr(-1, "%s: unknown or retired operation type %d", where, op.GetType())
			}
			if !opAllowed(t, minor) {
				if full {
					return formatErr(-1, "%s: %v in a full payload", where, t)
				}
				return formatErr(-1, "%s: %v needs minor version %d, payload is minor version %d", where, t, opMinMinor[t], minor)
			}
			if t == OpSourceBsdiff {
				// update_engine's generator sets both lengths below
				// NoBsdiffLengthsMinorVersion and neither from it on; its
				// checker holds payloads to that.
				has := op.SrcLength != nil || op.DstLength != nil
				if minor >= NoBsdiffLengthsMinorVersion && has {
					return formatErr(-1, "%s: SOURCE_BSDIFF with src_length/dst_length at minor version %d (allowed below %d)", where, minor, NoBsdiffLengthsMinorVersion)
				}
				if minor < NoBsdiffLengthsMinorVersion && (op.SrcLength == nil || op.DstLength == nil) {
					return formatErr(-1, "%s: SOURCE_BSDIFF without src_length and dst_length at minor version %d", where, minor)
				}
			}
			if len(op.DstExtents) == 0 {
				return formatErr(-1, "%s: no destination extents", where)
			}
			dstBlocks, err := checkExtents(op.DstExtents, newBlocks)
			if err != nil {
				return formatErr(-1, "%s: destination %v", where, err)
			}
			for _, e := range op.DstExtents {
				dsts = append(dsts, Extent{Start: e.GetStartBlock(), Blocks: e.GetNumBlocks()})
			}
			var srcBlocks uint64
			if t.readsSource() {
				if len(op.SrcExtents) == 0 {
					return formatErr(-1, "%s: %v without source extents", where, t)
				}
				if srcBlocks, err = checkExtents(op.SrcExtents, oldBlocks); err != nil {
					return formatErr(-1, "%s: source %v", where, err)
				}
				if h := op.GetSrcSha256Hash(); (h != nil || minor >= SourceHashMinorVersion) && len(h) != sha256.Size {
					return formatErr(-1, "%s: source hash of %d bytes, want 32", where, len(h))
				}
			} else if len(op.SrcExtents) > 0 {
				return formatErr(-1, "%s: %v with source extents", where, t)
			}
			if t == OpSourceCopy && srcBlocks != dstBlocks {
				return formatErr(-1, "%s: copies %d blocks into %d", where, srcBlocks, dstBlocks)
			}
			if op.SrcLength != nil && op.GetSrcLength() > srcBlocks*BlockSize {
				return formatErr(-1, "%s: src_length %d exceeds its %d source blocks", where, op.GetSrcLength(), srcBlocks)
			}
			if op.DstLength != nil && op.GetDstLength() > dstBlocks*BlockSize {
				return formatErr(-1, "%s: dst_length %d exceeds its %d destination blocks", where, op.GetDstLength(), dstBlocks)
			}
			// Data.
			dl := op.GetDataLength()
			if t.hasData() {
				if dl == 0 {
					return formatErr(-1, "%s: %v without data", where, t)
				}
				if op.GetDataOffset() != next {
					return formatErr(p.DataOffset+int64(min(op.GetDataOffset(), uint64(dataEnd))), "%s: data at offset %d, want %d (blobs are contiguous, in operation order)", where, op.GetDataOffset(), next)
				}
				if dl > uint64(dataEnd)-next {
					return formatErr(p.DataOffset+int64(next), "%s: %d bytes of data run past the end of the file", where, dl)
				}
				if len(op.GetDataSha256Hash()) != sha256.Size {
					return formatErr(-1, "%s: data hash of %d bytes, want 32", where, len(op.GetDataSha256Hash()))
				}
				next += dl
			} else if dl != 0 || op.DataOffset != nil {
				return formatErr(-1, "%s: %v with data", where, t)
			}
			// Memory Apply needs for this operation.
			var need uint64
			switch t {
			case OpSourceCopy:
				need = srcBlocks * BlockSize
			case OpSourceBsdiff:
				need = srcBlocks*BlockSize + dstBlocks*BlockSize + dl
			default:
				need = dl
			}
			if need > MaxOpBytes {
				return formatErr(-1, "%s: needs %d bytes of buffers, above the %d limit", where, need, MaxOpBytes)
			}
		}
		sort.Slice(dsts, func(i, j int) bool { return dsts[i].Start < dsts[j].Start })
		for i := 1; i < len(dsts); i++ {
			if dsts[i-1].Start+dsts[i-1].Blocks > dsts[i].Start {
				return formatErr(-1, "%s: operations write block %d twice (destination extents overlap)", where, dsts[i].Start)
			}
		}
		p.Partitions = append(p.Partitions, part)
	}
	p.DataSize = int64(next)

	// Payload signature: right after the data, ending the file.
	so, ss := m.SignaturesOffset, m.SignaturesSize
	if (so == nil) != (ss == nil) {
		return formatErr(-1, "signatures_offset and signatures_size must be set together")
	}
	if so == nil {
		if p.DataSize != dataEnd {
			return formatErr(p.DataOffset+p.DataSize, "%d bytes after the data of an unsigned payload", dataEnd-p.DataSize)
		}
		if p.MetadataSignatureSize != 0 {
			return formatErr(20, "metadata signature without a payload signature")
		}
		return nil
	}
	if *so != uint64(p.DataSize) {
		return formatErr(-1, "signatures_offset %d, want the end of the data, %d", *so, p.DataSize)
	}
	if *ss == 0 || *ss > MaxSignaturesSize || *ss != uint64(dataEnd-p.DataSize) {
		return formatErr(p.DataOffset+p.DataSize, "signatures_size %d does not fill the %d bytes after the data (limit %d)", *ss, dataEnd-p.DataSize, MaxSignaturesSize)
	}
	if p.MetadataSignatureSize == 0 {
		return formatErr(20, "payload signature without a metadata signature")
	}
	var err error
	if p.payloadSignatures, err = readSignatures(p.r, p.DataOffset+p.DataSize, int64(*ss)); err != nil {
		return err
	}
	p.Signed = true
	return nil
}

// checkExtents checks that every extent is non-empty and inside a
// partition of n blocks, and returns the number of blocks.
func checkExtents(es []*um.Extent, n uint64) (uint64, error) {
	var total uint64
	for i, e := range es {
		s, c := e.GetStartBlock(), e.GetNumBlocks()
		if c == 0 {
			return 0, fmt.Errorf("extent %d is empty", i)
		}
		if s >= n || c > n-s {
			return 0, fmt.Errorf("extent %d (blocks %d+%d) lies outside the %d-block partition", i, s, c, n)
		}
		total += c
		if total > n*64 {
			return 0, fmt.Errorf("extents name more than %d blocks", n*64)
		}
	}
	return total, nil
}

// Partition returns the named partition; "" selects the only one.
func (p *Payload) Partition(name string) (*Partition, error) {
	if name == "" {
		if len(p.Partitions) != 1 {
			return nil, fmt.Errorf("%w: payload has %d partitions, name one", ErrWrongPartition, len(p.Partitions))
		}
		return &p.Partitions[0], nil
	}
	for i := range p.Partitions {
		if p.Partitions[i].Name == name {
			return &p.Partitions[i], nil
		}
	}
	return nil, fmt.Errorf("%w: %q", ErrWrongPartition, name)
}

// verifySignatures accepts when any signature verifies.
func verifySignatures(v Verifier, what string, digest []byte, s *um.Signatures) error {
	var errs []error
	for _, sg := range s.Signatures {
		sig := sg.Data
		if sg.UnpaddedSignatureSize != nil {
			sig = sig[:sg.GetUnpaddedSignatureSize()]
		}
		err := v.Verify(digest, sig)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("%w (%s): %w", ErrSignature, what, errors.Join(errs...))
}

// Verify checks the metadata signature, then reads the whole payload once
// to check the payload signature and every operation's data hash. With a
// nil Verifier only the data hashes are checked.
func (p *Payload) Verify(ctx context.Context, v Verifier) error {
	if v != nil {
		if !p.Signed {
			return ErrUnsigned
		}
		meta := make([]byte, p.MetadataSize)
		if err := readAt(p.r, meta, 0); err != nil {
			return fmt.Errorf("payload: reading metadata: %w", err)
		}
		digest := sha256.Sum256(meta)
		if err := verifySignatures(v, "metadata", digest[:], p.metadataSignatures); err != nil {
			return err
		}
	}
	whole := sha256.New()
	if _, err := io.Copy(whole, io.NewSectionReader(p.r, 0, p.MetadataSize)); err != nil {
		return fmt.Errorf("payload: reading metadata: %w", err)
	}
	buf := make([]byte, 1<<20)
	for _, part := range p.Partitions {
		for i, op := range part.Ops {
			if err := ctx.Err(); err != nil {
				return err
			}
			if op.GetDataLength() == 0 {
				continue
			}
			h := sha256.New()
			sr := io.NewSectionReader(p.r, p.DataOffset+int64(op.GetDataOffset()), int64(op.GetDataLength()))
			if _, err := io.CopyBuffer(io.MultiWriter(h, whole), sr, buf); err != nil {
				return fmt.Errorf("payload: reading data of partition %s operation %d: %w", part.Name, i, err)
			}
			if !bytes.Equal(h.Sum(nil), op.GetDataSha256Hash()) {
				return fmt.Errorf("%w: partition %s operation %d (data at byte 0x%x)", ErrDataHash, part.Name, i, p.DataOffset+int64(op.GetDataOffset()))
			}
		}
	}
	if v != nil {
		if err := verifySignatures(v, "payload", whole.Sum(nil), p.payloadSignatures); err != nil {
			return err
		}
	}
	return nil
}

// verityOf reads and bounds-checks a partition's hash-tree fields, either
// upstream's hash_tree_* (the client computes the tree) or kiln's
// kiln_hash_tree_* (the operations write it), never both: the data extent
// starts at block 0, the tree follows the superblock block, both lie inside
// the new partition and do not overlap.
func verityOf(pu *um.PartitionUpdate, newBlocks uint64) (*Verity, VerityTree, error) {
	upstream := pu.HashTreeDataExtent != nil || pu.HashTreeExtent != nil || pu.HashTreeAlgorithm != nil || pu.HashTreeSalt != nil
	kiln := pu.KilnHashTreeDataExtent != nil || pu.KilnHashTreeExtent != nil
	if upstream && kiln {
		return nil, 0, fmt.Errorf("both hash_tree_* and kiln_hash_tree_* fields")
	}
	mode := VerityTreeInPayload
	d, h := pu.GetKilnHashTreeDataExtent(), pu.GetKilnHashTreeExtent()
	if upstream {
		mode = VerityTreeByClient
		d, h = pu.GetHashTreeDataExtent(), pu.GetHashTreeExtent()
		if alg := pu.GetHashTreeAlgorithm(); alg != "sha256" {
			return nil, 0, fmt.Errorf("hash tree algorithm %q, only sha256", alg)
		}
		if len(pu.GetHashTreeSalt()) > 256 {
			return nil, 0, fmt.Errorf("hash tree salt of %d bytes", len(pu.GetHashTreeSalt()))
		}
	}
	if d == nil && h == nil && pu.KilnVerityRootHash == nil {
		return nil, 0, nil
	}
	if d == nil || h == nil || len(pu.GetKilnVerityRootHash()) != sha256.Size {
		return nil, 0, fmt.Errorf("incomplete hash tree fields (need both extents and a 32-byte root hash)")
	}
	data, tree := d.GetNumBlocks(), h.GetNumBlocks()
	if d.GetStartBlock() != 0 || data == 0 || data >= newBlocks {
		return nil, 0, fmt.Errorf("hash tree data extent [%d,+%d) must start at block 0 and end inside %d blocks", d.GetStartBlock(), data, newBlocks)
	}
	start := h.GetStartBlock()
	if start < data+1 || start > newBlocks || tree == 0 || tree > newBlocks-start {
		return nil, 0, fmt.Errorf("hash tree extent [%d,+%d) must follow the data and its superblock block inside %d blocks", start, tree, newBlocks)
	}
	return &Verity{DataBlocks: data, HashOffset: int64(start-1) * BlockSize, TreeBlocks: tree,
		Salt: pu.GetHashTreeSalt(), RootHash: pu.GetKilnVerityRootHash()}, mode, nil
}

// xzX86 reports whether a REPLACE_XZ operation's data starts with an .xz
// block behind the x86 BCJ filter. Unreadable data gives false: the data
// hash check reports it.
func (p *Payload) xzX86(op *um.InstallOperation) bool {
	b := make([]byte, min(op.GetDataLength(), 12+1024))
	n, _ := p.r.ReadAt(b, p.DataOffset+int64(op.GetDataOffset()))
	return xzstream.FirstBlockX86(b[:n])
}
