// Command kiln builds read-only, signed OS disk images in the CoreOS /
// Flatcar style, makes update payloads between releases and verifies
// images and A/B slots offline. It needs no root, loop devices or mounts.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Run(ctx, Env{Args: os.Args[1:], Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
	stop()
	os.Exit(code)
}
