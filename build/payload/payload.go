// Package payload writes, reads and applies update_engine "CrAU" payloads
// (major version 2, the ChromiumOS / Android "Brillo" format) that turn a
// USR partition image of one release into the next.
//
// The work is split as update_engine's payload_generator splits it:
// [NewPlan] decides what goes into a payload (pure: images in, operations
// and their data blobs out — it is NewPlan, not Plan, because [Plan] is its
// result); [Write] only serialises a plan; [Open] parses and validates a
// payload without trusting any of it; [Apply] only executes one; [Inspect]
// summarises one for `kiln payload inspect`.
//
// # File layout
//
//	offset  size  field
//	0       4     magic "CrAU"
//	4       8     major version, 2 (big-endian)
//	12      8     manifest size M (big-endian)
//	20      4     metadata signature size S (big-endian)
//	24      M     DeltaArchiveManifest (protobuf, see updatemetadata)
//	24+M    S     metadata signature: a Signatures message over the SHA-256
//	              of bytes [0, 24+M)
//	24+M+S  ...   data blobs, one per operation, contiguous, in operation
//	              order (InstallOperation.data_offset is relative to here)
//	...           payload signature: a Signatures message at
//	              manifest.signatures_offset (relative to the data start),
//	              over the SHA-256 of the header, the manifest and the data
//	              blobs — the metadata signature is not covered
//
// Signatures are RSA PKCS#1 v1.5 over the SHA-256 DigestInfo, as
// update_engine verifies them; the [Signer] and [Verifier] hooks keep the
// key handling outside this package.
//
// # Choices kiln makes
//
//   - One partition per payload, named "usr" ([DefaultPartition]): kiln
//     updates the passive USR-A/USR-B slot. ChromiumOS names its partitions
//     "root" and "kernel"; Flatcar's update_engine (a major version 1 fork)
//     updates the root filesystem through new_rootfs_info. Both are
//     accepted by [Open]; [Apply] needs the name when a payload has several.
//   - The release version of the new build is PartitionUpdate.version
//     (field 17, upstream's per-partition downgrade-detection field); the
//     applier hands it to [ApplyOptions.CheckVersion] for anti-rollback.
//   - Each payload is correct for the minor version it declares, as
//     update_engine's generator and its reference checker (paycheck.py,
//     android-12.1) hold it: 0 for a full payload, [DeltaMinorVersion]
//     (4: SOURCE_COPY, SOURCE_BSDIFF with src_sha256_hash and without
//     src_length/dst_length, ZERO) for a delta, [VerityMinorVersion] (6)
//     for a delta whose verity tree the client computes. [Open] refuses
//     operations and fields outside the declared version.
//   - The dm-verity tree of the new partition is, by default, data like
//     any other ([VerityTreeInPayload]): every client writes it, and kiln's
//     fields (kiln_hash_tree_*, kiln_verity_root_hash) let [Apply] check
//     it. With [VerityTreeByClient] (deltas only) the tree's levels are
//     left out and described by upstream's hash_tree_* fields, as Android
//     does: the client computes them (so does Apply, with the superblock
//     the payload wrote, and checks the root). The tree is random-looking
//     and incompressible: on a 512 MiB slot it was 2 of a delta's 2.5 MiB.
//   - Compressed operations are REPLACE_XZ by default (xz with CRC32
//     checks, as xz-embedded requires), which every update_engine reads;
//     data that does not shrink is a plain REPLACE. ZSTD operations
//     ([CompressionZstd], [CompressionAuto]) are for clients that know
//     them: the enum value is AOSP's (14), which android-12.1's proto
//     does not have.
//   - [Client] names the families of appliers and what each reads;
//     [Inspect] says which of them apply a payload.
package payload

import (
	"errors"
	"fmt"
	"io"

	um "github.com/kiln-os/kiln/build/payload/updatemetadata"
)

//go:generate go generate ./updatemetadata

const (
	// Magic starts every payload.
	Magic = "CrAU"
	// MajorVersion is the only payload major version kiln reads and writes.
	MajorVersion = 2
	// BlockSize is the block size of every payload kiln writes and reads.
	BlockSize = 4096
	// FullMinorVersion marks a full payload.
	FullMinorVersion = 0
	// DeltaMinorVersion is the minor version of kiln's deltas: update_engine
	// allows ZERO from 4 on, SOURCE_* operations from 2 and src_sha256_hash
	// from 3 (VerityMinorVersion when the client computes the tree).
	DeltaMinorVersion = 4
	// DefaultPartition is the partition name kiln gives the USR slot.
	DefaultPartition = "usr"

	headerSize = 24
)

// Limits the reader enforces before it allocates or reads anything.
const (
	// MaxManifestSize bounds the manifest (update_engine's generator caps
	// operations far below this).
	MaxManifestSize = 64 << 20
	// MaxSignaturesSize bounds either Signatures message.
	MaxSignaturesSize = 64 << 10
	// MaxOpBytes bounds one operation's data blob, the bytes it reads from
	// the source and the bytes it writes (for operations that buffer them).
	// It is what bounds Apply's memory.
	MaxOpBytes = 256 << 20
)

// OpType is an InstallOperation type.
type OpType uint8

// The operation types, with update_engine's numbers.
const (
	OpReplace        = OpType(um.InstallOperation_REPLACE)
	OpReplaceBZ      = OpType(um.InstallOperation_REPLACE_BZ)
	OpMove           = OpType(um.InstallOperation_MOVE)
	OpBsdiff         = OpType(um.InstallOperation_BSDIFF)
	OpSourceCopy     = OpType(um.InstallOperation_SOURCE_COPY)
	OpSourceBsdiff   = OpType(um.InstallOperation_SOURCE_BSDIFF)
	OpZero           = OpType(um.InstallOperation_ZERO)
	OpDiscard        = OpType(um.InstallOperation_DISCARD)
	OpReplaceXZ      = OpType(um.InstallOperation_REPLACE_XZ)
	OpPuffdiff       = OpType(um.InstallOperation_PUFFDIFF)
	OpBrotliBsdiff   = OpType(um.InstallOperation_BROTLI_BSDIFF)
	OpZucchini       = OpType(um.InstallOperation_ZUCCHINI)
	OpLz4diffBsdiff  = OpType(um.InstallOperation_LZ4DIFF_BSDIFF)
	OpLz4diffPuffdif = OpType(um.InstallOperation_LZ4DIFF_PUFFDIFF)
	OpZstd           = OpType(um.InstallOperation_ZSTD)
)

var opNames = map[OpType]string{
	OpReplace:        "REPLACE",
	OpReplaceBZ:      "REPLACE_BZ",
	OpMove:           "MOVE",
	OpBsdiff:         "BSDIFF",
	OpSourceCopy:     "SOURCE_COPY",
	OpSourceBsdiff:   "SOURCE_BSDIFF",
	OpZero:           "ZERO",
	OpDiscard:        "DISCARD",
	OpReplaceXZ:      "REPLACE_XZ",
	OpPuffdiff:       "PUFFDIFF",
	OpBrotliBsdiff:   "BROTLI_BSDIFF",
	OpZucchini:       "ZUCCHINI",
	OpLz4diffBsdiff:  "LZ4DIFF_BSDIFF",
	OpLz4diffPuffdif: "LZ4DIFF_PUFFDIFF",
	OpZstd:           "ZSTD",
}

func (t OpType) String() string {
	if s, ok := opNames[t]; ok {
		return s
	}
	return fmt.Sprintf("OpType(%d)", uint8(t))
}

// readsSource reports whether operations of type t read the old partition.
func (t OpType) readsSource() bool {
	switch t {
	case OpSourceCopy, OpSourceBsdiff, OpPuffdiff, OpBrotliBsdiff, OpZucchini, OpLz4diffBsdiff, OpLz4diffPuffdif:
		return true
	}
	return false
}

// hasData reports whether operations of type t carry a data blob.
func (t OpType) hasData() bool {
	switch t {
	case OpZero, OpDiscard, OpSourceCopy, OpMove:
		return false
	}
	return true
}

// applicable reports whether Apply executes operations of type t.
func (t OpType) applicable() bool {
	switch t {
	case OpReplace, OpReplaceBZ, OpReplaceXZ, OpZstd, OpZero, OpDiscard, OpSourceCopy, OpSourceBsdiff:
		return true
	}
	return false
}

// Extent is a run of blocks.
type Extent struct {
	Start  uint64 // first block
	Blocks uint64 // number of blocks, > 0
}

// PartitionInfo is a partition's size in bytes and SHA-256.
type PartitionInfo struct {
	Size int64
	Hash [32]byte
}

// Signer signs the SHA-256 digest of a payload's metadata or contents. For
// update_engine the key is RSA and the signature PKCS#1 v1.5 over the
// SHA-256 DigestInfo (see [RSASigner]).
// Verity describes the new partition's dm-verity hash tree (veritysetup's
// format: the superblock block at HashOffset, then the levels). Apply
// checks the written tree against RootHash.
type Verity struct {
	DataBlocks uint64 // 4 KiB data blocks from the partition's start
	HashOffset int64  // byte offset of the superblock; a multiple of BlockSize
	TreeBlocks uint64 // blocks of the levels, after the superblock block
	Salt       []byte // recorded with VerityTreeByClient; else in the superblock
	RootHash   []byte // 32 bytes
}

// Signer signs payload digests.
type Signer interface {
	// Sign signs a 32-byte SHA-256 digest.
	Sign(digest []byte) ([]byte, error)
	// SignatureSize is the longest signature Sign returns (an RSA key's
	// modulus size): the payload reserves that room before signing, since
	// the signature's size is part of what is signed.
	SignatureSize() int
}

// Verifier checks a signature over a SHA-256 digest.
type Verifier interface {
	Verify(digest, signature []byte) error
}

// Errors that Apply and the signature checks return; FormatError reports
// a malformed payload.
var (
	ErrUnsigned       = errors.New("payload: not signed")
	ErrSignature      = errors.New("payload: signature does not verify")
	ErrDataHash       = errors.New("payload: operation data does not match its hash")
	ErrSourceHash     = errors.New("payload: source partition does not match the payload's old partition hash")
	ErrSourceOpHash   = errors.New("payload: source blocks do not match the operation's source hash")
	ErrNewHash        = errors.New("payload: written partition does not match the payload's new partition hash")
	ErrNoSource       = errors.New("payload: delta payload needs the source partition")
	ErrUnsupportedOp  = errors.New("payload: operation type not supported by this applier")
	ErrWrongPartition = errors.New("payload: partition not in payload")
)

// FormatError reports a malformed payload: what is wrong and, where it is
// known, the byte offset in the payload file.
type FormatError struct {
	Off int64  // byte offset in the payload, or -1
	Msg string // what is wrong
}

func (e *FormatError) Error() string {
	if e.Off < 0 {
		return "payload: " + e.Msg
	}
	return fmt.Sprintf("payload: %s at byte 0x%x", e.Msg, e.Off)
}

func formatErr(off int64, format string, args ...any) error {
	return &FormatError{Off: off, Msg: fmt.Sprintf(format, args...)}
}

// readAt fills b from r at off. A reader may report io.EOF along with a
// full buffer at its end; that is success.
func readAt(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}
