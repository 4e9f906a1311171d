package tpm2

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"time"
)

// Linux's TPM character devices. The first goes through the kernel's
// resource manager and can be opened by several processes at once.
const (
	DevTPMRM = "/dev/tpmrm0"
	DevTPM   = "/dev/tpm0"
)

const (
	headerSize = 10   // tag, size, code
	maxMessage = 4096 // TPM2_MAX_COMMAND_SIZE / MAX_RESPONSE_SIZE of PC client TPMs

	tagNoSessions uint16 = 0x8001
	tagSessions   uint16 = 0x8002

	retries = 6 // of a command the TPM answers with RETRY, YIELDED or TESTING
)

// TPM is a connection to a TPM 2.0. Its methods may be called from several
// goroutines; commands are sent one at a time.
type TPM struct {
	mu     sync.Mutex
	rw     io.ReadWriter
	stream bool // responses framed by their header's size, not one per read
	buf    []byte
	sleep  func(time.Duration) // between retries; time.Sleep
}

// newDevice is a TPM over rw with a character device's framing.
func newDevice(rw io.ReadWriter) *TPM {
	return &TPM{rw: rw, buf: make([]byte, maxMessage), sleep: time.Sleep}
}

// NewConn is a TPM over a byte stream such as swtpm's TCP server port
// (swtpm socket --server type=tcp,...): each response is read as its
// header's size says. If rw is an io.Closer, Close closes it.
func NewConn(rw io.ReadWriter) *TPM {
	return &TPM{rw: rw, stream: true, buf: make([]byte, maxMessage), sleep: time.Sleep}
}

// Close closes the device or connection.
func (t *TPM) Close() error {
	if c, ok := t.rw.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// command is one command to send: its code, handles and parameters, and
// whether the first handle is authorized (a password session, empty
// password).
type command struct {
	cc      CC
	index   Handle   // the NV index it is about, for errors
	handles []Handle // all command handles, in order
	auth    bool     // one password session, for handles[0]
	params  []byte
}

func (c *command) String() string { return cmdName(c.cc, c.index) }

// cmdName names a command and the index it is about, if any:
// "NV_Read 0x01004B4C", "Startup".
func cmdName(cc CC, index Handle) string {
	if index != 0 {
		return cc.String() + " " + index.String()
	}
	return cc.String()
}

// marshal lays out the command (Part 1, 18.2; Part 3, 4.2).
func (c *command) marshal() []byte {
	b := make([]byte, headerSize, headerSize+4*len(c.handles)+13+len(c.params))
	tag := tagNoSessions
	for _, h := range c.handles {
		b = binary.BigEndian.AppendUint32(b, uint32(h))
	}
	if c.auth {
		tag = tagSessions
		// authorizationSize, then TPMS_AUTH_COMMAND: TPM_RS_PW, an
		// empty nonce, continueSession, an empty password.
		b = binary.BigEndian.AppendUint32(b, 9)
		b = binary.BigEndian.AppendUint32(b, uint32(handlePassword))
		b = append(b, 0, 0, 0x01, 0, 0)
	}
	b = append(b, c.params...)
	binary.BigEndian.PutUint16(b[0:], tag)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	binary.BigEndian.PutUint32(b[6:], uint32(c.cc))
	return b
}

// run sends c and returns its response parameters, retrying while the TPM
// answers that it is busy. A refusal is an *Error.
func (t *TPM) run(c *command) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	cmd := c.marshal()
	wait := 10 * time.Millisecond
	for try := 0; ; try++ {
		rsp, err := t.transact(cmd)
		if err != nil {
			return nil, fmt.Errorf("tpm2: %s: %w", c, err)
		}
		params, rc, err := parseResponse(rsp, c.auth)
		if err != nil {
			return nil, &malformedError{c.String(), err}
		}
		switch {
		case rc == RCSuccess:
			return params, nil
		case (rc == RCRetry || rc == RCYielded || rc == RCTesting) && try < retries:
			t.sleep(wait)
			wait *= 2
			continue
		}
		return nil, &Error{Command: c.cc, Index: c.index, Code: rc, handles: c.handles}
	}
}

// transact writes one command and reads its whole response into t.buf.
func (t *TPM) transact(cmd []byte) ([]byte, error) {
	if _, err := t.rw.Write(cmd); err != nil {
		return nil, fmt.Errorf("sending command: %w", err)
	}
	if !t.stream {
		n, err := t.rw.Read(t.buf)
		if err != nil {
			return nil, fmt.Errorf("reading response: %w", err)
		}
		return t.buf[:n], nil
	}
	if _, err := io.ReadFull(t.rw, t.buf[:headerSize]); err != nil {
		return nil, fmt.Errorf("reading response header: %w", err)
	}
	size := binary.BigEndian.Uint32(t.buf[2:])
	if size < headerSize || size > maxMessage {
		return t.buf[:headerSize], nil // for parseResponse to refuse
	}
	if _, err := io.ReadFull(t.rw, t.buf[headerSize:size]); err != nil {
		return nil, fmt.Errorf("reading response: %w", err)
	}
	return t.buf[:size], nil
}

// parseResponse checks a response's header and, on success, its session
// area, and returns its parameters (Part 1, 18.8; Part 3, 4.2). Every
// length is checked against the bytes there are.
func parseResponse(b []byte, auth bool) (params []byte, rc RC, err error) {
	if len(b) < headerSize {
		return nil, 0, fmt.Errorf("%d bytes, shorter than a header", len(b))
	}
	tag := binary.BigEndian.Uint16(b)
	if size := binary.BigEndian.Uint32(b[2:]); size != uint32(len(b)) {
		return nil, 0, fmt.Errorf("header says %d bytes, got %d", size, len(b))
	}
	rc = RC(binary.BigEndian.Uint32(b[6:]))
	if rc != RCSuccess {
		// An error response is a bare header; take the code whatever
		// the tag (TPM 1.2-style tag 0x00C4 included).
		return nil, rc, nil
	}
	r := reader{b: b, off: headerSize}
	if !auth {
		if tag != tagNoSessions {
			return nil, rc, fmt.Errorf("tag 0x%04X, want 0x%04X", tag, tagNoSessions)
		}
		return b[headerSize:], rc, nil
	}
	if tag != tagSessions {
		return nil, rc, fmt.Errorf("tag 0x%04X, want 0x%04X", tag, tagSessions)
	}
	// parameterSize, parameters, then one TPMS_AUTH_RESPONSE: nonce,
	// sessionAttributes, hmac (empty for a password session).
	n := r.u32()
	params = r.bytes(n)
	r.sized()
	r.u8()
	r.sized()
	if err := r.done(); err != nil {
		return nil, rc, err
	}
	return params, rc, nil
}

// malformedError is a response that does not parse; it matches
// ErrMalformed.
type malformedError struct {
	cmd string // the command, and its index
	err error
}

func (e *malformedError) Error() string {
	return fmt.Sprintf("tpm2: %s: malformed response: %v", e.cmd, e.err)
}

func (e *malformedError) Is(target error) bool { return target == ErrMalformed }

// reader parses big-endian TPM structures with bounds checks; the first
// error sticks and the later reads return zeros.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) take(n uint32, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint32(len(r.b)-r.off) {
		r.err = fmt.Errorf("%s of %d bytes at byte %d, %d left", what, n, r.off, len(r.b)-r.off)
		return nil
	}
	p := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return p
}

func (r *reader) u8() uint8 {
	if p := r.take(1, "uint8"); p != nil {
		return p[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if p := r.take(2, "uint16"); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if p := r.take(4, "uint32"); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (r *reader) bytes(n uint32) []byte { return r.take(n, "field") }

// sized reads a TPM2B: a uint16 size, then that many bytes.
func (r *reader) sized() []byte {
	at := r.off
	n := r.u16()
	if r.err != nil {
		return nil
	}
	p := r.take(uint32(n), "TPM2B")
	if r.err != nil {
		r.err = fmt.Errorf("TPM2B at byte %d claims %d bytes, %d left", at, n, len(r.b)-r.off)
	}
	return p
}

// done is the first error, or one if bytes are left over.
func (r *reader) done() error {
	if r.err == nil && r.off != len(r.b) {
		r.err = fmt.Errorf("%d bytes left over at byte %d", len(r.b)-r.off, r.off)
	}
	return r.err
}
