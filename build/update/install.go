package update

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/kiln-os/kiln/build/payload"
	"github.com/kiln-os/kiln/build/slot"
	"github.com/kiln-os/kiln/build/verity"
	"github.com/kiln-os/kiln/internal/progress"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

// InstallOptions describe one install of a payload into a disk.
type InstallOptions struct {
	Payload string // payload file
	Disk    string // disk image or block device
	// Verifier checks the payload's signatures and the slots' release
	// records: releases and payloads are signed with the same key.
	Verifier       sign.Verifier
	AllowDowngrade bool
	// System is where to find which slot the running system booted from;
	// the zero value is this machine. On a disk image, or a disk the
	// system did not boot from, the booted slot is inferred from the slot
	// bits (slot.InferBooted).
	System slot.System
	// Progress, when set, hears the stages: checking the payload, writing
	// the slot, reading it back.
	Progress progress.Reporter
	Log      *slog.Logger
}

// InstallResult describes a finished install.
type InstallResult struct {
	Slot       string `json:"slot"`        // the slot written, now on trial
	Booted     string `json:"booted"`      // the booted slot, untouched: the fallback
	Installed  string `json:"installed"`   // the booted slot's signed version
	Version    string `json:"version"`     // the release installed
	Kind       string `json:"kind"`        // "full" or "delta"
	Operations int    `json:"operations"`  // operations executed
	Written    int64  `json:"written"`     // bytes written to the slot
	SHA256     string `json:"sha256"`      // of the whole slot, read back from the device
	VerityRoot string `json:"verity_root"` // of the slot's signed record, checked over the whole tree
}

// Errors of Install that callers tell apart.
var (
	ErrBootedOnTrial = errors.New("update: the booted slot is on trial")
	ErrWrongPayload  = errors.New("update: payload does not fit this disk")
)

// Install applies a payload to the passive USR slot of a disk.
//
// Every check comes before the first change to the disk: the payload is
// parsed and bounds-checked; it must hold one partition named "usr"; its
// signatures and every operation's data hash are verified; the booted
// slot is found (on the running system, the partition under /usr; else
// inferred from the slot bits) and must have been marked good, so that it
// stays the fallback; the payload's version must not be older than the
// booted slot's signed release record (unless AllowDowngrade); the sizes
// must fit; no other slot may stand at priority 15; and for a delta, the
// booted slot must hash to the payload's source. Only then is the passive
// slot — never the booted one — taken out of the boot order and written.
//
// After writing, the slot is flushed to the device, its pages dropped from
// the page cache, and read back from the device: its SHA-256 against the
// payload's, its release record's signature and version, and its whole
// dm-verity tree against the record's root hash. Only then does it get a
// priority above the booted slot, one try, not yet successful. No other
// slot's attributes change. The disk is locked for the whole install. An
// interrupted install leaves the passive slot out of the boot order;
// running it again completes it.
func Install(ctx context.Context, o InstallOptions) (*InstallResult, error) {
	d, err := layout.OpenDiskForWriting(o.Disk)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return install(ctx, o, d.File, d)
}

// device is the disk as install uses it; tests inject faults.
type device interface {
	layout.Device
	Fd() uintptr
}

func install(ctx context.Context, o InstallOptions, dev device, d *layout.Disk) (_ *InstallResult, err error) {
	// What a failure left on the disk, said with the error: nothing, until
	// the first write; then the passive slot, out of the boot order,
	// holding part of the release (or all of it, when the read-back
	// failed).
	var st struct {
		target, booted, version string
		began, wrote            bool
	}
	defer func() {
		switch {
		case err == nil:
		case !st.began:
			err = fmt.Errorf("%w; the disk is unchanged", err)
		case !st.wrote:
			err = fmt.Errorf("%w; %s holds part of %s and is out of the boot order (%s still boots): run apply again to finish it",
				err, st.target, st.version, st.booted)
		default:
			err = fmt.Errorf("%w; %s stays out of the boot order (%s still boots)", err, st.target, st.booted)
		}
	}()
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	prog := progress.Or(o.Progress)
	// (1) The payload: parsed, one "usr" partition, signatures and data.
	pf, err := os.Open(o.Payload)
	if err != nil {
		return nil, err
	}
	defer pf.Close()
	size, err := pf.Seek(0, io.SeekEnd) // a file or a block device
	if err != nil {
		return nil, err
	}
	p, err := payload.Open(pf, size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Payload, err)
	}
	if len(p.Partitions) != 1 || p.Partitions[0].Name != payload.DefaultPartition {
		var names []string
		for _, part := range p.Partitions {
			names = append(names, part.Name)
		}
		return nil, fmt.Errorf("%w: %s holds partitions %q; kiln installs payloads of one partition named %q into the passive USR slot",
			ErrWrongPayload, o.Payload, names, payload.DefaultPartition)
	}
	part := &p.Partitions[0]
	if part.Verity == nil {
		return nil, fmt.Errorf("%w: %s records no dm-verity tree; kiln marks only verity-checked slots bootable", ErrWrongPayload, o.Payload)
	}
	prog.Start("checking the payload", 0)
	err = p.Verify(ctx, Verifier{o.Verifier})
	prog.End()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Payload, err)
	}

	// (2) The slots: which is booted, which is written.
	t, err := d.ReadTable()
	if err != nil {
		return nil, err
	}
	if err := t.Copies.Err(); err != nil {
		o.Log.Warn("the GPT is damaged; this install rewrites both copies", "disk", o.Disk, "damage", err)
	}
	if n := len(t.Slots()); n != 2 {
		return nil, fmt.Errorf("%w: %s has %d USR slots, want 2", ErrWrongPayload, o.Disk, n)
	}
	booted, how, err := o.System.Booted(d.File, t)
	if err != nil {
		return nil, err
	}
	if booted == nil {
		booted, how = slot.InferBooted(t)
		if booted == nil {
			return nil, fmt.Errorf("%s: no USR slot has booted (%s)", o.Disk, how)
		}
	}
	if slot.OnTrial(booted.Slot()) {
		fb, _ := slot.Other(t, booted)
		return nil, fmt.Errorf("%w: %s booted on trial (%s) and is not marked good; installing now would overwrite %s, its fallback. Run kiln slot mark-good after a good boot, or kiln slot rollback",
			ErrBootedOnTrial, booted.Label, how, fb.Label)
	}
	target, err := slot.Other(t, booted)
	if err != nil {
		return nil, err
	}
	if err := slot.CheckSpare(t, target, "writing it"); err != nil {
		return nil, fmt.Errorf("%s: %w", o.Disk, err)
	}
	if target.Size() != part.New.Size {
		return nil, fmt.Errorf("%w: slot %s is %d bytes, the payload writes %d", ErrWrongPayload, target.Label, target.Size(), part.New.Size)
	}
	if part.Old != nil && booted.Size() != part.Old.Size {
		return nil, fmt.Errorf("%w: booted slot %s is %d bytes, the payload's source is %d", ErrWrongPayload, booted.Label, booted.Size(), part.Old.Size)
	}
	if err := slot.CheckTrial(t, target); err != nil {
		return nil, fmt.Errorf("%s: %w", o.Disk, err)
	}

	// (3) Anti-rollback, against the booted slot's signed record.
	bootedArea := io.NewSectionReader(dev, booted.Offset(), booted.Size())
	installed := ""
	rec, err := slot.Read(bootedArea, booted.Size())
	if err == nil {
		err = rec.Verify(o.Verifier)
	}
	switch {
	case errors.Is(err, slot.ErrNoVerity) || errors.Is(err, slot.ErrNoRecord):
		// A blank disk (or a booted slot never written): no release is
		// installed, so none can be newer.
		if part.Old != nil {
			return nil, fmt.Errorf("%w: %s is a delta from %s, but the booted slot %s holds no release", ErrWrongPayload, o.Payload, part.OldVersion, booted.Label)
		}
		o.Log.Info("the booted slot holds no release: a full payload onto a blank disk", "slot", booted.Label)
	case err != nil:
		if !o.AllowDowngrade {
			return nil, fmt.Errorf("%w: cannot tell the installed version: booted slot %s: %v (pass --allow-downgrade to install anyway)", ErrDowngrade, booted.Label, err)
		}
		o.Log.Warn("the booted slot has no valid signed release record", "slot", booted.Label, "error", err)
	default:
		installed = rec.Record.Version
		if part.OldVersion != "" && part.OldVersion != installed {
			return nil, fmt.Errorf("%w: %s is a delta from %s, but the booted slot %s holds %s", ErrWrongPayload, o.Payload, part.OldVersion, booted.Label, installed)
		}
		if !o.AllowDowngrade {
			if err := checkNewer(installed, part.Version); err != nil {
				return nil, err
			}
		}
	}
	// (4) The release record the payload writes, made in memory before
	// the first write: it must be there, signed, and say what the
	// payload's manifest says (version, verity root and geometry).
	var src io.ReaderAt
	if part.Old != nil {
		src = bootedArea
	}
	if err := checkWrittenRecord(p, part, src, o.Verifier); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrWrongPayload, o.Payload, err)
	}
	o.Log.Info("installing", "payload", o.Payload, "version", part.Version, "booted", booted.Label, "how", how, "slot", target.Label)

	// (5) Apply. payload.Apply checks the signatures, the version hook and
	// (for a delta) the source's hash before its first write; the first
	// write takes the target out of the boot order.
	dst := &slotTarget{f: dev, off: target.Offset(), size: target.Size(), prog: prog, beforeFirstWrite: func() error {
		if target.Slot() == (layout.SlotState{}) && t.Copies.Err() == nil {
			return nil
		}
		slot.MarkUnbootable(target)
		return layout.UpdateAttributes(dev, d.Size, o.Disk, t)
	}}
	st.target, st.booted, st.version = target.Label, booted.Label, part.Version
	prog.Start("writing "+target.Label, target.Size())
	res, err := payload.Apply(ctx, p, src, dst, payload.ApplyOptions{Verifier: Verifier{o.Verifier}})
	st.began = dst.started
	if err != nil {
		progress.Fail(prog)
		return nil, fmt.Errorf("%s into %s: %w", o.Payload, target.Label, err)
	}
	st.wrote = true
	prog.End()

	// (6) What reached the device, read past every page cache.
	storage, how, closeStorage, err := storageReader(dev, o.Disk, target.Offset(), target.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: flushing %s: %w", o.Disk, target.Label, err)
	}
	defer closeStorage()
	o.Log.Info("reading back", "slot", target.Label, "how", how)
	prog.Start("reading "+target.Label+" back from the device", 2*target.Size())
	defer prog.End()
	written := io.NewSectionReader(storage, target.Offset(), target.Size())
	h := sha256.New()
	if _, err := io.Copy(h, progress.Reader{R: written, P: prog}); err != nil {
		return nil, fmt.Errorf("%s: reading %s back: %w", o.Disk, target.Label, err)
	}
	if sum := h.Sum(nil); string(sum) != string(part.New.Hash[:]) {
		return nil, fmt.Errorf("%s: %s read back from the device has sha256 %x, the payload wrote %x", o.Disk, target.Label, sum, part.New.Hash)
	}
	newRec, err := slot.Read(written, target.Size())
	if err == nil {
		err = newRec.Verify(o.Verifier)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: the release record written to %s: %w", o.Disk, target.Label, err)
	}
	if newRec.Record.Version != part.Version {
		return nil, fmt.Errorf("%s: the release record written to %s says %s, the payload %s", o.Disk, target.Label, newRec.Record.Version, part.Version)
	}
	root, err := newRec.Record.Verity.Root()
	if err != nil {
		return nil, err
	}
	if hex.EncodeToString(root) != hex.EncodeToString(part.Verity.RootHash) {
		return nil, fmt.Errorf("%s: the release record written to %s has verity root %x, the payload %x", o.Disk, target.Label, root, part.Verity.RootHash)
	}
	if _, err := verity.Verify(written, 0, newRec.Record.Verity.HashOffset, root); err != nil {
		return nil, fmt.Errorf("%s: %s read back from the device: %w", o.Disk, target.Label, err)
	}
	prog.Add(target.Size())

	// (7) Boot next, on trial; no other slot changes.
	t, err = d.ReadTable()
	if err != nil {
		return nil, err
	}
	if target, err = t.Lookup(target.Label); err != nil {
		return nil, err
	}
	if err := slot.MarkTrial(t, target); err != nil {
		return nil, err
	}
	if err := layout.UpdateAttributes(dev, d.Size, o.Disk, t); err != nil {
		return nil, err
	}
	kind := "delta"
	if p.Full() {
		kind = "full"
	}
	return &InstallResult{Slot: target.Label, Booted: booted.Label, Installed: installed, Version: part.Version, Kind: kind,
		Operations: res.Ops, Written: res.BytesWritten, SHA256: hex.EncodeToString(part.New.Hash[:]), VerityRoot: hex.EncodeToString(root)}, nil
}

// checkWrittenRecord makes, in memory, the verity superblock block the
// payload writes into the slot (the superblock and the release record
// beside it, see slot.Record) and checks it against the payload's
// manifest: a record there, signed by v, of the payload's version and
// verity root, describing the superblock beside it.
func checkWrittenRecord(p *payload.Payload, part *payload.Partition, src io.ReaderAt, v sign.Verifier) error {
	pv := part.Verity
	block, err := payload.Preview(p, part.Name, src, pv.HashOffset, slot.BlockSize)
	if err != nil {
		return err
	}
	sb, err := verity.ReadSuperblock(bytes.NewReader(block), 0)
	if err != nil {
		return fmt.Errorf("the verity superblock it writes at byte %d: %w", pv.HashOffset, err)
	}
	rec, err := slot.Decode(block[slot.RecordOffset:])
	if err != nil {
		return fmt.Errorf("the release record it writes at byte %d: %w", pv.HashOffset+slot.RecordOffset, err)
	}
	if err := rec.Verify(v); err != nil {
		return fmt.Errorf("the release record it writes: %w", err)
	}
	r := rec.Record
	root, _ := r.Verity.Root()
	switch {
	case r.Version != part.Version:
		return fmt.Errorf("the release record it writes says %s, its manifest %s", r.Version, part.Version)
	case !bytes.Equal(root, pv.RootHash):
		return fmt.Errorf("the release record it writes has verity root %x, its manifest %x", root, pv.RootHash)
	case r.Verity.HashOffset != pv.HashOffset || r.Verity.DataBlocks != pv.DataBlocks || sb.DataBlocks != pv.DataBlocks:
		return fmt.Errorf("the release record it writes describes %d blocks with the superblock at byte %d (the superblock %d blocks), its manifest %d at byte %d",
			r.Verity.DataBlocks, r.Verity.HashOffset, sb.DataBlocks, pv.DataBlocks, pv.HashOffset)
	case r.Verity.Salt != hex.EncodeToString(sb.Salt):
		return fmt.Errorf("the release record it writes has salt %.16s, the superblock %x", r.Verity.Salt, sb.Salt)
	}
	return nil
}
