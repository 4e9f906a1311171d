package test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// coreos is the built-in layout as the tools should see it.
var coreos = []struct {
	num     int
	label   string
	typ     string
	sectors uint64
}{
	{1, "EFI-SYSTEM", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", 262144},
	{2, "BIOS-BOOT", "21686148-6449-6E6F-744E-656564454649", 4096},
	{3, "USR-A", "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", 2097152},
	{4, "USR-B", "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", 2097152},
	{6, "OEM", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", 262144},
	{7, "OEM-CONFIG", "C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0", 131072},
	{9, "ROOT", "3884DD41-8582-4404-B9A8-E9B84F2DF50E", 0}, // rest of the disk
}

type sfdiskJSON struct {
	PartitionTable struct {
		Label      string `json:"label"`
		ID         string `json:"id"`
		Partitions []struct {
			Node  string `json:"node"`
			Start uint64 `json:"start"`
			Size  uint64 `json:"size"`
			Type  string `json:"type"`
			UUID  string `json:"uuid"`
			Name  string `json:"name"`
			Attrs string `json:"attrs"`
		} `json:"partitions"`
	} `json:"partitiontable"`
}

func sfdisk(t *testing.T, disk string) sfdiskJSON {
	t.Helper()
	var s sfdiskJSON
	if err := json.Unmarshal([]byte(mustRun(t, "sfdisk", "--json", disk)), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// cgptSlot reads priority, tries and successful of partition i with cgpt.
func cgptSlot(t *testing.T, disk string, i int) [3]int {
	t.Helper()
	var out [3]int
	for k, flag := range []string{"-P", "-T", "-S"} {
		v, err := strconv.Atoi(strings.TrimSpace(mustRun(t, "cgpt", "show", "-i", strconv.Itoa(i), flag, disk)))
		if err != nil {
			t.Fatal(err)
		}
		out[k] = v
	}
	return out
}

func sgdiskClean(t *testing.T, disk string) {
	t.Helper()
	out := mustRun(t, "sgdisk", "-v", disk)
	if !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk -v %s:\n%s", disk, out)
	}
}

func TestLayoutInitCheckedByStandardTools(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "disk.img")
	start := time.Now()
	cmd := exec.Command(kiln, "layout", "init", "--layout", "coreos", "--size", "6GiB", disk)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("layout init: %v\n%s", err, out)
	}
	// CPU time is what kiln spends; wall time also counts a loaded
	// machine's fsyncs, so it gets a looser bound.
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if wall := time.Since(start); cpu > 500*time.Millisecond || wall > 5*time.Second {
		t.Errorf("layout init of a 6 GiB disk took %v CPU, %v wall", cpu, wall)
	}
	st, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 6<<30 {
		t.Errorf("disk is %d bytes, want 6 GiB", st.Size())
	}
	if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used > 1<<20 {
		t.Errorf("disk allocates %d bytes; want a sparse file", used)
	}
	sgdiskClean(t, disk)

	s := sfdisk(t, disk)
	if s.PartitionTable.Label != "gpt" {
		t.Fatalf("sfdisk label %q", s.PartitionTable.Label)
	}
	parts := s.PartitionTable.Partitions
	if len(parts) != len(coreos) {
		t.Fatalf("sfdisk lists %d partitions, want %d", len(parts), len(coreos))
	}
	for i, w := range coreos {
		p := parts[i]
		if !strings.HasSuffix(p.Node, "img"+strconv.Itoa(w.num)) || p.Name != w.label || p.Type != w.typ {
			t.Errorf("sfdisk partition %d: %+v, want %+v", i, p, w)
		}
		if w.sectors != 0 && p.Size != w.sectors {
			t.Errorf("%s: %d sectors, want %d", w.label, p.Size, w.sectors)
		}
		if p.Start%4096 != 0 {
			t.Errorf("%s starts at %d, not 2 MiB aligned", w.label, p.Start)
		}
	}
	root := parts[len(parts)-1]
	if end := root.Start + root.Size; end > 6<<30/512-34 || 6<<30/512-34-end > 4096 {
		t.Errorf("ROOT ends at sector %d, not the rest of the disk", end)
	}
	if parts[2].UUID != "7130C94A-213A-4E5A-8E26-6CCE9662F132" || parts[3].UUID != "E03DD35C-7C2D-4A47-B3FE-27F15780A57C" {
		t.Errorf("USR GUIDs %s %s", parts[2].UUID, parts[3].UUID)
	}
	if got := cgptSlot(t, disk, 3); got != [3]int{1, 0, 1} {
		t.Errorf("cgpt USR-A priority/tries/successful %v, want [1 0 1]", got)
	}
	if got := cgptSlot(t, disk, 4); got != [3]int{0, 0, 0} {
		t.Errorf("cgpt USR-B priority/tries/successful %v, want [0 0 0]", got)
	}
	r := run(t, kiln, "layout", "check", "--layout", "coreos", disk)
	if r.code != 0 || !strings.Contains(r.stdout, "matches layout coreos") {
		t.Errorf("layout check: %+v", r)
	}
}

func TestSameSeedSameDisk(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small.yaml")
	os.WriteFile(small, []byte(`name: small
partitions:
  - {number: 1, label: EFI-SYSTEM, type: esp, size: 8MiB}
  - {number: 3, label: USR-A, type: coreos-usr, size: 16MiB, slot: {priority: 1, successful: true}}
  - {number: 4, label: USR-B, type: coreos-usr, size: 16MiB}
  - {number: 9, label: ROOT, type: coreos-resize, size: rest, min-size: 8MiB}
`), 0o644)
	a, b, c := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img"), filepath.Join(dir, "c.img")
	mustRun(t, kiln, "layout", "init", "--layout", small, "--seed", "release-1", a)
	mustRun(t, kiln, "layout", "init", "--layout", small, "--seed", "release-1", b)
	mustRun(t, kiln, "layout", "init", "--layout", small, "--seed", "release-2", c)
	mustRun(t, "cmp", a, b)
	if r := run(t, "cmp", "-s", a, c); r.code == 0 {
		t.Error("different seeds gave identical disks")
	}
	sgdiskClean(t, a)
	// The coreos layout too: a 4.4 GiB sparse disk whose only data are the
	// GPTs at both ends (34 and 33 sectors), compared there.
	a, b = filepath.Join(dir, "ca.img"), filepath.Join(dir, "cb.img")
	mustRun(t, kiln, "layout", "init", "--seed", "s", a)
	mustRun(t, kiln, "layout", "init", "--seed", "s", b)
	mustRun(t, "cmp", "-n", "17408", a, b)
	mustRun(t, "cmp", "-i", strconv.Itoa(9289728*512-33*512), a, b)
	// Without --seed, fresh GUIDs: two disks differ in the disk GUID and
	// in every partition GUID the layout does not fix (USR-A and USR-B
	// keep Container Linux's).
	a, b = filepath.Join(dir, "ra.img"), filepath.Join(dir, "rb.img")
	mustRun(t, kiln, "layout", "init", "--layout", small, a)
	mustRun(t, kiln, "layout", "init", "--layout", small, b)
	sa, sb := sfdisk(t, a).PartitionTable, sfdisk(t, b).PartitionTable
	if sa.ID == sb.ID {
		t.Errorf("two disks made without --seed share the disk GUID %s", sa.ID)
	}
	for i := range sa.Partitions {
		if sa.Partitions[i].Name != "USR-A" && sa.Partitions[i].Name != "USR-B" && sa.Partitions[i].UUID == sb.Partitions[i].UUID {
			t.Errorf("two disks made without --seed share %s's GUID %s", sa.Partitions[i].Name, sa.Partitions[i].UUID)
		}
	}
}

func TestFlatcarLayout(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "disk.img")
	mustRun(t, kiln, "layout", "init", "--force", "--layout", "flatcar", disk)
	sgdiskClean(t, disk)
	parts := sfdisk(t, disk).PartitionTable.Partitions
	if len(parts) != 7 || parts[0].Size != 2097152 || parts[2].Size != 4194304 || parts[4].Name != "OEM" || parts[4].Size != 2097152 {
		t.Errorf("flatcar partitions: %+v", parts)
	}
}

// TestReadsSgdiskDisk: a disk made by sgdisk, with slot attributes set by
// cgpt, is read back by kiln and matches the coreos layout.
func TestReadsSgdiskDisk(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "sg.img")
	f, err := os.Create(disk)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(9289728 * 512) // the coreos layout's own size
	f.Close()
	args := []string{"-o"}
	start := uint64(4096)
	for _, p := range coreos {
		n := p.sectors
		if n == 0 {
			n = 4427776
		}
		args = append(args,
			"-n", strconv.Itoa(p.num)+":"+strconv.FormatUint(start, 10)+":"+strconv.FormatUint(start+n-1, 10),
			"-t", strconv.Itoa(p.num)+":"+p.typ,
			"-c", strconv.Itoa(p.num)+":"+p.label)
		start += n
	}
	args = append(args, "-u", "3:7130c94a-213a-4e5a-8e26-6cce9662f132", "-u", "4:e03dd35c-7c2d-4a47-b3fe-27f15780a57c", disk)
	mustRun(t, "sgdisk", args...)
	mustRun(t, "cgpt", "add", "-i", "3", "-P", "1", "-T", "0", "-S", "1", disk)
	mustRun(t, "cgpt", "add", "-i", "4", "-P", "2", "-T", "1", "-S", "0", disk)

	var show struct {
		Partitions []struct {
			Number int    `json:"number"`
			Label  string `json:"label"`
			Type   string `json:"type_name"`
			Start  uint64 `json:"start_sector"`
			Slot   *struct {
				Priority   int  `json:"priority"`
				Tries      int  `json:"tries"`
				Successful bool `json:"successful"`
			} `json:"slot"`
		} `json:"partitions"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, kiln, "layout", "show", "--json", disk)), &show); err != nil {
		t.Fatal(err)
	}
	if len(show.Partitions) != 7 {
		t.Fatalf("kiln read %d partitions", len(show.Partitions))
	}
	usrB := show.Partitions[3]
	if usrB.Label != "USR-B" || usrB.Type != "coreos-usr" || usrB.Slot == nil || usrB.Slot.Priority != 2 || usrB.Slot.Tries != 1 || usrB.Slot.Successful {
		t.Errorf("USR-B as kiln reads it: %+v %+v", usrB, usrB.Slot)
	}
	if r := run(t, kiln, "layout", "check", "--layout", "coreos", disk); r.code != 0 {
		t.Errorf("sgdisk-made coreos disk does not match: %s %s", r.stdout, r.stderr)
	}
	out := mustRun(t, kiln, "slot", "status", disk)
	if !strings.Contains(out, "next boot: USR-B") || !strings.Contains(out, "on trial with 1 tries left") {
		t.Errorf("slot status:\n%s", out)
	}
}

// TestSlotLifecycle walks an update: USR-B gets written and set on trial
// (as payload apply will), boots, is marked good, then rolled back; cgpt
// sees every state kiln writes and sgdisk finds both GPTs intact.
// slotStatus is kiln slot status --json.
type slotStatus struct {
	Booted string `json:"booted"`
	Next   string `json:"next"`
	Slots  []struct {
		Label    string `json:"label"`
		Booted   bool   `json:"booted"`
		Next     bool   `json:"next"`
		OnTrial  bool   `json:"on_trial"`
		Fallback bool   `json:"fallback"`
		Version  string `json:"version"`
		Record   string `json:"record"`
	} `json:"slots"`
}

func statusOf(t *testing.T, disk string, args ...string) slotStatus {
	t.Helper()
	var st slotStatus
	if err := json.Unmarshal([]byte(mustRun(t, kiln, append([]string{"slot", "status", "--json", disk}, args...)...)), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// roles renders a slot's roles as "booted next on-trial fallback" flags.
func (s slotStatus) roles(label string) string {
	for _, sl := range s.Slots {
		if sl.Label == label {
			var r []string
			for _, x := range []struct {
				on   bool
				name string
			}{{sl.Booted, "booted"}, {sl.Next, "next"}, {sl.OnTrial, "on-trial"}, {sl.Fallback, "fallback"}} {
				if x.on {
					r = append(r, x.name)
				}
			}
			return strings.Join(r, " ")
		}
	}
	return "(no slot " + label + ")"
}

// gptBytes returns the primary and backup GPT of disk (its first 34 and
// last 33 sectors), to tell whether a command wrote the table.
func gptBytes(t *testing.T, disk string) string {
	t.Helper()
	b, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	return string(b[:34*512]) + string(b[len(b)-33*512:])
}

// TestSlotLifecycle walks the slot bits through an update as GRUB's
// gptprio leaves them (cgpt plays GRUB): mark-good marks the slot that was
// booted on trial, not the one that boots next.
func TestSlotLifecycle(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	rel := releases(t, dir, key, "1.0.0", "2.0.0")
	disk := filepath.Join(dir, "disk.img")
	copyFile(t, filepath.Join(rel["1.0.0"], "disk.img"), disk)
	fresh := gptBytes(t, disk)
	if r := run(t, kiln, "slot", "rollback", disk); r.code != 0 || !strings.Contains(r.stdout, "nothing changed: USR-A boots next already") {
		t.Errorf("rollback with nothing to roll back to: %+v", r)
	}
	if gptBytes(t, disk) != fresh {
		t.Error("a rollback that had nothing to do wrote the disk")
	}
	// USR-B gets release 2.0.0, written as apply writes it, then bits
	// as an update leaves them: on trial, not yet tried.
	full := filepath.Join(dir, "full2.payload")
	mustRun(t, kiln, "payload", "generate", "-q", "--to", rel["2.0.0"], "-o", full, "--key", key+".key")
	mustRun(t, kiln, "payload", "apply", "-q", full, "--disk", disk, "--key", key+".pub")
	// An update is installed into USR-B: on trial, not yet tried.
	if got := cgptSlot(t, disk, 4); got != [3]int{2, 1, 0} {
		t.Fatalf("after apply USR-B %v, want [2 1 0]", got)
	}
	st := statusOf(t, disk)
	if st.Next != "USR-B" || st.Booted != "USR-A" || st.roles("USR-B") != "next on-trial" || st.roles("USR-A") != "booted fallback" {
		t.Fatalf("before the trial boot: %+v", st)
	}
	// GRUB's gptprio picks USR-B and lowers its tries before booting it.
	mustRun(t, "cgpt", "add", "-i", "4", "-T", "0", disk)
	st = statusOf(t, disk)
	if st.Next != "USR-A" || st.Booted != "USR-B" || st.roles("USR-B") != "booted on-trial" || st.roles("USR-A") != "next fallback" {
		t.Fatalf("during the trial boot: %+v", st)
	}
	// The booted system blesses its slot.
	out := mustRun(t, kiln, "slot", "mark-good", disk, "USR-B")
	if !strings.Contains(out, "USR-B marked good") {
		t.Errorf("mark-good output:\n%s", out)
	}
	if got := cgptSlot(t, disk, 4); got != [3]int{2, 0, 1} {
		t.Errorf("after mark-good cgpt shows USR-B %v, want [2 0 1]", got)
	}
	if got := cgptSlot(t, disk, 3); got != [3]int{1, 0, 1} {
		t.Errorf("mark-good changed USR-A: %v", got)
	}
	sgdiskClean(t, disk)
	// Both slots good, on an image: which booted last is not on the disk,
	// so rollback refuses to guess until told.
	if r := run(t, kiln, "slot", "rollback", disk); r.code != 2 || !strings.Contains(r.stderr, "name the slot to abandon") {
		t.Errorf("rollback of two good slots on an image: %+v", r)
	}
	out = mustRun(t, kiln, "slot", "rollback", disk, "USR-B")
	if !strings.Contains(out, "next boot: USR-A") {
		t.Errorf("rollback output:\n%s", out)
	}
	if got := cgptSlot(t, disk, 3); got != [3]int{3, 0, 1} {
		t.Errorf("after rollback cgpt shows USR-A %v, want [3 0 1]", got)
	}
	// Again: the same state, nothing written.
	before := gptBytes(t, disk)
	if out := mustRun(t, kiln, "slot", "rollback", disk, "USR-B"); !strings.Contains(out, "nothing changed") {
		t.Errorf("second rollback:\n%s", out)
	}
	if gptBytes(t, disk) != before {
		t.Error("a second rollback changed the disk")
	}
	sgdiskClean(t, disk)
	// A trial that fails: rollback abandons it, the fallback boots.
	mustRun(t, "cgpt", "add", "-i", "4", "-P", "4", "-T", "0", "-S", "0", disk)
	mustRun(t, kiln, "slot", "rollback", disk)
	if got := cgptSlot(t, disk, 4); got != [3]int{0, 0, 0} {
		t.Errorf("after abandoning the trial USR-B %v, want [0 0 0]", got)
	}
	before = gptBytes(t, disk)
	if out := mustRun(t, kiln, "slot", "rollback", disk); !strings.Contains(out, "nothing changed") || gptBytes(t, disk) != before {
		t.Errorf("rollback run again after abandoning the trial changed the disk:\n%s", out)
	}
	if st := statusOf(t, disk); st.Next != "USR-A" || st.Booted != "USR-A" {
		t.Errorf("after abandoning the trial: %+v", st)
	}
}

// TestDamagedGPTCopies: layout check fails on a damaged primary or backup
// GPT, the slot commands still read the disk, and the next command that
// writes repairs the damaged copy from the valid one.
func TestDamagedGPTCopies(t *testing.T) {
	for _, c := range []struct {
		name   string
		offset func(size int64) int64
		want   string
	}{
		{"primary", func(int64) int64 { return 512 }, "primary GPT damaged"},
		{"primary entries", func(int64) int64 { return 1024 + 128*2 + 40 }, "primary GPT damaged: GPT: partition array CRC mismatch"},
		{"backup", func(size int64) int64 { return size - 512 }, "backup GPT damaged"},
	} {
		t.Run(c.name, func(t *testing.T) {
			disk := filepath.Join(t.TempDir(), "disk.img")
			mustRun(t, kiln, "layout", "init", disk)
			mustRun(t, kiln, "layout", "check", disk)
			st, _ := os.Stat(disk)
			f, _ := os.OpenFile(disk, os.O_RDWR, 0)
			f.WriteAt([]byte("garbage!"), c.offset(st.Size()))
			f.Close()
			r := run(t, kiln, "layout", "check", disk)
			if r.code != 1 || !strings.Contains(r.stdout+r.stderr, c.want) {
				t.Fatalf("layout check on a damaged %s: %+v", c.name, r)
			}
			if st := statusOf(t, disk); st.Next != "USR-A" {
				t.Fatalf("status: %+v", st)
			}
			mustRun(t, kiln, "slot", "mark-good", disk, "USR-A")
			mustRun(t, kiln, "layout", "check", disk)
			sgdiskClean(t, disk)
			if got := cgptSlot(t, disk, 3); got != [3]int{2, 0, 1} {
				t.Errorf("USR-A after the repairing mark-good: %v", got)
			}
		})
	}
}

func TestUsageAndInputErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("name: bad\npartitions:\n  - number: 1\n    label: A\n    type: esp\n    size: 10GB\n"), 0o644)
	disk := filepath.Join(dir, "disk.img")

	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"layout", "init", "--layout", bad, disk}, 2, "layout " + bad + ":3: partition 1 (A): size: malformed size \"10GB\""},
		{[]string{"layout", "init", "--layout", "nosuch", disk}, 1, "no such built-in layout"},
		{[]string{"layout", "init", "--size", "1GiB", disk}, 2, "partition 3 (USR-A): size: ends at sector"},
		{[]string{"layout", "init", "--size", "huge", disk}, 2, "--size: malformed size"},
		{[]string{"layout", "init"}, 2, "accepts 1 arg(s)"},
		{[]string{"layout", "init", "--bogus", disk}, 2, "unknown flag: --bogus"},
		{[]string{"layout", "show", filepath.Join(dir, "missing.img")}, 2, "no such file"},
		{[]string{"nosuch"}, 2, "unknown command"},
	}
	for _, c := range cases {
		r := run(t, kiln, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.msg) {
			t.Errorf("kiln %v: exit %d, stderr %q; want exit %d and %q", c.args, r.code, r.stderr, c.code, c.msg)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("failed commands left files behind: %v", entries)
	}
	// A disk that is not a GPT disk.
	os.WriteFile(disk, make([]byte, 1<<20), 0o644)
	if r := run(t, kiln, "layout", "show", disk); r.code != 2 || !strings.Contains(r.stderr, "no valid GPT") {
		t.Errorf("show of a zero disk: %+v", r)
	}
	// A disk whose partitions differ from the layout: exit 1 naming them.
	mustRun(t, kiln, "layout", "init", "--force", "--layout", "flatcar", disk)
	r := run(t, kiln, "layout", "check", "--layout", "coreos", disk)
	if r.code != 1 || !strings.Contains(r.stdout, "partition 1 (EFI-SYSTEM): size: want 262144 sectors (128MiB), got 2097152 sectors (1GiB)") {
		t.Errorf("check flatcar disk against coreos: %+v", r)
	}
}
