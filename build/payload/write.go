package payload

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	um "github.com/kiln-os/kiln/build/payload/updatemetadata"
	"google.golang.org/protobuf/proto"
)

var marshal = proto.MarshalOptions{Deterministic: true}

// Write serialises plan as a payload to w, streaming the operation data
// from the plan's spool, and signs it with each signer (none: an unsigned
// payload). It returns the number of bytes written.
//
// The signature sizes are part of what is signed, so Write first reserves
// each signer's SignatureSize, then signs the SHA-256 of the header and
// manifest (the metadata signature) and, after the data, the SHA-256 of
// header, manifest and data (the payload signature).
func Write(w io.Writer, plan *Plan, signers ...Signer) (int64, error) {
	if plan.spool == nil && len(plan.Ops) > 0 {
		return 0, errors.New("payload: write: plan is closed")
	}
	m, dataSize := manifestOf(plan)
	var sigSize int
	if len(signers) > 0 {
		var err error
		if sigSize, err = signaturesSize(signers); err != nil {
			return 0, err
		}
		m.SignaturesOffset = proto.Uint64(uint64(dataSize))
		m.SignaturesSize = proto.Uint64(uint64(sigSize))
	}
	mb, err := marshal.Marshal(m)
	if err != nil {
		return 0, fmt.Errorf("payload: encoding manifest: %w", err)
	}
	if len(mb) > MaxManifestSize {
		return 0, fmt.Errorf("payload: manifest of %d bytes exceeds %d", len(mb), MaxManifestSize)
	}
	meta := make([]byte, headerSize, headerSize+len(mb))
	copy(meta, Magic)
	binary.BigEndian.PutUint64(meta[4:], MajorVersion)
	binary.BigEndian.PutUint64(meta[12:], uint64(len(mb)))
	binary.BigEndian.PutUint32(meta[20:], uint32(sigSize))
	meta = append(meta, mb...)

	cw := &countWriter{w: w}
	payloadHash := sha256.New()
	payloadHash.Write(meta)
	if _, err := cw.Write(meta); err != nil {
		return cw.n, err
	}
	if len(signers) > 0 {
		digest := sha256.Sum256(meta)
		sigs, err := signAll(signers, digest[:], sigSize)
		if err != nil {
			return cw.n, fmt.Errorf("payload: metadata signature: %w", err)
		}
		if _, err := cw.Write(sigs); err != nil {
			return cw.n, err
		}
	}
	// Data blobs, in operation order, each checked against its hash.
	buf := make([]byte, 1<<20)
	for i, op := range plan.Ops {
		if op.DataLength == 0 {
			continue
		}
		opHash := sha256.New()
		n, err := io.CopyBuffer(io.MultiWriter(cw, payloadHash, opHash), plan.Data(i), buf)
		if err != nil {
			return cw.n, fmt.Errorf("payload: writing operation %d data: %w", i, err)
		}
		if n != op.DataLength || !bytes.Equal(opHash.Sum(nil), op.DataHash) {
			return cw.n, fmt.Errorf("payload: operation %d: spooled data does not match its hash", i)
		}
	}
	if len(signers) > 0 {
		sigs, err := signAll(signers, payloadHash.Sum(nil), sigSize)
		if err != nil {
			return cw.n, fmt.Errorf("payload: payload signature: %w", err)
		}
		if _, err := cw.Write(sigs); err != nil {
			return cw.n, err
		}
	}
	return cw.n, nil
}

// manifestOf builds the manifest of plan (without signature fields) and
// returns it with the size of the data area.
func manifestOf(plan *Plan) (*um.DeltaArchiveManifest, int64) {
	pu := &um.PartitionUpdate{
		PartitionName:    proto.String(plan.Partition),
		Version:          proto.String(plan.Version),
		NewPartitionInfo: &um.PartitionInfo{Size: proto.Uint64(uint64(plan.New.Size)), Hash: plan.New.Hash[:]},
	}
	if plan.Old != nil {
		pu.OldPartitionInfo = &um.PartitionInfo{Size: proto.Uint64(uint64(plan.Old.Size)), Hash: plan.Old.Hash[:]}
		if plan.OldVersion != "" {
			pu.KilnOldVersion = proto.String(plan.OldVersion)
		}
	}
	if v := plan.Verity; v != nil {
		data := &um.Extent{StartBlock: proto.Uint64(0), NumBlocks: proto.Uint64(v.DataBlocks)}
		tree := &um.Extent{StartBlock: proto.Uint64(uint64(v.HashOffset/BlockSize) + 1), NumBlocks: proto.Uint64(v.TreeBlocks)}
		if plan.VerityTree == VerityTreeByClient {
			// Upstream's fields (minor version >= 6): the client computes the tree.
			pu.HashTreeDataExtent, pu.HashTreeExtent = data, tree
			pu.HashTreeAlgorithm = proto.String("sha256")
			pu.HashTreeSalt = v.Salt
		} else {
			// The operations write the tree; kiln's fields say where it is.
			pu.KilnHashTreeDataExtent, pu.KilnHashTreeExtent = data, tree
		}
		pu.KilnVerityRootHash = v.RootHash
	}
	var off int64
	for _, op := range plan.Ops {
		o := &um.InstallOperation{
			Type:       um.InstallOperation_Type(op.Type).Enum(),
			SrcExtents: pbExtents(op.Src),
			DstExtents: pbExtents(op.Dst),
		}
		if op.DataLength > 0 {
			o.DataOffset = proto.Uint64(uint64(off))
			o.DataLength = proto.Uint64(uint64(op.DataLength))
			o.DataSha256Hash = op.DataHash
			off += op.DataLength
		}
		if op.SrcHash != nil {
			o.SrcSha256Hash = op.SrcHash
		}
		// src_length and dst_length: kiln writes minor versions of at
		// least NoBsdiffLengthsMinorVersion, where they must be absent.
		pu.Operations = append(pu.Operations, o)
	}
	return &um.DeltaArchiveManifest{
		BlockSize:    proto.Uint32(BlockSize),
		MinorVersion: proto.Uint32(plan.MinorVersion),
		Partitions:   []*um.PartitionUpdate{pu},
	}, off
}

func pbExtents(es []Extent) []*um.Extent {
	out := make([]*um.Extent, len(es))
	for i, e := range es {
		out[i] = &um.Extent{StartBlock: proto.Uint64(e.Start), NumBlocks: proto.Uint64(e.Blocks)}
	}
	return out
}

// signaturesSize is the encoded size of the Signatures message the
// signers make, each signature padded to its SignatureSize.
func signaturesSize(signers []Signer) (int, error) {
	s := &um.Signatures{}
	for _, sg := range signers {
		n := sg.SignatureSize()
		if n <= 0 || n > 4096 {
			return 0, fmt.Errorf("payload: signer reports signature size %d", n)
		}
		s.Signatures = append(s.Signatures, &um.Signatures_Signature{Data: make([]byte, n), UnpaddedSignatureSize: proto.Uint32(uint32(n))})
	}
	b, err := marshal.Marshal(s)
	return len(b), err
}

// signAll signs digest with every signer and encodes the Signatures
// message, which must come out at exactly size bytes.
func signAll(signers []Signer, digest []byte, size int) ([]byte, error) {
	s := &um.Signatures{}
	for _, sg := range signers {
		sig, err := sg.Sign(digest)
		if err != nil {
			return nil, err
		}
		n := sg.SignatureSize()
		if len(sig) == 0 || len(sig) > n {
			return nil, fmt.Errorf("signer returned %d bytes, more than its SignatureSize %d", len(sig), n)
		}
		padded := make([]byte, n)
		copy(padded, sig)
		s.Signatures = append(s.Signatures, &um.Signatures_Signature{Data: padded, UnpaddedSignatureSize: proto.Uint32(uint32(len(sig)))})
	}
	b, err := marshal.Marshal(s)
	if err != nil {
		return nil, err
	}
	if len(b) != size {
		return nil, fmt.Errorf("signatures came out at %d bytes, %d were reserved", len(b), size)
	}
	return b, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
