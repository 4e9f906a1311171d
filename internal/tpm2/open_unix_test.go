//go:build unix

package tpm2

import (
	"bytes"
	"net"
	"os"
	"syscall"
	"testing"
)

// TestDeviceFraming runs the floor through newDevice, the framing Open
// uses (one command per write, one whole response per read), over a
// SOCK_SEQPACKET pair relayed to swtpm.
func TestDeviceFraming(t *testing.T) {
	s := startSwtpm(t)
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	dev, relay := os.NewFile(uintptr(fds[0]), "dev"), os.NewFile(uintptr(fds[1]), "relay")
	conn, err := net.Dial("tcp", s.addr())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer conn.Close()
		back := NewConn(conn)
		buf := make([]byte, maxMessage)
		for {
			n, err := relay.Read(buf)
			if err != nil || n == 0 {
				return
			}
			rsp, err := back.transact(buf[:n])
			if err != nil {
				return
			}
			relay.Write(rsp)
		}
	}()
	tpm := newDevice(dev)
	f := &Floor{TPM: tpm}
	if err := f.Write("4.0.0"); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := f.Read(); err != nil || !ok || v != "4.0.0" {
		t.Fatalf("Read = %q, %v, %v", v, ok, err)
	}
	tpm.Close()
	relay.Close()
	<-done
}

func TestOpen(t *testing.T) {
	if _, err := Open(t.TempDir()); err == nil {
		t.Fatal("Open of a directory succeeded")
	}
	if _, err := Open("/nonexistent/tpm"); err == nil {
		t.Fatal("Open of a missing path succeeded")
	}
	// A character device that answers nothing.
	tpm, err := Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	if _, err := tpm.NVReadPublic(DefaultFloorIndex); err == nil || !bytes.Contains([]byte(err.Error()), []byte("NV_ReadPublic")) {
		t.Fatalf("NVReadPublic on /dev/null: %v", err)
	}
}
