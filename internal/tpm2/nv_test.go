package tpm2

import (
	"errors"
	"testing"
)

func TestNVCommands(t *testing.T) {
	s := startSwtpm(t)
	tpm := s.open()
	const idx Handle = 0x01000123

	_, err := tpm.NVReadPublic(idx)
	if !errors.Is(err, ErrIndexUndefined) {
		t.Fatalf("NVReadPublic of an undefined index: %v, want ErrIndexUndefined", err)
	}
	if want := "tpm2: NV_ReadPublic 0x01000123: TPM_RC_HANDLE, handle 1 (0x18B)"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if _, err := tpm.NVRead(idx, 0, 4); !errors.Is(err, ErrIndexUndefined) {
		t.Fatalf("NVRead of an undefined index: %v, want ErrIndexUndefined", err)
	}
	if err := tpm.NVUndefineSpace(idx); !errors.Is(err, ErrIndexUndefined) {
		t.Fatalf("NVUndefineSpace of an undefined index: %v, want ErrIndexUndefined", err)
	}

	pub := NVPublic{Index: idx, NameAlg: AlgSHA256, Attributes: NVAuthRead | NVAuthWrite | NVNoDA, Size: 16}
	if err := tpm.NVDefineSpace(pub); err != nil {
		t.Fatal(err)
	}
	if err := tpm.NVDefineSpace(pub); !errors.Is(err, ErrIndexDefined) {
		t.Fatalf("NVDefineSpace twice: %v, want ErrIndexDefined", err)
	}
	got, err := tpm.NVReadPublic(idx)
	if err != nil {
		t.Fatal(err)
	}
	if got.Index != idx || got.NameAlg != AlgSHA256 || got.Attributes != pub.Attributes || got.Size != 16 || len(got.AuthPolicy) != 0 {
		t.Fatalf("NVReadPublic = %+v, want %+v", got, pub)
	}
	if _, err := tpm.NVRead(idx, 0, 16); !errors.Is(err, ErrUninitialized) {
		t.Fatalf("NVRead before any write: %v, want ErrUninitialized", err)
	}
	if err := tpm.NVWrite(idx, 4, []byte("abcd")); err != nil {
		t.Fatal(err)
	}
	if b, err := tpm.NVRead(idx, 4, 4); err != nil || string(b) != "abcd" {
		t.Fatalf("NVRead = %q, %v", b, err)
	}
	if got, _ := tpm.NVReadPublic(idx); got.Attributes&NVWritten == 0 {
		t.Fatalf("attributes after a write: %s, want WRITTEN", got.Attributes)
	}
	var e *Error
	if err := tpm.NVWrite(idx, 14, []byte("abcd")); !errors.As(err, &e) || e.Code != RCNVRange {
		t.Fatalf("NVWrite past the end: %v, want TPM_RC_NV_RANGE", err)
	}
	// No WRITE_STCLEAR nor WRITEDEFINE: NV_WriteLock is refused.
	if err := tpm.NVWriteLock(idx); !errors.As(err, &e) || e.Code.Base() != RCAttributes {
		t.Fatalf("NVWriteLock without WRITE_STCLEAR: %v, want TPM_RC_ATTRIBUTES", err)
	}
	if err := tpm.NVUndefineSpace(idx); err != nil {
		t.Fatal(err)
	}
	if _, err := tpm.NVReadPublic(idx); !errors.Is(err, ErrIndexUndefined) {
		t.Fatalf("NVReadPublic after NVUndefineSpace: %v", err)
	}
	if err := tpm.Startup(); err != nil {
		t.Fatalf("Startup of a started TPM: %v", err)
	}
}
