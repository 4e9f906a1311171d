package tpm2

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// fakeTPM is a character device that answers each command with the next
// of its responses and records the commands.
type fakeTPM struct {
	rsp  [][]byte
	cmds [][]byte
}

func (f *fakeTPM) Write(p []byte) (int, error) {
	f.cmds = append(f.cmds, append([]byte(nil), p...))
	return len(p), nil
}

func (f *fakeTPM) Read(p []byte) (int, error) {
	if len(f.rsp) == 0 {
		return 0, io.EOF
	}
	n := copy(p, f.rsp[0])
	f.rsp = f.rsp[1:]
	return n, nil
}

// rsp builds a response: header, then for a session response the
// parameter size, the parameters and a password session's auth area.
func rsp(rc RC, sessions bool, params []byte) []byte {
	tag := tagNoSessions
	b := make([]byte, headerSize)
	if sessions && rc == RCSuccess {
		tag = tagSessions
		b = binary.BigEndian.AppendUint32(b, uint32(len(params)))
		b = append(b, params...)
		b = append(b, 0, 0, 1, 0, 0)
	} else {
		b = append(b, params...)
	}
	binary.BigEndian.PutUint16(b, tag)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	binary.BigEndian.PutUint32(b[6:], uint32(rc))
	return b
}

func unhex(s string) []byte {
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		panic(err)
	}
	return b
}

// floorPublic is the NV_ReadPublic parameters for a floor index with
// extra attributes.
func floorPublic(extra NVAttr) []byte {
	pub := marshalNVPublic(NVPublic{Index: DefaultFloorIndex, NameAlg: AlgSHA256, Attributes: FloorAttributes | extra, Size: floorSize})
	return append(pub, 0, 4, 0, 0x0B, 1, 2) // and a (short) name
}

// TestCommandBytes checks the commands against TPM 2.0 Part 3 laid out
// by hand: tag, size, code, handles, auth area, parameters.
func TestCommandBytes(t *testing.T) {
	const pw = "00000009 40000009 0000 01 0000" // authorizationSize, TPM_RS_PW, nonce, continueSession, hmac
	for _, c := range []struct {
		name string
		run  func(*TPM) error
		want string
	}{
		{"Startup", func(t *TPM) error { return t.Startup() },
			"8001 0000000c 00000144 0000"},
		{"NV_ReadPublic", func(t *TPM) error { _, err := t.NVReadPublic(DefaultFloorIndex); return err },
			"8001 0000000e 00000169 01004b4c"},
		{"NV_DefineSpace", func(t *TPM) error {
			return t.NVDefineSpace(NVPublic{Index: DefaultFloorIndex, NameAlg: AlgSHA256, Attributes: FloorAttributes, Size: floorSize})
		}, "8002 0000002d 0000012a 40000001" + pw + "0000 000e 01004b4c 000b 02064006 0000 0042"},
		{"NV_UndefineSpace", func(t *TPM) error { return t.NVUndefineSpace(DefaultFloorIndex) },
			"8002 0000001f 00000122 40000001 01004b4c" + pw},
		{"NV_Write", func(t *TPM) error { return t.NVWrite(DefaultFloorIndex, 3, []byte("ab")) },
			"8002 00000025 00000137 01004b4c 01004b4c" + pw + "0002 6162 0003"},
		{"NV_Read", func(t *TPM) error { _, err := t.NVRead(DefaultFloorIndex, 2, 0); return err },
			"8002 00000023 0000014e 01004b4c 01004b4c" + pw + "0000 0002"},
		{"NV_WriteLock", func(t *TPM) error { return t.NVWriteLock(DefaultFloorIndex) },
			"8002 0000001f 00000138 01004b4c 01004b4c" + pw},
	} {
		f := &fakeTPM{rsp: [][]byte{rsp(RCNVLocked, false, nil)}}
		c.run(newDevice(f))
		if len(f.cmds) != 1 || !bytes.Equal(f.cmds[0], unhex(c.want)) {
			t.Errorf("%s: sent %x, want %x", c.name, f.cmds, unhex(c.want))
		}
	}
}

// TestMalformedResponses: every length in a response is checked; a
// response that does not parse is ErrMalformed, never a value.
func TestMalformedResponses(t *testing.T) {
	okRead := rsp(RCSuccess, true, append([]byte{0, floorSize}, floorBytes("1.0")...))
	for _, c := range []struct {
		name string
		rsp  []byte
	}{
		{"empty", nil},
		{"short header", okRead[:9]},
		{"size above the bytes", append(okRead[:2:2], append([]byte{0, 0, 0, 0x7F}, okRead[6:]...)...)},
		{"size below the bytes", append(okRead, 0)},
		{"no sessions tag", append([]byte{0x80, 0x01}, okRead[2:]...)},
		{"parameterSize past the end", func() []byte {
			b := bytes.Clone(okRead)
			binary.BigEndian.PutUint32(b[10:], 0xFFFFFFF0)
			return b
		}()},
		{"TPM2B past the parameters", func() []byte {
			b := bytes.Clone(okRead)
			b[14], b[15] = 0, floorSize+1
			return b
		}()},
		{"short read", rsp(RCSuccess, true, append([]byte{0, 3}, "1.0"...))},
		{"no auth area", func() []byte {
			b := bytes.Clone(okRead[:len(okRead)-5])
			binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
			return b
		}()},
		{"bytes after the auth area", func() []byte {
			b := append(bytes.Clone(okRead), 0)
			binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
			return b
		}()},
	} {
		f := &fakeTPM{rsp: [][]byte{rsp(RCSuccess, false, floorPublic(NVWritten)), c.rsp}}
		v, ok, err := (&Floor{TPM: newDevice(f)}).Read()
		if err == nil || ok || v != "" {
			t.Errorf("%s: Read = %q, %v, %v; want an error", c.name, v, ok, err)
			continue
		}
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", c.name, err)
		}
		t.Logf("%s: %v", c.name, err)
	}

	for name, params := range map[string][]byte{
		"other index":          append(marshalNVPublic(NVPublic{Index: 0x01000001, Size: floorSize}), 0, 0),
		"nvPublic overrun":     {0, 0xFF, 1, 0},
		"nvPublic short":       append([]byte{0, 5, 1, 0, 0x4B, 0x4C, 0}, 0, 0),
		"nvPublic left over":   append(append([]byte{0, 15}, marshalNVPublic(NVPublic{Index: DefaultFloorIndex})[2:]...), 9, 0, 0),
		"policy overrun":       {0, 14, 1, 0, 0x4B, 0x4C, 0, 0x0B, 0, 0, 0, 0, 0, 40, 0, 0, 0, 0},
		"no name":              marshalNVPublic(NVPublic{Index: DefaultFloorIndex}),
		"bytes after the name": append(floorPublic(0), 1),
	} {
		f := &fakeTPM{rsp: [][]byte{rsp(RCSuccess, false, params)}}
		_, err := newDevice(f).NVReadPublic(DefaultFloorIndex)
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("NVReadPublic, %s: %v, want ErrMalformed", name, err)
		}
		t.Logf("NVReadPublic, %s: %v", name, err)
	}
}

func TestRetry(t *testing.T) {
	f := &fakeTPM{rsp: [][]byte{rsp(RCRetry, false, nil), rsp(RCYielded, false, nil), rsp(RCSuccess, false, []byte{})}}
	var waits []time.Duration
	tpm := newDevice(f)
	tpm.sleep = func(d time.Duration) { waits = append(waits, d) }
	if err := tpm.Startup(); err != nil {
		t.Fatalf("Startup after RETRY, YIELDED: %v", err)
	}
	if len(f.cmds) != 3 || len(waits) != 2 || waits[1] != 2*waits[0] {
		t.Fatalf("%d commands sent, waits %v; want 3 and two, doubling", len(f.cmds), waits)
	}
	f = &fakeTPM{}
	for i := 0; i <= retries; i++ {
		f.rsp = append(f.rsp, rsp(RCRetry, false, nil))
	}
	waits = nil
	tpm = newDevice(f)
	tpm.sleep = func(d time.Duration) { waits = append(waits, d) }
	if err := tpm.Startup(); err == nil || !strings.Contains(err.Error(), "TPM_RC_RETRY") || len(waits) != retries {
		t.Fatalf("Startup answered RETRY always: %v after %d waits", err, len(waits))
	}
}

func TestStreamFraming(t *testing.T) {
	// Two responses back to back in one stream, the second split oddly.
	var stream bytes.Buffer
	stream.Write(rsp(RCNVLocked, false, nil))
	stream.Write(rsp(RCSuccess, true, nil))
	tpm := NewConn(struct {
		io.Reader
		io.Writer
	}{io.MultiReader(bytes.NewReader(stream.Next(13)), &stream), io.Discard})
	if err := tpm.NVWrite(DefaultFloorIndex, 0, nil); !errors.Is(err, ErrNVLocked) {
		t.Fatalf("first response: %v", err)
	}
	if err := tpm.NVWriteLock(DefaultFloorIndex); err != nil {
		t.Fatalf("second response: %v", err)
	}
	// A header whose size is out of range.
	bad := rsp(RCSuccess, false, nil)
	binary.BigEndian.PutUint32(bad[2:], maxMessage+1)
	tpm = NewConn(struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(bad), io.Discard})
	if err := tpm.Startup(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("response size %d: %v, want ErrMalformed", maxMessage+1, err)
	}
}

func TestRCString(t *testing.T) {
	for rc, want := range map[RC]string{
		0x148:   "TPM_RC_NV_LOCKED (0x148)",
		0x18B:   "TPM_RC_HANDLE, handle 1 (0x18B)",
		0x28B:   "TPM_RC_HANDLE, handle 2 (0x28B)",
		0x98E:   "TPM_RC_AUTH_FAIL, session 1 (0x98E)",
		0x2C4:   "TPM_RC_VALUE, parameter 2 (0x2C4)",
		0x084:   "TPM_RC_VALUE (0x84)",
		0x922:   "TPM_RC_RETRY (0x922)",
		0x1FF:   "TPM_RC unknown (0x1FF)",
		0x9000B: "TPM_RC unknown (0x9000B)",
	} {
		if got := rc.String(); got != want {
			t.Errorf("RC(0x%X) = %q, want %q", uint32(rc), got, want)
		}
	}
	e := &Error{Command: CCNVWrite, Index: 0x01500000, Code: RCNVLocked}
	if want := "tpm2: NV_Write 0x01500000: TPM_RC_NV_LOCKED (0x148)"; e.Error() != want {
		t.Errorf("Error() = %q, want %q", e, want)
	}
	// TPM_RC_HANDLE is "not defined" only on an NV index's handle.
	u := &Error{Command: CCNVUndefineSpace, Index: DefaultFloorIndex, Code: 0x18B, handles: []Handle{HandleOwner, DefaultFloorIndex}}
	if errors.Is(u, ErrIndexUndefined) {
		t.Error("TPM_RC_HANDLE on the owner handle matches ErrIndexUndefined")
	}
	u.Code = 0x28B
	if !errors.Is(u, ErrIndexUndefined) {
		t.Error("TPM_RC_HANDLE on the index handle does not match ErrIndexUndefined")
	}
}

func TestNames(t *testing.T) {
	for _, cc := range []CC{CCNVUndefineSpace, CCNVDefineSpace, CCNVWrite, CCNVWriteLock, CCStartup, CCNVRead, CCNVReadPublic} {
		if strings.HasPrefix(cc.String(), "CC(") {
			t.Errorf("command 0x%X has no name", uint32(cc))
		}
	}
	for _, rc := range []RC{RCSuccess, RCInitialize, RCFailure, RCNVRange, RCNVSize, RCNVLocked, RCNVAuthorization,
		RCNVUninitialized, RCNVSpace, RCNVDefined, RCAttributes, RCValue, RCHandle, RCAuthFail, RCSize, RCBadAuth,
		RCYielded, RCTesting, RCNVRate, RCLockout, RCRetry, RCNVUnavailable} {
		if strings.Contains(rc.String(), "unknown") {
			t.Errorf("response code 0x%X has no name", uint32(rc))
		}
	}
	for bit := 0; bit < 32; bit++ {
		a := NVAttr(1) << bit
		if a&NVTypeMask != 0 || (bit >= 20 && bit <= 24) || bit == 8 || bit == 9 {
			continue // TPM_NT, reserved
		}
		if s := a.String(); strings.HasPrefix(s, "0x") {
			t.Errorf("attribute bit %d has no name", bit)
		}
	}
	if got, want := FloorAttributes.String(), "OWNERWRITE|AUTHWRITE|WRITE_STCLEAR|OWNERREAD|AUTHREAD|NO_DA"; got != want {
		t.Errorf("FloorAttributes = %s, want %s", got, want)
	}
	if got, want := (NVAttr(0x10) | NVOwnerRead | 1<<21).String(), "OWNERREAD|NT=1|0x200000"; got != want {
		t.Errorf("attributes = %s, want %s", got, want)
	}
}

func TestParseFloor(t *testing.T) {
	for _, v := range []string{"1", "1.2.3-rc.1", strings.Repeat("z", MaxFloorLen)} {
		if got, err := parseFloor(floorBytes(v)); err != nil || got != v {
			t.Errorf("parseFloor(floorBytes(%q)) = %q, %v", v, got, err)
		}
	}
	for name, b := range map[string][]byte{
		"short": floorBytes("1")[:floorSize-1], "long": append(floorBytes("1"), 0),
		"zero length": make([]byte, floorSize), "length 65": append([]byte{0, 65}, make([]byte, 64)...),
		"length 0xFFFF": append([]byte{0xFF, 0xFF}, make([]byte, 64)...),
		"tail":          append(floorBytes("1")[:floorSize-1], 1),
	} {
		if v, err := parseFloor(b); err == nil {
			t.Errorf("parseFloor, %s: %q, no error", name, v)
		}
	}
}

// FuzzResponse feeds arbitrary bytes to each command as the TPM's
// response: nothing panics, and a Floor read returns a value that its
// own Write could have stored, or an error.
func FuzzResponse(f *testing.F) {
	f.Add(rsp(RCSuccess, false, floorPublic(NVWritten)), rsp(RCSuccess, true, append([]byte{0, floorSize}, floorBytes("1.2.3")...)))
	f.Add(rsp(RCSuccess, false, floorPublic(0)), rsp(RCSuccess, true, nil))
	f.Add(rsp(0x18B, false, nil), rsp(RCNVLocked, false, nil))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		tp := newDevice(&fakeTPM{rsp: [][]byte{a, b}})
		v, ok, err := (&Floor{TPM: tp}).Read()
		if err == nil && ok && (len(v) == 0 || len(v) > MaxFloorLen) {
			t.Fatalf("Read = %q", v)
		}
		if err != nil && ok {
			t.Fatal("ok with an error")
		}
		for _, run := range []func(*TPM) error{
			func(t *TPM) error { _, err := t.NVReadPublic(DefaultFloorIndex); return err },
			func(t *TPM) error {
				d, err := t.NVRead(DefaultFloorIndex, 0, 5)
				if err == nil && len(d) != 5 {
					panic("NVRead returned the wrong size")
				}
				return err
			},
			func(t *TPM) error { return t.NVWrite(DefaultFloorIndex, 0, []byte("x")) },
			func(t *TPM) error { return (&Floor{TPM: t}).Write("1.0") },
			func(t *TPM) error { return (&Floor{TPM: t}).Lock() },
		} {
			run(newDevice(&fakeTPM{rsp: [][]byte{a, b, a}}))
		}
	})
}

// TestFloorDefineRace: an index defined between Write's NV_ReadPublic and
// its NV_DefineSpace is checked as found.
func TestFloorDefineRace(t *testing.T) {
	undefined, defined := rsp(0x18B, false, nil), rsp(RCNVDefined, false, nil)
	foreign := append(marshalNVPublic(NVPublic{Index: DefaultFloorIndex, NameAlg: AlgSHA256, Attributes: FloorAttributes, Size: 32}), 0, 0)
	f := &fakeTPM{rsp: [][]byte{undefined, defined, rsp(RCSuccess, false, foreign)}}
	if err := (&Floor{TPM: newDevice(f)}).Write("1"); !errors.Is(err, ErrNotFloor) {
		t.Fatalf("Write over a foreign index defined meanwhile: %v, want ErrNotFloor", err)
	}
	f = &fakeTPM{rsp: [][]byte{undefined, defined, rsp(RCSuccess, false, floorPublic(0)), rsp(RCSuccess, true, nil)}}
	if err := (&Floor{TPM: newDevice(f)}).Write("1"); err != nil {
		t.Fatalf("Write over a floor index defined meanwhile: %v", err)
	}
	if len(f.cmds) != 4 || !bytes.Equal(f.cmds[3][6:10], []byte{0, 0, 1, 0x37}) {
		t.Fatalf("commands %x, want the last an NV_Write", f.cmds)
	}
}
