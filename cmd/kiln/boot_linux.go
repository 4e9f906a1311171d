//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build/boot"
)

// bootInit runs kiln as the initrd's PID 1. It returns only by booting
// something else (kexec, or exec of the system's init). When the slot's
// own initrd fails it reboots: the chooser counts the failed boot and,
// after the slot's tries, falls back. When the chooser finds no slot that
// can boot it says why on the console and powers the machine off.
func bootInit() {
	err := boot.Init(context.Background(), os.Stdout)
	cmd, what := unix.LINUX_REBOOT_CMD_POWER_OFF, "powering off"
	if errors.Is(err, boot.ErrSlotStage) {
		cmd, what = unix.LINUX_REBOOT_CMD_RESTART, "rebooting: the boot path counts this failed boot"
	}
	fmt.Fprintf(os.Stdout, "kiln: boot failed: %v\nkiln: %s\n", err, what)
	time.Sleep(time.Second)
	unix.Sync()
	unix.Reboot(cmd)
	select {}
}
