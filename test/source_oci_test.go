package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSourceOCIWithoutPolicy: on a fresh machine (HOME empty, no
// containers configuration in the environment or in /etc and /usr/share,
// hidden in a mount namespace where this host has one) an oci: source
// builds, with a warning that nothing checks image
// signatures; it used to fail with "no policy.json file found".
func TestSourceOCIWithoutPolicy(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	umoci := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("umoci", args...).CombinedOutput(); err != nil {
			t.Fatalf("umoci %v: %v\n%s", args, err, out)
		}
	}
	umoci("init", "--layout", img)
	umoci("new", "--image", img+":v1")
	bundle := filepath.Join(dir, "bundle")
	umoci("unpack", "--image", img+":v1", bundle)
	os.MkdirAll(filepath.Join(bundle, "rootfs", "usr", "bin"), 0o755)
	os.WriteFile(filepath.Join(bundle, "rootfs", "usr", "bin", "hello"), []byte("#!/bin/sh\necho hello\n"), 0o755)
	umoci("repack", "--image", img+":v1", bundle)

	recipe := writeRecipe(t, dir, "  USR-A:\n    source: oci:img:v1\n    subdir: /usr\n  OEM: {}\n  ROOT: {}\n")
	home := t.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "HOME", "XDG_CONFIG_HOME", "CONTAINERS_POLICY_JSON", "CONTAINERS_POLICY_JSON_OVERRIDE":
		default:
			env = append(env, kv)
		}
	}
	out := filepath.Join(dir, "out")
	// A machine without a containers policy, whatever this one has (podman
	// and skopeo install one): kiln runs in a mount namespace of its own
	// where the system's containers directories are empty.
	hide := "for d in /etc/containers /usr/share/containers; do [ -d $d ] && mount -t tmpfs tmpfs $d; done; exec \"$@\""
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh", kiln, "build", recipe, "-o", out)
	cmd.Env = append(env, "HOME="+home, "SOURCE_DATE_EPOCH=1700000000")
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build with HOME=%s and no policy.json: %v\n%s", home, err, b)
	}
	if !strings.Contains(string(b), "policy.json") {
		t.Errorf("no warning about the missing policy:\n%s", b)
	}
	m := readManifest(t, out)
	if len(m.Sources) != 1 || !strings.HasPrefix(m.Sources[0].Digest, "sha256:") {
		t.Errorf("manifest sources %+v", m.Sources)
	}
	mnt := mountRO(t, filepath.Join(out, "usr.img"), "ext4", 0, 0)
	if got, err := os.ReadFile(filepath.Join(mnt, "bin", "hello")); err != nil || string(got) != "#!/bin/sh\necho hello\n" {
		t.Errorf("bin/hello: %q %v", got, err)
	}
}
