package build

import (
	"sync/atomic"

	"github.com/kiln-os/kiln/internal/progress"
)

// Progress receives a build's progress: stages in order, and bytes as they
// are processed (see internal/progress).
type Progress = progress.Reporter

// NoProgress discards progress reports.
type NoProgress = progress.None

// progressCounter forwards byte counts to a Progress and keeps a total.
type progressCounter struct {
	p     Progress
	total atomic.Int64
}

func (c *progressCounter) add(n int64) {
	if c == nil {
		return
	}
	c.total.Add(n)
	c.p.Add(n)
}
