package build

import (
	"errors"
	"fmt"
	"os"

	"github.com/kiln-os/kiln/build/boot"
	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/sign"
	"github.com/kiln-os/kiln/sign/authenticode"
)

// ErrBootUnsigned is returned for a bootable build without a signing key.
var ErrBootUnsigned = errors.New("boot: a bootable image needs --sign: its boot path checks every slot's release record with the build's key")

// addBoot puts what boots into the trees (stage "boot"): the kernel, an
// initrd and the command line into the USR slot under lib/kiln/boot, and
// a unified kernel image of the same into the ESP as EFI/BOOT/BOOTX64.EFI.
func (b *builder) addBoot(trees map[string]*tree.Tree) error {
	bs := b.r.Boot
	if bs == nil {
		return nil
	}
	b.start("boot", 0)
	fail := func(err error) error { return &RecipeError{File: b.r.Path, Line: bs.line, Key: "boot", Err: err} }
	if b.opts.Signer == nil {
		return ErrBootUnsigned
	}
	read := func(what, p string) ([]byte, error) {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fail(fmt.Errorf("%s: %w", what, err))
		}
		return data, nil
	}
	kernel, err := read("kernel", b.r.resolve(bs.Kernel))
	if err != nil {
		return err
	}
	sb := b.opts.SecureBoot
	if bs.SignKernel {
		if sb == nil {
			return &RecipeError{File: b.r.Path, Line: bs.line, Key: "boot.sign-kernel", Err: errors.New("needs a Secure Boot key: boot.sb-key and boot.sb-cert, or kiln build --sb-key and --sb-cert")}
		}
		if kernel, err = authenticode.Sign(kernel, sb.Signer, sb.Cert, authenticode.Options{Replace: true}); err != nil {
			return fail(fmt.Errorf("kernel: Secure Boot signing: %w", err))
		}
	}
	stub, err := read("stub", b.r.resolve(bs.Stub))
	if err != nil {
		return err
	}
	initPath := bs.Init
	if initPath == "" {
		if initPath, err = os.Executable(); err != nil {
			return fail(fmt.Errorf("init: %w", err))
		}
	} else {
		initPath = b.r.resolve(initPath)
	}
	init, err := read("init", initPath)
	if err != nil {
		return err
	}
	mods, err := boot.ResolveModules(b.r.resolve(bs.Modules), bs.Load)
	if err != nil {
		return fail(err)
	}
	pub, err := b.opts.Signer.PublicKey()
	if err != nil {
		return err
	}
	key, err := sign.PublicKeyPEM(pub)
	if err != nil {
		return err
	}
	initrd, err := boot.Initrd(boot.InitrdOptions{Init: init, Modules: mods, Key: key, Mtime: b.opts.SourceDateEpoch.Unix()})
	if err != nil {
		return err
	}
	cmdline := bs.Cmdline + "\n"
	osrel := fmt.Sprintf("NAME=%q\nVERSION=%q\nID=kiln\n", b.r.Name, b.r.Version)
	uki, err := (&boot.UKI{Stub: stub, Kernel: kernel, Initrd: initrd, Cmdline: bs.Cmdline, OSRel: osrel}).Bytes()
	if err != nil {
		return fail(err)
	}
	if sb != nil {
		// The stub may carry its distribution's signature: the chooser is
		// signed whole, by the Secure Boot key alone.
		if uki, err = authenticode.Sign(uki, sb.Signer, sb.Cert, authenticode.Options{Replace: true}); err != nil {
			return fail(fmt.Errorf("chooser: Secure Boot signing: %w", err))
		}
	}
	put := func(t *tree.Tree, p string, data []byte) error {
		n := &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: b.opts.SourceDateEpoch, Size: int64(len(data)), Content: tree.Bytes(data)}
		if err := t.Put(p, n); err != nil {
			return fmt.Errorf("boot: %s: %w", p, err)
		}
		return nil
	}
	usr := trees[usrSpec(b.r).Label]
	for _, f := range []struct {
		name string
		data []byte
	}{{"vmlinuz", kernel}, {"initrd.img", initrd}, {"cmdline", []byte(cmdline)}} {
		if err := put(usr, boot.SlotBootDir+"/"+f.name, f.data); err != nil {
			return err
		}
	}
	esp := trees["EFI-SYSTEM"]
	if esp == nil {
		return fail(errors.New("the recipe does not fill EFI-SYSTEM"))
	}
	b.log.Info("boot", "kernel", len(kernel), "initrd", len(initrd), "modules", len(mods), "uki", len(uki), "secure_boot", sb != nil, "kernel_signed", bs.SignKernel)
	return put(esp, "EFI/BOOT/BOOTX64.EFI", uki)
}
