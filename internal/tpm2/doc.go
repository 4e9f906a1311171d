// Package tpm2 is the narrow TPM 2.0 client kiln's boot path needs: an
// ordinary NV index defined, read, written and write-locked with password
// sessions, and on top of it a Floor, a version floor that only the boot
// path raises and that an offline edit of the disk cannot lower.
//
// It speaks TPM 2.0 Part 3 itself, over a character device (Open:
// /dev/tpmrm0, else /dev/tpm0) or a byte stream such as swtpm's TCP server
// port (NewConn), in pure Go, so it builds with CGO_ENABLED=0. Every
// length in a response is checked against the bytes there are; a refusal
// is an *Error naming the command, the index and the TPM_RC, e.g.
// "tpm2: NV_Write 0x01004B4C: TPM_RC_NV_LOCKED (0x148)".
//
// Why not github.com/google/go-tpm (v0.9.8, the newest the module proxy
// serves): measured in static, stripped (-s -w) CGO_ENABLED=0 amd64
// binaries that define, read, write and lock an index, it adds 1.12 MiB
// to a 1.52 MiB program (+74 %) and 284 KiB to kiln (0.8 %), with one
// module and five packages (tpm2, its transport and linuxtpm, legacy/tpm2,
// tpmutil); this package adds 140 KiB and 44 KiB (0.13 %), no module, in
// 690 lines of code. In kiln the library's bytes are cheap, but most of
// this package would have been needed around it: go-tpm's TCP transport
// speaks the Microsoft simulator's framing, not swtpm's raw one; its
// errors do not carry the index; its NV_Read answers a response with no
// parameters with success and no data, where the floor needs every length
// checked; and the floor itself. Seven commands of fixed layout did not
// justify a pre-1.0 dependency.
//
// The floor stops an offline edit of the disk, not a running attacker:
// with the owner auth empty, as TPMs ship, whoever can send the TPM
// commands (root on the booted system included, write-locked or not) can
// undefine the index and define it anew.
package tpm2
