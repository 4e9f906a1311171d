package tpm2

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The NV commands authorize with a password session and an empty
// password: NV_DefineSpace and NV_UndefineSpace as the owner hierarchy,
// the others as the index itself (AUTHREAD, AUTHWRITE).

// Startup sends TPM2_Startup(TPM_SU_CLEAR), a TPM Reset, as firmware does
// at power-on; a TPM already started is not an error. Only an emulator
// needs it.
func (t *TPM) Startup() error {
	_, err := t.run(&command{cc: CCStartup, params: []byte{0, 0}})
	var e *Error
	if errors.As(err, &e) && e.Code == RCInitialize {
		return nil
	}
	return err
}

// NVReadPublic returns an index's definition; an index that is not
// defined is an error matching ErrIndexUndefined.
func (t *TPM) NVReadPublic(index Handle) (NVPublic, error) {
	params, err := t.run(&command{cc: CCNVReadPublic, index: index, handles: []Handle{index}})
	if err != nil {
		return NVPublic{}, err
	}
	// TPM2B_NV_PUBLIC nvPublic, TPM2B_NAME nvName.
	r := reader{b: params}
	pr := reader{b: r.sized()}
	r.sized()
	if err := r.done(); err != nil {
		return NVPublic{}, &malformedError{cmdName(CCNVReadPublic, index), fmt.Errorf("parameters: %w", err)}
	}
	pub, err := parseNVPublic(&pr)
	if err != nil {
		return NVPublic{}, &malformedError{cmdName(CCNVReadPublic, index), fmt.Errorf("nvPublic: %w", err)}
	}
	if pub.Index != index {
		return NVPublic{}, &malformedError{cmdName(CCNVReadPublic, index), fmt.Errorf("index %s, asked for %s", pub.Index, index)}
	}
	return pub, nil
}

// parseNVPublic reads a TPMS_NV_PUBLIC that fills r.
func parseNVPublic(r *reader) (NVPublic, error) {
	var p NVPublic
	p.Index = Handle(r.u32())
	p.NameAlg = Alg(r.u16())
	p.Attributes = NVAttr(r.u32())
	if pol := r.sized(); len(pol) > 0 {
		p.AuthPolicy = append([]byte(nil), pol...)
	}
	p.Size = r.u16()
	return p, r.done()
}

// marshalNVPublic is pub as a TPM2B_NV_PUBLIC.
func marshalNVPublic(pub NVPublic) []byte {
	b := make([]byte, 2, 16+len(pub.AuthPolicy))
	b = binary.BigEndian.AppendUint32(b, uint32(pub.Index))
	b = binary.BigEndian.AppendUint16(b, uint16(pub.NameAlg))
	b = binary.BigEndian.AppendUint32(b, uint32(pub.Attributes))
	b = binary.BigEndian.AppendUint16(b, uint16(len(pub.AuthPolicy)))
	b = append(b, pub.AuthPolicy...)
	b = binary.BigEndian.AppendUint16(b, pub.Size)
	binary.BigEndian.PutUint16(b, uint16(len(b)-2))
	return b
}

// NVDefineSpace defines an index in the owner hierarchy (empty owner
// auth) with an empty auth value of its own. An index that exists is an
// error matching ErrIndexDefined.
func (t *TPM) NVDefineSpace(pub NVPublic) error {
	if !pub.Index.IsNV() {
		return fmt.Errorf("tpm2: NV_DefineSpace %s: not an NV index handle", pub.Index)
	}
	if len(pub.AuthPolicy) > 64 {
		return fmt.Errorf("tpm2: NV_DefineSpace %s: auth policy of %d bytes", pub.Index, len(pub.AuthPolicy))
	}
	// TPM2B_AUTH auth (empty), TPM2B_NV_PUBLIC publicInfo.
	params := append([]byte{0, 0}, marshalNVPublic(pub)...)
	_, err := t.run(&command{cc: CCNVDefineSpace, index: pub.Index, handles: []Handle{HandleOwner}, auth: true, params: params})
	return err
}

// NVUndefineSpace deletes an index, with owner auth.
func (t *TPM) NVUndefineSpace(index Handle) error {
	_, err := t.run(&command{cc: CCNVUndefineSpace, index: index, handles: []Handle{HandleOwner, index}, auth: true})
	return err
}

// NVWrite writes data at offset into the index. A write-locked index is
// an error matching ErrNVLocked.
func (t *TPM) NVWrite(index Handle, offset uint16, data []byte) error {
	if len(data) > maxMessage-64 {
		return fmt.Errorf("tpm2: NV_Write %s: %d bytes is more than a command holds", index, len(data))
	}
	// TPM2B_MAX_NV_BUFFER data, UINT16 offset.
	params := binary.BigEndian.AppendUint16(nil, uint16(len(data)))
	params = append(params, data...)
	params = binary.BigEndian.AppendUint16(params, offset)
	_, err := t.run(&command{cc: CCNVWrite, index: index, handles: []Handle{index, index}, auth: true, params: params})
	return err
}

// NVRead reads size bytes at offset from the index. An index never
// written is an error matching ErrUninitialized.
func (t *TPM) NVRead(index Handle, offset, size uint16) ([]byte, error) {
	// UINT16 size, UINT16 offset.
	params := binary.BigEndian.AppendUint16(nil, size)
	params = binary.BigEndian.AppendUint16(params, offset)
	rsp, err := t.run(&command{cc: CCNVRead, index: index, handles: []Handle{index, index}, auth: true, params: params})
	if err != nil {
		return nil, err
	}
	// TPM2B_MAX_NV_BUFFER data.
	r := reader{b: rsp}
	data := r.sized()
	if err := r.done(); err != nil {
		return nil, &malformedError{cmdName(CCNVRead, index), fmt.Errorf("parameters: %w", err)}
	}
	if len(data) != int(size) {
		return nil, &malformedError{cmdName(CCNVRead, index), fmt.Errorf("%d bytes, asked for %d", len(data), size)}
	}
	return append([]byte(nil), data...), nil
}

// NVWriteLock locks the index against writes: until the next TPM Reset or
// Restart if it has NVWriteSTClear, for good if it has NVWriteDefine.
func (t *TPM) NVWriteLock(index Handle) error {
	_, err := t.run(&command{cc: CCNVWriteLock, index: index, handles: []Handle{index, index}, auth: true})
	return err
}
