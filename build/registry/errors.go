package registry

import (
	"errors"
	"fmt"
)

// Errors a caller can tell apart with errors.Is. They classify; the
// message is the wrapped error's own.
var (
	// ErrInput: the input is at fault — a bad reference, a directory that
	// is not a build, a file that is not a payload, an unknown format, an
	// artifact that is not kiln's.
	ErrInput = errors.New("registry: bad input")
	// ErrOutput: the output directory cannot take a pull.
	ErrOutput = errors.New("registry: bad output directory")
	// ErrVerify: a blob, the signature or a disk image did not verify.
	ErrVerify = errors.New("registry: verification failed")
	// ErrAuth: the registry refused the credentials (or there were none).
	ErrAuth = errors.New("registry: authentication failed")
	// ErrPlainHTTP: the registry speaks plain HTTP and Remote.PlainHTTP
	// is not set.
	ErrPlainHTTP = errors.New("registry: plain HTTP refused")
)

// kindError is err, classified as kind (one of the errors above).
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string        { return e.err.Error() }
func (e *kindError) Unwrap() error        { return e.err }
func (e *kindError) Is(target error) bool { return target == e.kind }

func classify(kind, err error) error { return &kindError{kind, err} }

func inputErrorf(format string, a ...any) error {
	return classify(ErrInput, fmt.Errorf(format, a...))
}

func verifyErrorf(format string, a ...any) error {
	return classify(ErrVerify, fmt.Errorf(format, a...))
}
