// Command kiln builds read-only, signed OS disk images in the CoreOS /
// Flatcar style, makes update payloads between releases and verifies
// images and A/B slots offline. It needs no root, loop devices or mounts.
// Run as PID 1 it is the boot path of the images it builds (see
// build/boot).
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// memoryLimit is the Go heap's soft limit unless GOMEMLIMIT says
// otherwise: kiln's working sets stay below it (payload generate's
// --compression xz-max holds one encoder of up to 350 MiB), and without it
// the garbage of finished operations let the process grow to 640 MiB
// before the collector ran.
const memoryLimit = 400 << 20

func main() {
	if os.Getpid() == 1 {
		bootInit() // never returns
	}
	if _, set := os.LookupEnv("GOMEMLIMIT"); !set {
		debug.SetMemoryLimit(memoryLimit)
	}
	// SIGINT or SIGTERM cancels the command's context: it stops within
	// about a second, removes what it had not finished, and exits 130 or
	// 143. A second signal exits at once.
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		cancel(&Interrupted{Signal: s})
		s = <-sigs
		os.Exit((&Interrupted{Signal: s}).ExitCode())
	}()
	code := Run(ctx, Env{Args: os.Args[1:], Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
	os.Exit(code)
}
