package payload

import (
	"context"
	"encoding/hex"
	"sort"
)

// Summary describes a payload for `kiln payload inspect`.
type Summary struct {
	MajorVersion          uint64             `json:"major_version"`
	MinorVersion          uint32             `json:"minor_version"`
	Kind                  string             `json:"kind"` // "full" or "delta"
	BlockSize             uint32             `json:"block_size"`
	Size                  int64              `json:"size"`
	MetadataSize          int64              `json:"metadata_size"`
	MetadataSignatureSize int64              `json:"metadata_signature_size"`
	DataSize              int64              `json:"data_size"`
	Signatures            int                `json:"signatures"`
	SignatureStatus       string             `json:"signature_status"` // "unsigned", "not checked", "valid", or the error
	Partitions            []PartitionSummary `json:"partitions"`
	// Clients says, for each client family, whether it applies the
	// payload (see [Client.Check]).
	Clients []ClientSummary `json:"clients"`
}

// ClientSummary says whether a client family applies a payload.
type ClientSummary struct {
	Client      string `json:"client"`
	Description string `json:"description"`
	Applies     bool   `json:"applies"`
	Why         string `json:"why_not,omitempty"` // what it cannot apply
}

// PartitionSummary describes one partition of a payload.
type PartitionSummary struct {
	Name      string    `json:"name"`
	Version   string    `json:"version,omitempty"`
	OldSize   int64     `json:"old_size,omitempty"`
	OldHash   string    `json:"old_sha256,omitempty"`
	NewSize   int64     `json:"new_size"`
	NewHash   string    `json:"new_sha256"`
	Ops       int       `json:"operations"`
	OpsByType []OpStats `json:"operations_by_type"`
	// OldVersion is a delta's source release; VerityRoot the new
	// partition's dm-verity root hash (hex), when recorded.
	OldVersion string `json:"old_version,omitempty"`
	VerityRoot string `json:"verity_root_hash,omitempty"`
	// VerityTree is "payload" (operations write the tree) or "client"
	// (hash_tree_* fields: the client computes it), when recorded.
	VerityTree string `json:"verity_tree,omitempty"`
}

// OpStats counts the operations of one type.
type OpStats struct {
	Type      string `json:"type"`
	Count     int    `json:"count"`
	DataBytes int64  `json:"data_bytes"` // payload bytes
	DstBytes  int64  `json:"dst_bytes"`  // partition bytes written
}

// Inspect summarises p. With a Verifier it also checks the signatures and
// data hashes (reading the whole payload); without one the status is
// "not checked" (or "unsigned").
func Inspect(ctx context.Context, p *Payload, v Verifier) Summary {
	s := Summary{
		MajorVersion:          MajorVersion,
		MinorVersion:          p.Manifest.GetMinorVersion(),
		Kind:                  "delta",
		BlockSize:             p.Manifest.GetBlockSize(),
		Size:                  p.Size,
		MetadataSize:          p.MetadataSize,
		MetadataSignatureSize: p.MetadataSignatureSize,
		DataSize:              p.DataSize,
		SignatureStatus:       "unsigned",
	}
	if p.Full() {
		s.Kind = "full"
	}
	if p.Signed {
		s.Signatures = len(p.payloadSignatures.Signatures)
		s.SignatureStatus = "not checked"
		if v != nil {
			s.SignatureStatus = "valid"
			if err := p.Verify(ctx, v); err != nil {
				s.SignatureStatus = err.Error()
			}
		}
	}
	for _, part := range p.Partitions {
		ps := PartitionSummary{Name: part.Name, Version: part.Version, OldVersion: part.OldVersion, NewSize: part.New.Size, NewHash: hex.EncodeToString(part.New.Hash[:]), Ops: len(part.Ops)}
		if part.Verity != nil {
			ps.VerityRoot = hex.EncodeToString(part.Verity.RootHash)
			ps.VerityTree = part.VerityTree.String()
		}
		if part.Old != nil {
			ps.OldSize, ps.OldHash = part.Old.Size, hex.EncodeToString(part.Old.Hash[:])
		}
		by := map[OpType]*OpStats{}
		for _, op := range part.Ops {
			t := OpType(op.GetType())
			st := by[t]
			if st == nil {
				st = &OpStats{Type: t.String()}
				by[t] = st
			}
			st.Count++
			st.DataBytes += int64(op.GetDataLength())
			st.DstBytes += blocksOf(extentsOf(op.DstExtents)) * BlockSize
		}
		for _, st := range by {
			ps.OpsByType = append(ps.OpsByType, *st)
		}
		sort.Slice(ps.OpsByType, func(i, j int) bool { return ps.OpsByType[i].Type < ps.OpsByType[j].Type })
		s.Partitions = append(s.Partitions, ps)
	}
	f := FeaturesOf(p)
	for _, c := range Clients {
		cs := ClientSummary{Client: c.String(), Description: c.Description(), Applies: true}
		if err := c.Check(f); err != nil {
			cs.Applies, cs.Why = false, err.Error()
		}
		s.Clients = append(s.Clients, cs)
	}
	return s
}
