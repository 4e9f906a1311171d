// Package provenance writes what a build was made from as an in-toto
// Statement v1 with a SLSA Provenance v1 predicate, in a DSSE envelope
// signed with the release key (payloadType application/vnd.in-toto+json):
// the format `cosign verify-blob-attestation` and slsa-verifier read.
//
// The statement is plain Go structs through encoding/json, so that the
// same build gives the same bytes (in-toto's Go bindings are protobuf,
// whose JSON output is made unstable across builds on purpose). It holds
// no clock time: the build's only time is SOURCE_DATE_EPOCH, an
// internal parameter.
package provenance

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/kiln-os/kiln/sign"
)

// The types and URIs of the formats.
const (
	PayloadType   = "application/vnd.in-toto+json"
	StatementType = "https://in-toto.io/Statement/v1"
	PredicateType = "https://slsa.dev/provenance/v1"
	// BuildType names kiln's build: its externalParameters are the
	// recipe and the --set values, its internalParameters
	// SOURCE_DATE_EPOCH.
	BuildType = "https://github.com/kiln-os/kiln/buildtypes/image/v1"
	// BuilderID names the builder: kiln, run by whoever signs.
	BuilderID = "https://github.com/kiln-os/kiln"
	// File is the envelope's name in a build's output directory.
	File = "provenance.intoto.json"
)

// ResourceDescriptor names an artifact: a name or URI and its digests
// ("sha256" → hex).
type ResourceDescriptor struct {
	Name   string            `json:"name,omitempty"`
	URI    string            `json:"uri,omitempty"`
	Digest map[string]string `json:"digest,omitempty"`
}

// Statement is an in-toto Statement v1.
type Statement struct {
	Type          string               `json:"_type"`
	Subject       []ResourceDescriptor `json:"subject"`
	PredicateType string               `json:"predicateType"`
	Predicate     Provenance           `json:"predicate"`
}

// Provenance is a SLSA Provenance v1 predicate.
type Provenance struct {
	BuildDefinition BuildDefinition `json:"buildDefinition"`
	RunDetails      RunDetails      `json:"runDetails"`
}

// BuildDefinition is what the build was asked to do and what it took.
type BuildDefinition struct {
	BuildType            string               `json:"buildType"`
	ExternalParameters   ExternalParameters   `json:"externalParameters"`
	InternalParameters   InternalParameters   `json:"internalParameters"`
	ResolvedDependencies []ResourceDescriptor `json:"resolvedDependencies,omitempty"`
}

// ExternalParameters are the build's inputs from its caller.
type ExternalParameters struct {
	// Recipe is the recipe's file name, as given.
	Recipe string `json:"recipe"`
	// Set are the --set key=value overrides, in order.
	Set []string `json:"set,omitempty"`
}

// InternalParameters are kiln's own settings of the build.
type InternalParameters struct {
	SourceDateEpoch int64 `json:"SOURCE_DATE_EPOCH"`
}

// RunDetails says who built it.
type RunDetails struct {
	Builder Builder `json:"builder"`
}

// Builder is the builder's identity and version.
type Builder struct {
	ID      string            `json:"id"`
	Version map[string]string `json:"version,omitempty"`
}

// Envelope is a DSSE envelope.
type Envelope struct {
	PayloadType string      `json:"payloadType"`
	Payload     string      `json:"payload"` // standard base64
	Signatures  []Signature `json:"signatures"`
}

// Signature is one signature of an Envelope.
type Signature struct {
	KeyID string `json:"keyid"`
	Sig   string `json:"sig"` // standard base64
}

// PAE is DSSE's pre-authentication encoding of a payload: what is
// signed. "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, lengths in
// ASCII decimal.
func PAE(payloadType string, body []byte) []byte {
	var b bytes.Buffer
	b.WriteString("DSSEv1 ")
	b.WriteString(strconv.Itoa(len(payloadType)))
	b.WriteByte(' ')
	b.WriteString(payloadType)
	b.WriteByte(' ')
	b.WriteString(strconv.Itoa(len(body)))
	b.WriteByte(' ')
	b.Write(body)
	return b.Bytes()
}

// Marshal returns the statement's JSON: the envelope's payload.
func (s *Statement) Marshal() ([]byte, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	return b, nil
}

// Sign returns the DSSE envelope of s signed by signer (over the PAE of
// its JSON, as kiln signs a file: SHA-256 for RSA and ECDSA, the bytes
// themselves for Ed25519), as indented JSON.
func Sign(s *Statement, signer sign.Signer) ([]byte, error) {
	body, err := s.Marshal()
	if err != nil {
		return nil, err
	}
	sig, err := signer.Sign(bytes.NewReader(PAE(PayloadType, body)))
	if err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	env := Envelope{PayloadType: PayloadType, Payload: base64.StdEncoding.EncodeToString(body),
		Signatures: []Signature{{Sig: base64.StdEncoding.EncodeToString(sig)}}}
	out, err := json.MarshalIndent(env, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	return append(out, '\n'), nil
}

// maxEnvelope bounds what Verify reads.
const maxEnvelope = 16 << 20

// ErrEnvelope is wrapped by every error about an envelope that is not a
// signed in-toto statement of kiln's form.
var ErrEnvelope = errors.New("provenance: malformed envelope")

// Verify reads a DSSE envelope from r, checks that one of its signatures
// verifies with v over the PAE, and returns the statement it carries.
func Verify(r io.Reader, v sign.Verifier) (*Statement, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxEnvelope+1))
	if err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	if len(data) > maxEnvelope {
		return nil, fmt.Errorf("%w: over %d bytes", ErrEnvelope, maxEnvelope)
	}
	var env Envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEnvelope, err)
	}
	if env.PayloadType != PayloadType {
		return nil, fmt.Errorf("%w: payloadType %q, want %q", ErrEnvelope, env.PayloadType, PayloadType)
	}
	body, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %w", ErrEnvelope, err)
	}
	if len(env.Signatures) == 0 {
		return nil, fmt.Errorf("%w: no signature", ErrEnvelope)
	}
	pae := PAE(env.PayloadType, body)
	var verr error
	for i, s := range env.Signatures {
		sig, err := base64.StdEncoding.DecodeString(s.Sig)
		if err != nil {
			return nil, fmt.Errorf("%w: signature %d: %w", ErrEnvelope, i+1, err)
		}
		if verr = v.Verify(bytes.NewReader(pae), sig); verr == nil {
			var st Statement
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&st); err != nil {
				return nil, fmt.Errorf("%w: statement: %w", ErrEnvelope, err)
			}
			if st.Type != StatementType || st.PredicateType != PredicateType {
				return nil, fmt.Errorf("%w: _type %q, predicateType %q", ErrEnvelope, st.Type, st.PredicateType)
			}
			return &st, nil
		}
	}
	return nil, fmt.Errorf("provenance: no signature verifies with %s: %w", v, verr)
}

// VerifyAbout verifies the envelope env with v (see Verify) and checks
// that a subject of its statement is the file name whose bytes are data,
// by SHA-256.
func VerifyAbout(env []byte, v sign.Verifier, name string, data []byte) (*Statement, error) {
	st, err := Verify(bytes.NewReader(env), v)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])
	for _, s := range st.Subject {
		if s.Name == name {
			if s.Digest["sha256"] != want {
				return nil, fmt.Errorf("provenance: its subject %s has sha256 %s; this %s's is %s", name, s.Digest["sha256"], name, want)
			}
			return st, nil
		}
	}
	return nil, fmt.Errorf("provenance: its subjects do not name %s", name)
}
