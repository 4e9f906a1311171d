package layout

import (
	"errors"
	"strings"
	"testing"
)

// base is a valid layout; each validation case edits it.
const base = `name: t
alignment: 1MiB
partitions:
  - number: 1
    label: EFI-SYSTEM
    type: esp
    size: 128MiB
  - number: 2
    label: USR-A
    type: coreos-usr
    size: 64MiB
  - number: 9
    label: ROOT
    type: coreos-resize
    size: rest
    min-size: 32MiB
`

func TestParseValid(t *testing.T) {
	l, err := Parse([]byte(base), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Partitions) != 3 || l.Partitions[1].Type != TypeCoreOSUsr || !l.Partitions[2].Rest {
		t.Fatalf("parsed %+v", l.Partitions)
	}
}

func TestValidationErrors(t *testing.T) {
	cases := []struct {
		name      string
		yaml      string
		partition string // "" when the error is about the layout
		field     string
		line      int
		msg       string
	}{
		{"unknown key", strings.Replace(base, "    size: 64MiB", "    size: 64MiB\n    colour: red", 1), "2 (USR-A)", "colour", 12, "unknown key"},
		{"malformed size", strings.Replace(base, "64MiB", "64MB", 1), "2 (USR-A)", "size", 8, `malformed size "64MB"`},
		{"zero size", strings.Replace(base, "64MiB", "0", 1), "2 (USR-A)", "size", 8, "not a positive multiple"},
		{"unaligned size", strings.Replace(base, "64MiB", "1000B", 1), "2 (USR-A)", "size", 8, "not a positive multiple of 512"},
		{"missing size", strings.Replace(base, "    size: 64MiB\n", "", 1), "2 (USR-A)", "size", 8, "missing"},
		{"unknown type", strings.Replace(base, "type: coreos-usr", "type: coreos-user", 1), "2 (USR-A)", "type", 8, `unknown type "coreos-user"`},
		{"bad guid type", strings.Replace(base, "type: coreos-usr", "type: 5DFBF5F4-2848-4BAC-AA5E-0D9A20B745AZ", 1), "2 (USR-A)", "type", 8, "not hexadecimal"},
		{"duplicate number", strings.Replace(base, "number: 2", "number: 1", 1), "1 (USR-A)", "number", 8, "duplicate: partition number 1 is also used at line 4"},
		{"duplicate label", strings.Replace(base, "label: USR-A", "label: EFI-SYSTEM", 1), "2 (EFI-SYSTEM)", "label", 8, "duplicate"},
		{"two rests", strings.Replace(base, "size: 64MiB", "size: rest", 1), "9 (ROOT)", "size", 12, "only one partition may be \"rest\""},
		{"rest not last", strings.Replace(base, "  - number: 9", "  - number: 9\n    start: 1MiB", 1) + "", "9 (ROOT)", "size", 12, "\"rest\" must be the last partition on the disk"},
		{"unaligned start", strings.Replace(base, "    size: 64MiB", "    size: 64MiB\n    start: 1000s", 1), "2 (USR-A)", "start", 8, "not aligned to 1MiB"},
		{"start in GPT", strings.Replace(base, "alignment: 1MiB", "alignment: 512B", 1) + "", "", "", 0, ""},
		{"overlap", strings.Replace(base, "    size: 64MiB", "    size: 64MiB\n    start: 100MiB", 1), "2 (USR-A)", "start", 8, "overlaps partition 1 (EFI-SYSTEM)"},
		{"bad alignment", strings.Replace(base, "alignment: 1MiB", "alignment: 100B", 1), "", "alignment", 0, "not a positive multiple of 512"},
		{"number range", strings.Replace(base, "number: 2", "number: 129", 1), "129 (USR-A)", "number", 8, "outside 1..128"},
		{"long label", strings.Replace(base, "label: USR-A", "label: "+strings.Repeat("x", 37), 1), "2 (" + strings.Repeat("x", 37) + ")", "label", 8, "GPT allows 36"},
		{"bad filesystem", strings.Replace(base, "    size: 64MiB", "    size: 64MiB\n    filesystem: btrfs", 1), "2 (USR-A)", "filesystem", 8, `unknown filesystem "btrfs"`},
		{"fs-size too big", strings.Replace(base, "    size: 64MiB", "    size: 64MiB\n    fs-size: 65MiB", 1), "2 (USR-A)", "fs-size", 8, "larger than the partition"},
		{"verity on raw", strings.Replace(base, "    size: 64MiB", "    size: 64MiB\n    verity: true", 1), "2 (USR-A)", "verity", 8, "needs a read-only filesystem"},
		{"slot priority", strings.Replace(base, "    size: 64MiB", "    size: 64MiB\n    slot: {priority: 16}", 1), "2 (USR-A)", "slot.priority", 8, "outside 0..15"},
		{"slot tries", strings.Replace(base, "    size: 64MiB", "    size: 64MiB\n    slot: {tries: -1}", 1), "2 (USR-A)", "slot.tries", 8, "outside 0..15"},
		{"bad guid", strings.Replace(base, "    size: 64MiB", "    size: 64MiB\n    guid: 1234", 1), "2 (USR-A)", "guid", 8, "malformed GUID"},
		{"min-size without rest", strings.Replace(base, "    size: 64MiB", "    size: 64MiB\n    min-size: 1MiB", 1), "2 (USR-A)", "min-size", 8, "only a \"rest\" partition"},
		{"blank with size", strings.Replace(base, "type: coreos-usr", "type: blank", 1), "2 (USR-A)", "size", 8, "a blank partition has no size"},
		{"no partitions", "name: x\npartitions: []\n", "", "partitions", 0, "no partitions"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml), "my-layout.yaml")
			if c.name == "start in GPT" {
				// 512-byte alignment is legal; the layout still places.
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			var le *Error
			if !errors.As(err, &le) {
				t.Fatalf("not a *layout.Error: %T %v", err, err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "layout my-layout.yaml") {
				t.Errorf("error does not name the file: %s", msg)
			}
			if le.Partition != c.partition || le.Field != c.field {
				t.Errorf("partition %q field %q, want %q %q (%s)", le.Partition, le.Field, c.partition, c.field, msg)
			}
			if c.line != 0 && le.Line != c.line {
				t.Errorf("line %d, want %d (%s)", le.Line, c.line, msg)
			}
			if !strings.Contains(msg, c.msg) {
				t.Errorf("error %q does not say %q", msg, c.msg)
			}
		})
	}
}

func TestLayoutLargerThanDisk(t *testing.T) {
	l, err := Parse([]byte(base), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.Plan(210<<20, "s")
	if err == nil || !strings.Contains(err.Error(), "partition 9 (ROOT): size") || !strings.Contains(err.Error(), "less than its min-size 32MiB") {
		t.Fatalf("got %v", err)
	}
	_, err = l.Plan(150<<20, "s")
	if err == nil || !strings.Contains(err.Error(), "partition 2 (USR-A): size: ends at sector") {
		t.Fatalf("got %v", err)
	}
	if _, err := l.Plan(1<<20+1, "s"); err == nil || !strings.Contains(err.Error(), "not a multiple of 512") {
		t.Fatalf("got %v", err)
	}
}

// TestCoreOSMatchesDiskUtil places the built-in coreos layout the way
// Container Linux's disk_util does: start at sector 34, align every
// non-blank partition to 4096 sectors, add its blocks; the disk is that
// plus 34, rounded up to 258048 sectors. The block counts are those of
// disk_layout.json "base".
func TestCoreOSMatchesDiskUtil(t *testing.T) {
	l, err := Load("coreos")
	if err != nil {
		t.Fatal(err)
	}
	tb, err := l.Plan(0, "seed")
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		num    int
		label  string
		typ    GUID
		blocks uint64
		guid   string
	}{
		{1, "EFI-SYSTEM", TypeESP, 262144, ""},
		{2, "BIOS-BOOT", TypeBIOSBoot, 4096, ""},
		{3, "USR-A", TypeCoreOSUsr, 2097152, "7130C94A-213A-4E5A-8E26-6CCE9662F132"},
		{4, "USR-B", TypeCoreOSUsr, 2097152, "E03DD35C-7C2D-4A47-B3FE-27F15780A57C"},
		{6, "OEM", TypeLinuxData, 262144, ""},
		{7, "OEM-CONFIG", TypeCoreOSReserved, 131072, ""},
		{9, "ROOT", TypeCoreOSResize, 4427776, ""},
	}
	if len(tb.Partitions) != len(want) {
		t.Fatalf("%d partitions, want %d (blank 5 and 8 have no entry)", len(tb.Partitions), len(want))
	}
	cursor := uint64(34)
	for i, w := range want {
		got := tb.Partitions[i]
		start := (cursor + 4095) / 4096 * 4096
		if got.Number != w.num || got.Label != w.label || got.Type != w.typ || got.Start != start || got.Sectors != w.blocks {
			t.Errorf("partition %d: got %+v, want number %d label %s start %d blocks %d", i, got, w.num, w.label, start, w.blocks)
		}
		if w.guid != "" && got.GUID.String() != w.guid {
			t.Errorf("%s GUID %s, want %s", w.label, got.GUID, w.guid)
		}
		cursor = start + w.blocks
	}
	disk := (cursor + 34 + 258047) / 258048 * 258048
	if tb.Sectors != disk {
		t.Errorf("disk %d sectors, want %d", tb.Sectors, disk)
	}
	a, _ := tb.Lookup("USR-A")
	b, _ := tb.Lookup("USR-B")
	if s := a.Slot(); s != (SlotState{Priority: 1, Tries: 0, Successful: true}) {
		t.Errorf("USR-A slot %v", s)
	}
	if s := b.Slot(); s != (SlotState{}) {
		t.Errorf("USR-B slot %v", s)
	}
	if fs := l.Partition("USR-A").FSSize; fs != 260094*4096 {
		t.Errorf("USR-A fs-size %d, want 260094 blocks", fs)
	}
}

func TestFlatcarSizes(t *testing.T) {
	l, err := Load("flatcar")
	if err != nil {
		t.Fatal(err)
	}
	tb, err := l.Plan(0, "seed")
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[string]uint64{"EFI-SYSTEM": 2097152, "BIOS-BOOT": 4096, "USR-A": 4194304, "USR-B": 4194304, "OEM": 2097152, "OEM-CONFIG": 131072, "ROOT": 3653632}
	for label, n := range blocks {
		e, err := tb.Lookup(label)
		if err != nil {
			t.Fatal(err)
		}
		if label == "ROOT" && e.Sectors > n {
			n = e.Sectors // "rest": the rounded-up disk gives ROOT the slack
		}
		if e.Sectors != n || e.Start%4096 != 0 {
			t.Errorf("%s: %d sectors at %d, want %d aligned", label, e.Sectors, e.Start, n)
		}
	}
}

func TestRestGrowsWithDisk(t *testing.T) {
	l, _ := Load("coreos")
	tb, err := l.Plan(6<<30, "seed")
	if err != nil {
		t.Fatal(err)
	}
	root, _ := tb.Lookup("ROOT")
	if root.End() > tb.Sectors-34 || tb.Sectors-34-root.End() >= 4096 || root.End()%4096 != 0 {
		t.Errorf("ROOT ends at %d on a %d-sector disk", root.End(), tb.Sectors)
	}
}

func TestDeterministicGUIDs(t *testing.T) {
	l, _ := Load("coreos")
	a, _ := l.Plan(0, "one")
	b, _ := l.Plan(0, "one")
	c, _ := l.Plan(0, "two")
	if a.DiskGUID != b.DiskGUID || a.Partitions[0].GUID != b.Partitions[0].GUID {
		t.Error("same seed gave different GUIDs")
	}
	if a.DiskGUID == c.DiskGUID || a.Partitions[0].GUID == c.Partitions[0].GUID {
		t.Error("different seeds gave the same GUIDs")
	}
	if a.Partitions[2].GUID != c.Partitions[2].GUID {
		t.Error("a fixed GUID changed with the seed")
	}
	seen := map[GUID]bool{a.DiskGUID: true}
	for _, e := range a.Partitions {
		if seen[e.GUID] {
			t.Errorf("GUID %s used twice", e.GUID)
		}
		seen[e.GUID] = true
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{"0": 0, "512": 512, "4s": 2048, "1KiB": 1024, "128MiB": 128 << 20, "1GiB": 1 << 30, "2T": 2 << 40, " 5 B ": 5}
	for s, want := range good {
		if got, err := ParseSize(s); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "MiB", "1.5GiB", "-1", "10MB", "1e3", "9999999999999TiB"} {
		if _, err := ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q) accepted", s)
		}
	}
}

func TestGUIDText(t *testing.T) {
	g, err := ParseGUID("7130c94a-213a-4e5a-8e26-6cce9662f132")
	if err != nil {
		t.Fatal(err)
	}
	if g.String() != "7130C94A-213A-4E5A-8E26-6CCE9662F132" {
		t.Error(g.String())
	}
	me := g.mixedEndian()
	if me[0] != 0x4a || me[3] != 0x71 || me[4] != 0x3a || me[6] != 0x5a || me[8] != 0x8e {
		t.Errorf("mixed-endian bytes % x", me)
	}
}

func TestTypeNames(t *testing.T) {
	for _, n := range TypeNames() {
		if n == TypeBlank {
			continue
		}
		g, err := ParseType(n)
		if err != nil {
			t.Errorf("%s: %v", n, err)
		}
		if _, err := ParseType(TypeName(g)); err != nil {
			t.Errorf("display name of %s does not parse", n)
		}
	}
	if TypeName(TypeCoreOSUsr) != "coreos-usr" || TypeName(TypeESP) != "esp" {
		t.Error("display names")
	}
}
