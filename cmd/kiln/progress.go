package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/term"

	"github.com/kiln-os/kiln/build"
	"github.com/kiln-os/kiln/layout"
)

// newProgress returns a progress bar when w is a terminal, else plain log
// lines (one per stage) that read well in CI logs.
func newProgress(w io.Writer, quiet bool) build.Progress {
	if quiet {
		return build.NoProgress{}
	}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return &barProgress{w: w}
	}
	return &lineProgress{w: w}
}

// lineProgress prints "stage: N bytes in T" when each stage ends.
type lineProgress struct {
	w       io.Writer
	stage   string
	started time.Time
	done    atomic.Int64
}

func (p *lineProgress) Start(stage string, total int64) {
	p.stage, p.started = stage, time.Now()
	p.done.Store(0)
}

func (p *lineProgress) Add(n int64) { p.done.Add(n) }

func (p *lineProgress) End() {
	d := time.Since(p.started).Round(time.Millisecond)
	if n := p.done.Load(); n > 0 {
		fmt.Fprintf(p.w, "kiln: %s: %s in %v\n", p.stage, layout.HumanSize(n), d)
	} else {
		fmt.Fprintf(p.w, "kiln: %s: done in %v\n", p.stage, d)
	}
}

// Fail says the stage stopped, and how far it got.
func (p *lineProgress) Fail() {
	if n := p.done.Load(); n > 0 {
		fmt.Fprintf(p.w, "kiln: %s: stopped after %s\n", p.stage, layout.HumanSize(n))
	} else {
		fmt.Fprintf(p.w, "kiln: %s: stopped before it began\n", p.stage)
	}
}

// barProgress redraws one line with the stage, a bar and the bytes done,
// at most ten times a second.
type barProgress struct {
	w       io.Writer
	mu      sync.Mutex
	stage   string
	total   int64
	done    atomic.Int64
	started time.Time
	drawn   time.Time
}

func (p *barProgress) Start(stage string, total int64) {
	p.mu.Lock()
	p.stage, p.total, p.started = stage, total, time.Now()
	p.done.Store(0)
	p.mu.Unlock()
	p.draw(true)
}

func (p *barProgress) Add(n int64) {
	p.done.Add(n)
	p.draw(false)
}

func (p *barProgress) End() {
	p.draw(true)
	fmt.Fprintln(p.w)
}

// Fail ends the bar's line with what was done and says it stopped.
func (p *barProgress) Fail() {
	p.draw(true)
	fmt.Fprintln(p.w, " stopped")
}

func (p *barProgress) draw(force bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !force && time.Since(p.drawn) < 100*time.Millisecond {
		return
	}
	p.drawn = time.Now()
	done := p.done.Load()
	const width = 30
	bar := ""
	if p.total > 0 {
		filled := int(min(done, p.total) * width / p.total)
		for i := range width {
			if i < filled {
				bar += "#"
			} else {
				bar += "."
			}
		}
		bar = "[" + bar + "] "
	}
	fmt.Fprintf(p.w, "\r\033[K%-28s %s%s %v", p.stage, bar, layout.HumanSize(done), time.Since(p.started).Round(100*time.Millisecond))
}
