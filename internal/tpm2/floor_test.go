package tpm2

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// floorBytes is what a floor index holds for v.
func floorBytes(v string) []byte {
	b := make([]byte, floorSize)
	b[0], b[1] = byte(len(v)>>8), byte(len(v))
	copy(b[2:], v)
	return b
}

// toolRead reads the floor index with tpm2_nvread (owner auth), the
// oracle nobody here wrote.
func toolRead(t *testing.T, s *swtpm, idx Handle) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "nv")
	s.tool(false, "tpm2_nvread", "-C", "o", "-s", "66", "-o", out, idx.String())
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readFloor(t *testing.T, f *Floor) (string, bool) {
	t.Helper()
	v, ok, err := f.Read()
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return v, ok
}

func TestFloorUndefined(t *testing.T) {
	s := startSwtpm(t)
	f := &Floor{TPM: s.open()}
	if v, ok := readFloor(t, f); ok || v != "" {
		t.Fatalf("Read of an undefined index = %q, %v; want \"\", false", v, ok)
	}
	if err := f.Lock(); !errors.Is(err, ErrIndexUndefined) {
		t.Fatalf("Lock of an undefined index: %v, want ErrIndexUndefined", err)
	}
}

func TestFloorRoundTrip(t *testing.T) {
	s := startSwtpm(t)
	tpm := s.open()
	f := &Floor{TPM: tpm}
	long := strings.Repeat("9", MaxFloorLen)
	for _, v := range []string{"1.2.3", "1.10.0-rc.1+build.5", long, "2"} {
		if err := f.Write(v); err != nil {
			t.Fatalf("Write(%q): %v", v, err)
		}
		if got, ok := readFloor(t, f); !ok || got != v {
			t.Fatalf("Read after Write(%q) = %q, %v", v, got, ok)
		}
	}
	// The index as tpm2-tools sees it.
	tpm.Close()
	if got, want := toolRead(t, s, DefaultFloorIndex), floorBytes("2"); !bytes.Equal(got, want) {
		t.Fatalf("tpm2_nvread = %x, want %x", got, want)
	}
	out, _ := s.tool(false, "tpm2_nvreadpublic", DefaultFloorIndex.String())
	for _, want := range []string{"ownerwrite|authwrite|write_stclear|ownerread|authread|no_da|written", "value: 0x22064006", "size: 66"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("tpm2_nvreadpublic lacks %q:\n%s", want, out)
		}
	}
}

func TestFloorValueRefused(t *testing.T) {
	s := startSwtpm(t)
	f := &Floor{TPM: s.open()}
	if err := f.Write("1.0.0"); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"", strings.Repeat("x", MaxFloorLen+1)} {
		if err := f.Write(v); !errors.Is(err, ErrFloorValue) {
			t.Fatalf("Write of %d bytes: %v, want ErrFloorValue", len(v), err)
		}
	}
	if v, ok := readFloor(t, f); !ok || v != "1.0.0" {
		t.Fatalf("Read = %q, %v, want the value before", v, ok)
	}
}

func TestFloorLock(t *testing.T) {
	s := startSwtpm(t)
	tpm := s.open()
	f := &Floor{TPM: tpm}
	if err := f.Write("3.1.0"); err != nil {
		t.Fatal(err)
	}
	if err := f.Lock(); err != nil {
		t.Fatalf("Lock: %v", err)
	}
	err := f.Write("1.0.0")
	if !errors.Is(err, ErrNVLocked) {
		t.Fatalf("Write after Lock: %v, want ErrNVLocked", err)
	}
	if want := "tpm2: NV_Write 0x01004B4C: TPM_RC_NV_LOCKED (0x148)"; err.Error() != want {
		t.Errorf("Write after Lock: %q, want %q", err, want)
	}
	if v, ok := readFloor(t, f); !ok || v != "3.1.0" {
		t.Fatalf("Read after a refused Write = %q, %v, want 3.1.0", v, ok)
	}
	// tpm2-tools is refused too.
	tpm.Close()
	in := filepath.Join(t.TempDir(), "in")
	os.WriteFile(in, floorBytes("0.0.1"), 0o644)
	if _, err := s.tool(true, "tpm2_nvwrite", "-C", "o", "-i", in, DefaultFloorIndex.String()); err == nil {
		t.Fatal("tpm2_nvwrite of a locked floor succeeded")
	}

	// A TPM Reset (power cycle) lifts the lock; the value stays.
	tpm = s.open()
	f.TPM = tpm
	s.reset(tpm)
	if v, ok := readFloor(t, f); !ok || v != "3.1.0" {
		t.Fatalf("Read after a TPM Reset = %q, %v, want 3.1.0", v, ok)
	}
	if err := f.Write("3.2.0"); err != nil {
		t.Fatalf("Write after a TPM Reset: %v", err)
	}
	if v, ok := readFloor(t, f); !ok || v != "3.2.0" {
		t.Fatalf("Read = %q, %v, want 3.2.0", v, ok)
	}
}

func TestFloorPersists(t *testing.T) {
	dir := t.TempDir()
	s := startSwtpmDir(t, dir)
	tpm := s.open()
	f := &Floor{TPM: tpm}
	if err := f.Write("7.0.0"); err != nil {
		t.Fatal(err)
	}
	if err := f.Lock(); err != nil {
		t.Fatal(err)
	}
	tpm.Close()
	s.kill() // as a power cut would: no orderly shutdown

	s = startSwtpmDir(t, dir)
	f.TPM = s.open()
	if v, ok := readFloor(t, f); !ok || v != "7.0.0" {
		t.Fatalf("Read after swtpm restarted = %q, %v, want 7.0.0", v, ok)
	}
	if err := f.Write("7.0.1"); err != nil {
		t.Fatalf("Write after swtpm restarted (the lock should be gone): %v", err)
	}
	if v, ok := readFloor(t, f); !ok || v != "7.0.1" {
		t.Fatalf("Read = %q, %v, want 7.0.1", v, ok)
	}
}

// TestFloorForeignIndex: an index at the floor's handle that Floor.Write
// did not define, as an attacker with the TPM could, is refused by Read,
// Write and Lock, with an error naming the index.
func TestFloorForeignIndex(t *testing.T) {
	for _, c := range []struct {
		name, size, attrs string
	}{
		{"small", "32", "ownerread|ownerwrite|authread|authwrite|no_da|write_stclear"},
		{"large", "128", "ownerread|ownerwrite|authread|authwrite|no_da|write_stclear"},
		{"no write_stclear", "66", "ownerread|ownerwrite|authread|authwrite|no_da"},
		{"writedefine", "66", "ownerread|ownerwrite|authread|authwrite|no_da|write_stclear|writedefine"},
		{"counter", "8", "nt=counter|ownerread|ownerwrite|authread|authwrite|no_da|write_stclear"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := startSwtpm(t)
			s.tool(false, "tpm2_nvdefine", DefaultFloorIndex.String(), "-C", "o", "-s", c.size, "-a", c.attrs)
			f := &Floor{TPM: s.open()}
			_, _, err := f.Read()
			for what, err := range map[string]error{"Read": err, "Write": f.Write("0.0.1"), "Lock": f.Lock()} {
				if !errors.Is(err, ErrNotFloor) || !strings.Contains(err.Error(), "0x01004B4C") {
					t.Errorf("%s: %v, want ErrNotFloor naming the index", what, err)
				}
			}
		})
	}
}

// TestFloorMalformedData: an index of the floor's shape whose data is not
// a floor is an error, never a value.
func TestFloorMalformedData(t *testing.T) {
	s := startSwtpm(t)
	tpm := s.open()
	f := &Floor{TPM: tpm}
	// Defined, never written (kiln stopped between define and write):
	// no floor yet, and the next Write writes it.
	if err := tpm.NVDefineSpace(NVPublic{Index: DefaultFloorIndex, NameAlg: AlgSHA256, Attributes: FloorAttributes, Size: floorSize}); err != nil {
		t.Fatal(err)
	}
	if v, ok := readFloor(t, f); ok {
		t.Fatalf("Read of an unwritten index = %q, true", v)
	}
	long := floorBytes("1")
	long[0], long[1] = 0, 65
	pad := floorBytes("1.0")
	pad[40] = 'x'
	for name, data := range map[string][]byte{"length 0": make([]byte, floorSize), "length 65": long, "garbage after": pad} {
		if err := tpm.NVWrite(DefaultFloorIndex, 0, data); err != nil {
			t.Fatal(err)
		}
		v, ok, err := f.Read()
		if !errors.Is(err, ErrFloorData) || ok || v != "" || !strings.Contains(err.Error(), "0x01004B4C") {
			t.Errorf("%s: Read = %q, %v, %v; want ErrFloorData naming the index", name, v, ok, err)
		}
	}
	if err := f.Write("1.0"); err != nil {
		t.Fatal(err)
	}
	if v, ok := readFloor(t, f); !ok || v != "1.0" {
		t.Fatalf("Read = %q, %v", v, ok)
	}
}

func TestFloorOtherIndex(t *testing.T) {
	s := startSwtpm(t)
	tpm := s.open()
	a, b := &Floor{TPM: tpm}, &Floor{TPM: tpm, Index: 0x01004B4D}
	if err := a.Write("1"); err != nil {
		t.Fatal(err)
	}
	if err := b.Write("2"); err != nil {
		t.Fatal(err)
	}
	if err := b.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := a.Write("3"); err != nil {
		t.Fatalf("Write to a floor beside a locked one: %v", err)
	}
	va, _ := readFloor(t, a)
	vb, _ := readFloor(t, b)
	if va != "3" || vb != "2" {
		t.Fatalf("floors = %q, %q; want 3, 2", va, vb)
	}
}
