package sign

import "errors"

// Errors a caller can tell apart with errors.Is.
var (
	// ErrBadSignature: the signature is well formed but does not verify
	// with the key (a different key, or a changed file or signature).
	ErrBadSignature = errors.New("sign: signature does not verify")
	// ErrNoSignature: the signature file does not exist.
	ErrNoSignature = errors.New("sign: signature file missing")
	// ErrMalformedSignature: the signature file is empty, not base64, or
	// not a signature of the key's type (wrong length, not DER).
	ErrMalformedSignature = errors.New("sign: malformed signature")

	// ErrPassphraseRequired: the private key is encrypted and no
	// passphrase was given.
	ErrPassphraseRequired = errors.New("sign: private key is encrypted and no passphrase was given")
	// ErrWrongPassphrase: the private key could not be decrypted with the
	// passphrase given.
	ErrWrongPassphrase = errors.New("sign: cannot decrypt private key: wrong passphrase or damaged key")
	// ErrInvalidKey: the key file or variable holds no key kiln can use.
	ErrInvalidKey = errors.New("sign: invalid key")
	// ErrUnsupportedKey: the key's algorithm or size is not supported.
	ErrUnsupportedKey = errors.New("sign: unsupported key")
	// ErrUnknownScheme: the key reference has a URI scheme kiln does not
	// know (see the package documentation for the ones it does).
	ErrUnknownScheme = errors.New("sign: unknown key reference scheme")
	// ErrExists: keygen would overwrite a file.
	ErrExists = errors.New("sign: file exists")
	// ErrTooLarge: a file is too large to sign or verify with pure Ed25519.
	ErrTooLarge = errors.New("sign: file too large for pure Ed25519")
)
