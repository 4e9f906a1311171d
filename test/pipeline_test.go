package test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestReleasePipeline runs the README's release pipeline end to end
// against a real registry (Debian's docker-registry, TLS, htpasswd): two
// signed releases built with a converted image, pushed; the earlier one
// pulled back and checked; a delta generated from the pulled release,
// pushed, pulled and checked on the node's side; applied to a node running
// release 1, booted on trial (as gptprio leaves the disk) and marked good.
func TestReleasePipeline(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	reg, px, env := registryBehindProxy(t)
	ca := reg.ca
	image := px.host + "/os/image"
	payloadRepo := px.host + "/os/payload"

	// CI: release 1, then release 2 (a file changed, one added).
	d1, d2 := filepath.Join(dir, "r1"), filepath.Join(dir, "r2")
	os.MkdirAll(d1, 0o755)
	os.MkdirAll(filepath.Join(d2, "usr", "bin"), 0o755)
	os.WriteFile(filepath.Join(d2, "usr", "bin", "new"), []byte("release 2\n"), 0o755)
	out1 := buildSmall(t, d1, key+".key", "--format", "qcow2")
	out2 := buildSmall(t, d2, key+".key", "--format", "qcow2", "--set", "version=2.0.0")
	for _, p := range []struct{ out, tag string }{{out1, "1.0.0"}, {out2, "2.0.0"}} {
		if r := kilnEnv(t, env, "push", p.out, image+":"+p.tag, "--ca-file", ca); r.code != 0 {
			t.Fatalf("push %s: exit %d\n%s", p.tag, r.code, r.stderr)
		}
	}
	prev := filepath.Join(dir, "pulled-1")
	if r := kilnEnv(t, env, "pull", image+":1.0.0", "-o", prev, "--key", key+".pub", "--ca-file", ca); r.code != 0 {
		t.Fatalf("pull release 1: exit %d\n%s", r.code, r.stderr)
	}
	// The converted image came through the registry intact.
	mustRun(t, "qemu-img", "check", "-f", "qcow2", filepath.Join(prev, "disk.qcow2"))
	mustRun(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", filepath.Join(out1, "disk.img"), filepath.Join(prev, "disk.qcow2"))
	pl := filepath.Join(dir, "2.0.0.payload")
	mustRun(t, kiln, "payload", "generate", "-q", "--from", prev, "--to", out2, "-o", pl, "--key", key+".key")
	if r := kilnEnv(t, env, "push", pl, payloadRepo+":2.0.0", "--ca-file", ca); r.code != 0 {
		t.Fatalf("push payload: exit %d\n%s", r.code, r.stderr)
	}

	// A node running release 1.
	node := filepath.Join(dir, "node.img")
	copyFile(t, filepath.Join(out1, "disk.img"), node)
	upd := filepath.Join(dir, "upd")
	if r := kilnEnv(t, env, "pull", payloadRepo+":2.0.0", "-o", upd, "--key", key+".pub", "--ca-file", ca); r.code != 0 {
		t.Fatalf("pull payload: exit %d\n%s", r.code, r.stderr)
	}
	mustRun(t, "cmp", pl, filepath.Join(upd, "2.0.0.payload"))
	if out := mustRun(t, kiln, "payload", "inspect", filepath.Join(upd, "2.0.0.payload"), "--key", key+".pub"); !strings.Contains(out, "delta") {
		t.Errorf("the pulled payload is not the delta:\n%s", out)
	}
	mustRun(t, kiln, "payload", "apply", "-q", filepath.Join(upd, "2.0.0.payload"), "--disk", node, "--key", key+".pub")
	st := statusOf(t, node)
	if st.Next != "USR-B" || st.Booted != "USR-A" {
		t.Fatalf("after apply: booted %s, next %s", st.Booted, st.Next)
	}
	// The reboot: gptprio lowers USR-B's tries and boots it; the booted
	// system marks it good.
	mustRun(t, "cgpt", "add", "-i", "4", "-T", "0", node)
	mustRun(t, kiln, "slot", "mark-good", node, "USR-B")
	st = statusOf(t, node)
	if st.Booted != "USR-B" || st.Next != "USR-B" {
		t.Fatalf("after mark-good: booted %s, next %s", st.Booted, st.Next)
	}
	for _, s := range st.Slots {
		if s.Label == "USR-B" && s.Version != "2.0.0" {
			t.Errorf("USR-B holds %q, want 2.0.0", s.Version)
		}
	}
	if got := cgptSlot(t, node, 4); got != [3]int{2, 0, 1} {
		t.Errorf("USR-B after mark-good %v, want [2 0 1]", got)
	}
	// The node's read-only parts still verify against the signed manifest
	// of the image it was installed from (its GPT, each bootable slot's
	// signed record and verity tree), and USR-B is byte for byte release
	// 2's usr.img.
	if out := mustRun(t, kiln, "verify", node, "--deployed", "--key", key+".pub", "--manifest", filepath.Join(prev, "manifest.json")); !strings.Contains(out, "2.0.0") {
		t.Errorf("verify --deployed does not name USR-B's release:\n%s", out)
	}
	usrB := readManifest(t, out1).Partition("USR-B")
	usr2, _ := os.Stat(filepath.Join(out2, "usr.img"))
	mustRun(t, "cmp", "-n", strconv.FormatInt(usr2.Size(), 10), "-i", strconv.FormatInt(usrB.Offset, 10)+":0", node, filepath.Join(out2, "usr.img"))
}
