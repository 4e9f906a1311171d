package boot

import (
	"bytes"
	"fmt"
	"path"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// InitrdOptions is what goes into kiln's initrd.
type InitrdOptions struct {
	Init    []byte   // the kiln binary, /init
	Modules []Module // in load order
	Key     []byte   // PEM public key slot records must verify with
	Mtime   int64
}

// Initrd returns the zstd-compressed newc cpio initramfs: /init, the
// modules under lib/modules with their load order in etc/kiln/modules,
// and the release key. The same options give the same bytes.
func Initrd(o InitrdOptions) ([]byte, error) {
	a := NewArchive(o.Mtime)
	if err := a.File("init", 0o755, o.Init); err != nil {
		return nil, err
	}
	var order []string
	for _, m := range o.Modules {
		p := path.Join("lib/modules", m.Path)
		if err := a.File(p, 0o644, m.Data); err != nil {
			return nil, err
		}
		order = append(order, p)
	}
	if err := a.File(InitrdModules, 0o644, []byte(strings.Join(order, "\n")+"\n")); err != nil {
		return nil, err
	}
	if err := a.File(InitrdKey, 0o644, o.Key); err != nil {
		return nil, err
	}
	for _, d := range []string{"dev", "proc", "sys", "slot", "sysroot"} {
		if err := a.Dir(d); err != nil {
			return nil, err
		}
	}
	var raw bytes.Buffer
	if _, err := a.WriteTo(&raw); err != nil {
		return nil, err
	}
	// One encoder goroutine and an 8 MiB window: deterministic, and within
	// what the kernel's initramfs decompressor accepts.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(8<<20), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, fmt.Errorf("boot: initrd: %w", err)
	}
	defer enc.Close()
	return enc.EncodeAll(raw.Bytes(), nil), nil
}
