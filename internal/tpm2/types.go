package tpm2

import (
	"fmt"
	"strings"
)

// CC is a TPM_CC command code (TPM 2.0 Part 2, 6.5).
type CC uint32

// The commands this package sends.
const (
	CCNVUndefineSpace CC = 0x122
	CCNVDefineSpace   CC = 0x12A
	CCNVWrite         CC = 0x137
	CCNVWriteLock     CC = 0x138
	CCStartup         CC = 0x144
	CCNVRead          CC = 0x14E
	CCNVReadPublic    CC = 0x169
)

var ccNames = map[CC]string{
	CCNVUndefineSpace: "NV_UndefineSpace",
	CCNVDefineSpace:   "NV_DefineSpace",
	CCNVWrite:         "NV_Write",
	CCNVWriteLock:     "NV_WriteLock",
	CCStartup:         "Startup",
	CCNVRead:          "NV_Read",
	CCNVReadPublic:    "NV_ReadPublic",
}

// String is the command's name in Part 3 without the TPM2_ prefix.
func (cc CC) String() string {
	if s, ok := ccNames[cc]; ok {
		return s
	}
	return fmt.Sprintf("CC(0x%X)", uint32(cc))
}

// Handle is a TPM_HANDLE: an NV index, a hierarchy, a session.
type Handle uint32

// Handles this package uses.
const (
	// HandleOwner is TPM_RH_OWNER, the owner (storage) hierarchy.
	HandleOwner Handle = 0x40000001
	// handlePassword is TPM_RS_PW, the password authorization session.
	handlePassword Handle = 0x40000009
)

// IsNV reports whether h is in the NV index range, 0x01000000–0x01FFFFFF.
func (h Handle) IsNV() bool { return h>>24 == 0x01 }

// String is the handle in hex, eight digits: "0x01004B4C".
func (h Handle) String() string { return fmt.Sprintf("0x%08X", uint32(h)) }

// Alg is a TPM_ALG_ID.
type Alg uint16

// Hash algorithms for an index's name.
const (
	AlgSHA1   Alg = 0x0004
	AlgSHA256 Alg = 0x000B
	AlgSHA384 Alg = 0x000C
	AlgSHA512 Alg = 0x000D
)

var algNames = map[Alg]string{AlgSHA1: "sha1", AlgSHA256: "sha256", AlgSHA384: "sha384", AlgSHA512: "sha512"}

// String is the algorithm's name as tpm2-tools spells it, or its number.
func (a Alg) String() string {
	if s, ok := algNames[a]; ok {
		return s
	}
	return fmt.Sprintf("Alg(0x%04X)", uint16(a))
}

// NVAttr is TPMA_NV, an NV index's attributes (TPM 2.0 Part 2, 13.4).
type NVAttr uint32

// The attributes. TPM_NT, the index type, is bits 4–7: zero is an
// ordinary index, the only type this package defines.
const (
	NVPPWrite        NVAttr = 1 << 0  // platform auth may write
	NVOwnerWrite     NVAttr = 1 << 1  // owner auth may write
	NVAuthWrite      NVAttr = 1 << 2  // the index's own auth value may write
	NVPolicyWrite    NVAttr = 1 << 3  // a policy session may write
	NVPolicyDelete   NVAttr = 1 << 10 // undefined only with the policy, by the platform
	NVWriteLocked    NVAttr = 1 << 11 // state: writes refused now
	NVWriteAll       NVAttr = 1 << 12 // a write must cover the whole index
	NVWriteDefine    NVAttr = 1 << 13 // NV_WriteLock locks until the index is deleted
	NVWriteSTClear   NVAttr = 1 << 14 // NV_WriteLock locks until TPM Reset or Restart
	NVGlobalLock     NVAttr = 1 << 15 // NV_GlobalWriteLock locks it too
	NVPPRead         NVAttr = 1 << 16 // platform auth may read
	NVOwnerRead      NVAttr = 1 << 17 // owner auth may read
	NVAuthRead       NVAttr = 1 << 18 // the index's own auth value may read
	NVPolicyRead     NVAttr = 1 << 19 // a policy session may read
	NVNoDA           NVAttr = 1 << 25 // failed auths do not count toward lockout
	NVOrderly        NVAttr = 1 << 26 // kept in RAM until an orderly shutdown
	NVClearSTClear   NVAttr = 1 << 27 // WRITTEN cleared on TPM Reset or Restart
	NVReadLocked     NVAttr = 1 << 28 // state: reads refused now
	NVWritten        NVAttr = 1 << 29 // state: written since defined
	NVPlatformCreate NVAttr = 1 << 30 // defined with platform auth
	NVReadSTClear    NVAttr = 1 << 31 // NV_ReadLock locks until TPM Reset or Restart

	// NVTypeMask covers TPM_NT, the index type.
	NVTypeMask NVAttr = 0xF << 4
	// NVState covers the attributes the TPM sets, not the definer.
	NVState = NVWriteLocked | NVReadLocked | NVWritten
)

var nvAttrNames = []struct {
	a    NVAttr
	name string
}{
	{NVPPWrite, "PPWRITE"}, {NVOwnerWrite, "OWNERWRITE"}, {NVAuthWrite, "AUTHWRITE"},
	{NVPolicyWrite, "POLICYWRITE"}, {NVPolicyDelete, "POLICY_DELETE"},
	{NVWriteLocked, "WRITELOCKED"}, {NVWriteAll, "WRITEALL"}, {NVWriteDefine, "WRITEDEFINE"},
	{NVWriteSTClear, "WRITE_STCLEAR"}, {NVGlobalLock, "GLOBALLOCK"}, {NVPPRead, "PPREAD"},
	{NVOwnerRead, "OWNERREAD"}, {NVAuthRead, "AUTHREAD"}, {NVPolicyRead, "POLICYREAD"},
	{NVNoDA, "NO_DA"}, {NVOrderly, "ORDERLY"}, {NVClearSTClear, "CLEAR_STCLEAR"},
	{NVReadLocked, "READLOCKED"}, {NVWritten, "WRITTEN"},
	{NVPlatformCreate, "PLATFORMCREATE"}, {NVReadSTClear, "READ_STCLEAR"},
}

// String lists the attributes as Part 2 names them, joined by '|', with a
// non-ordinary type as NT=n and reserved bits in hex.
func (a NVAttr) String() string {
	var parts []string
	rest := a
	for _, n := range nvAttrNames {
		if a&n.a != 0 {
			parts = append(parts, n.name)
			rest &^= n.a
		}
	}
	if nt := (a & NVTypeMask) >> 4; nt != 0 {
		parts = append(parts, fmt.Sprintf("NT=%d", nt))
		rest &^= NVTypeMask
	}
	if rest != 0 {
		parts = append(parts, fmt.Sprintf("0x%X", uint32(rest)))
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, "|")
}

// NVPublic is TPMS_NV_PUBLIC, an NV index's definition.
type NVPublic struct {
	Index      Handle
	NameAlg    Alg
	Attributes NVAttr
	AuthPolicy []byte // empty: no policy
	Size       uint16 // bytes of data
}
