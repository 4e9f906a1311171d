package test

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// releases builds signed releases of the given versions (small layout)
// with key, each /usr differing from the last in a few files, and returns
// their output directories by version.
func releases(t *testing.T, dir, key string, versions ...string) map[string]string {
	t.Helper()
	os.WriteFile(filepath.Join(dir, "small.yaml"), []byte(smallLayout), 0o644)
	out := map[string]string{}
	for i, v := range versions {
		usr := filepath.Join(dir, "usr-"+v)
		os.MkdirAll(filepath.Join(usr, "lib"), 0o755)
		for j := range 16 {
			b := make([]byte, 60000+j*997)
			for k := range b {
				b[k] = byte(k*(j+3) + k/11)
			}
			if j < 2*(i+1) {
				copy(b[4096:], "release "+v)
			}
			os.WriteFile(filepath.Join(usr, "lib", fmt.Sprintf("lib%02d.so", j)), b, 0o644)
		}
		os.WriteFile(filepath.Join(usr, "lib", "os-release"), []byte("VERSION="+v+"\n"), 0o644)
		recipe := filepath.Join(dir, "r-"+v+".yaml")
		os.WriteFile(recipe, []byte(fmt.Sprintf(`name: ab
version: %s
layout: small.yaml
partitions:
  EFI-SYSTEM:
    files: [{path: /EFI/BOOT/BOOTX64.EFI, content: "x"}]
  USR-A:
    source: dir:usr-%s
  OEM: {}
  ROOT: {}
`, v, v)), 0o644)
		o := filepath.Join(dir, "out-"+v)
		if r := kilnEnv(t, []string{"SOURCE_DATE_EPOCH=1700000000"}, "build", "-q", recipe, "-o", o, "--sign", key+".key"); r.code != 0 {
			t.Fatalf("build %s: %s", v, r.stderr)
		}
		out[v] = o
	}
	return out
}

// bootTrial does what GRUB's gptprio does before booting a slot on trial:
// its tries drop to 0 (cgpt, as the firmware side would).
func bootTrial(t *testing.T, disk string, partition int) {
	t.Helper()
	mustRun(t, "cgpt", "add", "-i", fmt.Sprint(partition), "-T", "0", disk)
}

// TestAntiRollbackUsesSignedRecords: the installed version is the booted
// slot's signed release record, not a manifest beside the disk; an older
// validly signed full payload is refused and changes nothing.
func TestAntiRollbackUsesSignedRecords(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	rel := releases(t, dir, key, "1.0.0", "2.0.0", "1.0.1")
	full2, full101 := filepath.Join(dir, "2.payload"), filepath.Join(dir, "101.payload")
	mustRun(t, kiln, "payload", "generate", "--to", rel["2.0.0"], "-o", full2, "--key", key+".key")
	mustRun(t, kiln, "payload", "generate", "--to", rel["1.0.1"], "-o", full101, "--key", key+".key")

	disk := filepath.Join(dir, "node", "disk.img")
	os.MkdirAll(filepath.Dir(disk), 0o755)
	copyFile(t, filepath.Join(rel["1.0.0"], "disk.img"), disk)
	// A forged manifest beside the disk claims an ancient release: it is
	// not what apply trusts.
	os.WriteFile(filepath.Join(dir, "node", "manifest.json"), []byte(`{"format":2,"version":"0.0.1"}`), 0o644)

	mustRun(t, kiln, "payload", "apply", full2, "--disk", disk, "--key", key+".pub")
	bootTrial(t, disk, 4)
	mustRun(t, kiln, "slot", "mark-good", disk, "USR-B")
	st := statusOf(t, disk, "--key", key+".pub")
	if st.Booted != "USR-B" || st.Slots[0].Version != "1.0.0" || st.Slots[1].Version != "2.0.0" ||
		st.Slots[0].Record != "verified" || st.Slots[1].Record != "verified" {
		t.Fatalf("status after 1.0.0 → 2.0.0: %+v", st)
	}
	out := mustRun(t, kiln, "slot", "status", disk, "--key", key+".pub")
	if !strings.Contains(out, "2.0.0") || !strings.Contains(out, "verified") {
		t.Errorf("slot status does not show the versions:\n%s", out)
	}

	// 1.0.1 is validly signed, newer than USR-A's 1.0.0, older than the
	// booted 2.0.0: refused, the disk unchanged.
	pristine := filepath.Join(dir, "pristine.img")
	copyFile(t, disk, pristine)
	r := run(t, kiln, "payload", "apply", full101, "--disk", disk, "--key", key+".pub")
	if r.code != 1 || !strings.Contains(r.stderr, "1.0.1 is older than 2.0.0") {
		t.Fatalf("older full payload: %+v", r)
	}
	if rr := run(t, "cmp", disk, pristine); rr.code != 0 {
		t.Fatal("a refused downgrade changed the disk")
	}
	// With --allow-downgrade it installs into USR-A, the passive slot.
	mustRun(t, kiln, "payload", "apply", full101, "--disk", disk, "--key", key+".pub", "--allow-downgrade")
	if st := statusOf(t, disk, "--key", key+".pub"); st.Slots[0].Version != "1.0.1" || st.Next != "USR-A" || st.Booted != "USR-B" {
		t.Fatalf("after the allowed downgrade: %+v", st)
	}

	// A release record signed by another key is not trusted: status says
	// so, and apply cannot tell the installed version.
	mustRun(t, kiln, "keygen", "--type", "rsa-3072", "-o", filepath.Join(dir, "other"))
	st = statusOf(t, disk, "--key", filepath.Join(dir, "other.pub"))
	if !strings.HasPrefix(st.Slots[1].Record, "INVALID") {
		t.Errorf("a record checked with another key: %+v", st.Slots[1])
	}
	// An unsigned build cannot become a payload.
	unsigned := filepath.Join(dir, "unsigned")
	if r := kilnEnv(t, nil, "build", "-q", filepath.Join(dir, "r-2.0.0.yaml"), "-o", unsigned); r.code != 0 {
		t.Fatal(r.stderr)
	}
	r = run(t, kiln, "payload", "generate", "--to", unsigned, "-o", filepath.Join(dir, "u.payload"), "--key", key+".key")
	if r.code != 1 || !strings.Contains(r.stderr, "release record is not signed") {
		t.Errorf("payload of an unsigned build: %+v", r)
	}
}

// TestWritersTakeTheLock: while another process holds the disk's lock,
// every command that writes refuses at once and changes nothing; readers
// still work. Concurrent applies and mark-goods never interleave.
func TestWritersTakeTheLock(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	rel := releases(t, dir, key, "1.0.0", "2.0.0")
	delta := filepath.Join(dir, "delta.payload")
	mustRun(t, kiln, "payload", "generate", "--from", rel["1.0.0"], "--to", rel["2.0.0"], "-o", delta, "--key", key+".key")
	disk := filepath.Join(dir, "disk.img")
	copyFile(t, filepath.Join(rel["1.0.0"], "disk.img"), disk)
	pristine := filepath.Join(dir, "pristine.img")
	copyFile(t, disk, pristine)

	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	m := filepath.Join(rel["1.0.0"], "manifest.json")
	for _, args := range [][]string{
		{"payload", "apply", delta, "--disk", disk, "--key", key + ".pub"},
		{"slot", "mark-good", disk, "USR-A"},
		{"slot", "rollback", disk},
		{"slot", "mark-bootable", disk, "USR-B", "--manifest", m, "--key", key + ".pub"},
	} {
		r := run(t, kiln, args...)
		if r.code != 1 || !strings.Contains(r.stderr, "another process") {
			t.Errorf("%s %s while locked: %+v", args[0], args[1], r)
		}
	}
	if r := run(t, "cmp", disk, pristine); r.code != 0 {
		t.Fatal("a locked-out command changed the disk")
	}
	mustRun(t, kiln, "slot", "status", disk)
	mustRun(t, kiln, "layout", "check", "--layout", filepath.Join(dir, "small.yaml"), disk)
	f.Close()

	// Two applies and mark-goods at once, ten times over: each either runs
	// alone or is refused; the disk ends valid, USR-B on trial with 2.0.0.
	for round := range 10 {
		copyFile(t, pristine, disk)
		var wg sync.WaitGroup
		results := make([]result, 3)
		for i, args := range [][]string{
			{"payload", "apply", delta, "--disk", disk, "--key", key + ".pub"},
			{"payload", "apply", delta, "--disk", disk, "--key", key + ".pub"},
			{"slot", "mark-good", disk, "USR-A"},
		} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i] = run(t, kiln, args...)
			}()
		}
		wg.Wait()
		applied := 0
		for i, r := range results {
			switch {
			case r.code == 0 && i < 2:
				applied++
			case r.code == 0:
			case r.code == 1 && strings.Contains(r.stderr, "another process"):
			default:
				t.Fatalf("round %d command %d: %+v", round, i, r)
			}
		}
		if applied == 0 {
			mustRun(t, kiln, "payload", "apply", delta, "--disk", disk, "--key", key+".pub")
		}
		mustRun(t, kiln, "layout", "check", "--layout", filepath.Join(dir, "small.yaml"), disk)
		st := statusOf(t, disk, "--key", key+".pub")
		if st.Next != "USR-B" || st.Slots[1].Version != "2.0.0" || st.Slots[1].Record != "verified" || !st.Slots[1].OnTrial {
			t.Fatalf("round %d: %+v", round, st)
		}
		mustRun(t, kiln, "verify", "--deployed", disk, "--key", key+".pub")
	}
}

// TestKilledApplyAndMarkGood kills payload apply and slot mark-good at
// random moments (SIGKILL: no cleanup runs). After each kill the slot that
// boots next holds a verified release, the deployed-disk check passes (a
// kill between the two GPT copies with a warning), and running the
// command again completes it and repairs the GPT.
func TestKilledApplyAndMarkGood(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	rel := releases(t, dir, key, "1.0.0", "2.0.0", "3.0.0")
	full2 := filepath.Join(dir, "full2.payload")
	delta23 := filepath.Join(dir, "delta23.payload")
	mustRun(t, kiln, "payload", "generate", "--to", rel["2.0.0"], "-o", full2, "--key", key+".key", "--compression", "xz")
	mustRun(t, kiln, "payload", "generate", "--from", rel["2.0.0"], "--to", rel["3.0.0"], "-o", delta23, "--key", key+".key")
	// The second scenario starts from 1.0.0 → 2.0.0, tried and marked good:
	// the install overwrites USR-A, the old release.
	second := filepath.Join(dir, "second.img")
	copyFile(t, filepath.Join(rel["1.0.0"], "disk.img"), second)
	mustRun(t, kiln, "payload", "apply", full2, "--disk", second, "--key", key+".pub")
	bootTrial(t, second, 4)
	mustRun(t, kiln, "slot", "mark-good", second, "USR-B")

	timed := func(args ...string) time.Duration {
		start := time.Now()
		mustRun(t, kiln, args...)
		return time.Since(start)
	}
	rng := rand.New(rand.NewPCG(9, 1))
	disk := filepath.Join(dir, "disk.img")
	check := func(when, wantNext, wantVersion string) {
		t.Helper()
		st := statusOf(t, disk, "--key", key+".pub")
		var next *struct {
			Label, Version, Record string
		}
		for _, s := range st.Slots {
			if s.Next {
				next = &struct{ Label, Version, Record string }{s.Label, s.Version, s.Record}
			}
		}
		if next == nil || next.Record != "verified" {
			t.Fatalf("%s: the next slot has no verified release: %+v", when, st)
		}
		if wantNext != "" && (next.Label != wantNext || next.Version != wantVersion) {
			t.Fatalf("%s: next is %s with %s, want %s with %s", when, next.Label, next.Version, wantNext, wantVersion)
		}
		r := run(t, kiln, "verify", "--deployed", disk, "--key", key+".pub")
		if r.code != 0 {
			t.Fatalf("%s: verify --deployed: %s%s", when, r.stdout, r.stderr)
		}
		// A kill between the two GPT copies leaves a warning; the command
		// run again to its end repairs the spare copy.
		if strings.Contains(r.stdout, "warn") {
			if wantNext != "" {
				t.Fatalf("%s: the GPT is not repaired: %s", when, r.stdout)
			}
			t.Logf("%s: the kill fell between the GPT copies: %s", when, r.stdout)
		}
	}
	for _, sc := range []struct {
		name, start, payload, target, version string
	}{
		{"full payload into a new disk", filepath.Join(rel["1.0.0"], "disk.img"), full2, "USR-B", "2.0.0"},
		{"delta into the old release's slot", second, delta23, "USR-A", "3.0.0"},
	} {
		copyFile(t, sc.start, disk)
		apply := []string{"payload", "apply", sc.payload, "--disk", disk, "--key", key + ".pub"}
		took := timed(apply...)
		t.Logf("%s: apply takes %v", sc.name, took)
		for i := range 8 {
			copyFile(t, sc.start, disk)
			delay := time.Duration(rng.Int64N(int64(took)))
			cmd := exec.Command(kiln, apply...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(delay)
			cmd.Process.Signal(syscall.SIGKILL)
			err := cmd.Wait()
			when := fmt.Sprintf("%s: killed after %v (%v)", sc.name, delay, err)
			check(when, "", "")
			mustRun(t, kiln, apply...)
			check(when+", then run again", sc.target, sc.version)
			if i%3 == 0 {
				// Kill mark-good after GRUB's trial decrement, too.
				bootTrial(t, disk, map[string]int{"USR-A": 3, "USR-B": 4}[sc.target])
				cmd := exec.Command(kiln, "slot", "mark-good", disk, sc.target)
				cmd.Start()
				time.Sleep(time.Duration(rng.Int64N(int64(5 * time.Millisecond))))
				cmd.Process.Signal(syscall.SIGKILL)
				cmd.Wait()
				check(when+", mark-good killed", "", "")
				mustRun(t, kiln, "slot", "mark-good", disk, sc.target)
				check(when+", mark-good run again", sc.target, sc.version)
			}
		}
	}
}

// TestApplyToBlockDevice installs through a loop device: the lock, the
// write, the flush and the read-back past the page cache work on a block
// device as on a file, and the read-back goes past the cache of the file
// behind a loop device too.
func TestApplyToBlockDevice(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	rel := releases(t, dir, key, "1.0.0", "2.0.0")
	delta := filepath.Join(dir, "delta.payload")
	mustRun(t, kiln, "payload", "generate", "--from", rel["1.0.0"], "--to", rel["2.0.0"], "-o", delta, "--key", key+".key")
	disk := filepath.Join(dir, "disk.img")
	copyFile(t, filepath.Join(rel["1.0.0"], "disk.img"), disk)
	dev := strings.TrimSpace(mustRun(t, "losetup", "--find", "--show", disk))
	defer run(t, "losetup", "--detach", dev)
	mustRun(t, kiln, "payload", "apply", delta, "--disk", dev, "--key", key+".pub")
	// The slot was read back from the storage, past the page cache of the
	// loop device and of the file behind it, and the file keeps hardly
	// any of the slot's pages (mincore; the status apply prints reads a
	// few MiB of it back in; the 64 MiB written stayed there before).
	slotB := sfdisk(t, disk).PartitionTable.Partitions[3]
	if res := residentBytes(t, disk, int64(slotB.Start)*512, int64(slotB.Size)*512); res > int64(slotB.Size)*512/4 {
		t.Errorf("after apply %d bytes of USR-B's %d are in %s's page cache", res, slotB.Size*512, disk)
	}
	mustRun(t, kiln, "verify", "--deployed", dev, "--key", key+".pub")
	if st := statusOf(t, dev, "--key", key+".pub"); st.Next != "USR-B" || st.Slots[1].Version != "2.0.0" || st.Slots[1].Record != "verified" {
		t.Fatalf("status of %s: %+v", dev, st)
	}
	if got := cgptSlot(t, dev, 4); got != [3]int{2, 1, 0} {
		t.Errorf("cgpt on %s: USR-B %v", dev, got)
	}
}

// TestSlotRecordCheckedByOpenSSL: the release record kiln build writes
// beside USR-A's verity superblock is signed as the README says: openssl
// verifies the signature over the record's JSON body, and rejects it over
// a changed body.
func TestSlotRecordCheckedByOpenSSL(t *testing.T) {
	for _, typ := range []string{"ecdsa-p256", "rsa-3072"} {
		t.Run(typ, func(t *testing.T) {
			dir := t.TempDir()
			key := filepath.Join(dir, "k")
			mustRun(t, kiln, "keygen", "--type", typ, "-o", key)
			out := buildSmall(t, dir, key+".key")
			m := readManifest(t, out)
			usr := m.Partition("USR-A")
			f, err := os.Open(filepath.Join(out, "usr.img"))
			if err != nil {
				t.Fatal(err)
			}
			rec := make([]byte, 4096-512)
			f.ReadAt(rec, usr.Verity.HashOffset+512)
			f.Close()
			if string(rec[:8]) != "KILNREC1" {
				t.Fatalf("no record at hash offset + 512: %q", rec[:8])
			}
			n, s := binary.LittleEndian.Uint32(rec[8:]), binary.LittleEndian.Uint32(rec[12:])
			body, sig := rec[16:16+n], rec[16+n:16+n+s]
			if !strings.Contains(string(body), `"version":"1.0.0"`) || !strings.Contains(string(body), usr.Verity.RootHash) {
				t.Fatalf("record body: %s", body)
			}
			os.WriteFile(filepath.Join(dir, "body"), body, 0o644)
			os.WriteFile(filepath.Join(dir, "sig"), sig, 0o644)
			mustRun(t, "openssl", "dgst", "-sha256", "-verify", key+".pub", "-signature", filepath.Join(dir, "sig"), filepath.Join(dir, "body"))
			os.WriteFile(filepath.Join(dir, "body"), []byte(strings.Replace(string(body), "1.0.0", "9.0.0", 1)), 0o644)
			if r := run(t, "openssl", "dgst", "-sha256", "-verify", key+".pub", "-signature", filepath.Join(dir, "sig"), filepath.Join(dir, "body")); r.code == 0 {
				t.Fatal("openssl verified a changed record")
			}
		})
	}
}

// residentBytes counts the bytes of path's range [off, off+size) in the
// page cache (mincore(2) over a mapping of it).
func residentBytes(t *testing.T, path string, off, size int64) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), off, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	page := int64(os.Getpagesize())
	vec := make([]byte, (size+page-1)/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	var n int64
	for _, v := range vec {
		n += int64(v & 1)
	}
	return n * page
}
