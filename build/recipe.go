// Package build turns a recipe into a disk image: recipe → sources → tree
// → filesystem writers → verity → disk assembly → manifest.
package build

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/kiln-os/kiln/build/version"
	"github.com/kiln-os/kiln/internal/yamlerr"
	"github.com/kiln-os/kiln/layout"
)

// Recipe is a parsed, validated build recipe.
type Recipe struct {
	// Path is the recipe file; Dir is its directory, the base of every
	// relative path in it.
	Path, Dir string
	// Digest is the SHA-256 (hex) of the recipe file's bytes, and Sets
	// the --set key=value overrides applied to it, in order: what the
	// provenance names as the build's inputs.
	Digest string
	Sets   []string

	Name    string
	Version string
	Channel string
	// RollbackFloor, when set, is the oldest release a node may boot once
	// a slot holding this release has been marked good: the boot path's
	// version floor rises to it (see docs/boot.md). It goes into the
	// slot's signed release record.
	RollbackFloor string
	// Seed derives the disk and partition GUIDs, filesystem UUIDs, hash
	// seeds and the verity salt. Default: "NAME/VERSION".
	Seed string
	// Layout is the resolved layout; Size the disk size (0: the layout's).
	Layout *layout.Layout
	Size   int64
	// Partitions are the partitions the recipe fills, in layout order.
	Partitions []*PartitionSpec
	// Boot, when set, makes the image bootable (see BootSpec).
	Boot *BootSpec
}

// BootSpec says where what boots comes from. The build makes an initrd
// (kiln itself as /init, the kernel modules Load names with their
// dependencies, the release key) and puts the kernel, that initrd and
// Cmdline into the USR slot (/usr/lib/kiln/boot: they belong to the slot,
// and an update changes them), and a unified kernel image of the same
// three, the chooser, on the ESP as \EFI\BOOT\BOOTX64.EFI. Paths are
// relative to the recipe.
type BootSpec struct {
	Kernel  string   // the kernel, a bzImage (Debian: /boot/vmlinuz-VERSION)
	Modules string   // the kernel's /lib/modules/VERSION
	Load    []string // modules the initrd loads (virtio_blk, dm_verity, ...)
	Stub    string   // the UEFI stub (systemd-boot-efi: linuxx64.efi.stub)
	Cmdline string   // the kernel command line
	// Init is the kiln binary the initrd runs as /init (default: the one
	// running the build).
	Init string
	// SBKey and SBCert, when set, are the Secure Boot signing key (a key
	// reference: PEM file relative to the recipe, env://VAR or KMS URI)
	// and its X.509 certificate: the chooser on the ESP is signed with
	// them (Authenticode), and with SignKernel the kernel the slot carries
	// too (its own signature, e.g. the distribution's, replaced).
	// kiln build's --sb-key and --sb-cert take precedence.
	SBKey, SBCert string
	SignKernel    bool
	line          int
}

// PartitionSpec is what goes into one partition.
type PartitionSpec struct {
	Label      string
	Filesystem string // vfat, ext4 or squashfs
	Verity     bool
	// Source is "dir:PATH", "tar:PATH" or a container image reference
	// (oci:PATH[:TAG], oci-archive:PATH, docker-archive:PATH,
	// docker://REF); "" for none. Paths are resolved against Recipe.Dir.
	Source string
	// Subdir of the source becomes the filesystem root.
	Subdir string
	// Files are added over the source.
	Files []FileSpec
	// Compression for squashfs: "zstd" (default) or "gzip"; Level 0 is the
	// compressor's default.
	Compression string
	Level       int
	// FSLabel is the filesystem label (default: the partition label).
	FSLabel string

	line, sourceLine int
}

// FileSpec is one file a recipe places in a partition.
type FileSpec struct {
	Path    string // absolute path inside the filesystem
	From    string // host file, relative to the recipe
	Content string // inline content (when From is empty)
	Mode    uint16 // permission bits; default 0644
	UID     uint32
	GID     uint32
	line    int
}

// RecipeError is a problem with a recipe, naming the file, line and key.
type RecipeError struct {
	File string
	Line int
	Key  string
	Err  error
}

// ErrRecipe is wrapped by every *RecipeError.
var ErrRecipe = errors.New("build: invalid recipe")

func (e *RecipeError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "recipe %s", e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		fmt.Fprintf(&b, ": %s", e.Key)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return b.String()
}

// Unwrap returns ErrRecipe and the cause.
func (e *RecipeError) Unwrap() []error { return []error{ErrRecipe, e.Err} }

type yamlRecipe struct {
	Name       string                    `yaml:"name"`
	Version    string                    `yaml:"version"`
	Channel    string                    `yaml:"channel"`
	Floor      string                    `yaml:"rollback-floor"`
	Seed       string                    `yaml:"seed"`
	Layout     string                    `yaml:"layout"`
	Size       string                    `yaml:"size"`
	Partitions map[string]*yamlPartition `yaml:"partitions"`
	Boot       *yamlBoot                 `yaml:"boot"`
}

type yamlBoot struct {
	Kernel  string   `yaml:"kernel"`
	Modules string   `yaml:"modules"`
	Load    []string `yaml:"load"`
	Stub    string   `yaml:"stub"`
	Cmdline string   `yaml:"cmdline"`
	Init    string   `yaml:"init"`
	SBKey   string   `yaml:"sb-key"`
	SBCert  string   `yaml:"sb-cert"`
	// SignKernel signs the slot's kernel with the Secure Boot key.
	SignKernel bool `yaml:"sign-kernel"`
}

type yamlPartition struct {
	Filesystem  string     `yaml:"filesystem"`
	Verity      *bool      `yaml:"verity"`
	Source      string     `yaml:"source"`
	Subdir      string     `yaml:"subdir"`
	Files       []yamlFile `yaml:"files"`
	Compression string     `yaml:"compression"`
	Level       int        `yaml:"level"`
	Label       string     `yaml:"fs-label"`
}

type yamlFile struct {
	Path    string  `yaml:"path"`
	From    string  `yaml:"from"`
	Content *string `yaml:"content"`
	Mode    string  `yaml:"mode"`
	UID     int64   `yaml:"uid"`
	GID     int64   `yaml:"gid"`
}

// LoadRecipe reads, overrides (--set key=value, dotted keys such as
// "version" or "partitions.USR-A.source") and validates a recipe.
func LoadRecipe(path string, sets []string) (*Recipe, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &RecipeError{File: path, Err: err}
	}
	return ParseRecipe(data, path, sets)
}

// ParseRecipe is LoadRecipe on bytes already read from path.
func ParseRecipe(data []byte, path string, sets []string) (*Recipe, error) {
	fail := func(line int, key string, err error) error {
		return &RecipeError{File: path, Line: line, Key: key, Err: err}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line, msg := yamlerr.Syntax(data, err)
		return nil, fail(line, "", errors.New(msg))
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, fail(0, "", errors.New("not a YAML mapping"))
	}
	for _, s := range sets {
		key, value, ok := strings.Cut(s, "=")
		if !ok || key == "" {
			return nil, fail(0, "--set "+s, errors.New("want key=value"))
		}
		setKey(doc.Content[0], strings.Split(key, "."), value)
	}
	// Decode strictly: an unknown key is an error with its line.
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	if err := enc.Encode(&doc); err != nil {
		return nil, fail(0, "", err)
	}
	var y yamlRecipe
	dec := yaml.NewDecoder(bytes.NewReader(buf.Bytes()))
	dec.KnownFields(true)
	if err := dec.Decode(&y); err != nil {
		// Lines refer to the re-encoded document: find the key there, then
		// its line in the user's.
		var reenc yaml.Node
		yaml.Unmarshal(buf.Bytes(), &reenc)
		if ps := yamlerr.Problems(err, &reenc); len(ps) > 0 {
			return nil, fail(yamlerr.LineOf(&doc, ps[0].Key), ps[0].Key, errors.New(ps[0].Msg))
		}
		return nil, fail(0, "", err)
	}
	lines := keyLines(doc.Content[0])

	sum := sha256.Sum256(data)
	r := &Recipe{Path: path, Dir: filepath.Dir(path), Digest: hex.EncodeToString(sum[:]), Sets: append([]string(nil), sets...),
		Name: y.Name, Version: y.Version, Channel: y.Channel, Seed: y.Seed}
	if r.Name == "" {
		return nil, fail(lines["name"], "name", errors.New("missing"))
	}
	if r.Version == "" {
		return nil, fail(lines["version"], "version", errors.New("missing"))
	}
	rv, err := version.Parse(r.Version)
	if err != nil {
		return nil, fail(lines["version"], "version", err)
	}
	if y.Floor != "" {
		fv, err := version.Parse(y.Floor)
		if err != nil {
			return nil, fail(lines["rollback-floor"], "rollback-floor", err)
		}
		if rv.Compare(fv) < 0 {
			return nil, fail(lines["rollback-floor"], "rollback-floor", fmt.Errorf("%s is above the release's own version %s: the release could never boot", y.Floor, r.Version))
		}
		r.RollbackFloor = y.Floor
	}
	if r.Seed == "" {
		r.Seed = r.Name + "/" + r.Version
	}
	if y.Layout == "" {
		y.Layout = "coreos"
	}
	layoutPath := y.Layout
	if strings.ContainsAny(layoutPath, "/.") && !filepath.IsAbs(layoutPath) {
		layoutPath = filepath.Join(r.Dir, layoutPath)
	}
	if r.Layout, err = layout.Load(layoutPath); err != nil {
		return nil, fail(lines["layout"], "layout", err)
	}
	if _, set := lines["size"]; set {
		if r.Size, err = layout.ParseSize(y.Size); err != nil {
			return nil, fail(lines["size"], "size", err)
		}
		if r.Size <= 0 {
			return nil, fail(lines["size"], "size", errors.New("a disk needs a size above 0 (leave size out for the layout's own)"))
		}
	}
	if _, err := r.Layout.Plan(r.Size, r.Seed); err != nil {
		return nil, fail(lines["size"], "size", err)
	}
	for label, yp := range y.Partitions {
		key := "partitions." + label
		line := lines[key]
		lp := r.Layout.Partition(label)
		if lp == nil || lp.Blank {
			return nil, fail(line, key, fmt.Errorf("layout %s has no partition labelled %q", r.Layout.Name, label))
		}
		if yp == nil {
			yp = &yamlPartition{}
		}
		p := &PartitionSpec{Label: label, Filesystem: yp.Filesystem, Source: yp.Source, Subdir: yp.Subdir,
			Compression: yp.Compression, Level: yp.Level, FSLabel: yp.Label, line: line, sourceLine: lines[key+".source"]}
		if p.Filesystem == "" {
			p.Filesystem = lp.Filesystem
		}
		switch p.Filesystem {
		case "vfat", "ext4", "squashfs":
		case "":
			return nil, fail(line, key+".filesystem", errors.New("missing (the layout gives none for this partition)"))
		default:
			return nil, fail(lines[key+".filesystem"], key+".filesystem", fmt.Errorf("unknown filesystem %q: want vfat, ext4 or squashfs", p.Filesystem))
		}
		p.Verity = lp.Verity && (p.Filesystem == "ext4" || p.Filesystem == "squashfs")
		if yp.Verity != nil {
			p.Verity = *yp.Verity
			if p.Verity && p.Filesystem == "vfat" {
				return nil, fail(lines[key+".verity"], key+".verity", errors.New("needs a read-only filesystem (ext4 or squashfs)"))
			}
		}
		switch p.Compression {
		case "":
		case "zstd", "gzip":
			if p.Filesystem != "squashfs" {
				return nil, fail(lines[key+".compression"], key+".compression", errors.New("only squashfs is compressed"))
			}
		default:
			return nil, fail(lines[key+".compression"], key+".compression", fmt.Errorf("unknown compression %q: want zstd or gzip", p.Compression))
		}
		if p.Source != "" {
			if err := checkSource(p.Source); err != nil {
				return nil, fail(lines[key+".source"], key+".source", err)
			}
		}
		for i, yf := range yp.Files {
			fk := fmt.Sprintf("%s.files[%d]", key, i)
			f := FileSpec{Path: yf.Path, From: yf.From, Mode: 0o644, line: line}
			if !strings.HasPrefix(f.Path, "/") {
				return nil, fail(line, fk+".path", fmt.Errorf("%q: want an absolute path inside the filesystem", f.Path))
			}
			if (yf.From == "") == (yf.Content == nil) {
				return nil, fail(line, fk, errors.New("give exactly one of from and content"))
			}
			if yf.Content != nil {
				f.Content = *yf.Content
			}
			if yf.Mode != "" {
				m, err := strconv.ParseUint(yf.Mode, 8, 16)
				if err != nil || m > 0o7777 {
					return nil, fail(line, fk+".mode", fmt.Errorf("%q: want an octal mode such as \"0644\"", yf.Mode))
				}
				f.Mode = uint16(m)
			}
			if yf.UID < 0 || yf.UID > 1<<32-1 || yf.GID < 0 || yf.GID > 1<<32-1 {
				return nil, fail(line, fk, errors.New("uid and gid must be 0..4294967295"))
			}
			f.UID, f.GID = uint32(yf.UID), uint32(yf.GID)
			p.Files = append(p.Files, f)
		}
		r.Partitions = append(r.Partitions, p)
	}
	if yb := y.Boot; yb != nil {
		b := &BootSpec{Kernel: yb.Kernel, Modules: yb.Modules, Load: yb.Load, Stub: yb.Stub, Cmdline: yb.Cmdline, Init: yb.Init,
			SBKey: yb.SBKey, SBCert: yb.SBCert, SignKernel: yb.SignKernel, line: lines["boot"]}
		if (b.SBKey == "") != (b.SBCert == "") {
			k, other := "boot.sb-key", "boot.sb-cert"
			if b.SBKey != "" {
				k, other = other, k
			}
			return nil, fail(lines[other], k, fmt.Errorf("missing: %s needs it (Secure Boot signing takes a key and its certificate)", other))
		}
		if b.SBKey != "" && !strings.Contains(b.SBKey, "://") {
			b.SBKey = r.resolve(b.SBKey)
		}
		if b.SBCert != "" {
			b.SBCert = r.resolve(b.SBCert)
		}
		for _, f := range []struct{ key, val string }{{"kernel", b.Kernel}, {"modules", b.Modules}, {"stub", b.Stub}} {
			if f.val == "" {
				return nil, fail(lines["boot"], "boot."+f.key, errors.New("missing"))
			}
		}
		if usrSpec(r) == nil {
			return nil, fail(lines["boot"], "boot", errors.New("a bootable image needs a verity-protected USR partition"))
		}
		if r.Layout.Partition("EFI-SYSTEM") == nil {
			return nil, fail(lines["boot"], "boot", fmt.Errorf("layout %s has no EFI-SYSTEM partition", r.Layout.Name))
		}
		r.Boot = b
		// The ESP gets the chooser even when the recipe puts nothing else
		// there.
		has := false
		for _, p := range r.Partitions {
			has = has || p.Label == "EFI-SYSTEM"
		}
		if !has {
			r.Partitions = append(r.Partitions, &PartitionSpec{Label: "EFI-SYSTEM", Filesystem: "vfat", line: b.line})
		}
	}
	// Layout order, so the build and the manifest are deterministic.
	order := map[string]int{}
	for i, lp := range r.Layout.Partitions {
		order[lp.Label] = i
	}
	sortBy(r.Partitions, func(p *PartitionSpec) int { return order[p.Label] })
	return r, nil
}

// checkSource validates the form of a source spec (not whether it exists).
func checkSource(s string) error {
	kind, rest, ok := strings.Cut(s, ":")
	switch {
	case !ok || rest == "":
		return fmt.Errorf("%q: want dir:PATH, tar:PATH, oci:PATH[:TAG], oci-archive:PATH, docker-archive:PATH or docker://REF", s)
	case kind == "dir" || kind == "tar":
		return nil
	case kind == "oci" || kind == "oci-archive" || kind == "docker-archive" || kind == "docker":
		return nil
	}
	return fmt.Errorf("%q: unknown source kind %q: want dir, tar, oci, oci-archive, docker-archive or docker", s, kind)
}

// setKey sets a dotted key in a YAML mapping, creating mappings on the way.
func setKey(m *yaml.Node, path []string, value string) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == path[0] {
			v := m.Content[i+1]
			if len(path) == 1 {
				*v = yaml.Node{Kind: yaml.ScalarNode, Value: value, Line: v.Line}
				return
			}
			if v.Kind != yaml.MappingNode {
				*v = yaml.Node{Kind: yaml.MappingNode, Line: v.Line}
			}
			setKey(v, path[1:], value)
			return
		}
	}
	k := &yaml.Node{Kind: yaml.ScalarNode, Value: path[0]}
	if len(path) == 1 {
		m.Content = append(m.Content, k, &yaml.Node{Kind: yaml.ScalarNode, Value: value})
		return
	}
	v := &yaml.Node{Kind: yaml.MappingNode}
	m.Content = append(m.Content, k, v)
	setKey(v, path[1:], value)
}

// keyLines maps dotted keys ("partitions.USR-A.source") to their lines.
func keyLines(m *yaml.Node) map[string]int {
	out := map[string]int{}
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := prefix + n.Content[i].Value
			out[k] = n.Content[i].Line
			walk(n.Content[i+1], k+".")
		}
	}
	walk(m, "")
	return out
}

func sortBy[T any](s []T, key func(T) int) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && key(s[j]) < key(s[j-1]); j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}
