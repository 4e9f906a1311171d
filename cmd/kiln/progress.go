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

// lineProgress prints "stage: N bytes in T" when each stage ends, and,
// while a stage runs longer, a line of how far it got every
// lineInterval, so that a CI log (and a CI system that stops jobs that
// print nothing) sees a long upload or hash move.
type lineProgress struct {
	w        io.Writer
	interval time.Duration // 0: lineInterval
	mu       sync.Mutex
	stage    string
	total    int64
	started  time.Time
	printed  time.Time
	done     atomic.Int64
}

// lineInterval is how often a running stage prints a line in a pipe.
const lineInterval = 10 * time.Second

func (p *lineProgress) Start(stage string, total int64) {
	p.mu.Lock()
	p.stage, p.total, p.started, p.printed = stage, total, time.Now(), time.Now()
	p.mu.Unlock()
	p.done.Store(0)
}

func (p *lineProgress) Add(n int64) {
	done := p.done.Add(n)
	interval := p.interval
	if interval == 0 {
		interval = lineInterval
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.printed) < interval {
		return
	}
	p.printed = time.Now()
	elapsed := time.Since(p.started).Round(time.Second)
	if p.total > 0 {
		fmt.Fprintf(p.w, "kiln: %s: %s of %s (%d%%) after %v\n", p.stage, layout.HumanSize(done), layout.HumanSize(p.total), min(done, p.total)*100/p.total, elapsed)
	} else {
		fmt.Fprintf(p.w, "kiln: %s: %s after %v\n", p.stage, layout.HumanSize(done), elapsed)
	}
}

func (p *lineProgress) End() {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := time.Since(p.started).Round(time.Millisecond)
	if n := p.done.Load(); n > 0 {
		fmt.Fprintf(p.w, "kiln: %s: %s in %v\n", p.stage, layout.HumanSize(n), d)
	} else {
		fmt.Fprintf(p.w, "kiln: %s: done in %v\n", p.stage, d)
	}
}

// Fail says the stage stopped, and how far it got.
func (p *lineProgress) Fail() {
	p.mu.Lock()
	defer p.mu.Unlock()
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
