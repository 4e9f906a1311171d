package payload

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"testing"

	um "github.com/kiln-os/kiln/build/payload/updatemetadata"
	"google.golang.org/protobuf/proto"
)

type hostileFixture struct {
	oldImg, newImg []byte
	signed         []byte // signed delta
}

func newHostileFixture(t *testing.T) hostileFixture {
	t.Helper()
	oldImg, newImg, oldI, newI := deltaImages(t, 1)
	plan := mustPlan(t, Config{Old: &oldI, New: newI, NewVersion: "2", MaxDiffSize: 1 << 20, Compression: CompressionZstd})
	return hostileFixture{oldImg, newImg, mustWrite(t, plan, RSASigner{testKey()})}
}

func firstOp(m *um.DeltaArchiveManifest, t OpType) *um.InstallOperation {
	for _, op := range m.Partitions[0].Operations {
		if OpType(op.GetType()) == t {
			return op
		}
	}
	panic("no " + t.String())
}

// Each malformed payload is refused by Open with a FormatError.
func TestOpenRejectsMalformed(t *testing.T) {
	f := newHostileFixture(t)
	good := f.signed
	p, err := Open(bytes.NewReader(good), int64(len(good)))
	if err != nil {
		t.Fatal(err)
	}
	newBlocks := p.Partitions[0].New.Size / BlockSize
	set := func(off int, v []byte) []byte {
		b := append([]byte(nil), good...)
		copy(b[off:], v)
		return b
	}
	u64 := func(x uint64) []byte { return binary.BigEndian.AppendUint64(nil, x) }
	cases := []struct {
		name    string
		payload []byte
		off     int64 // expected FormatError offset, or -2 for any
	}{
		{"empty", nil, 0},
		{"short header", good[:20], 0},
		{"truncated", good[:len(good)-1], -2},
		{"truncated in data", good[:p.DataOffset+p.DataSize/2], -2},
		{"extended", append(append([]byte(nil), good...), 0), -2},
		{"wrong magic", set(0, []byte("CrAV")), 0},
		{"major version 1", set(4, u64(1)), 4},
		{"major version 3", set(4, u64(3)), 4},
		{"absurd manifest size", set(12, u64(1<<62)), 12},
		{"zero manifest size", set(12, u64(0)), 12},
		{"absurd metadata signature size", set(20, []byte{0xff, 0xff, 0xff, 0xff}), 20},
		{"manifest garbage", set(headerSize, bytes.Repeat([]byte{0xff}, 16)), headerSize},
		{"dst extent outside partition", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			firstOp(m, OpZero).DstExtents[0].StartBlock = proto.Uint64(uint64(newBlocks))
		}), -1},
		{"dst extent overflows", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			firstOp(m, OpZero).DstExtents[0].NumBlocks = proto.Uint64(1<<64 - 1)
		}), -1},
		{"empty extent", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			firstOp(m, OpSourceCopy).DstExtents = append(firstOp(m, OpSourceCopy).DstExtents, &um.Extent{StartBlock: proto.Uint64(0), NumBlocks: proto.Uint64(0)})
		}), -1},
		{"src extent outside old partition", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			firstOp(m, OpSourceCopy).SrcExtents[0].StartBlock = proto.Uint64(1 << 40)
		}), -1},
		{"overlapping dst extents", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			ops := m.Partitions[0].Operations
			ops[1].DstExtents[0].StartBlock = proto.Uint64(ops[0].DstExtents[0].GetStartBlock())
		}), -1},
		{"copy size mismatch", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			op := firstOp(m, OpSourceCopy)
			op.SrcExtents = append(op.SrcExtents, &um.Extent{StartBlock: proto.Uint64(0), NumBlocks: proto.Uint64(1)})
		}), -1},
		{"no data hash", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			firstOp(m, OpSourceBsdiff).DataSha256Hash = nil
		}), -1},
		{"no source hash", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			firstOp(m, OpSourceCopy).SrcSha256Hash = nil
		}), -1},
		{"data out of order", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			op := firstOp(m, OpSourceBsdiff)
			op.DataOffset = proto.Uint64(op.GetDataOffset() + 1)
		}), -2},
		{"data past the end", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			op := firstOp(m, OpSourceBsdiff)
			op.DataLength = proto.Uint64(1 << 40)
		}), -2},
		{"absurd op buffers", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			op := firstOp(m, OpSourceBsdiff)
			for i := 0; i < 20; i++ {
				op.SrcExtents = append(op.SrcExtents, &um.Extent{StartBlock: proto.Uint64(0), NumBlocks: proto.Uint64(uint64(newBlocks))})
			}
		}), -1},
		{"source op in full payload", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			m.MinorVersion = proto.Uint32(0)
			m.Partitions[0].OldPartitionInfo = nil
		}), -1},
		{"unknown op type", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			firstOp(m, OpZero).Type = um.InstallOperation_Type(99).Enum()
		}), -1},
		{"block size", rewrite(t, good, func(m *um.DeltaArchiveManifest) { m.BlockSize = proto.Uint32(512) }), -1},
		{"no partitions", rewrite(t, good, func(m *um.DeltaArchiveManifest) { m.Partitions = nil }), -1},
		{"bad new hash", rewrite(t, good, func(m *um.DeltaArchiveManifest) { m.Partitions[0].NewPartitionInfo.Hash = []byte{1} }), -1},
		{"hash tree outside partition", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			m.MinorVersion = proto.Uint32(VerityMinorVersion)
			setVerity(m.Partitions[0], 4, 5, 1<<40)
		}), -1},
		{"hash tree over the data", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			m.MinorVersion = proto.Uint32(VerityMinorVersion)
			setVerity(m.Partitions[0], 8, 4, 1)
		}), -1},
		{"hash tree without root", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			m.MinorVersion = proto.Uint32(VerityMinorVersion)
			setVerity(m.Partitions[0], 4, 5, 1)
			m.Partitions[0].KilnVerityRootHash = nil
		}), -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(bytes.NewReader(tc.payload), int64(len(tc.payload)))
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("got %v, want a FormatError", err)
			}
			if tc.off != -2 && fe.Off != tc.off {
				t.Fatalf("error %q at offset %d, want %d", err, fe.Off, tc.off)
			}
			t.Log(err)
		})
	}
}

// Payloads that parse but must not be applied fail before anything is
// written.
func TestApplyRejectsBeforeWriting(t *testing.T) {
	f := newHostileFixture(t)
	good := f.signed
	p, _ := Open(bytes.NewReader(good), int64(len(good)))
	flip := func(off int64) []byte {
		b := append([]byte(nil), good...)
		b[off] ^= 1
		return b
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	unsigned := rewrite(t, good, func(*um.DeltaArchiveManifest) {})
	// The version string sits in the manifest; change one of its bytes.
	vi := bytes.Index(good[:p.MetadataSize], []byte{0x8a, 0x01, 0x01, '2'}) // field 17, length 1, "2"
	if vi < 0 {
		t.Fatal("version field not found in the manifest")
	}
	cases := []struct {
		name     string
		payload  []byte
		src      []byte
		verifier Verifier
		want     error
	}{
		{"bad data hash", flip(p.DataOffset + p.DataSize/2), f.oldImg, RSAVerifier{&testKey().PublicKey}, ErrDataHash},
		{"bad payload signature", flip(int64(len(good)) - 20), f.oldImg, RSAVerifier{&testKey().PublicKey}, ErrSignature},
		{"bad metadata signature", flip(p.MetadataSize + 20), f.oldImg, RSAVerifier{&testKey().PublicKey}, ErrSignature},
		{"tampered manifest", flip(int64(vi + 3)), f.oldImg, RSAVerifier{&testKey().PublicKey}, ErrSignature},
		{"other key", good, f.oldImg, RSAVerifier{&other.PublicKey}, ErrSignature},
		{"unsigned", unsigned, f.oldImg, RSAVerifier{&testKey().PublicKey}, ErrUnsigned},
		{"wrong source", good, f.newImg, RSAVerifier{&testKey().PublicKey}, ErrSourceHash},
		{"no source", good, nil, RSAVerifier{&testKey().PublicKey}, ErrNoSource},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Open(bytes.NewReader(tc.payload), int64(len(tc.payload)))
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			before := bytes.Repeat([]byte{0xee}, len(f.newImg))
			dst := &memImage{b: append([]byte(nil), before...)}
			var src io.ReaderAt
			if tc.src != nil {
				src = bytes.NewReader(tc.src)
			}
			_, err = Apply(context.Background(), p, src, dst, ApplyOptions{Verifier: tc.verifier})
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !bytes.Equal(dst.b, before) {
				t.Fatal("destination was written")
			}
			t.Log(err)
		})
	}
	// Without a signature check the data hashes still guard the write.
	bad := flip(p.DataOffset + p.DataSize/2)
	bp, _ := Open(bytes.NewReader(bad), int64(len(bad)))
	dst := &memImage{}
	if _, err := Apply(context.Background(), bp, bytes.NewReader(f.oldImg), dst, ApplyOptions{SkipSignature: true}); !errors.Is(err, ErrDataHash) || len(dst.b) != 0 {
		t.Fatalf("unchecked bad data: %v, %d bytes written", err, len(dst.b))
	}
	if _, err := Apply(context.Background(), p, bytes.NewReader(f.oldImg), dst, ApplyOptions{}); err == nil || len(dst.b) != 0 {
		t.Fatal("Apply without a verifier ran")
	}
}

func FuzzOpen(f *testing.F) {
	img, m := buildImage([]synthFile{{"a", []byte("hello")}, {"b", bytes.Repeat([]byte("xy"), 5000)}}, 128<<10, 1)
	img2 := append([]byte(nil), img...)
	copy(img2[16*BlockSize:], "HELLO")
	cfgNew := Image{R: bytes.NewReader(img), Size: int64(len(img)), Map: m}
	cfgNew2 := Image{R: bytes.NewReader(img2), Size: int64(len(img2))}
	full := mustPlan(f, Config{New: cfgNew, NewVersion: "1", Compression: CompressionZstd})
	delta := mustPlan(f, Config{Old: &cfgNew, New: cfgNew2, NewVersion: "2", Compression: CompressionXZ})
	f.Add(mustWrite(f, full))
	f.Add(mustWrite(f, full, RSASigner{testKey()}))
	f.Add(mustWrite(f, delta, RSASigner{testKey()}))
	f.Add(mustWrite(f, delta))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("Open error is not a FormatError: %v", err)
			}
			return
		}
		_ = Inspect(context.Background(), p, RSAVerifier{&testKey().PublicKey})
		// What parsed encodes again and parses the same.
		mb, err := proto.Marshal(p.Manifest)
		if err != nil {
			t.Fatal(err)
		}
		var m2 um.DeltaArchiveManifest
		if err := proto.Unmarshal(mb, &m2); err != nil || !proto.Equal(&m2, p.Manifest) {
			t.Fatalf("manifest does not round-trip: %v", err)
		}
		part := p.Partitions[0]
		if part.New.Size > 4<<20 || (part.Old != nil && part.Old.Size > 4<<20) {
			return
		}
		var src io.ReaderAt
		if part.Old != nil {
			src = bytes.NewReader(make([]byte, part.Old.Size))
		}
		_, _ = Apply(context.Background(), p, src, &memImage{}, ApplyOptions{SkipSignature: true, Partition: part.Name})
	})
}

// setVerity gives a partition hash-tree fields: data blocks [0, data), the
// levels at block tree for n blocks.
func setVerity(pu *um.PartitionUpdate, data, tree, n uint64) {
	pu.HashTreeDataExtent = &um.Extent{StartBlock: proto.Uint64(0), NumBlocks: proto.Uint64(data)}
	pu.HashTreeExtent = &um.Extent{StartBlock: proto.Uint64(tree), NumBlocks: proto.Uint64(n)}
	pu.HashTreeAlgorithm = proto.String("sha256")
	pu.KilnVerityRootHash = make([]byte, 32)
}

// TestOpenMinorVersionRules: operations and fields outside the minor
// version a payload declares are refused, each for its own reason.
func TestOpenMinorVersionRules(t *testing.T) {
	good := newHostileFixture(t).signed
	for _, tc := range []struct {
		name, want string
		payload    []byte
	}{
		{"hash_tree_* below minor version 6", "hash_tree_* fields need minor version 6", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			setVerity(m.Partitions[0], 4, 5, 1)
		})},
		{"both hash_tree_* and kiln_hash_tree_*", "both hash_tree_* and kiln_hash_tree_*", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			m.MinorVersion = proto.Uint32(VerityMinorVersion)
			setVerity(m.Partitions[0], 4, 5, 1)
			m.Partitions[0].KilnHashTreeExtent = m.Partitions[0].HashTreeExtent
			m.Partitions[0].KilnHashTreeDataExtent = m.Partitions[0].HashTreeDataExtent
		})},
		{"SOURCE_BSDIFF lengths at minor version 4", "with src_length/dst_length at minor version 4", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			op := firstOp(m, OpSourceBsdiff)
			op.SrcLength, op.DstLength = proto.Uint64(BlockSize), proto.Uint64(BlockSize)
		})},
		{"SOURCE_BSDIFF without lengths at minor version 3", "without src_length and dst_length at minor version 3", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			m.MinorVersion = proto.Uint32(3)
			for _, op := range m.Partitions[0].Operations { // no ZERO at 3
				if OpType(op.GetType()) == OpZero {
					op.Type = um.InstallOperation_DISCARD.Enum()
				}
			}
		})},
		{"ZERO at minor version 3", "ZERO needs minor version 4", rewrite(t, good, func(m *um.DeltaArchiveManifest) {
			m.MinorVersion = proto.Uint32(3)
			for _, op := range m.Partitions[0].Operations {
				if OpType(op.GetType()) == OpSourceBsdiff {
					op.SrcLength, op.DstLength = proto.Uint64(BlockSize), proto.Uint64(BlockSize)
				}
			}
		})},
	} {
		_, err := Open(bytes.NewReader(tc.payload), int64(len(tc.payload)))
		var fe *FormatError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want a FormatError saying %q", tc.name, err, tc.want)
		}
	}
}

// TestXZDictionaryBounded: REPLACE_XZ data whose block header asks for a
// dictionary over update_engine's 64 MiB is refused before the dictionary
// is allocated; 64 MiB itself is accepted.
func TestXZDictionaryBounded(t *testing.T) {
	data := bytes.Repeat([]byte("bounded "), 1000)
	enc, err := compressXZ(context.Background(), data, false, false)
	if err != nil {
		t.Fatal(err)
	}
	withDict := func(code byte) []byte {
		b := bytes.Clone(enc)
		h := b[12:]
		size := (int(h[0]) + 1) * 4
		if h[1] != 0 || h[2] != 0x21 || h[3] != 1 {
			t.Fatalf("unexpected block header % x", h[:size])
		}
		h[4] = code
		binary.LittleEndian.PutUint32(h[size-4:], crc32.ChecksumIEEE(h[:size-4]))
		return b
	}
	// Dictionary codes: 2^(code/2 + 12), times 1.5 for odd codes; 28 is
	// 64 MiB, 29 96 MiB, 40 4 GiB - 1.
	for _, c := range []struct {
		code byte
		ok   bool
	}{{28, true}, {29, false}, {40, false}} {
		r, _, err := decompressor(OpReplaceXZ, withDict(c.code), int64(len(data)))
		if err == nil {
			var got []byte
			got, err = io.ReadAll(r)
			if err == nil && !bytes.Equal(got, data) {
				t.Fatalf("code %d: other bytes", c.code)
			}
		}
		if (err == nil) != c.ok {
			t.Errorf("dictionary code %d: err = %v, want ok %v", c.code, err, c.ok)
		}
		if !c.ok && !strings.Contains(fmt.Sprint(err), "dictionary") {
			t.Errorf("dictionary code %d: %v does not name the dictionary", c.code, err)
		}
	}
}
