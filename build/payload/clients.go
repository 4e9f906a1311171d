package payload

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"fmt"
	"slices"
	"strings"
)

// VerityTree says how a payload delivers the new partition's dm-verity
// hash tree.
type VerityTree uint8

const (
	// VerityTreeInPayload: the tree's blocks are data like any other,
	// written by the payload's operations (and recorded in kiln's own
	// fields, so kiln's applier checks the tree). Every client applies it.
	VerityTreeInPayload VerityTree = iota
	// VerityTreeByClient: the tree is left out and described by upstream's
	// hash_tree_* fields; the client computes it (Android's update_engine
	// does, with its HashTreeBuilder). Upstream allows those fields from
	// minor version 6 on ([VerityMinorVersion]), so only deltas can use it
	// (a full payload is minor version 0).
	VerityTreeByClient
)

var verityTreeNames = [...]string{"payload", "client"}

func (v VerityTree) String() string {
	if int(v) < len(verityTreeNames) {
		return verityTreeNames[v]
	}
	return fmt.Sprintf("VerityTree(%d)", uint8(v))
}

// ParseVerityTree parses a VerityTree name ("payload", "client").
func ParseVerityTree(s string) (VerityTree, error) {
	for i, n := range verityTreeNames {
		if n == s {
			return VerityTree(i), nil
		}
	}
	return 0, fmt.Errorf("payload: unknown verity tree mode %q (want payload or client)", s)
}

// Client is a family of payload appliers; each reads a different subset
// of the format. [Client.Check] tells whether a payload is one it
// applies, and [Client.CheckKey] whether it can check a key's signatures.
type Client uint8

// The client families kiln knows.
const (
	// ClientAndroid12 is update_engine as of the android-12.1 release and
	// its reference checker, paycheck.py: minor versions 0 and 2 to 7;
	// REPLACE, REPLACE_BZ, REPLACE_XZ, SOURCE_COPY, SOURCE_BSDIFF, ZERO,
	// DISCARD, BROTLI_BSDIFF, PUFFDIFF (each from its minor version); it
	// computes the verity tree when the hash_tree_* fields are set (minor
	// 6 and up); its xz decoder takes x86 BCJ (update_engine's generator
	// has written it for x86 ELF files since 2018); it checks 256-byte
	// RSA-2048 signatures. The default.
	ClientAndroid12 Client = iota
	// ClientNoVerityWriter is update_engine built without a verity writer
	// (ChromiumOS-style clients): as ClientAndroid12, but it ignores the
	// hash_tree_* fields, so the tree must be in the payload, and its
	// generator never writes xz's x86 BCJ filter, so kiln does not either.
	ClientNoVerityWriter
	// ClientZstd is update_engine that also knows operation ZSTD (14), as
	// newer and OEM Android builds do (android-12.1's proto has no such
	// value).
	ClientZstd
	// ClientKiln is `kiln payload apply`: everything kiln writes, signed
	// with any key kiln verifies.
	ClientKiln
)

type clientRules struct {
	name, desc   string
	maxMinor     uint32
	zstd         bool // reads ZSTD operations
	computesTree bool // computes the verity tree from hash_tree_* fields
	x86          bool // its xz decoder takes the x86 BCJ filter
	rsa2048      bool // checks only 256-byte RSA (PKCS#1 v1.5) signatures
	kiln         bool // kiln's own applier
}

var clients = [...]clientRules{
	ClientAndroid12:      {"android-12", "update_engine android-12.1 and its paycheck.py", 7, false, true, true, true, false},
	ClientNoVerityWriter: {"chromiumos", "update_engine without a verity writer (ChromiumOS-style)", 7, false, false, false, true, false},
	ClientZstd:           {"android-zstd", "update_engine that reads ZSTD operations (newer and OEM Android)", 9, true, true, true, true, false},
	ClientKiln:           {"kiln", "kiln payload apply", 9, true, true, true, false, true},
}

// Clients lists the client families, the default first.
var Clients = []Client{ClientAndroid12, ClientNoVerityWriter, ClientZstd, ClientKiln}

func (c Client) String() string {
	if int(c) < len(clients) {
		return clients[c].name
	}
	return fmt.Sprintf("Client(%d)", uint8(c))
}

// Description says which appliers the family stands for.
func (c Client) Description() string {
	if int(c) < len(clients) {
		return clients[c].desc
	}
	return c.String()
}

// ParseClient parses a client family name ("android-12", "chromiumos",
// "android-zstd", "kiln").
func ParseClient(s string) (Client, error) {
	for _, c := range Clients {
		if c.String() == s {
			return c, nil
		}
	}
	names := make([]string, len(Clients))
	for i, c := range Clients {
		names[i] = c.String()
	}
	return 0, fmt.Errorf("payload: unknown client %q (want %s)", s, strings.Join(names, ", "))
}

// opMinMinor is the minor version from which update_engine allows each
// operation in a delta (payload_generation_config.cc OperationAllowed).
// The REPLACE family is allowed at every version, full payloads included;
// ZSTD has no minor version of its own.
var opMinMinor = map[OpType]uint32{
	OpSourceCopy:     2,
	OpSourceBsdiff:   2,
	OpZero:           4,
	OpDiscard:        4,
	OpBrotliBsdiff:   4,
	OpPuffdiff:       5,
	OpZucchini:       8,
	OpLz4diffBsdiff:  9,
	OpLz4diffPuffdif: 9,
}

// Minor versions at which upstream features start.
const (
	// SourceHashMinorVersion requires src_sha256_hash on source operations.
	SourceHashMinorVersion = 3
	// NoBsdiffLengthsMinorVersion drops src_length and dst_length from
	// SOURCE_BSDIFF (update_engine's generator sets them only below it; the
	// android-12.1 checker rejects them from it on).
	NoBsdiffLengthsMinorVersion = 4
	// VerityMinorVersion allows the hash_tree_* fields
	// (kVerityMinorPayloadVersion).
	VerityMinorVersion = 6
)

// opAllowed reports whether op type t may appear in a payload of the
// given minor version (0: full).
func opAllowed(t OpType, minor uint32) bool {
	switch t {
	case OpReplace, OpReplaceBZ, OpReplaceXZ, OpZstd:
		return true
	case OpMove, OpBsdiff:
		return false
	}
	m, ok := opMinMinor[t]
	return ok && minor != FullMinorVersion && minor >= m
}

// Features are what a payload uses of the format, as far as clients
// differ on them.
type Features struct {
	MinorVersion uint32
	Ops          []OpType // the operation types present, sorted
	HashTree     bool     // upstream hash_tree_* fields: the client computes the tree
	// XZX86 is set when a REPLACE_XZ operation's data goes through xz's
	// x86 BCJ filter.
	XZX86 bool
	// SignatureSizes are the sizes of the payload's signatures (padded;
	// none when unsigned).
	SignatureSizes []int
}

// FeaturesOf lists what p uses.
func FeaturesOf(p *Payload) Features {
	f := Features{MinorVersion: p.Manifest.GetMinorVersion()}
	for _, pu := range p.Manifest.Partitions {
		if pu.HashTreeExtent != nil || pu.HashTreeDataExtent != nil {
			f.HashTree = true
		}
		for _, op := range pu.Operations {
			t := OpType(op.GetType())
			if !slices.Contains(f.Ops, t) {
				f.Ops = append(f.Ops, t)
			}
			if t == OpReplaceXZ && !f.XZX86 {
				f.XZX86 = p.xzX86(op)
			}
		}
	}
	slices.Sort(f.Ops)
	if p.payloadSignatures != nil {
		for _, s := range p.payloadSignatures.Signatures {
			f.SignatureSizes = append(f.SignatureSizes, len(s.Data))
		}
	}
	return f
}

// Check returns nil when clients of family c apply a payload with
// features f, or an error that says why not.
func (c Client) Check(f Features) error {
	if int(c) >= len(clients) {
		return fmt.Errorf("payload: unknown client %v", c)
	}
	r := clients[c]
	if f.MinorVersion != FullMinorVersion && (f.MinorVersion < 2 || f.MinorVersion > r.maxMinor) {
		return fmt.Errorf("minor version %d (it reads 0 and 2 to %d)", f.MinorVersion, r.maxMinor)
	}
	for _, t := range f.Ops {
		switch {
		case t == OpZstd && !r.zstd:
			return fmt.Errorf("operation %v (it knows no such type)", t)
		case r.kiln && !t.applicable():
			return fmt.Errorf("operation %v (kiln does not apply it)", t)
		case !opAllowed(t, f.MinorVersion):
			return fmt.Errorf("operation %v at minor version %d", t, f.MinorVersion)
		}
	}
	if f.XZX86 && !r.x86 {
		return fmt.Errorf("REPLACE_XZ data behind xz's x86 BCJ filter (it is not known to decode it)")
	}
	if f.HashTree && !r.computesTree {
		return fmt.Errorf("hash_tree_* fields (it does not compute the verity tree, so the partition hash fails)")
	}
	if r.rsa2048 {
		for _, n := range f.SignatureSizes {
			if n != 256 {
				return fmt.Errorf("a %d-byte signature (it checks 256-byte RSA-2048 signatures)", n)
			}
		}
	}
	return nil
}

// CheckKey returns nil when clients of family c can check signatures made
// with the private key of pub, or an error that says why not.
func (c Client) CheckKey(pub crypto.PublicKey) error {
	if int(c) >= len(clients) {
		return fmt.Errorf("payload: unknown client %v", c)
	}
	if !clients[c].rsa2048 {
		return nil
	}
	var what string
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.Size() == 256 {
			return nil
		}
		what = fmt.Sprintf("a %d-bit RSA key (%d-byte signatures)", k.N.BitLen(), k.Size())
	case *ecdsa.PublicKey:
		what = "an ECDSA " + k.Curve.Params().Name + " key"
	case ed25519.PublicKey:
		what = "an Ed25519 key"
	default:
		what = fmt.Sprintf("a %T key", pub)
	}
	return fmt.Errorf("payload: %s clients (%s) check only RSA-2048 signatures (256 bytes, PKCS#1 v1.5); this is %s", c, c.Description(), what)
}

// DecodesX86 reports whether clients of family c decode REPLACE_XZ data
// behind xz's x86 BCJ filter.
func (c Client) DecodesX86() bool { return int(c) < len(clients) && clients[c].x86 }

// CheckConfig returns nil when the payload cfg plans is one that clients
// of family c apply (its key aside), or an error that names the setting.
func (c Client) CheckConfig(cfg *Config) error {
	if int(c) >= len(clients) {
		return fmt.Errorf("payload: unknown client %v", c)
	}
	r := clients[c]
	if (cfg.Compression == CompressionZstd || cfg.Compression == CompressionAuto) && !r.zstd {
		return fmt.Errorf("payload: compression %v makes ZSTD operations, which %s clients (%s) cannot read", cfg.Compression, c, r.desc)
	}
	if cfg.X86Filter && !r.x86 {
		return fmt.Errorf("payload: %s clients (%s) are not known to decode xz's x86 BCJ filter", c, r.desc)
	}
	if cfg.VerityTree == VerityTreeByClient && !r.computesTree {
		return fmt.Errorf("payload: %s clients (%s) do not compute the verity tree: it must be in the payload", c, r.desc)
	}
	return nil
}
