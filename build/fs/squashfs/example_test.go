package squashfs_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/kiln-os/kiln/build/fs/squashfs"
	"github.com/kiln-os/kiln/build/tree"
)

func Example() {
	epoch := time.Unix(1700000000, 0) // SOURCE_DATE_EPOCH
	t := tree.New(epoch)
	for p, n := range map[string]*tree.Inode{
		"etc/os-release": {Type: tree.Regular, Perm: 0o644, Mtime: epoch, Size: 12, Content: tree.Bytes("ID=kiln-os\n\n")},
		"bin/sh":         {Type: tree.Symlink, Perm: 0o777, Mtime: epoch, Target: "busybox"},
	} {
		if err := t.Put(p, n); err != nil {
			log.Fatal(err)
		}
	}

	dir, err := os.MkdirTemp("", "kiln-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	f, err := os.Create(filepath.Join(dir, "usr.squashfs"))
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()

	m, err := squashfs.Write(f, t, squashfs.Options{Mtime: epoch})
	if err != nil {
		log.Fatal(err)
	}
	// The dm-verity hash tree would go at m.ImageSize.
	fmt.Println("image size:", m.ImageSize)
	for _, file := range m.Files {
		fmt.Println(file.Path, file.Size, "bytes in", len(file.Extents), "extent")
	}
	// Output:
	// image size: 4096
	// etc/os-release 12 bytes in 1 extent
}
