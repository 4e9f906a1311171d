package registry

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// stagePrefix starts the name of a pull's staging directory inside the
// output directory.
const stagePrefix = ".kiln-pull-"

// stage is a pull's output directory, locked, and the staging directory
// inside it where the files are written until they are verified.
type stage struct {
	dir     string
	path    string
	lock    *os.File
	created bool
}

// openStage prepares dir for a pull. It must be missing (it is created) or
// empty but for the staging directories of killed pulls, which are
// removed. A second pull into dir is refused while this one runs.
func openStage(dir string) (*stage, error) {
	s := &stage{dir: dir}
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		s.created = true
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, classify(ErrOutput, err)
	}
	lock, err := os.Open(dir)
	if err != nil {
		s.abort()
		return nil, classify(ErrOutput, err)
	}
	s.lock = lock
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		s.abort()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, classify(ErrOutput, fmt.Errorf("%s: another kiln pull is writing into it", dir))
		}
		return nil, classify(ErrOutput, fmt.Errorf("locking %s: %w", dir, err))
	}
	entries, err := lock.ReadDir(-1)
	if err != nil {
		s.abort()
		return nil, classify(ErrOutput, err)
	}
	var other []string
	for _, e := range entries {
		if n := e.Name(); strings.HasPrefix(n, stagePrefix) && e.IsDir() {
			if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
				s.abort()
				return nil, classify(ErrOutput, fmt.Errorf("removing %s left by an earlier pull: %w", n, err))
			}
		} else {
			other = append(other, n)
		}
	}
	if len(other) > 0 {
		s.abort()
		return nil, classify(ErrOutput, fmt.Errorf("%s is not empty (%s): pull into a new or empty directory", dir, strings.Join(other, ", ")))
	}
	if s.path, err = os.MkdirTemp(dir, stagePrefix); err != nil {
		s.abort()
		return nil, classify(ErrOutput, err)
	}
	return s, nil
}

// file is the staged path of name.
func (s *stage) file(name string) string { return filepath.Join(s.path, name) }

// commit moves the staged files named into the output directory and
// removes the stage.
func (s *stage) commit(names []string) error {
	for _, n := range names {
		if err := os.Rename(s.file(n), filepath.Join(s.dir, n)); err != nil {
			for _, m := range names { // leave nothing half-moved
				os.Remove(filepath.Join(s.dir, m))
			}
			s.abort()
			return classify(ErrOutput, err)
		}
	}
	err := os.RemoveAll(s.path)
	s.path = ""
	s.unlock()
	return err
}

// abort removes the stage, and the directory when the pull created it.
func (s *stage) abort() {
	if s.path != "" {
		os.RemoveAll(s.path)
		s.path = ""
	}
	if s.created {
		os.Remove(s.dir)
	}
	s.unlock()
}

func (s *stage) unlock() {
	if s.lock != nil {
		s.lock.Close()
		s.lock = nil
	}
}
