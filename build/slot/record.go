package slot

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/kiln-os/kiln/build/verity"
	"github.com/kiln-os/kiln/sign"
)

// Record is a USR slot's release record: the release the slot holds and
// the dm-verity parameters that protect it. kiln build writes it into the
// slot and payloads carry it, since it lies inside the slot, so a
// payload's partition hash covers it. It is signed with the release key:
// the installed version, and the root hash the boot path gives dm-verity,
// come from here and nowhere an attacker could edit.
//
// Where it lives: a USR slot is [filesystem][padding][verity superblock
// block][hash tree]. The veritysetup superblock takes the first 512 bytes
// of its 4 KiB block and neither veritysetup nor the kernel reads the rest;
// the record is stored there, at hash offset + 512 (see Locate for how the
// hash offset is found from the slot alone).
type Record struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Channel string `json:"channel,omitempty"`
	// RollbackFloor, when set, is the oldest release the node may boot
	// once this release has been marked good (the boot-time version
	// floor rises to it).
	RollbackFloor string `json:"rollback_floor,omitempty"`
	Verity        Verity `json:"verity"`
}

// Verity is the dm-verity setup of a slot, as veritysetup names it.
type Verity struct {
	Algorithm     string `json:"algorithm"`
	RootHash      string `json:"root_hash"` // hex
	Salt          string `json:"salt"`      // hex
	DataBlockSize uint32 `json:"data_block_size"`
	HashBlockSize uint32 `json:"hash_block_size"`
	DataBlocks    uint64 `json:"data_blocks"`
	// HashOffset is the byte offset of the verity superblock in the slot.
	HashOffset int64 `json:"hash_offset"`
}

// Root returns the decoded root hash.
func (v Verity) Root() ([]byte, error) {
	b, err := hex.DecodeString(v.RootHash)
	if err != nil || len(b) != 32 {
		return nil, fmt.Errorf("root hash %q is not 32 bytes of hex", v.RootHash)
	}
	return b, nil
}

// The on-disk record: magic, body length and signature length (u32
// little-endian), the JSON body, the raw signature.
var recordMagic = []byte("KILNREC1")

const (
	// RecordOffset is where the record starts, relative to the slot's hash
	// offset: right after the 512-byte verity superblock.
	RecordOffset = verity.SuperblockSize
	// MaxRecordSize is what the rest of the superblock's 4 KiB block holds.
	MaxRecordSize = 4096 - RecordOffset
	recordHeader  = 16
)

// Errors of records.
var (
	ErrNoRecord       = errors.New("slot: no release record")
	ErrBadRecord      = errors.New("slot: malformed release record")
	ErrUnsignedRecord = errors.New("slot: the release record is not signed")
)

// Signed is a record as stored: the JSON body that was signed, the
// signature (empty when the build was not signed) and the decoded record.
type Signed struct {
	Record    Record
	Body      []byte
	Signature []byte
}

// Encode returns the on-disk bytes of r, signed by s (nil: unsigned).
func Encode(r *Record, s sign.Signer) ([]byte, error) {
	body, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	var sig []byte
	if s != nil {
		if sig, err = sign.SignBytes(s, body); err != nil {
			return nil, fmt.Errorf("slot: signing the release record: %w", err)
		}
	}
	if recordHeader+len(body)+len(sig) > MaxRecordSize {
		return nil, fmt.Errorf("%w: %d bytes of record and signature, the superblock block holds %d", ErrBadRecord, recordHeader+len(body)+len(sig), MaxRecordSize)
	}
	b := make([]byte, recordHeader, recordHeader+len(body)+len(sig))
	copy(b, recordMagic)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(body)))
	binary.LittleEndian.PutUint32(b[12:], uint32(len(sig)))
	return append(append(b, body...), sig...), nil
}

// Decode parses on-disk record bytes (trailing zeros allowed). It checks
// the shape only; Verify checks the signature.
func Decode(b []byte) (*Signed, error) {
	if len(b) < recordHeader || !bytes.Equal(b[:8], recordMagic) {
		return nil, ErrNoRecord
	}
	n := uint64(binary.LittleEndian.Uint32(b[8:]))
	m := uint64(binary.LittleEndian.Uint32(b[12:]))
	if n == 0 || recordHeader+n+m > uint64(len(b)) || recordHeader+n+m > MaxRecordSize {
		return nil, fmt.Errorf("%w: body of %d and signature of %d bytes do not fit the %d-byte record area", ErrBadRecord, n, m, MaxRecordSize)
	}
	s := &Signed{Body: b[recordHeader : recordHeader+n], Signature: b[recordHeader+n : recordHeader+n+m]}
	dec := json.NewDecoder(bytes.NewReader(s.Body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s.Record); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	if s.Record.Version == "" {
		return nil, fmt.Errorf("%w: no version", ErrBadRecord)
	}
	if _, err := s.Record.Verity.Root(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	if f := s.Record.RollbackFloor; f != "" {
		if err := (Floor{Version: f, From: "its own rollback floor"}).Admits(s.Record.Version); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadRecord, err)
		}
	}
	return s, nil
}

// Verify checks the record's signature with v.
func (s *Signed) Verify(v sign.Verifier) error {
	if len(s.Signature) == 0 {
		return ErrUnsignedRecord
	}
	if err := sign.VerifyBytes(v, s.Body, s.Signature); err != nil {
		return fmt.Errorf("slot: release record %s: %w", s.Record.Version, err)
	}
	return nil
}

// Write stores an encoded record in a slot whose verity superblock is at
// hashOffset (the rest of the superblock's block is zeroed).
func Write(w io.WriterAt, hashOffset int64, encoded []byte) error {
	area := make([]byte, MaxRecordSize)
	copy(area, encoded)
	_, err := w.WriteAt(area, hashOffset+RecordOffset)
	return err
}

// Read finds and decodes the release record of the slot r (size bytes
// long) and checks that it agrees with the verity superblock it sits
// beside: same hash offset, data blocks, block sizes and salt. It does
// not check the signature (see Signed.Verify).
func Read(r io.ReaderAt, size int64) (*Signed, error) {
	off, sb, err := Locate(r, size)
	if err != nil {
		return nil, err
	}
	b := make([]byte, MaxRecordSize)
	if _, err := r.ReadAt(b, off+RecordOffset); err != nil {
		return nil, fmt.Errorf("slot: reading the release record: %w", err)
	}
	s, err := Decode(b)
	if err != nil {
		return nil, err
	}
	v := s.Record.Verity
	if v.HashOffset != off || v.DataBlocks != sb.DataBlocks || v.DataBlockSize != sb.DataBlockSize ||
		v.HashBlockSize != sb.HashBlockSize || v.Salt != hex.EncodeToString(sb.Salt) || v.Algorithm != sb.Algorithm {
		return nil, fmt.Errorf("%w: it describes a verity tree (%d blocks at byte %d, salt %.16s) other than the one beside it (%d blocks at byte %d, salt %x)",
			ErrBadRecord, v.DataBlocks, v.HashOffset, v.Salt, sb.DataBlocks, off, sb.Salt)
	}
	return s, nil
}
