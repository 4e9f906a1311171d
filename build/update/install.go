package update

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/kiln-os/kiln/build/manifest"
	"github.com/kiln-os/kiln/build/payload"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

// InstallOptions describe one install of a payload into a disk.
type InstallOptions struct {
	Payload  string // payload file
	Disk     string // disk image or block device
	Verifier sign.Verifier
	// Installed is the signed manifest of the installed release, for the
	// anti-rollback check of a full payload (a delta records its source
	// version, bound to the installed slot by the source hash). Nil: the
	// version of a full payload cannot be checked and it is refused unless
	// AllowDowngrade.
	Installed      *manifest.Manifest
	AllowDowngrade bool
	Progress       func(done, total int)
	Log            *slog.Logger
}

// InstallResult describes a finished install.
type InstallResult struct {
	Slot       string `json:"slot"`        // the slot written, now on trial
	Active     string `json:"active"`      // the slot that was booting, untouched
	Version    string `json:"version"`     // the release installed
	Kind       string `json:"kind"`        // "full" or "delta"
	Operations int    `json:"operations"`  // operations executed
	Written    int64  `json:"written"`     // bytes written to the slot
	SHA256     string `json:"sha256"`      // of the whole slot, as the payload says
	VerityRoot string `json:"verity_root"` // checked over the whole written tree
}

// Install applies a payload to the passive USR slot of a disk. In order:
// the payload is parsed and bounds-checked, its signatures and every
// operation's data hash are verified, the version is checked against the
// installed one, the passive slot is taken out of the boot order, the
// payload is applied (the source slot's hash checked first, each
// operation's hashes as it runs, the new slot's SHA-256 at the end), the
// written dm-verity tree is verified against the payload's root hash, and
// only then is the slot made to boot next on trial (priority above the
// active slot, one try). The active slot is only ever read. An interrupted
// install leaves the passive slot out of the boot order; running it again
// completes it.
func Install(ctx context.Context, o InstallOptions) (*InstallResult, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	pf, err := os.Open(o.Payload)
	if err != nil {
		return nil, err
	}
	defer pf.Close()
	st, err := pf.Stat()
	if err != nil {
		return nil, err
	}
	p, err := payload.Open(pf, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Payload, err)
	}
	if len(p.Partitions) != 1 {
		return nil, fmt.Errorf("%s: %d partitions; kiln installs payloads of one USR partition", o.Payload, len(p.Partitions))
	}
	part := &p.Partitions[0]
	// (1) Signatures and data hashes, before anything is touched.
	if err := p.Verify(ctx, Verifier{o.Verifier}); err != nil {
		return nil, fmt.Errorf("%s: %w", o.Payload, err)
	}
	// (2) Anti-rollback.
	installed := ""
	switch {
	case !p.Full() && part.OldVersion != "":
		installed = part.OldVersion
	case o.Installed != nil:
		installed = o.Installed.Version
	}
	if !o.AllowDowngrade {
		if installed == "" {
			return nil, fmt.Errorf("%w: cannot tell the installed version (pass the installed release's --manifest, or --allow-downgrade)", ErrDowngrade)
		}
		if err := checkNewer(installed, part.Version); err != nil {
			return nil, err
		}
	}
	// (3) The slots.
	disk, err := os.OpenFile(o.Disk, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer disk.Close()
	t, err := layout.ReadTable(disk)
	if err != nil {
		return nil, err
	}
	if t.FromBackup {
		return nil, fmt.Errorf("%s: the primary GPT is damaged; repair it before installing", o.Disk)
	}
	active, err := t.ActiveSlot()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Disk, err)
	}
	var passive *layout.Entry
	for _, s := range t.Slots() {
		if s.Number != active.Number {
			passive = s
		}
	}
	if passive == nil || len(t.Slots()) != 2 {
		return nil, fmt.Errorf("%s: want two USR slots, have %d", o.Disk, len(t.Slots()))
	}
	if passive.Size() != part.New.Size {
		return nil, fmt.Errorf("%s: passive slot %s is %d bytes, the payload writes %d", o.Disk, passive.Label, passive.Size(), part.New.Size)
	}
	if part.Old != nil && active.Size() != part.Old.Size {
		return nil, fmt.Errorf("%s: active slot %s is %d bytes, the payload's source is %d", o.Disk, active.Label, active.Size(), part.Old.Size)
	}
	o.Log.Info("installing", "payload", o.Payload, "version", part.Version, "active", active.Label, "slot", passive.Label)
	// (4) Out of the boot order while it is written.
	if passive.Slot() != (layout.SlotState{}) {
		t.MarkUnbootable(passive)
		if err := layout.UpdateAttributes(disk, t); err != nil {
			return nil, err
		}
	}
	// (5) Apply: the source is the active slot, read only.
	var src io.ReaderAt
	if part.Old != nil {
		src = io.NewSectionReader(disk, active.Offset(), active.Size())
	}
	dst := &slotTarget{f: disk, off: passive.Offset(), size: passive.Size()}
	res, err := payload.Apply(ctx, p, src, dst, payload.ApplyOptions{Verifier: Verifier{o.Verifier}, Progress: o.Progress})
	if err != nil {
		return nil, fmt.Errorf("%s into %s: %w", o.Payload, passive.Label, err)
	}
	if err := disk.Sync(); err != nil {
		return nil, err
	}
	// (6) Apply computed the verity tree from the written data and checked
	// its root against the payload's, then the whole slot's SHA-256.
	out := &InstallResult{Slot: passive.Label, Active: active.Label, Version: part.Version, Kind: "delta",
		Operations: res.Ops, Written: res.BytesWritten, SHA256: hex.EncodeToString(res.NewHash[:])}
	if p.Full() {
		out.Kind = "full"
	}
	if v := part.Verity; v != nil {
		out.VerityRoot = hex.EncodeToString(v.RootHash)
	} else {
		return nil, fmt.Errorf("%s: the payload records no dm-verity tree; kiln marks only verity-checked slots bootable", o.Payload)
	}
	// (7) Boot next, on trial.
	t, err = layout.ReadTable(disk)
	if err != nil {
		return nil, err
	}
	slot, err := t.Lookup(passive.Label)
	if err != nil {
		return nil, err
	}
	if err := t.MarkTrial(slot); err != nil {
		return nil, err
	}
	if err := layout.UpdateAttributes(disk, t); err != nil {
		return nil, err
	}
	return out, nil
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
