package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/build"
	"github.com/kiln-os/kiln/build/payload"
	"github.com/kiln-os/kiln/build/source"
	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // a build or verification failed, or a check found differences
	exitUsage   = 2 // bad arguments, flags or input files (layout, recipe)
)

// Env is what a command run sees of the world, so tests can run commands
// in-process and read what they print.
type Env struct {
	Args   []string
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// exitError carries an exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError marks err as the user's mistake (exit code 2).
func usageError(err error) error { return &exitError{exitUsage, err} }

// failed marks err as a failed check or build (exit code 1) whose message
// was already printed, or is err itself.
func failed(err error) error { return &exitError{exitFailure, err} }

// Interrupted is the cause of a command's cancelled context when a signal
// stopped it.
type Interrupted struct{ Signal os.Signal }

func (i *Interrupted) Error() string { return "interrupted by " + signalName(i.Signal) }

// ExitCode is the shell's convention: 128 + the signal number.
func (i *Interrupted) ExitCode() int {
	if s, ok := i.Signal.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return exitFailure
}

func signalName(s os.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}

// Run executes one kiln command line and returns its exit code: 0, 1 for
// a failed check, build or verification, 2 for bad usage or input, 128+N
// when signal N interrupted it. The error goes to stderr, as a line, or
// with --json as a JSON object (message, exit code and, where known, the
// file, line and key).
func Run(ctx context.Context, env Env) int {
	root, g := newRootCommand(env)
	root.SetArgs(env.Args)
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	code := exitCode(err)
	var intr *Interrupted
	if errors.As(context.Cause(ctx), &intr) {
		err = fmt.Errorf("%w; stopped: %v", intr, err)
		code = intr.ExitCode()
	}
	if g.json {
		enc := json.NewEncoder(env.Stderr)
		enc.Encode(errorJSON(err, code))
	} else {
		fmt.Fprintf(env.Stderr, "kiln: %v\n", err)
	}
	return code
}

// inputErrors are the errors that mean the input is at fault — a missing
// or malformed file, a recipe, layout, key, disk or payload that cannot be
// what it should — wherever they surface: exit 2.
var inputErrors = []error{
	fs.ErrNotExist, fs.ErrPermission, layout.ErrInvalid, layout.ErrNoGPT, layout.ErrNotDisk, layout.ErrTooLarge,
	build.ErrRecipe, build.ErrBootUnsigned, build.ErrUnstorable, tree.ErrBadPath, tree.ErrLinux, source.ErrTooLarge, source.ErrUnsupported, source.ErrWindow,
	sign.ErrInvalidKey, sign.ErrUnsupportedKey, sign.ErrUnknownScheme,
}

// exitCode classifies err: an explicit usage or failure mark, else an
// input error anywhere in its chain, else a failure.
func exitCode(err error) int {
	var pf *payload.FormatError
	var ff *build.ForeignFilesError
	switch {
	case isCobraUsage(err), errors.As(err, &pf), errors.As(err, &ff):
		return exitUsage
	}
	for _, e := range inputErrors {
		if errors.Is(err, e) {
			return exitUsage
		}
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitFailure
}

// errorJSON is an error as --json prints it.
func errorJSON(err error, code int) map[string]any {
	out := map[string]any{"error": err.Error(), "exit_code": code}
	var re *build.RecipeError
	var le *layout.Error
	switch {
	case errors.As(err, &re):
		out["file"] = re.File
		if re.Line > 0 {
			out["line"] = re.Line
		}
		if re.Key != "" {
			out["key"] = re.Key
		}
	case errors.As(err, &le):
		out["file"] = le.Source
		if le.Line > 0 {
			out["line"] = le.Line
		}
		if le.Field != "" {
			out["key"] = le.Field
		}
		if le.Partition != "" {
			out["partition"] = le.Partition
		}
	}
	return out
}

// isCobraUsage recognises cobra's own flag and argument errors, which it
// returns as plain errors.
func isCobraUsage(err error) bool {
	var u *cobraUsage
	return errors.As(err, &u)
}

type cobraUsage struct{ err error }

func (e *cobraUsage) Error() string { return e.err.Error() }
func (e *cobraUsage) Unwrap() error { return e.err }

// globals are the flags every command has.
type globals struct {
	json    bool
	verbose bool
	env     Env
}

func (g *globals) logger() *slog.Logger {
	level := slog.LevelWarn
	if g.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(g.env.Stderr, &slog.HandlerOptions{Level: level}))
}

// printJSON writes v as indented JSON to stdout.
func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.env.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newRootCommand(env Env) (*cobra.Command, *globals) {
	g := &globals{env: env}
	root := &cobra.Command{
		Use:           "kiln",
		Short:         "Build, update and verify read-only OS disk images",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.PersistentFlags().BoolVar(&g.json, "json", false, "print machine-readable JSON")
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "log details to stderr")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &cobraUsage{fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	root.AddCommand(newBuildCommand(g), newKeygenCommand(g), newSignCommand(g), newVerifyCommand(g), newPayloadCommand(g), newLayoutCommand(g), newSlotCommand(g), newPushCommand(g), newPullCommand(g), newConvertCommand(g), newSecureBootCommand(g), newVersionCommand(g))
	wrapArgs(root)
	return root, g
}

// wrapArgs makes cobra's argument-count errors usage errors everywhere.
func wrapArgs(c *cobra.Command) {
	if c.Args != nil {
		check := c.Args
		c.Args = func(cmd *cobra.Command, args []string) error {
			if err := check(cmd, args); err != nil {
				return &cobraUsage{fmt.Errorf("%s: %w (usage: %s)", cmd.CommandPath(), err, cmd.UseLine())}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		wrapArgs(sub)
	}
	if c.HasSubCommands() && c.RunE == nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return &cobraUsage{fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())}
			}
			if cmd.HasParent() {
				return &cobraUsage{fmt.Errorf("%s: a subcommand is needed (see '%s --help')", cmd.Name(), cmd.CommandPath())}
			}
			return &cobraUsage{fmt.Errorf("a subcommand is needed (see '%s --help')", cmd.CommandPath())}
		}
		c.Args = cobra.ArbitraryArgs
	}
}

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

func newVersionCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print kiln's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.json {
				return g.printJSON(map[string]string{"version": version})
			}
			fmt.Fprintln(g.env.Stdout, version)
			return nil
		},
	}
}
