package tpm2

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// swtpm is a TPM 2.0 emulator the test started: Debian's swtpm, its
// server (command) port and control port on 127.0.0.1, state in dir.
type swtpm struct {
	t          *testing.T
	dir        string
	port, ctrl int
	cmd        *exec.Cmd
	exited     chan struct{}
	log        *syncBuffer
}

// needTool fails the test when a tool make test installs is missing.
func needTool(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s not found: make test installs %s", tool, pkg)
	}
	return p
}

// startSwtpm starts swtpm on a new state directory.
func startSwtpm(t *testing.T) *swtpm {
	t.Helper()
	return startSwtpmDir(t, t.TempDir())
}

// startSwtpmDir starts swtpm on state directory dir and stops it when
// the test ends. The TPM is started (TPM2_Startup(CLEAR)) and ready.
func startSwtpmDir(t *testing.T, dir string) *swtpm {
	t.Helper()
	bin := needTool(t, "swtpm", "swtpm")
	var last string
	for try := 0; try < 8; try++ {
		port, ctrl, err := freePortPair()
		if err != nil {
			t.Fatalf("finding free ports: %v", err)
		}
		s := &swtpm{t: t, dir: dir, port: port, ctrl: ctrl, exited: make(chan struct{}), log: &syncBuffer{}}
		s.cmd = exec.Command(bin, "socket", "--tpm2",
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", ctrl),
			"--tpmstate", "dir="+dir,
			"--flags", "not-need-init,startup-clear")
		s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
		s.cmd.SysProcAttr = procAttr()
		if err := s.cmd.Start(); err != nil {
			t.Fatalf("starting swtpm: %v", err)
		}
		go func() { s.cmd.Wait(); close(s.exited) }()
		if s.waitReady(5 * time.Second) {
			t.Cleanup(s.stop)
			return s
		}
		s.stop()
		last = s.log.String()
	}
	t.Fatalf("swtpm did not start: %s", last)
	return nil
}

// freePortPair finds a free TCP port p on 127.0.0.1 with p+1 free too,
// as tpm2-tools' swtpm TCTI takes the control port to be the next one.
func freePortPair() (int, int, error) {
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		l.Close()
		if err == nil {
			l2.Close()
			return p, p + 1, nil
		}
	}
	return 0, 0, fmt.Errorf("no two consecutive free ports")
}

// waitReady waits until the server port accepts a connection, or swtpm
// exits (a port taken in the meantime).
func (s *swtpm) waitReady(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return false
		default:
		}
		c, err := net.Dial("tcp", s.addr())
		if err == nil {
			c.Close()
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func (s *swtpm) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// stop ends swtpm (SIGTERM) and waits for it.
func (s *swtpm) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// kill ends swtpm at once (SIGKILL), as a power cut would.
func (s *swtpm) kill() {
	s.cmd.Process.Kill()
	<-s.exited
}

// open connects to the server port. Close it before a tpm2-tools command
// runs: swtpm serves one connection at a time.
func (s *swtpm) open() *TPM {
	s.t.Helper()
	c, err := net.Dial("tcp", s.addr())
	if err != nil {
		s.t.Fatalf("connecting to swtpm: %v", err)
	}
	tpm := NewConn(c)
	s.t.Cleanup(func() { tpm.Close() })
	return tpm
}

// reset is a TPM Reset: CMD_INIT on the control channel (swtpm's
// tpm_ioctl.h, command 2, flags 0), as at power-on, then
// TPM2_Startup(CLEAR) through tpm, as firmware sends.
func (s *swtpm) reset(tpm *TPM) {
	s.t.Helper()
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(s.ctrl))
	if err != nil {
		s.t.Fatalf("connecting to swtpm's control port: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte{0, 0, 0, 2, 0, 0, 0, 0}); err != nil {
		s.t.Fatalf("CMD_INIT: %v", err)
	}
	var res [4]byte
	if _, err := io.ReadFull(c, res[:]); err != nil {
		s.t.Fatalf("CMD_INIT: %v", err)
	}
	if r := binary.BigEndian.Uint32(res[:]); r != 0 {
		s.t.Fatalf("CMD_INIT: result 0x%X", r)
	}
	if err := tpm.Startup(); err != nil {
		s.t.Fatalf("after CMD_INIT: %v", err)
	}
}

// tool runs a tpm2-tools command against this swtpm and returns its
// standard output; failing tells the test unless fail is allowed.
func (s *swtpm) tool(mayFail bool, name string, args ...string) ([]byte, error) {
	s.t.Helper()
	cmd := exec.Command(needTool(s.t, name, "tpm2-tools"), args...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=%d", s.port))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		err = fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
		if !mayFail {
			s.t.Fatal(err)
		}
	}
	return out, err
}

// syncBuffer is a bytes.Buffer for swtpm's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
