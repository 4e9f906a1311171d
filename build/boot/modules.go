package boot

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Module is a kernel module to load at boot.
type Module struct {
	Name string // as the kernel names it: underscores, no suffix
	Path string // under the modules directory
	Data []byte
}

// modName normalizes a module name as the kernel does: '-' is '_'.
func modName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// ResolveModules finds the named modules under dir (a kernel's
// /lib/modules/VERSION) and every module they depend on, read from each
// module's own .modinfo "depends=" (so no modules.dep is needed), and
// returns them in an order the kernel can load them: dependencies first.
// Only plain .ko files are read. A name the kernel has built in (listed
// in dir's modules.builtin) needs no file and is left out.
func ResolveModules(dir string, names []string) ([]Module, error) {
	index := map[string]string{}
	root, err := filepath.EvalSymlinks(dir) // Debian's /lib/modules/current-style links
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(root, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[modName(strings.TrimSuffix(path.Base(l), ".ko"))] = true
		}
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			index[modName(strings.TrimSuffix(d.Name(), ".ko"))] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	var out []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		name = modName(name)
		switch state[name] {
		case 1:
			return fmt.Errorf("kernel module %s: dependency cycle through %s", name, from)
		case 2:
			return nil
		}
		if builtin[name] {
			return nil
		}
		p, ok := index[name]
		if !ok {
			if from != "" {
				return fmt.Errorf("kernel module %s, needed by %s, is not under %s", name, from, dir)
			}
			return fmt.Errorf("kernel module %s is not under %s", name, dir)
		}
		state[name] = 1
		data, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("kernel module %s: %w", name, err)
		}
		deps, err := moduleDepends(data)
		if err != nil {
			return fmt.Errorf("kernel module %s (%s): %w", name, p, err)
		}
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		rel, _ := filepath.Rel(root, p)
		out = append(out, Module{Name: name, Path: rel, Data: data})
		return nil
	}
	for _, n := range names {
		if err := visit(n, ""); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("no .modinfo section")
	}
	info, err := sec.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}
