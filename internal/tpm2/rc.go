package tpm2

import (
	"errors"
	"fmt"
)

// Sentinel errors. A TPM response code matches one of these with errors.Is.
var (
	// ErrNVLocked: the index is write-locked (TPM_RC_NV_LOCKED).
	ErrNVLocked = errors.New("tpm2: NV index locked")
	// ErrIndexUndefined: no NV index has that handle (TPM_RC_HANDLE on
	// the index's handle).
	ErrIndexUndefined = errors.New("tpm2: NV index not defined")
	// ErrIndexDefined: NV_DefineSpace of an index that exists
	// (TPM_RC_NV_DEFINED).
	ErrIndexDefined = errors.New("tpm2: NV index already defined")
	// ErrUninitialized: the index was never written (TPM_RC_NV_UNINITIALIZED).
	ErrUninitialized = errors.New("tpm2: NV index not written")
	// ErrMalformed: a response the TPM sent does not parse.
	ErrMalformed = errors.New("tpm2: malformed response")
)

// RC is a TPM_RC response code (TPM 2.0 Part 2, 6.6).
type RC uint32

// Response codes kiln tells apart. Format-one codes (bit 7 set) are listed
// without their handle, session or parameter number; RC.Base removes it.
const (
	RCSuccess         RC = 0x000
	RCInitialize      RC = 0x100
	RCFailure         RC = 0x101
	RCNVRange         RC = 0x146
	RCNVSize          RC = 0x147
	RCNVLocked        RC = 0x148
	RCNVAuthorization RC = 0x149
	RCNVUninitialized RC = 0x14A
	RCNVSpace         RC = 0x14B
	RCNVDefined       RC = 0x14C
	RCAttributes      RC = 0x082
	RCValue           RC = 0x084
	RCHandle          RC = 0x08B
	RCAuthFail        RC = 0x08E
	RCSize            RC = 0x095
	RCBadAuth         RC = 0x0A2
	RCYielded         RC = 0x908
	RCTesting         RC = 0x90A
	RCNVRate          RC = 0x920
	RCLockout         RC = 0x921
	RCRetry           RC = 0x922
	RCNVUnavailable   RC = 0x923
)

// rcNames holds the names of the TPM 2.0 response codes (Part 2, table 16),
// without the TPM_RC_ prefix, by base code.
var rcNames = map[RC]string{
	0x000: "SUCCESS", 0x01E: "BAD_TAG",
	// format zero, TPM 2.0 (RC_VER1)
	0x100: "INITIALIZE", 0x101: "FAILURE", 0x103: "SEQUENCE", 0x10B: "PRIVATE",
	0x119: "HMAC", 0x120: "DISABLED", 0x121: "EXCLUSIVE", 0x124: "AUTH_TYPE",
	0x125: "AUTH_MISSING", 0x126: "POLICY", 0x127: "PCR", 0x128: "PCR_CHANGED",
	0x12D: "UPGRADE", 0x12E: "TOO_MANY_CONTEXTS", 0x12F: "AUTH_UNAVAILABLE",
	0x130: "REBOOT", 0x131: "UNBALANCED", 0x142: "COMMAND_SIZE",
	0x143: "COMMAND_CODE", 0x144: "AUTHSIZE", 0x145: "AUTH_CONTEXT",
	0x146: "NV_RANGE", 0x147: "NV_SIZE", 0x148: "NV_LOCKED",
	0x149: "NV_AUTHORIZATION", 0x14A: "NV_UNINITIALIZED", 0x14B: "NV_SPACE",
	0x14C: "NV_DEFINED", 0x150: "BAD_CONTEXT", 0x151: "CPHASH", 0x152: "PARENT",
	0x153: "NEEDS_TEST", 0x154: "NO_RESULT", 0x155: "SENSITIVE",
	// format one (RC_FMT1)
	0x081: "ASYMMETRIC", 0x082: "ATTRIBUTES", 0x083: "HASH", 0x084: "VALUE",
	0x085: "HIERARCHY", 0x087: "KEY_SIZE", 0x088: "MGF", 0x089: "MODE",
	0x08A: "TYPE", 0x08B: "HANDLE", 0x08C: "KDF", 0x08D: "RANGE",
	0x08E: "AUTH_FAIL", 0x08F: "NONCE", 0x090: "PP", 0x092: "SCHEME",
	0x095: "SIZE", 0x096: "SYMMETRIC", 0x097: "TAG", 0x098: "SELECTOR",
	0x09A: "INSUFFICIENT", 0x09B: "SIGNATURE", 0x09C: "KEY", 0x09D: "POLICY_FAIL",
	0x09F: "INTEGRITY", 0x0A0: "TICKET", 0x0A1: "RESERVED_BITS",
	0x0A2: "BAD_AUTH", 0x0A3: "EXPIRED", 0x0A4: "POLICY_CC", 0x0A5: "BINDING",
	0x0A6: "CURVE", 0x0A7: "ECC_POINT",
	// warnings (RC_WARN)
	0x901: "CONTEXT_GAP", 0x902: "OBJECT_MEMORY", 0x903: "SESSION_MEMORY",
	0x904: "MEMORY", 0x905: "SESSION_HANDLES", 0x906: "OBJECT_HANDLES",
	0x907: "LOCALITY", 0x908: "YIELDED", 0x909: "CANCELED", 0x90A: "TESTING",
	0x920: "NV_RATE", 0x921: "LOCKOUT", 0x922: "RETRY", 0x923: "NV_UNAVAILABLE",
	0x97F: "NOT_USED",
}

// fmt1 reports whether rc is a format-one code (bit 7), one that can name
// a handle, session or parameter.
func (rc RC) fmt1() bool { return rc&0xFFFF0000 == 0 && rc&0x080 != 0 }

// Base is rc without the handle, session or parameter number a format-one
// code carries: 0x18B (TPM_RC_HANDLE on handle 1) has base 0x08B.
func (rc RC) Base() RC {
	if rc.fmt1() {
		return rc & 0x0BF
	}
	return rc
}

// Handle is the 1-based position of the command handle a format-one code
// names, or 0 if it names none.
func (rc RC) Handle() int {
	if !rc.fmt1() || rc&0x040 != 0 || rc&0x800 != 0 {
		return 0
	}
	return int(rc>>8) & 7
}

// String names rc as the specification does, with what a format-one code
// points at: "TPM_RC_NV_LOCKED (0x148)", "TPM_RC_HANDLE, handle 1 (0x18B)".
func (rc RC) String() string {
	name, ok := rcNames[rc.Base()]
	if !ok || rc&0xFFFF0000 != 0 {
		return fmt.Sprintf("TPM_RC unknown (0x%X)", uint32(rc))
	}
	where := ""
	if rc.fmt1() {
		n := int(rc>>8) & 0xF
		switch {
		case rc&0x040 != 0:
			where = fmt.Sprintf(", parameter %d", n)
		case rc&0x800 != 0:
			where = fmt.Sprintf(", session %d", n&7)
		case n != 0:
			where = fmt.Sprintf(", handle %d", n)
		}
	}
	return fmt.Sprintf("TPM_RC_%s%s (0x%X)", name, where, uint32(rc))
}

// Error is a TPM's refusal of a command.
type Error struct {
	Command CC     // the command refused
	Index   Handle // the NV index the command was about, or 0
	Code    RC     // the TPM's response code

	handles []Handle // the command's handles, to resolve Code.Handle()
}

// Error names the command, the index and the code:
// "tpm2: NV_Write 0x01004B4C: TPM_RC_NV_LOCKED (0x148)".
func (e *Error) Error() string {
	return fmt.Sprintf("tpm2: %s: %s", cmdName(e.Command, e.Index), e.Code)
}

// Is matches ErrNVLocked, ErrIndexDefined, ErrUninitialized, and
// ErrIndexUndefined when the handle the code names is an NV index.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNVLocked:
		return e.Code == RCNVLocked
	case ErrIndexDefined:
		return e.Code == RCNVDefined
	case ErrUninitialized:
		return e.Code == RCNVUninitialized
	case ErrIndexUndefined:
		n := e.Code.Handle()
		return e.Code.Base() == RCHandle && n >= 1 && n <= len(e.handles) && e.handles[n-1].IsNV()
	}
	return false
}
