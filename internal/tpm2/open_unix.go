//go:build unix

package tpm2

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// Open opens a TPM character device, where each write is one command and
// each read one whole response. An empty path means DevTPMRM, or DevTPM
// if the kernel has no resource manager device.
func Open(path string) (*TPM, error) {
	if path == "" {
		path = DevTPMRM
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			path = DevTPM
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tpm2: %w", err)
	}
	if fi.Mode()&fs.ModeCharDevice == 0 {
		return nil, fmt.Errorf("tpm2: %s is not a character device", path)
	}
	// Blocking, so not os.OpenFile: on a non-blocking descriptor Linux
	// queues the command and a read before the TPM has answered returns
	// 0 bytes; blocking, write runs the command and read returns its
	// response. os.NewFile keeps a blocking descriptor blocking.
	fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tpm2: %w", &fs.PathError{Op: "open", Path: path, Err: err})
	}
	return newDevice(os.NewFile(uintptr(fd), path)), nil
}
