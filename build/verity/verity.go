// Package verity writes and checks dm-verity hash trees in the on-disk
// format of veritysetup (cryptsetup), format version 1.
//
// The hash area that Format writes starts with a 512-byte veritysetup
// superblock in a block of its own (Format leaves the rest of that block
// as it is), followed by the tree levels: the top
// level (a single block) first, the level holding the data blocks' hashes
// last. Every hash is SHA-256 over the salt followed by the block (hash type
// 1), each hash block holds hashBlockSize/32 hashes and is zero padded, and
// the root hash is the hash of the top block. `veritysetup verify` accepts
// the result and `veritysetup format` prints the same root hash for the
// same data, salt, UUID and hash offset.
//
// Both Format and Verify hash on all cores and read the data in bounded
// chunks, so memory is O(workers × chunk) plus the tree itself, which is
// 1/128 of the data for 4 KiB blocks.
package verity

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"strings"
)

// Sizes and limits of the veritysetup format.
const (
	// SuperblockSize is the size of the veritysetup superblock in bytes.
	SuperblockSize = 512
	// DefaultBlockSize is the data and hash block size used when Params
	// leaves them zero.
	DefaultBlockSize = 4096
	// MinBlockSize and MaxBlockSize bound the data and hash block sizes
	// (powers of two) that Format writes and Verify accepts.
	MinBlockSize = 512
	MaxBlockSize = 64 << 10
	// MaxSaltSize is the largest salt the superblock can hold.
	MaxSaltSize = 256
	// DigestSize is the size of a SHA-256 hash, the only algorithm supported.
	DigestSize = sha256.Size

	algorithmSHA256 = "sha256"
	formatVersion   = 1
	hashType        = 1 // salt prepended to the block (veritysetup's "normal" type)
)

var signature = [8]byte{'v', 'e', 'r', 'i', 't', 'y', 0, 0}

// Sentinel errors. Every error about parameters, the superblock or the
// tree wraps one of them, so callers can test with errors.Is; I/O errors
// are wrapped as they come.
var (
	ErrBadSignature         = errors.New("verity: bad superblock signature")
	ErrUnsupportedVersion   = errors.New("verity: unsupported superblock version")
	ErrUnsupportedHashType  = errors.New("verity: unsupported hash type")
	ErrUnsupportedAlgorithm = errors.New("verity: unsupported hash algorithm")
	ErrBadBlockSize         = errors.New("verity: bad block size")
	ErrBadDataBlocks        = errors.New("verity: bad data block count")
	ErrBadSalt              = errors.New("verity: bad salt")
	ErrBadOffset            = errors.New("verity: bad offset")
	ErrDeviceTooSmall       = errors.New("verity: device too small")
	ErrBadRootHash          = errors.New("verity: bad root hash")
	// ErrRootHashMismatch means the tree's top block (or, for a single data
	// block, that block) does not hash to the expected root hash: either the
	// root hash is wrong or the top block is corrupt.
	ErrRootHashMismatch = errors.New("verity: root hash does not match the hash tree")
	// ErrMismatch is wrapped by every *BlockError.
	ErrMismatch = errors.New("verity: block does not match its hash")
)

// Params describe the hash tree that Format writes. Zero values of
// HashAlgorithm, DataBlockSize and HashBlockSize select the defaults
// ("sha256", 4096, 4096).
type Params struct {
	HashAlgorithm string   // only "sha256"
	DataBlockSize uint32   // power of two in [MinBlockSize, MaxBlockSize]
	HashBlockSize uint32   // power of two in [MinBlockSize, MaxBlockSize]
	DataBlocks    uint64   // number of data blocks to hash, at least 1
	Salt          []byte   // up to MaxSaltSize bytes; see SaltFromSeed
	UUID          [16]byte // stored in the superblock, as `veritysetup --uuid`
}

// withDefaults returns p with zero fields set to their defaults.
func (p Params) withDefaults() Params {
	if p.HashAlgorithm == "" {
		p.HashAlgorithm = algorithmSHA256
	}
	if p.DataBlockSize == 0 {
		p.DataBlockSize = DefaultBlockSize
	}
	if p.HashBlockSize == 0 {
		p.HashBlockSize = DefaultBlockSize
	}
	return p
}

// Validate reports whether Format can write a tree for p (after defaults).
func (p Params) Validate() error {
	p = p.withDefaults()
	return p.superblock().validate()
}

func (p Params) superblock() *Superblock {
	return &Superblock{
		Version:       formatVersion,
		HashType:      hashType,
		UUID:          p.UUID,
		Algorithm:     p.HashAlgorithm,
		DataBlockSize: p.DataBlockSize,
		HashBlockSize: p.HashBlockSize,
		DataBlocks:    p.DataBlocks,
		Salt:          p.Salt,
	}
}

// SaltFromSeed derives a 32-byte salt from seed, deterministically: the
// SHA-256 of a fixed domain string followed by seed. The same seed always
// gives the same salt, so a build is reproducible.
func SaltFromSeed(seed []byte) []byte {
	h := sha256.New()
	h.Write([]byte("kiln verity salt v1\x00"))
	h.Write(seed)
	return h.Sum(nil)
}

// HashTreeSize returns the size in bytes of the hash area that Format
// writes for dataBlocks blocks with the default 4096-byte blocks and a
// hash offset that is a multiple of 4096: the superblock's block plus
// every tree level.
func HashTreeSize(dataBlocks uint64) int64 {
	if dataBlocks == 0 {
		return DefaultBlockSize
	}
	g, err := newGeometry(DefaultBlockSize, DefaultBlockSize, dataBlocks, 0)
	if err != nil {
		return -1 // only for counts whose tree overflows int64
	}
	return g.end
}

// Superblock is the 512-byte veritysetup superblock (format version 1).
// All integers are little-endian on disk.
type Superblock struct {
	Version       uint32 // 1
	HashType      uint32 // 1: salt prepended to the hashed block
	UUID          [16]byte
	Algorithm     string // NUL-padded to 32 bytes on disk
	DataBlockSize uint32
	HashBlockSize uint32
	DataBlocks    uint64
	Salt          []byte // up to 256 bytes
}

// On-disk field offsets of the superblock.
const (
	sbVersion       = 8
	sbHashType      = 12
	sbUUID          = 16
	sbAlgorithm     = 32
	sbAlgorithmLen  = 32
	sbDataBlockSize = 64
	sbHashBlockSize = 68
	sbDataBlocks    = 72
	sbSaltSize      = 80
	sbSalt          = 88
)

// MarshalBinary encodes sb as the 512-byte on-disk superblock.
func (sb *Superblock) MarshalBinary() ([]byte, error) {
	if err := sb.validate(); err != nil {
		return nil, err
	}
	b := make([]byte, SuperblockSize)
	copy(b, signature[:])
	le := binary.LittleEndian
	le.PutUint32(b[sbVersion:], sb.Version)
	le.PutUint32(b[sbHashType:], sb.HashType)
	copy(b[sbUUID:], sb.UUID[:])
	copy(b[sbAlgorithm:sbAlgorithm+sbAlgorithmLen], sb.Algorithm)
	le.PutUint32(b[sbDataBlockSize:], sb.DataBlockSize)
	le.PutUint32(b[sbHashBlockSize:], sb.HashBlockSize)
	le.PutUint64(b[sbDataBlocks:], sb.DataBlocks)
	le.PutUint16(b[sbSaltSize:], uint16(len(sb.Salt)))
	copy(b[sbSalt:], sb.Salt)
	return b, nil
}

// UnmarshalBinary decodes and checks a 512-byte on-disk superblock. It
// never trusts the input: every field is bounds-checked.
func (sb *Superblock) UnmarshalBinary(b []byte) error {
	if len(b) < SuperblockSize {
		return fmt.Errorf("%w: %d bytes, need %d", ErrBadSignature, len(b), SuperblockSize)
	}
	if !bytes.Equal(b[:8], signature[:]) {
		return fmt.Errorf("%w: %q", ErrBadSignature, b[:8])
	}
	le := binary.LittleEndian
	alg := b[sbAlgorithm : sbAlgorithm+sbAlgorithmLen]
	if i := bytes.IndexByte(alg, 0); i >= 0 {
		alg = alg[:i]
	}
	saltSize := int(le.Uint16(b[sbSaltSize:]))
	if saltSize > MaxSaltSize {
		return fmt.Errorf("%w: salt size %d exceeds %d", ErrBadSalt, saltSize, MaxSaltSize)
	}
	*sb = Superblock{
		Version:       le.Uint32(b[sbVersion:]),
		HashType:      le.Uint32(b[sbHashType:]),
		Algorithm:     string(alg),
		DataBlockSize: le.Uint32(b[sbDataBlockSize:]),
		HashBlockSize: le.Uint32(b[sbHashBlockSize:]),
		DataBlocks:    le.Uint64(b[sbDataBlocks:]),
		Salt:          bytes.Clone(b[sbSalt : sbSalt+saltSize]),
	}
	copy(sb.UUID[:], b[sbUUID:sbUUID+16])
	return sb.validate()
}

// validate checks the fields of sb that do not depend on a device.
func (sb *Superblock) validate() error {
	if sb.Version != formatVersion {
		return fmt.Errorf("%w: %d (only %d)", ErrUnsupportedVersion, sb.Version, formatVersion)
	}
	if sb.HashType != hashType {
		return fmt.Errorf("%w: %d (only %d)", ErrUnsupportedHashType, sb.HashType, hashType)
	}
	if sb.Algorithm != algorithmSHA256 {
		return fmt.Errorf("%w: %q (only %q)", ErrUnsupportedAlgorithm, sb.Algorithm, algorithmSHA256)
	}
	if err := checkBlockSize("data", sb.DataBlockSize); err != nil {
		return err
	}
	if err := checkBlockSize("hash", sb.HashBlockSize); err != nil {
		return err
	}
	if len(sb.Salt) > MaxSaltSize {
		return fmt.Errorf("%w: salt size %d exceeds %d", ErrBadSalt, len(sb.Salt), MaxSaltSize)
	}
	if sb.DataBlocks == 0 {
		return fmt.Errorf("%w: 0", ErrBadDataBlocks)
	}
	if sb.DataBlocks > math.MaxInt64/uint64(sb.DataBlockSize) {
		return fmt.Errorf("%w: %d blocks of %d bytes overflow", ErrBadDataBlocks, sb.DataBlocks, sb.DataBlockSize)
	}
	return nil
}

func checkBlockSize(what string, n uint32) error {
	if n < MinBlockSize || n > MaxBlockSize || n&(n-1) != 0 {
		return fmt.Errorf("%w: %s block size %d (want a power of two in [%d, %d])",
			ErrBadBlockSize, what, n, MinBlockSize, MaxBlockSize)
	}
	return nil
}

// ReadSuperblock reads and checks the superblock at byte offset off of r.
func ReadSuperblock(r io.ReaderAt, off int64) (*Superblock, error) {
	if off < 0 {
		return nil, fmt.Errorf("%w: superblock offset %d", ErrBadOffset, off)
	}
	b := make([]byte, SuperblockSize)
	if err := readFull(r, b, off); err != nil {
		return nil, fmt.Errorf("verity: reading superblock at byte 0x%x: %w", off, err)
	}
	sb := new(Superblock)
	if err := sb.UnmarshalBinary(b); err != nil {
		return nil, &SuperblockError{Offset: off, Err: err}
	}
	return sb, nil
}

// SuperblockError reports a superblock that ReadSuperblock rejected and
// where it lies. Err is one of the package's sentinel errors, wrapped with
// the offending value.
type SuperblockError struct {
	Offset int64 // byte offset of the superblock on the device
	Err    error
}

// Error returns e.g. "verity: superblock at byte 0x1000: bad salt: salt
// size 300 exceeds 256".
func (e *SuperblockError) Error() string {
	return fmt.Sprintf("verity: superblock at byte 0x%x: %s", e.Offset, strings.TrimPrefix(e.Err.Error(), "verity: "))
}

// Unwrap returns Err.
func (e *SuperblockError) Unwrap() error { return e.Err }

// BlockError reports a block whose content does not match the hash that
// the tree (or the root hash) holds for it. It wraps ErrMismatch.
type BlockError struct {
	// Level is 0 for a data block, k ≥ 1 for a hash block of tree level k;
	// level 1 holds the hashes of the data blocks.
	Level int
	// Block is the block's index within its level.
	Block uint64
	// Offset is the block's byte offset on the device.
	Offset int64
	// Padding is set when the bytes after the block's last hash, which
	// must be zero, are not.
	Padding bool
}

// Error names the block, its level and its byte offset, e.g. "verity:
// data block 1234 (byte offset 0x4d2000) does not match its hash".
func (e *BlockError) Error() string {
	what := fmt.Sprintf("data block %d", e.Block)
	if e.Level > 0 {
		what = fmt.Sprintf("hash block %d of level %d", e.Block, e.Level)
	}
	if e.Padding {
		return fmt.Sprintf("verity: %s (byte offset 0x%x) has non-zero padding", what, e.Offset)
	}
	return fmt.Sprintf("verity: %s (byte offset 0x%x) does not match its hash", what, e.Offset)
}

// Unwrap returns ErrMismatch.
func (e *BlockError) Unwrap() error { return ErrMismatch }

// geometry is the layout of a hash area: where each level lies. Level i
// here is tree level i+1 in BlockError terms (index 0 hashes the data).
type geometry struct {
	dataBS, hashBS int64
	dataBlocks     uint64
	perBlockBits   uint
	levelBlocks    []uint64 // number of hash blocks of level i, bottom first
	levelStart     []int64  // absolute byte offset of level i
	treeStart      int64    // absolute byte offset of the first (top) level
	end            int64    // absolute end of the hash area
}

// newGeometry lays out the hash area at hashOffset as veritysetup does:
// the tree starts at the first hash block boundary after the superblock,
// and the levels follow top first.
func newGeometry(dataBS, hashBS uint32, dataBlocks uint64, hashOffset int64) (*geometry, error) {
	g := &geometry{
		dataBS:       int64(dataBS),
		hashBS:       int64(hashBS),
		dataBlocks:   dataBlocks,
		perBlockBits: uint(bits.Len32(hashBS/DigestSize) - 1),
	}
	// Levels: the smallest count such that one block covers all data.
	levels := 0
	for g.perBlockBits*uint(levels) < 64 && (dataBlocks-1)>>(g.perBlockBits*uint(levels)) != 0 {
		levels++
	}
	g.levelBlocks = make([]uint64, levels)
	g.levelStart = make([]int64, levels)
	n := dataBlocks
	for i := range levels {
		n = (n-1)>>g.perBlockBits + 1
		g.levelBlocks[i] = n
	}
	sbEnd := hashOffset + SuperblockSize
	if sbEnd < hashOffset || sbEnd > math.MaxInt64-g.hashBS {
		return nil, fmt.Errorf("%w: hash offset %d", ErrBadOffset, hashOffset)
	}
	g.treeStart = (sbEnd + g.hashBS - 1) / g.hashBS * g.hashBS
	pos := g.treeStart
	for i := levels - 1; i >= 0; i-- {
		g.levelStart[i] = pos
		if g.levelBlocks[i] > uint64(math.MaxInt64-pos)/uint64(g.hashBS) {
			return nil, fmt.Errorf("%w: hash tree of %d data blocks overflows", ErrBadDataBlocks, dataBlocks)
		}
		pos += int64(g.levelBlocks[i]) * g.hashBS
	}
	g.end = pos
	return g, nil
}

// dataEnd returns the end of the data area that starts at dataOffset.
func (g *geometry) dataEnd(dataOffset int64) (int64, error) {
	size := int64(g.dataBlocks) * g.dataBS // validate() ruled out overflow
	if dataOffset < 0 || dataOffset > math.MaxInt64-size {
		return 0, fmt.Errorf("%w: data offset %d", ErrBadOffset, dataOffset)
	}
	return dataOffset + size, nil
}

// checkOffsets rejects negative or unaligned offsets and overlapping areas.
func (g *geometry) checkOffsets(dataOffset, hashOffset int64) error {
	if hashOffset < 0 || hashOffset%SuperblockSize != 0 {
		return fmt.Errorf("%w: hash offset %d (want a non-negative multiple of %d)", ErrBadOffset, hashOffset, SuperblockSize)
	}
	dataEnd, err := g.dataEnd(dataOffset)
	if err != nil {
		return err
	}
	if dataOffset < g.end && hashOffset < dataEnd {
		return fmt.Errorf("%w: data area [0x%x, 0x%x) overlaps hash area [0x%x, 0x%x)",
			ErrBadOffset, dataOffset, dataEnd, hashOffset, g.end)
	}
	return nil
}

// readFull reads len(b) bytes at off, treating a short read as an error.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// hasher hashes blocks with the salt prepended (hash type 1). It is not
// safe for concurrent use: each worker has its own.
type hasher struct {
	salt    []byte
	scratch [DigestSize]byte
	// zeroSum caches the hash of an all-zero block of zeroLen bytes: most
	// of a read-only filesystem padded to a fixed size is zeros, and a
	// compare runs several times faster than SHA-256.
	zeroSum [DigestSize]byte
	zeroLen int
	h       interface {
		Write([]byte) (int, error)
		Sum([]byte) []byte
		Reset()
	}
}

func newHasher(salt []byte) *hasher { return &hasher{salt: salt, h: sha256.New()} }

// sum writes the hash of block into dst[:DigestSize].
func (x *hasher) sum(dst, block []byte) {
	if len(block) <= len(zeroBlock) && bytes.Equal(block, zeroBlock[:len(block)]) {
		if x.zeroLen != len(block) {
			x.hash(x.zeroSum[:], block)
			x.zeroLen = len(block)
		}
		copy(dst[:DigestSize], x.zeroSum[:])
		return
	}
	x.hash(dst, block)
}

// zeroBlock is read-only: all zeros, as long as the largest block.
var zeroBlock = make([]byte, MaxBlockSize)

// hash computes the salted hash of block into dst[:DigestSize].
func (x *hasher) hash(dst, block []byte) {
	x.h.Reset()
	x.h.Write(x.salt)
	x.h.Write(block)
	x.h.Sum(dst[:0])
}

// matches reports whether block hashes to want.
func (x *hasher) matches(block, want []byte) bool {
	x.sum(x.scratch[:], block)
	return bytes.Equal(x.scratch[:], want)
}
