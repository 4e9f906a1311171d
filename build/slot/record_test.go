package slot

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/kiln-os/kiln/build/verity"
	"github.com/kiln-os/kiln/sign"
)

// memSlot is a slot image in memory.
type memSlot []byte

func (m memSlot) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(m)) {
		return 0, errors.New("out of range")
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, errors.New("short")
	}
	return n, nil
}

func (m memSlot) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m)) {
		return 0, errors.New("out of range")
	}
	return copy(m[off:], p), nil
}

// fakeSlot is a slot of size bytes holding a squashfs superblock that says
// the filesystem is fsBytes long, a verity tree over dataBlocks blocks
// (pointed to when the data area is larger than the filesystem) and a
// record signed by s.
func fakeSlot(t *testing.T, size, fsBytes int64, dataBlocks uint64, s sign.Signer, version string) (memSlot, *Record) {
	t.Helper()
	m := make(memSlot, size)
	copy(m, "hsqs")
	binary.LittleEndian.PutUint64(m[40:], uint64(fsBytes))
	for i := int64(96); i < fsBytes; i++ {
		m[i] = byte(i * 7)
	}
	hashOffset := int64(dataBlocks) * BlockSize
	if at := (fsBytes + BlockSize - 1) / BlockSize * BlockSize; at < hashOffset {
		copy(m[at:], Pointer(hashOffset))
	}
	salt := bytes.Repeat([]byte{0x5a}, 32)
	root, err := verity.Format(m, 0, hashOffset, verity.Params{DataBlocks: dataBlocks, Salt: salt})
	if err != nil {
		t.Fatal(err)
	}
	rec := &Record{Name: "t", Version: version, Verity: Verity{Algorithm: "sha256", RootHash: hex.EncodeToString(root), Salt: hex.EncodeToString(salt),
		DataBlockSize: 4096, HashBlockSize: 4096, DataBlocks: dataBlocks, HashOffset: hashOffset}}
	enc, err := Encode(rec, s)
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(m, hashOffset, enc); err != nil {
		t.Fatal(err)
	}
	return m, rec
}

func rsaPair(t *testing.T) (sign.Signer, sign.Verifier) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sign.NewSigner(k, "rsa")
	if err != nil {
		t.Fatal(err)
	}
	v, err := sign.NewVerifier(k.Public(), "rsa")
	if err != nil {
		t.Fatal(err)
	}
	return s, v
}

// cryptoSigner is what sign.NewSigner takes.
type cryptoSigner = interface {
	Public() crypto.PublicKey
	Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error)
}

func TestRecordRoundTripEveryKeyType(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rs, _ := rsa.GenerateKey(rand.Reader, 4096)
	for name, k := range map[string]cryptoSigner{"ecdsa": ec, "ed25519": ed, "rsa-4096": rs} {
		t.Run(name, func(t *testing.T) {
			s, err := sign.NewSigner(k, name)
			if err != nil {
				t.Fatal(err)
			}
			v, _ := sign.NewVerifier(k.Public(), name)
			m, rec := fakeSlot(t, 4<<20, 100000, 512, s, "1.2.3")
			got, err := Read(m, int64(len(m)))
			if err != nil {
				t.Fatal(err)
			}
			if got.Record != *rec {
				t.Fatalf("read %+v, wrote %+v", got.Record, *rec)
			}
			if err := got.Verify(v); err != nil {
				t.Fatal(err)
			}
			// A changed body no longer verifies.
			at := got.Record.Verity.HashOffset + RecordOffset + recordHeader + int64(bytes.Index(got.Body, []byte("1.2.3")))
			m[at+4] = '9'
			changed, err := Read(m, int64(len(m)))
			if err != nil {
				t.Fatal(err)
			}
			if changed.Record.Version != "1.2.9" || !errors.Is(changed.Verify(v), sign.ErrBadSignature) {
				t.Fatalf("a changed record: %s %v", changed.Record.Version, changed.Verify(v))
			}
		})
	}
}

func TestRecordUnsignedAndOtherKey(t *testing.T) {
	s, _ := rsaPair(t)
	_, other := rsaPair(t)
	m, _ := fakeSlot(t, 4<<20, 100000, 512, nil, "1.0.0")
	got, err := Read(m, int64(len(m)))
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Verify(other); !errors.Is(err, ErrUnsignedRecord) {
		t.Fatalf("unsigned: %v", err)
	}
	m, _ = fakeSlot(t, 4<<20, 100000, 512, s, "1.0.0")
	got, _ = Read(m, int64(len(m)))
	if err := got.Verify(other); !errors.Is(err, sign.ErrBadSignature) {
		t.Fatalf("another key: %v", err)
	}
}

// TestLocate: the superblock right after the filesystem, or through the
// pointer when the data area is larger; every way the geometry can lie is
// refused.
func TestLocate(t *testing.T) {
	s, _ := rsaPair(t)
	// Filesystem of 100000 bytes: 25 blocks; data area 25 blocks (no
	// pointer) or 600 (a pointer at block 25).
	for _, blocks := range []uint64{25, 600} {
		m, _ := fakeSlot(t, 4<<20, 100000, blocks, s, "1")
		off, sb, err := Locate(m, int64(len(m)))
		if err != nil || off != int64(blocks)*4096 || sb.DataBlocks != blocks {
			t.Fatalf("%d blocks: %d %v %v", blocks, off, sb, err)
		}
	}
	cases := []struct {
		name string
		edit func(m memSlot)
		want string
	}{
		{"no filesystem", func(m memSlot) { copy(m, "xxxx") }, "no ext4 or squashfs"},
		{"filesystem past the slot", func(m memSlot) { binary.LittleEndian.PutUint64(m[40:], 1<<40) }, "in a 4194304-byte slot"},
		{"pointer outside", func(m memSlot) { binary.LittleEndian.PutUint64(m[25*4096+8:], 1<<40) }, "not a block of the slot after it"},
		{"pointer backwards", func(m memSlot) { binary.LittleEndian.PutUint64(m[25*4096+8:], 4096) }, "not a block of the slot after it"},
		{"pointer unaligned", func(m memSlot) { binary.LittleEndian.PutUint64(m[25*4096+8:], 600*4096+512) }, "not a block of the slot after it"},
		{"superblock for other blocks", func(m memSlot) { binary.LittleEndian.PutUint64(m[600*4096+72:], 599) }, "not the 2457600 bytes before it"},
		{"no superblock", func(m memSlot) { copy(m[600*4096:], "notveri") }, "bad superblock signature"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, _ := fakeSlot(t, 4<<20, 100000, 600, s, "1")
			c.edit(m)
			_, err := Read(m, int64(len(m)))
			if !errors.Is(err, ErrNoVerity) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want ErrNoVerity with %q", err, c.want)
			}
		})
	}
	// A record that describes another tree than the superblock beside it.
	m, _ := fakeSlot(t, 4<<20, 100000, 600, s, "1")
	sb, _ := verity.ReadSuperblock(m, 600*4096)
	sb.Salt = bytes.Repeat([]byte{1}, 32)
	b, _ := sb.MarshalBinary()
	copy(m[600*4096:], b)
	if _, err := Read(m, int64(len(m))); !errors.Is(err, ErrBadRecord) {
		t.Fatalf("mismatched salt: %v", err)
	}
}

func TestDecodeHostile(t *testing.T) {
	s, _ := rsaPair(t)
	rec := &Record{Name: "t", Version: "1", Verity: Verity{RootHash: strings.Repeat("ab", 32)}}
	good, err := Encode(rec, s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(good); err != nil {
		t.Fatal(err)
	}
	edit := func(f func(b []byte) []byte) []byte { return f(append(make([]byte, 0, MaxRecordSize), good...)) }
	cases := map[string][]byte{
		"empty":           nil,
		"no magic":        edit(func(b []byte) []byte { b[0] = 'X'; return b }),
		"body too long":   edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[8:], 1<<31); return b }),
		"sig too long":    edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[12:], 1<<31); return b }),
		"no body":         edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[8:], 0); return b }),
		"unknown field":   mustEncode(t, `{"name":"t","version":"1","verity":{"root_hash":"`+strings.Repeat("ab", 32)+`"},"extra":1}`),
		"no version":      mustEncode(t, `{"name":"t","verity":{"root_hash":"`+strings.Repeat("ab", 32)+`"}}`),
		"short root hash": mustEncode(t, `{"name":"t","version":"1","verity":{"root_hash":"abcd"}}`),
	}
	for name, b := range cases {
		if _, err := Decode(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	big := &Record{Name: strings.Repeat("n", MaxRecordSize), Version: "1"}
	if _, err := Encode(big, nil); !errors.Is(err, ErrBadRecord) {
		t.Errorf("an oversized record: %v", err)
	}
}

func mustEncode(t *testing.T, body string) []byte {
	b := make([]byte, recordHeader, MaxRecordSize)
	copy(b, recordMagic)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(body)))
	return append(b, body...)
}

// FuzzDecode: hostile record bytes are refused or decode to a record whose
// encoding decodes the same; never a panic.
func FuzzDecode(f *testing.F) {
	rec := &Record{Name: "t", Version: "1.0.0", Channel: "stable", Verity: Verity{Algorithm: "sha256", RootHash: strings.Repeat("ab", 32), Salt: "00", DataBlocks: 5, HashOffset: 20480}}
	good, _ := Encode(rec, nil)
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Decode(b)
		if err != nil {
			return
		}
		again, err := Encode(&s.Record, nil)
		if err != nil {
			return // a record too big to re-encode with its signature gone is fine
		}
		s2, err := Decode(again)
		if err != nil || s2.Record != s.Record {
			t.Fatalf("round trip: %v %+v %+v", err, s2, s)
		}
	})
}
