package authenticode

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-os/kiln/sign"
	"github.com/kiln-os/kiln/sign/secureboot"
)

// peSpec describes a synthetic PE image.
type peSpec struct {
	pe32     bool  // PE32 instead of PE32+
	dirs     int   // NumberOfRvaAndSizes (16 when 0)
	sections []int // raw sizes, multiples of 0x200
	trailing int   // bytes after the last section
}

// Offsets in every synthetic image.
const (
	tLfanew = 0x80
	tCOFF   = tLfanew + 4
	tOpt    = tCOFF + 20
)

// makePE builds a PE/COFF image by spec: an "MZ" header, a PE header, the
// section table, sections of patterned bytes, then trailing bytes.
func makePE(s peSpec) []byte {
	dirs := s.dirs
	if dirs == 0 {
		dirs = 16
	}
	dirStart := 112
	if s.pe32 {
		dirStart = 96
	}
	optSize := dirStart + 8*dirs
	secTable := tOpt + optSize
	headers := (secTable + 40*len(s.sections) + 0x1ff) &^ 0x1ff
	b := make([]byte, headers)
	copy(b, "MZ")
	binary.LittleEndian.PutUint32(b[0x3c:], tLfanew)
	copy(b[0x40:], "This program cannot be run in DOS mode.")
	copy(b[tLfanew:], "PE\x00\x00")
	binary.LittleEndian.PutUint16(b[tCOFF:], 0x8664)
	binary.LittleEndian.PutUint16(b[tCOFF+2:], uint16(len(s.sections)))
	binary.LittleEndian.PutUint16(b[tCOFF+16:], uint16(optSize))
	binary.LittleEndian.PutUint16(b[tCOFF+18:], 0x0206)
	if s.pe32 {
		binary.LittleEndian.PutUint16(b[tOpt:], magicPE32)
		binary.LittleEndian.PutUint32(b[tOpt+92:], uint32(dirs))
	} else {
		binary.LittleEndian.PutUint16(b[tOpt:], magicPE32Plus)
		binary.LittleEndian.PutUint32(b[tOpt+108:], uint32(dirs))
	}
	binary.LittleEndian.PutUint32(b[tOpt+32:], 0x1000) // SectionAlignment
	binary.LittleEndian.PutUint32(b[tOpt+36:], 0x200)  // FileAlignment
	binary.LittleEndian.PutUint32(b[tOpt+60:], uint32(headers))
	binary.LittleEndian.PutUint32(b[tOpt+64:], 0x12345) // a stale CheckSum
	binary.LittleEndian.PutUint16(b[tOpt+68:], 10)      // EFI application
	off, va := headers, 0x1000
	for i, size := range s.sections {
		h := secTable + 40*i
		copy(b[h:], []byte{'.', 's', byte('0' + i)})
		binary.LittleEndian.PutUint32(b[h+8:], uint32(size))
		binary.LittleEndian.PutUint32(b[h+12:], uint32(va))
		binary.LittleEndian.PutUint32(b[h+16:], uint32(size))
		binary.LittleEndian.PutUint32(b[h+20:], uint32(off))
		off += size
		va += (size + 0xfff) &^ 0xfff
	}
	for i := headers; i < off+s.trailing; i++ {
		b = append(b, byte(i*7+i>>9))
	}
	return b
}

var defaultSpec = peSpec{sections: []int{0x400, 0x200, 0x600}, trailing: 13}

// testKey is an RSA key, its self-signed certificate, and the Signer.
type testKey struct {
	priv   *rsa.PrivateKey
	signer sign.Signer
	cert   *x509.Certificate
}

var (
	keysOnce sync.Once
	keyA     *testKey
	keyB     *testKey
)

func keys(t testing.TB) (*testKey, *testKey) {
	t.Helper()
	keysOnce.Do(func() {
		keyA = newTestKey(t, "kiln test db A")
		keyB = newTestKey(t, "kiln test db B")
	})
	return keyA, keyB
}

func newTestKey(t testing.TB, cn string) *testKey {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sign.NewSigner(priv, cn)
	if err != nil {
		t.Fatal(err)
	}
	subject, _ := secureboot.ParseSubject("CN=" + cn)
	der, err := secureboot.NewCertificate(s, secureboot.CertificateOptions{Subject: subject, NotBefore: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testKey{priv, s, cert}
}

// refChecksum is the PE checksum computed the way pefile does it: 32-bit
// words summed with carries into a 64-bit accumulator, folded to 16 bits,
// plus the file size. It needs the CheckSum field 4-aligned.
func refChecksum(pe []byte, checksumOff int) uint32 {
	b := append([]byte(nil), pe...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	var sum uint64
	for i := 0; i < len(b); i += 4 {
		if i == checksumOff {
			continue
		}
		sum = (sum & 0xffffffff) + uint64(binary.LittleEndian.Uint32(b[i:])) + (sum >> 32)
		if sum > 1<<32 {
			sum = (sum & 0xffffffff) + (sum >> 32)
		}
	}
	sum = (sum & 0xffff) + (sum >> 16)
	sum = sum + (sum >> 16)
	sum &= 0xffff
	return uint32(sum) + uint32(len(pe))
}

func TestSignVerify(t *testing.T) {
	a, _ := keys(t)
	for name, spec := range map[string]peSpec{
		"PE32+":                     defaultSpec,
		"PE32":                      {pe32: true, sections: []int{0x200, 0x200}, trailing: 1},
		"no trailing data":          {sections: []int{0x200}},
		"6 data directories":        {dirs: 6, sections: []int{0x200, 0x400}, trailing: 8},
		"a section of no data":      {sections: []int{0x200, 0, 0x200}},
		"trailing data aligned":     {sections: []int{0x200}, trailing: 16},
		"an image with no sections": {trailing: 100},
	} {
		t.Run(name, func(t *testing.T) {
			pe := makePE(spec)
			signed, err := Sign(pe, a.signer, a.cert, Options{})
			if err != nil {
				t.Fatal(err)
			}
			certs, err := Verify(signed)
			if err != nil {
				t.Fatal(err)
			}
			if len(certs) != 1 || !certs[0].Equal(a.cert) {
				t.Fatalf("signers %v, want the test certificate", certs)
			}
			im, err := Parse(signed)
			if err != nil {
				t.Fatal(err)
			}
			// The table starts at the 8-byte boundary after the image and
			// ends the file; the bytes before it are the image's, padded
			// with zeros.
			wantOff := int64(len(pe)+7) &^ 7
			if im.CertTable.Offset != wantOff || im.CertTable.End() != int64(len(signed)) || im.CertTable.Size%8 != 0 {
				t.Fatalf("certificate table %+v in %d bytes, want it at 0x%x, 8-aligned, ending the file", im.CertTable, len(signed), wantOff)
			}
			if !bytes.Equal(signed[im.CertDirOffset+8:len(pe)], pe[im.CertDirOffset+8:]) || !zero(signed[len(pe):wantOff]) {
				t.Fatal("the signed image's bytes differ from the input's beyond the data directory entry and CheckSum")
			}
			entry := signed[im.CertTable.Offset:]
			if n, rev, typ := binary.LittleEndian.Uint32(entry), binary.LittleEndian.Uint16(entry[4:]), binary.LittleEndian.Uint16(entry[6:]); int64(align8(int(n))) != im.CertTable.Size || rev != 0x0200 || typ != 0x0002 {
				t.Fatalf("WIN_CERTIFICATE length %d revision 0x%x type 0x%x in a table of %d", n, rev, typ, im.CertTable.Size)
			}
			// The CheckSum covers the signed file.
			stored := binary.LittleEndian.Uint32(signed[im.CheckSumOffset:])
			if want := refChecksum(signed, int(im.CheckSumOffset)); stored != want {
				t.Fatalf("CheckSum 0x%x, pefile's algorithm gives 0x%x", stored, want)
			}
			if got, _ := Checksum(signed); got != stored {
				t.Fatalf("Checksum 0x%x, stored 0x%x", got, stored)
			}
			// Deterministic.
			again, err := Sign(pe, a.signer, a.cert, Options{})
			if err != nil || !bytes.Equal(again, signed) {
				t.Fatalf("signing twice gave different bytes (%v)", err)
			}
		})
	}
}

func zero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }

func TestChecksumAtOddOffsets(t *testing.T) {
	// checksum must read the 4 bytes at skip as zero wherever they fall.
	data := make([]byte, 101)
	for i := range data {
		data[i] = byte(i*37 + 11)
	}
	naive := func(b []byte, skip int) uint32 {
		c := append([]byte(nil), b...)
		copy(c[skip:skip+4], []byte{0, 0, 0, 0})
		var sum uint32
		for i := 0; i < len(c); i += 2 {
			w := uint32(c[i])
			if i+1 < len(c) {
				w |= uint32(c[i+1]) << 8
			}
			sum += w
			sum = (sum & 0xffff) + (sum >> 16)
		}
		return sum + uint32(len(c))
	}
	for _, n := range []int{100, 101} {
		for skip := 0; skip+4 <= n; skip++ {
			if got, want := checksum(data[:n], int64(skip)), naive(data[:n], skip); got != want {
				t.Fatalf("%d bytes, CheckSum at %d: 0x%x, want 0x%x", n, skip, got, want)
			}
		}
	}
}

// TestChangedImage: a changed byte in the headers, a section or the
// trailing data breaks the signature; the CheckSum, which is not hashed,
// does not.
func TestChangedImage(t *testing.T) {
	a, _ := keys(t)
	pe := makePE(defaultSpec)
	signed, err := Sign(pe, a.signer, a.cert, Options{})
	if err != nil {
		t.Fatal(err)
	}
	im, _ := Parse(pe)
	for name, off := range map[string]int64{
		"DOS stub":      0x45,
		"section name":  tOpt + 112 + 16*8 + 1,
		"first section": im.Sections[0].Offset + 5,
		"last section":  im.Sections[2].End() - 1,
		"trailing data": int64(len(pe)) - 1,
	} {
		c := append([]byte(nil), signed...)
		c[off] ^= 0x01
		if _, err := Verify(c); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s changed at 0x%x: Verify gave %v, want ErrBadSignature", name, off, err)
		}
	}
	c := append([]byte(nil), signed...)
	c[im.CheckSumOffset] ^= 0x01
	if _, err := Verify(c); err != nil {
		t.Errorf("CheckSum changed: %v (it is not hashed)", err)
	}
}

func TestReplace(t *testing.T) {
	a, b := keys(t)
	pe := makePE(defaultSpec)
	signedA, err := Sign(pe, a.signer, a.cert, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Sign(signedA, b.signer, b.cert, Options{})
	if !errors.Is(err, ErrSigned) || !strings.Contains(err.Error(), "by CN=kiln test db A") {
		t.Fatalf("signing a signed image: %v, want ErrSigned naming the signer", err)
	}
	replaced, err := Sign(signedA, b.signer, b.cert, Options{Replace: true})
	if err != nil {
		t.Fatal(err)
	}
	direct, err := Sign(pe, b.signer, b.cert, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(replaced, direct) {
		t.Fatal("replacing A's signature with B's differs from signing the unsigned image with B")
	}
	if certs, err := Verify(replaced); err != nil || len(certs) != 1 || !certs[0].Equal(b.cert) {
		t.Fatalf("replaced image signers %v, %v", certs, err)
	}
	if _, err := Verify(pe); !errors.Is(err, ErrUnsigned) {
		t.Fatalf("Verify of an unsigned image: %v", err)
	}
}

func TestKeyRefusals(t *testing.T) {
	a, b := keys(t)
	pe := makePE(defaultSpec)
	if _, err := Sign(pe, a.signer, b.cert, Options{}); !errors.Is(err, secureboot.ErrKeyMismatch) {
		t.Errorf("key A with certificate B: %v, want ErrKeyMismatch", err)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	for name, priv := range map[string]crypto.Signer{"ECDSA": ec, "Ed25519": ed} {
		s, err := sign.NewSigner(priv, name)
		if err != nil {
			t.Fatal(err)
		}
		_, err = Sign(pe, s, a.cert, Options{})
		if !errors.Is(err, secureboot.ErrNotRSA) || !strings.Contains(err.Error(), "UEFI firmware verifies RSA signatures only") {
			t.Errorf("%s key: %v, want ErrNotRSA", name, err)
		}
	}
}
