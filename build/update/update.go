// Package update moves a disk from one release to the next: it generates
// signed payloads from two build outputs, and installs a payload into the
// passive USR slot of a disk — verifying the payload first, never writing
// the active slot, checking the written slot's hash and dm-verity tree,
// and only then making the slot boot next, on trial.
package update

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build"
	"github.com/kiln-os/kiln/build/blockmap"
	"github.com/kiln-os/kiln/build/manifest"
	"github.com/kiln-os/kiln/build/payload"
	"github.com/kiln-os/kiln/build/slot"
	"github.com/kiln-os/kiln/build/verify"
	"github.com/kiln-os/kiln/build/verity"
	"github.com/kiln-os/kiln/build/version"
	"github.com/kiln-os/kiln/internal/progress"
	"github.com/kiln-os/kiln/sign"
)

// ErrDowngrade is returned when a payload would install an older release.
var ErrDowngrade = errors.New("update: downgrade refused")

// Release is one build output directory: manifest.json, usr.img and the
// USR block map.
type Release struct {
	Dir      string
	Manifest *manifest.Manifest
	Usr      *manifest.Partition
}

// OpenRelease reads a build output directory.
func OpenRelease(dir string) (*Release, error) {
	f, err := os.Open(filepath.Join(dir, build.ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("release %s: %w", dir, err)
	}
	defer f.Close()
	m, err := manifest.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("release %s: %w", dir, err)
	}
	usr := verify.UsrPartition(m)
	if usr == nil {
		return nil, fmt.Errorf("release %s: the manifest has no verity-protected USR partition", dir)
	}
	return &Release{Dir: dir, Manifest: m, Usr: usr}, nil
}

// image opens the release's usr.img and block map as a planner input.
func (r *Release) image() (*payload.Image, *os.File, error) {
	f, err := os.Open(filepath.Join(r.Dir, build.UsrFile))
	if err != nil {
		return nil, nil, fmt.Errorf("release %s: %w", r.Dir, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if st.Size() != r.Usr.Size {
		f.Close()
		return nil, nil, fmt.Errorf("release %s: usr.img is %d bytes, the manifest's %s %d", r.Dir, st.Size(), r.Usr.Label, r.Usr.Size)
	}
	img := &payload.Image{R: f, Size: st.Size()}
	if bm, err := os.Open(filepath.Join(r.Dir, build.BlockMapFile)); err == nil {
		m, err := blockmap.Read(bm)
		bm.Close()
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("release %s: %w", r.Dir, err)
		}
		img.Map = m
	}
	return img, f, nil
}

// GenerateOptions describe a payload to generate.
type GenerateOptions struct {
	From *Release // nil: a full payload
	To   *Release
	// Out is the payload file; it is written to a temporary file beside
	// it and renamed at the end.
	Out         string
	Signer      sign.Signer
	Compression payload.Compression
	// VerityTree says whether the payload carries the dm-verity tree as
	// data (the default) or leaves it to the client (hash_tree_* fields,
	// minor version 6).
	VerityTree payload.VerityTree
	// Client is the client family that must apply the payload: the
	// configuration and the key are checked against it before anything is
	// planned.
	Client         payload.Client
	AllowDowngrade bool
	Log            *slog.Logger
	// Progress, when set, hears the stages: hashing the images, planning,
	// writing the payload.
	Progress progress.Reporter
}

// Generate plans, writes and signs a payload from From (or nothing) to To.
func Generate(ctx context.Context, o GenerateOptions) (*payload.Plan, error) {
	if o.From != nil && !o.AllowDowngrade {
		if err := checkNewer(o.From.Manifest.Version, o.To.Manifest.Version); err != nil {
			return nil, err
		}
	}
	newImg, nf, err := o.To.image()
	if err != nil {
		return nil, err
	}
	defer nf.Close()
	if err := checkRecord(o.To, newImg, o.Signer); err != nil {
		return nil, err
	}
	v := o.To.Usr.Verity
	root, salt, err := decodeVerity(v)
	if err != nil {
		return nil, fmt.Errorf("release %s: %w", o.To.Dir, err)
	}
	cfg := payload.Config{
		New: *newImg, NewVersion: o.To.Manifest.Version, Compression: o.Compression,
		TempDir: filepath.Dir(o.Out),
		Verity: &payload.Verity{DataBlocks: v.DataBlocks, HashOffset: v.HashOffset,
			TreeBlocks: uint64(verity.HashTreeSize(v.DataBlocks)/payload.BlockSize) - 1, Salt: salt, RootHash: root},
	}
	if o.From != nil {
		oldImg, of, err := o.From.image()
		if err != nil {
			return nil, err
		}
		defer of.Close()
		cfg.Old, cfg.OldVersion = oldImg, o.From.Manifest.Version
	}
	cfg.VerityTree = o.VerityTree
	cfg.X86Filter = o.Client.DecodesX86()
	cfg.Progress = o.Progress
	if err := o.Client.CheckConfig(&cfg); err != nil {
		return nil, fmt.Errorf("client %s: %w", o.Client, err)
	}
	if pub, err := o.Signer.PublicKey(); err != nil {
		return nil, err
	} else if err := o.Client.CheckKey(pub); err != nil {
		return nil, fmt.Errorf("client %s: %w", o.Client, err)
	}
	plan, err := payload.NewPlan(ctx, cfg)
	if err != nil {
		return nil, err
	}
	size, err := sigSize(o.Signer)
	if err != nil {
		plan.Close()
		return nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(o.Out), "."+filepath.Base(o.Out)+".tmp-*")
	if err != nil {
		plan.Close()
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
			plan.Close()
		}
	}()
	prog := progress.Or(o.Progress)
	prog.Start("writing and signing the payload", 0)
	_, err = payload.Write(tmp, plan, Signer{S: o.Signer, Size: size})
	prog.End()
	if err != nil {
		return nil, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), o.Out); err != nil {
		return nil, err
	}
	ok = true
	return plan, plan.Close()
}

// decodeVerity decodes a manifest's root hash and salt.
func decodeVerity(v *manifest.Verity) (root, salt []byte, err error) {
	if v == nil {
		return nil, nil, errors.New("no verity data")
	}
	if root, err = hex.DecodeString(v.RootHash); err != nil || len(root) != 32 {
		return nil, nil, fmt.Errorf("verity root hash %q: not 32 bytes of hex", v.RootHash)
	}
	if salt, err = hex.DecodeString(v.Salt); err != nil {
		return nil, nil, fmt.Errorf("verity salt %q: %w", v.Salt, err)
	}
	return root, salt, nil
}

// checkRecord requires the release's USR image to carry a release record
// for its version, signed by the payload's key: apply checks the record it
// installs with the same key, so a payload of an unsigned (or
// differently signed) build could never be installed.
func checkRecord(r *Release, img *payload.Image, s sign.Signer) error {
	rec, err := slot.Read(img.R, img.Size)
	if err != nil {
		return fmt.Errorf("release %s: usr.img: %w (build it with this kiln)", r.Dir, err)
	}
	if rec.Record.Version != r.Manifest.Version || rec.Record.Verity.RootHash != r.Usr.Verity.RootHash {
		return fmt.Errorf("release %s: usr.img's release record (%s, root %.16s) does not match the manifest (%s, root %.16s)",
			r.Dir, rec.Record.Version, rec.Record.Verity.RootHash, r.Manifest.Version, r.Usr.Verity.RootHash)
	}
	v, ok := s.(sign.Verifier)
	if !ok {
		pub, err := s.PublicKey()
		if err != nil {
			return err
		}
		if v, err = sign.NewVerifier(pub, "the payload key"); err != nil {
			return err
		}
	}
	if err := rec.Verify(v); err != nil {
		return fmt.Errorf("release %s: usr.img's release record must be signed by the payload key (kiln build --sign with the same key): %w", r.Dir, err)
	}
	return nil
}

// checkNewer refuses when newV is older than oldV.
func checkNewer(oldV, newV string) error {
	ov, err := version.Parse(oldV)
	if err != nil {
		return fmt.Errorf("installed version: %w", err)
	}
	nv, err := version.Parse(newV)
	if err != nil {
		return fmt.Errorf("payload version: %w", err)
	}
	if nv.Compare(ov) < 0 {
		return fmt.Errorf("%w: %s is older than %s (pass --allow-downgrade to install it anyway)", ErrDowngrade, newV, oldV)
	}
	return nil
}

// Signer adapts a sign.Signer to payload signing.
type Signer struct {
	S    sign.Signer
	Size int
}

// Sign signs a payload digest.
func (s Signer) Sign(digest []byte) ([]byte, error) { return sign.SignDigest(s.S, digest) }

// SignatureSize is the longest signature the key makes.
func (s Signer) SignatureSize() int { return s.Size }

// Verifier adapts a sign.Verifier to payload verification.
type Verifier struct{ V sign.Verifier }

// Verify checks a payload digest's signature.
func (v Verifier) Verify(digest, sig []byte) error { return sign.VerifyDigest(v.V, digest, sig) }

var (
	_ payload.Signer   = Signer{}
	_ payload.Verifier = Verifier{}
)

func sigSize(s sign.Signer) (int, error) {
	pub, err := s.PublicKey()
	if err != nil {
		return 0, err
	}
	return sign.SignatureSize(pub)
}

// slotTarget is the passive slot as Apply sees it: reads and writes are
// confined to the partition, beforeFirstWrite runs once, before the first
// byte is written, and writes are counted into prog.
type slotTarget struct {
	f                device
	off, size        int64
	beforeFirstWrite func() error
	started          bool
	prog             progress.Reporter
}

func (s *slotTarget) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > s.size || int64(len(p)) > s.size-off {
		return 0, fmt.Errorf("update: write of %d bytes at %d outside the %d-byte slot", len(p), off, s.size)
	}
	if !s.started {
		if s.beforeFirstWrite != nil {
			if err := s.beforeFirstWrite(); err != nil {
				return 0, err
			}
		}
		s.started = true
	}
	// Large runs of zeros (ZERO operations) become holes (or, on a block
	// device, zeroed ranges) instead of writes, where the kernel can.
	if s.prog != nil {
		s.prog.Add(int64(len(p)))
	}
	if len(p) >= 64<<10 && (s.off+off)%4096 == 0 && len(p)%4096 == 0 && isZero(p) {
		if unix.Fallocate(int(s.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, s.off+off, int64(len(p))) == nil {
			return len(p), nil
		}
	}
	return s.f.WriteAt(p, s.off+off)
}

// isZero reports whether every byte of p is zero.
func isZero(p []byte) bool {
	var zero [4096]byte
	for len(p) > 0 {
		n := min(len(p), len(zero))
		if !bytes.Equal(p[:n], zero[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

func (s *slotTarget) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= s.size {
		return 0, io.EOF
	}
	if int64(len(p)) > s.size-off {
		n, err := s.f.ReadAt(p[:s.size-off], s.off+off)
		if err == nil {
			err = io.EOF
		}
		return n, err
	}
	return s.f.ReadAt(p, s.off+off)
}
