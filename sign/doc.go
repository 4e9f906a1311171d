// Package sign creates signing keys, signs blobs and verifies blob
// signatures, offline.
//
// # Signature format
//
// A signature file (FILE.sig) holds one line: the standard base64 encoding of
// the raw signature bytes. What is signed depends on the key:
//
//   - ECDSA (P-256 from keygen; P-384 and P-521 keys load too): an ASN.1 DER
//     SEQUENCE{r, s} over the SHA-256 of the file.
//   - RSA (3072 bits from keygen; 2048 and up load): PKCS #1 v1.5 over the
//     SHA-256 DigestInfo of the file.
//   - Ed25519: pure Ed25519 (RFC 8032, not Ed25519ph) over the file's bytes.
//
// ECDSA and RSA files are hashed as a stream, so any size can be signed.
// Pure Ed25519 needs the whole message in memory: files larger than
// MaxEd25519Message are refused (ErrTooLarge). The manifests kiln signs are a
// few kilobytes.
//
// Other tools verify these signatures with the public key file (PEM, PKIX):
//
//	# ECDSA and RSA
//	base64 -d FILE.sig > FILE.sig.bin
//	openssl dgst -sha256 -verify key.pub -signature FILE.sig.bin FILE
//
//	# Ed25519 (openssl dgst cannot verify Ed25519; OpenSSL 3.0 or later)
//	base64 -d FILE.sig > FILE.sig.bin
//	openssl pkeyutl -verify -pubin -inkey key.pub -rawin -in FILE -sigfile FILE.sig.bin
//
//	# ECDSA and RSA; Ed25519 only where cosign verifies pure Ed25519
//	cosign verify-blob --key key.pub --signature FILE.sig --insecure-ignore-tlog FILE
//
// # Keys
//
// A key reference is one of
//
//   - a path to a PEM file: for signing, a PKCS #8 "PRIVATE KEY", an
//     "ENCRYPTED SIGSTORE PRIVATE KEY" (cosign's format: scrypt and
//     NaCl secretbox), an "ENCRYPTED PRIVATE KEY" (PKCS #8 encryption, as
//     openssl writes), or a SEC 1 / PKCS #1 key; for verifying, a "PUBLIC KEY"
//     (PKIX);
//   - env://VAR: the same PEM text held in the environment variable VAR;
//   - a KMS URI, awskms://, gcpkms://, azurekms:// or hashivault://, handled by
//     sigstore's KMS providers, which read their credentials from the usual
//     environment of each cloud SDK. KMS keys must be ECDSA P-256 with SHA-256
//     or RSA PKCS #1 v1.5 with SHA-256: SignFile checks each signature it gets
//     back against the key's public key, so a mismatched key (RSA-PSS, say)
//     fails at signing time, not at verification time.
//
// Errors never contain key material: they name the key by its reference and
// by its Fingerprint.
package sign
