package sign

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/asn1"
	"math/big"
	"strings"
	"testing"
)

// An ECDSA key in memory signs with the nonce RFC 6979 derives: the
// signature of "sample" with SHA-256 under the P-256 key of RFC 6979
// A.2.5 is the r and s the RFC lists, every time.
func TestECDSASignaturesFollowRFC6979(t *testing.T) {
	hexInt := func(s string) *big.Int {
		n, ok := new(big.Int).SetString(s, 16)
		if !ok {
			t.Fatalf("bad hex %q", s)
		}
		return n
	}
	// RFC 6979, A.2.5 (ECDSA, 256 bits, prime field), "sample", SHA-256.
	x := hexInt("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721")
	wantR := hexInt("EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716")
	wantS := hexInt("F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8")
	priv := &ecdsa.PrivateKey{D: x}
	priv.Curve = elliptic.P256()
	priv.X, priv.Y = priv.Curve.ScalarBaseMult(x.Bytes())
	if priv.X.Cmp(hexInt("60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6")) != 0 {
		t.Fatal("the RFC's public key Ux does not match its private key")
	}
	s, err := NewSigner(priv, "rfc6979")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		sig, err := s.Sign(strings.NewReader("sample"))
		if err != nil {
			t.Fatal(err)
		}
		var rs struct{ R, S *big.Int }
		if _, err := asn1.Unmarshal(sig, &rs); err != nil {
			t.Fatal(err)
		}
		if rs.R.Cmp(wantR) != 0 || rs.S.Cmp(wantS) != 0 {
			t.Errorf("signature %d: r=%X s=%X, want RFC 6979's r=%X s=%X", i, rs.R, rs.S, wantR, wantS)
		}
		if err := s.(Verifier).Verify(strings.NewReader("sample"), sig); err != nil {
			t.Errorf("signature %d does not verify: %v", i, err)
		}
	}
}
