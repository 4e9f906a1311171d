//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build/boot"
)

// bootInit runs kiln as the initrd's PID 1. It returns only by booting
// something else (kexec, or exec of the system's init); when that fails it
// says why on the console and powers the machine off, rather than letting
// the kernel panic and the firmware boot the same failure again and again.
func bootInit() {
	err := boot.Init(context.Background(), os.Stdout)
	fmt.Fprintf(os.Stdout, "kiln: boot failed: %v\nkiln: powering off\n", err)
	time.Sleep(time.Second)
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
