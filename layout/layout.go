// Package layout is kiln's model of a disk: layouts (data, read from YAML),
// the concrete partition table a layout gives for a disk size, GPT reading
// and writing, and the A/B slot state kept in GPT attribute bits.
package layout

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode/utf16"

	"go.yaml.in/yaml/v3"

	"github.com/kiln-os/kiln/internal/yamlerr"
)

// SectorSize is the logical sector size kiln writes and reads: 512 bytes.
const SectorSize = 512

// gptReservedSectors is what each GPT copy occupies at its end of the disk
// with the standard 128-entry array: header (or MBR + header) and 32
// sectors of entries, as disk_util's GPT_RESERVED_SECTORS.
const gptReservedSectors = 34

// Filesystems a layout partition may name.
var filesystems = map[string]bool{"": true, "none": true, "vfat": true, "ext4": true, "squashfs": true}

// Layout is a disk layout: numbered partitions with labels, types and
// sizes, in the spirit of Container Linux's disk_layout.json.
type Layout struct {
	Name        string
	Description string
	// Source is where the layout was read from: a file path or
	// "builtin:NAME". Errors name it.
	Source string
	// Alignment is the partition start alignment in bytes.
	Alignment int64
	// DiskAlignment rounds the layout's own disk size up (Container Linux:
	// 258048 sectors, a multiple of both 2 MiB and the 16×63 CHS cylinder).
	DiskAlignment int64
	// Partitions are sorted by Number.
	Partitions []Partition
}

// Partition is one entry of a layout.
type Partition struct {
	Number int
	Label  string
	// Blank marks a numbered slot with no GPT entry (disk_util's "blank").
	Blank bool
	Type  GUID
	// GUID is the fixed partition GUID, or zero to derive one from the seed.
	GUID GUID
	// Start in bytes; zero places the partition after the previous one,
	// aligned.
	Start int64
	// Size in bytes; unused when Rest is set.
	Size int64
	// Rest makes the partition take the rest of the disk (at least
	// MinSize bytes; MinSize is also its size in the layout's own disk).
	Rest    bool
	MinSize int64
	// Filesystem is "vfat", "ext4", "squashfs" or "" (raw).
	Filesystem string
	// FSSize limits the filesystem to fewer bytes than the partition, the
	// rest holding the dm-verity tree (disk_util's fs_blocks).
	FSSize int64
	Verity bool
	// Slot, when set, is the A/B state a new disk gets in the GPT
	// attribute bits.
	Slot *SlotState

	line int // YAML line, for errors
}

// Name returns "3 (USR-A)", the way errors and output name a partition.
func (p *Partition) Name() string { return partName(p.Number, p.Label) }

func partName(number int, label string) string {
	if label == "" {
		return fmt.Sprintf("%d", number)
	}
	return fmt.Sprintf("%d (%s)", number, label)
}

// Partition returns the layout partition with the given label, or nil.
func (l *Layout) Partition(label string) *Partition {
	for i := range l.Partitions {
		if l.Partitions[i].Label == label {
			return &l.Partitions[i]
		}
	}
	return nil
}

// Error is a problem with a layout, naming the file, the YAML line, the
// partition and the field where it was found.
type Error struct {
	Source    string
	Line      int
	Partition string // "3 (USR-A)", or "" for the layout as a whole
	Field     string
	Err       error
}

// ErrInvalid is wrapped by every *Error.
var ErrInvalid = errors.New("layout: invalid layout")

func (e *Error) Error() string {
	var b bytes.Buffer
	b.WriteString("layout ")
	b.WriteString(e.Source)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Partition != "" {
		fmt.Fprintf(&b, ": partition %s", e.Partition)
	}
	if e.Field != "" {
		fmt.Fprintf(&b, ": %s", e.Field)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() []error { return []error{ErrInvalid, e.Err} }

// The YAML schema. Unknown keys are errors.
type yamlLayout struct {
	Name          string          `yaml:"name"`
	Description   string          `yaml:"description"`
	Alignment     string          `yaml:"alignment"`
	DiskAlignment string          `yaml:"disk-alignment"`
	Partitions    []yamlPartition `yaml:"partitions"`
}

type yamlPartition struct {
	Number     int       `yaml:"number"`
	Label      string    `yaml:"label"`
	Type       string    `yaml:"type"`
	GUID       string    `yaml:"guid"`
	Start      string    `yaml:"start"`
	Size       string    `yaml:"size"`
	MinSize    string    `yaml:"min-size"`
	Filesystem string    `yaml:"filesystem"`
	FSSize     string    `yaml:"fs-size"`
	Verity     bool      `yaml:"verity"`
	Slot       *yamlSlot `yaml:"slot"`
}

type yamlSlot struct {
	Priority   int  `yaml:"priority"`
	Tries      int  `yaml:"tries"`
	Successful bool `yaml:"successful"`
}

// Load reads a layout: a built-in name ("coreos", "flatcar") or a path to
// a YAML file.
func Load(nameOrPath string) (*Layout, error) {
	if data, ok := builtin(nameOrPath); ok {
		return Parse(data, "builtin:"+nameOrPath)
	}
	data, err := os.ReadFile(nameOrPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && filepath.Ext(nameOrPath) == "" {
			return nil, fmt.Errorf("layout %q: no such built-in layout (have %v) or file", nameOrPath, BuiltinNames())
		}
		return nil, fmt.Errorf("layout: %w", err)
	}
	return Parse(data, nameOrPath)
}

// partitionOfKey splits a key path "partitions[i].field" into the name of
// partition i ("2 (USR-A)", from its number and label keys) and the field.
func partitionOfKey(doc *yaml.Node, key string) (partition, field string) {
	var i int
	var rest string
	if n, err := fmt.Sscanf(key, "partitions[%d]", &i); err != nil || n != 1 {
		return "", key
	}
	_, rest, _ = strings.Cut(key, "].")
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return "", key
	}
	root := doc.Content[0]
	for k := 0; k+1 < len(root.Content); k += 2 {
		if root.Content[k].Value != "partitions" || root.Content[k+1].Kind != yaml.SequenceNode || i >= len(root.Content[k+1].Content) {
			continue
		}
		var number, label string
		item := root.Content[k+1].Content[i]
		for j := 0; j+1 < len(item.Content); j += 2 {
			switch item.Content[j].Value {
			case "number":
				number = item.Content[j+1].Value
			case "label":
				label = item.Content[j+1].Value
			}
		}
		n, _ := strconv.Atoi(number)
		return partName(n, label), rest
	}
	return "", key
}

// Parse decodes and validates a YAML layout; source names it in errors.
func Parse(data []byte, source string) (*Layout, error) {
	var y yamlLayout
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	// The node tree gives each partition's line, and keys for errors.
	var doc yaml.Node
	_ = yaml.Unmarshal(data, &doc)
	if err := dec.Decode(&y); err != nil {
		if ps := yamlerr.Problems(err, &doc); len(ps) > 0 {
			part, field := partitionOfKey(&doc, ps[0].Key)
			return nil, &Error{Source: source, Line: ps[0].Line, Partition: part, Field: field, Err: errors.New(ps[0].Msg)}
		}
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			line, msg := yamlerr.Syntax(data, err)
			return nil, &Error{Source: source, Line: line, Err: errors.New(msg)}
		}
		return nil, &Error{Source: source, Err: err}
	}
	lines := partitionLines(&doc)

	l := &Layout{Name: y.Name, Description: y.Description, Source: source, Alignment: 1 << 20}
	if l.Name == "" {
		l.Name = filepath.Base(source)
	}
	fail := func(line int, part, field string, err error) error {
		return &Error{Source: source, Line: line, Partition: part, Field: field, Err: err}
	}
	var err error
	if y.Alignment != "" {
		if l.Alignment, err = ParseSize(y.Alignment); err != nil {
			return nil, fail(0, "", "alignment", err)
		}
		if l.Alignment < SectorSize || l.Alignment%SectorSize != 0 {
			return nil, fail(0, "", "alignment", fmt.Errorf("%d bytes is not a positive multiple of %d", l.Alignment, SectorSize))
		}
	}
	l.DiskAlignment = l.Alignment
	if y.DiskAlignment != "" {
		if l.DiskAlignment, err = ParseSize(y.DiskAlignment); err != nil {
			return nil, fail(0, "", "disk-alignment", err)
		}
		if l.DiskAlignment < SectorSize || l.DiskAlignment%SectorSize != 0 {
			return nil, fail(0, "", "disk-alignment", fmt.Errorf("%d bytes is not a positive multiple of %d", l.DiskAlignment, SectorSize))
		}
	}
	if len(y.Partitions) == 0 {
		return nil, fail(0, "", "partitions", errors.New("no partitions"))
	}
	numbers := map[int]int{}
	labels := map[string]string{}
	rest := ""
	for i, yp := range y.Partitions {
		line := 0
		if i < len(lines) {
			line = lines[i]
		}
		p := Partition{Number: yp.Number, Label: yp.Label, line: line, Verity: yp.Verity}
		name := p.Name()
		if p.Number < 1 || p.Number > 128 {
			return nil, fail(line, name, "number", fmt.Errorf("%d is outside 1..128", p.Number))
		}
		if prev, dup := numbers[p.Number]; dup {
			return nil, fail(line, name, "number", fmt.Errorf("duplicate: partition number %d is also used at line %d", p.Number, prev))
		}
		numbers[p.Number] = line
		if yp.Type == "" {
			return nil, fail(line, name, "type", errors.New("missing"))
		}
		if yp.Type == TypeBlank {
			p.Blank = true
			if yp.Size != "" && yp.Size != "0" {
				return nil, fail(line, name, "size", errors.New("a blank partition has no size"))
			}
			l.Partitions = append(l.Partitions, p)
			continue
		}
		if p.Type, err = ParseType(yp.Type); err != nil {
			return nil, fail(line, name, "type", err)
		}
		if p.Label == "" {
			return nil, fail(line, name, "label", errors.New("missing"))
		}
		if n := len(utf16.Encode([]rune(p.Label))); n > 36 {
			return nil, fail(line, name, "label", fmt.Errorf("%d UTF-16 code units, GPT allows 36", n))
		}
		if other, dup := labels[p.Label]; dup {
			return nil, fail(line, name, "label", fmt.Errorf("duplicate: label %q is also partition %s", p.Label, other))
		}
		labels[p.Label] = name
		if yp.GUID != "" {
			if p.GUID, err = ParseGUID(yp.GUID); err != nil {
				return nil, fail(line, name, "guid", err)
			}
		}
		if yp.Start != "" {
			if p.Start, err = ParseSize(yp.Start); err != nil {
				return nil, fail(line, name, "start", err)
			}
			if p.Start%l.Alignment != 0 {
				return nil, fail(line, name, "start", fmt.Errorf("%d bytes is not aligned to %s", p.Start, FormatSize(l.Alignment)))
			}
			if p.Start < gptReservedSectors*SectorSize {
				return nil, fail(line, name, "start", fmt.Errorf("%d bytes overlaps the primary GPT (first usable byte is %d)", p.Start, gptReservedSectors*SectorSize))
			}
		}
		switch yp.Size {
		case "":
			return nil, fail(line, name, "size", errors.New("missing"))
		case "rest":
			if rest != "" {
				return nil, fail(line, name, "size", fmt.Errorf("only one partition may be \"rest\"; %s already is", rest))
			}
			rest = name
			p.Rest = true
		default:
			if p.Size, err = ParseSize(yp.Size); err != nil {
				return nil, fail(line, name, "size", err)
			}
			if p.Size == 0 || p.Size%SectorSize != 0 {
				return nil, fail(line, name, "size", fmt.Errorf("%d bytes is not a positive multiple of %d", p.Size, SectorSize))
			}
		}
		if yp.MinSize != "" {
			if !p.Rest {
				return nil, fail(line, name, "min-size", errors.New("only a \"rest\" partition has a minimum size"))
			}
			if p.MinSize, err = ParseSize(yp.MinSize); err != nil {
				return nil, fail(line, name, "min-size", err)
			}
			if p.MinSize%SectorSize != 0 {
				return nil, fail(line, name, "min-size", fmt.Errorf("%d bytes is not a multiple of %d", p.MinSize, SectorSize))
			}
		}
		if !filesystems[yp.Filesystem] {
			return nil, fail(line, name, "filesystem", fmt.Errorf("unknown filesystem %q: want vfat, ext4, squashfs or none", yp.Filesystem))
		}
		p.Filesystem = yp.Filesystem
		if p.Filesystem == "none" {
			p.Filesystem = ""
		}
		if yp.FSSize != "" {
			if p.FSSize, err = ParseSize(yp.FSSize); err != nil {
				return nil, fail(line, name, "fs-size", err)
			}
			if p.FSSize%4096 != 0 {
				return nil, fail(line, name, "fs-size", fmt.Errorf("%d bytes is not a multiple of 4096", p.FSSize))
			}
			if !p.Rest && p.FSSize > p.Size {
				return nil, fail(line, name, "fs-size", fmt.Errorf("%s is larger than the partition (%s)", FormatSize(p.FSSize), FormatSize(p.Size)))
			}
		}
		if p.Verity && p.Filesystem != "ext4" && p.Filesystem != "squashfs" {
			return nil, fail(line, name, "verity", errors.New("needs a read-only filesystem (ext4 or squashfs)"))
		}
		if ys := yp.Slot; ys != nil {
			if ys.Priority < 0 || ys.Priority > 15 {
				return nil, fail(line, name, "slot.priority", fmt.Errorf("%d is outside 0..15", ys.Priority))
			}
			if ys.Tries < 0 || ys.Tries > 15 {
				return nil, fail(line, name, "slot.tries", fmt.Errorf("%d is outside 0..15", ys.Tries))
			}
			p.Slot = &SlotState{Priority: uint8(ys.Priority), Tries: uint8(ys.Tries), Successful: ys.Successful}
		}
		l.Partitions = append(l.Partitions, p)
	}
	sort.SliceStable(l.Partitions, func(i, j int) bool { return l.Partitions[i].Number < l.Partitions[j].Number })
	// The layout must place on its own default-sized disk.
	if _, err := l.Plan(0, "validate"); err != nil {
		return nil, err
	}
	return l, nil
}

// partitionLines returns the line of each item of the top-level
// "partitions" sequence.
func partitionLines(doc *yaml.Node) []int {
	if doc == nil || len(doc.Content) == 0 {
		return nil
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == "partitions" && m.Content[i+1].Kind == yaml.SequenceNode {
			var lines []int
			for _, item := range m.Content[i+1].Content {
				lines = append(lines, item.Line)
			}
			return lines
		}
	}
	return nil
}
