package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// In CI (no terminal) progress is one plain line per stage; on a
// terminal, a redrawn bar with the bytes done.
func TestProgressOutput(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, false)
	if _, ok := p.(*lineProgress); !ok {
		t.Fatalf("a non-terminal got %T", p)
	}
	p.Start("filesystem USR-A", 4096)
	p.Add(2048)
	p.Add(2048)
	p.End()
	if got := buf.String(); !strings.HasPrefix(got, "kiln: filesystem USR-A: 4.0 KiB in ") || strings.Count(got, "\n") != 1 {
		t.Errorf("line progress %q", got)
	}
	buf.Reset()
	bar := &barProgress{w: &buf}
	bar.Start("verity USR-A", 100)
	bar.Add(50)
	bar.End()
	out := buf.String()
	if !strings.Contains(out, "verity USR-A") || !strings.Contains(out, "[###############...............]") || !strings.HasSuffix(out, "\n") {
		t.Errorf("bar progress %q", out)
	}
	buf.Reset()
	q := newProgress(&buf, true)
	q.Start("sources", 0)
	q.Add(10)
	q.End()
	if buf.Len() != 0 {
		t.Errorf("quiet progress printed %q", buf.String())
	}
}

// A stage that runs longer than the interval prints how far it got, in a
// pipe too, then its end line as before.
func TestLineProgressWhileRunning(t *testing.T) {
	var buf bytes.Buffer
	p := &lineProgress{w: &buf, interval: 20 * time.Millisecond}
	p.Start("uploading disk.img.zst", 4<<20)
	p.Add(1 << 20) // before the interval: nothing
	time.Sleep(30 * time.Millisecond)
	p.Add(1 << 20)
	time.Sleep(30 * time.Millisecond)
	p.Add(2 << 20)
	p.End()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 ||
		!strings.HasPrefix(lines[0], "kiln: uploading disk.img.zst: 2.0 MiB of 4.0 MiB (50%) after ") ||
		!strings.HasPrefix(lines[1], "kiln: uploading disk.img.zst: 4.0 MiB of 4.0 MiB (100%) after ") ||
		!strings.HasPrefix(lines[2], "kiln: uploading disk.img.zst: 4.0 MiB in ") {
		t.Errorf("lines %q", lines)
	}
}
