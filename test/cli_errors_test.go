package test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExitCodesAndMessages: bad usage or input exits 2, a failed check
// exits 1, the same for the same input whatever the command, and every
// message names what is wrong without kiln's internals (Go types,
// temporary files, doubled prefixes).
func TestExitCodesAndMessages(t *testing.T) {
	dir := t.TempDir()
	w := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o644)
		return p
	}
	recipe := func(name, partitions string) string {
		return w(name, "name: t\nversion: 1.0.0\nlayout: coreos\npartitions:\n"+partitions)
	}
	rand := filepath.Join(dir, "rand.img")
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = byte(i*7919 + i/13)
	}
	os.WriteFile(rand, b, 0o644)
	empty := w("empty.img", "")
	disk := filepath.Join(dir, "disk.img")
	mustRun(t, kiln, "layout", "init", disk)
	trunc := filepath.Join(dir, "trunc.img")
	mustRun(t, "cp", "--sparse=always", disk, trunc)
	os.Truncate(trunc, 100000)
	adir := filepath.Join(dir, "adir")
	os.Mkdir(adir, 0o755)
	badPayload := w("bad.payload", strings.Repeat("not a payload ", 400))
	mustRun(t, kiln, "keygen", "--type", "ecdsa-p256", "-o", filepath.Join(dir, "ec"))
	mustRun(t, kiln, "keygen", "--type", "rsa-3072", "-o", filepath.Join(dir, "rsa"))
	ecPub := filepath.Join(dir, "ec.pub")
	out := func(name string) string { return filepath.Join(dir, "out-"+name) }

	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing dir: source", []string{"build", recipe("r1.yaml", "  USR-A: {source: \"dir:nosuch\"}\n"), "-o", out("1")}, 2, "r1.yaml:5: partitions.USR-A.source: dir:nosuch"},
		{"dir: source that is a file", []string{"build", recipe("r7.yaml", "  USR-A:\n    source: \"dir:r1.yaml\"\n"), "-o", out("7")}, 2, "r7.yaml:6: partitions.USR-A.source: dir:r1.yaml"},
		{"tar: source that is not a tarball", []string{"build", recipe("r8.yaml", "  USR-A:\n    source: \"tar:r1.yaml\"\n"), "-o", out("8")}, 2, "r8.yaml:6: partitions.USR-A.source: tar:r1.yaml"},
		{"-o naming a file", []string{"build", recipe("r9.yaml", "  OEM: {}\n"), "-o", w("afile", "x")}, 2, "afile"},
		{"slot mark-good of a slot the disk lacks", []string{"slot", "mark-good", disk, "USR-C"}, 2, `no such partition: "USR-C"`},
		{"payload generate -o into a missing directory", []string{"payload", "generate", "--to", dir, "-o", filepath.Join(dir, "no-such-dir", "x.payload"), "--key", filepath.Join(dir, "rsa.key")}, 2, "no-such-dir: stat"},
		// The tests' kiln is built as `make demo` builds it: without the KMS
		// providers (make build has them; sign/kms_test.go tests those).
		{"KMS key in a build without its provider", []string{"sign", badPayload, "--key", "awskms://localhost/alias/release"}, 2, "build tag kms_aws"},
		{"verify --manifest missing", []string{"verify", disk, "--manifest", filepath.Join(dir, "missing.json"), "--key", ecPub}, 2, "missing.json: no such file"},
		{"missing from: file", []string{"build", recipe("r2.yaml", "  OEM:\n    files: [{path: /x, from: nosuch.txt}]\n"), "-o", out("2")}, 2, "from nosuch.txt"},
		{"path escaping the partition", []string{"build", recipe("r3.yaml", "  OEM:\n    files: [{path: /../../escape, content: x}]\n"), "-o", out("3")}, 2, `path escapes the root or is malformed: "/../../escape"`},
		{"recipe indent wrong on line 7", []string{"build", w("r10.yaml", "name: t\nversion: 1.0.0\nlayout: coreos\npartitions:\n  USR-A:\n    filesystem: ext4\n   subdir: /usr\n  OEM: {}\n"), "-o", out("10")}, 2, "r10.yaml:7: indented to no level"},
		{"recipe tab on line 3", []string{"build", w("r11.yaml", "name: t\nversion: 1.0.0\n\tlayout: coreos\npartitions: {}\n"), "-o", out("11")}, 2, "r11.yaml:3: a tab in the indentation"},
		{"layout indent wrong on line 4", []string{"layout", "init", "--layout", w("l2.yaml", "name: x\npartitions:\n  - number: 1\n   label: A\n"), filepath.Join(dir, "l2.img")}, 2, "l2.yaml:4: indented to no level"},
		{"recipe type error names the key", []string{"build", w("r4.yaml", "name: t\nversion: [1]\npartitions: {}\n"), "-o", out("4")}, 2, "r4.yaml:2: version: want a string, got a list"},
		{"recipe size 0", []string{"build", w("r5.yaml", "name: t\nversion: 1.0.0\nsize: \"0\"\npartitions: {}\n"), "-o", out("5")}, 2, "r5.yaml:3: size: a disk needs a size above 0"},
		{"recipe size too large for a file", []string{"build", w("r6.yaml", "name: t\nversion: 1.0.0\nsize: 100TiB\npartitions: {}\n"), "-o", out("6")}, 2, "recipe size 100TiB: " + out("6") + "'s filesystem holds no file that large"},
		{"unknown layout key", []string{"layout", "init", "--layout", w("l.yaml", "name: x\npartitions:\n  - {number: 1, label: A, type: esp, size: 1MiB, bogus: 1}\n"), filepath.Join(dir, "l.img")}, 2, "l.yaml:3: partition 1 (A): bogus: unknown key"},
		{"--size ''", []string{"layout", "init", "--size", "", filepath.Join(dir, "s.img")}, 2, "--size: malformed size"},
		{"random disk: layout show", []string{"layout", "show", rand}, 2, "no valid GPT"},
		{"random disk: layout check", []string{"layout", "check", rand}, 2, "no valid GPT"},
		{"random disk: slot status", []string{"slot", "status", rand}, 2, "no valid GPT"},
		{"random disk: slot mark-good", []string{"slot", "mark-good", rand}, 2, "no valid GPT"},
		{"truncated disk", []string{"layout", "show", trunc}, 2, "no valid GPT"},
		{"empty disk", []string{"slot", "status", empty}, 2, "empty.img is empty"},
		{"directory as disk: layout show", []string{"layout", "show", adir}, 2, "adir is a directory"},
		{"directory as disk: slot mark-good", []string{"slot", "mark-good", adir}, 2, "adir is a directory"},
		{"directory as disk: verify", []string{"verify", adir, "--key", ecPub}, 2, "adir is a directory"},
		{"missing image: verify", []string{"verify", filepath.Join(dir, "nonexist.img"), "--key", ecPub}, 2, "nonexist.img: no such file"},
		{"missing disk: payload apply", []string{"payload", "apply", badPayload, "--disk", filepath.Join(dir, "nonexistent.img"), "--key", ecPub}, 2, "nonexistent.img: no such file"},
		{"corrupt payload: inspect", []string{"payload", "inspect", badPayload}, 2, `bad magic "not "`},
		{"corrupt payload: apply", []string{"payload", "apply", badPayload, "--disk", disk, "--key", ecPub}, 2, `bad magic "not "`},
		{"--key a directory", []string{"verify", disk, "--key", adir}, 2, "adir is a directory, not a PEM key file"},
		{"no subcommand", []string{}, 2, "kiln: a subcommand is needed (see 'kiln --help')"},
		{"no slot subcommand", []string{"slot"}, 2, "kiln: slot: a subcommand is needed"},
		{"a failed check", []string{"layout", "check", "--layout", "flatcar", disk}, 1, "does not match layout flatcar"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := run(t, kiln, c.args...)
			if r.code != c.code || !strings.Contains(r.stderr, c.want) {
				t.Fatalf("kiln %s: exit %d, stderr %q; want exit %d and %q", strings.Join(c.args, " "), r.code, r.stderr, c.code, c.want)
			}
			for _, bad := range []string{"kiln: kiln", "ext4: ext4", "yamlPartition", "yamlRecipe", ".kiln-build-", ".tmp-"} {
				if strings.Contains(r.stderr, bad) {
					t.Errorf("message contains %q: %s", bad, r.stderr)
				}
			}
		})
	}

	// A signature checked with the wrong kind of key says both kinds.
	os.Mkdir(filepath.Join(dir, "b"), 0o755)
	m := buildSmall(t, filepath.Join(dir, "b"), filepath.Join(dir, "rsa.key"))
	r := run(t, kiln, "verify", filepath.Join(m, "disk.img"), "--key", ecPub)
	if r.code != 1 || !strings.Contains(r.stdout, "the key is ECDSA P-256") || !strings.Contains(r.stdout, "RSA-3072 signature") {
		t.Errorf("wrong key type: %+v", r)
	}

	// With --json, errors are JSON objects too.
	r = run(t, kiln, "--json", "build", filepath.Join(dir, "r4.yaml"), "-o", out("j"))
	var e struct {
		Error    string `json:"error"`
		ExitCode int    `json:"exit_code"`
		File     string `json:"file"`
		Line     int    `json:"line"`
		Key      string `json:"key"`
	}
	if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || r.code != 2 || e.ExitCode != 2 || e.Line != 2 || e.Key != "version" || !strings.HasSuffix(e.File, "r4.yaml") {
		t.Errorf("--json error: %v %+v %q", err, e, r.stderr)
	}
}
