package build

import "sync/atomic"

// Progress receives a build's progress: stages in order, and bytes as they
// are processed. Add may be called from several goroutines.
type Progress interface {
	// Start begins a stage; total is its size in bytes, 0 when unknown.
	Start(stage string, total int64)
	// Add reports n more bytes done in the current stage.
	Add(n int64)
	// End finishes the current stage.
	End()
}

// NoProgress discards progress reports.
type NoProgress struct{}

// Start does nothing.
func (NoProgress) Start(string, int64) {}

// Add does nothing.
func (NoProgress) Add(int64) {}

// End does nothing.
func (NoProgress) End() {}

var _ Progress = NoProgress{}

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
