package sbom

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"path"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/kiln-os/kiln/build/tree"
)

// maxSymlinks bounds the symlinks resolving one path follows.
const maxSymlinks = 40

// Scan returns what the image tree holds, read from the source tree it
// came from: source is the tree the recipe's source gave, subdir the part
// of it that became image ("" or "/" for all of it). The packages are
// those of source's database (dpkg, else apk); with a subdir, only those owning a file
// (not a directory) that image holds, found through source's symlinks
// (so that /lib/x86_64-linux-gnu/libc.so.6, as libc6 lists it, is found
// as /usr/lib/... on a merged-/usr system). A tree with no package
// database gets its regular files, with their SHA-1 and SHA-256.
func Scan(source *tree.Tree, subdir string, image *tree.Tree) (Contents, error) {
	var c Contents
	var err error
	if c.Distro, err = ReadDistro(source); err != nil {
		return c, err
	}
	pkgs, err := ReadDpkg(source)
	if err != nil {
		return c, err
	}
	if pkgs == nil {
		if pkgs, err = ReadApk(source); err != nil {
			return c, err
		}
	}
	if pkgs == nil {
		c.Files, err = hashFiles(image)
		return c, err
	}
	sub := clean(subdir)
	if sub == "/" {
		c.Packages = pkgs
		return c, nil
	}
	for _, p := range pkgs {
		if ownsIn(source, sub, image, p) {
			c.Packages = append(c.Packages, p)
		}
	}
	return c, nil
}

// ownsIn reports whether image (the subtree sub of source) holds a file
// that package p owns.
func ownsIn(source *tree.Tree, sub string, image *tree.Tree, p *Package) bool {
	for _, f := range p.Files {
		real, ok := resolveDirs(source, f)
		if !ok || !strings.HasPrefix(real, sub+"/") {
			continue
		}
		n, err := image.Lookup(strings.TrimPrefix(real, sub+"/"))
		if err == nil && n.Type != tree.Dir {
			return true
		}
	}
	return false
}

// resolveDirs returns p with every symlink among its directories
// followed in t (the last name is kept as it is); ok is false when a
// directory is missing or the links loop.
func resolveDirs(t *tree.Tree, p string) (string, bool) {
	names := strings.Split(strings.TrimPrefix(clean(p), "/"), "/")
	cur := "/"
	links := 0
	for i := 0; i < len(names)-1; i++ {
		next := path.Join(cur, names[i])
		n, err := t.Lookup(strings.TrimPrefix(next, "/"))
		if err != nil {
			return "", false
		}
		if n.Type == tree.Symlink {
			links++
			if links > maxSymlinks {
				return "", false
			}
			target := n.Target
			if !strings.HasPrefix(target, "/") {
				target = path.Join(cur, target)
			}
			// Resolve the target's own directories, then go on from it.
			rest := append(strings.Split(strings.TrimPrefix(clean(target), "/"), "/"), names[i+1:]...)
			names, cur, i = rest, "/", -1
			continue
		}
		if n.Type != tree.Dir {
			return "", false
		}
		cur = next
	}
	return path.Join(cur, names[len(names)-1]), true
}

// hashFiles lists image's regular files with their SHA-1 and SHA-256, in
// path order, hashing on every core.
func hashFiles(image *tree.Tree) ([]FileEntry, error) {
	type job struct {
		path string
		n    *tree.Inode
	}
	var jobs []job
	if err := image.Walk(func(p string, n *tree.Inode) error {
		if n.Type == tree.Regular {
			jobs = append(jobs, job{"/" + p, n})
		}
		return nil
	}); err != nil {
		return nil, err
	}
	out := make([]FileEntry, len(jobs))
	errs := make([]error, len(jobs))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.NumCPU(), max(len(jobs), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for {
				i := int(next.Add(1) - 1)
				if i >= len(jobs) {
					return
				}
				out[i], errs[i] = hashFile(jobs[i].path, jobs[i].n, buf)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// hashFile hashes one regular file's content.
func hashFile(p string, n *tree.Inode, buf []byte) (FileEntry, error) {
	h1, h256 := sha1.New(), sha256.New()
	if n.Content != nil {
		rc, err := n.Content.Open()
		if err != nil {
			return FileEntry{}, fmt.Errorf("sbom: %s: %w", p, err)
		}
		_, err = io.CopyBuffer(io.MultiWriter(h1, h256), io.LimitReader(rc, n.Size), buf)
		rc.Close()
		if err != nil {
			return FileEntry{}, fmt.Errorf("sbom: %s: %w", p, err)
		}
	}
	return FileEntry{Path: p, SHA1: hex.EncodeToString(h1.Sum(nil)), SHA256: hex.EncodeToString(h256.Sum(nil))}, nil
}
