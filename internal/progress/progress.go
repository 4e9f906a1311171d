// Package progress is how kiln's long operations (builds, payload
// generation and install) report progress: stages in order, and the bytes
// each has done. The CLI draws a bar on a terminal and writes one line a
// stage elsewhere; library callers may pass nil for none.
package progress

import "io"

// Reporter receives an operation's progress. Add may be called from
// several goroutines.
type Reporter interface {
	// Start begins a stage; total is its size in bytes, 0 when unknown.
	Start(stage string, total int64)
	// Add reports n more bytes done in the current stage.
	Add(n int64)
	// End finishes the current stage.
	End()
}

// Failer is a Reporter that can end a stage that did not finish.
type Failer interface {
	// Fail ends the current stage, which stopped before its end.
	Fail()
}

// Fail ends r's current stage as stopped: with Fail when r has it, else
// with End.
func Fail(r Reporter) {
	if f, ok := r.(Failer); ok {
		f.Fail()
		return
	}
	r.End()
}

// None discards progress reports.
type None struct{}

// Start does nothing.
func (None) Start(string, int64) {}

// Add does nothing.
func (None) Add(int64) {}

// End does nothing.
func (None) End() {}

var _ Reporter = None{}

// Or returns r, or None when r is nil.
func Or(r Reporter) Reporter {
	if r == nil {
		return None{}
	}
	return r
}

// Reader counts the bytes read through it into a Reporter.
type Reader struct {
	R io.Reader
	P Reporter
}

func (r Reader) Read(b []byte) (int, error) {
	n, err := r.R.Read(b)
	r.P.Add(int64(n))
	return n, err
}
