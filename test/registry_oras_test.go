package test

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The oras CLI (oras.land/oras), a generic OCI client: `make deps`
// builds it into the kiln cache and `make test` names it in KILN_ORAS.
// The tests pull kiln's artifacts with it (the files it writes must be
// what the blobs are) and push, with it, artifacts that kiln push
// refuses to make (a build its manifest does not vouch for), to check
// that kiln pull --key refuses them too.

// orasBin returns the oras CLI: $KILN_ORAS, else oras on PATH.
func orasBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("KILN_ORAS"); p != "" {
		if !fileExists(p) {
			t.Fatalf("KILN_ORAS=%s: no such file (make deps builds oras there)", p)
		}
		return p
	}
	p, err := exec.LookPath("oras")
	if err != nil {
		t.Fatalf("the oras CLI is not installed (make deps builds it into the kiln cache and make test sets KILN_ORAS): %v", err)
	}
	return p
}

// oras runs the oras CLI in dir with the environment env (a fresh HOME)
// and the registry's credentials, and returns its output; it must exit 0.
func oras(t *testing.T, reg *testRegistry, dir string, env []string, args ...string) string {
	t.Helper()
	args = append(args, "-u", reg.user, "-p", reg.pass, "--ca-file", reg.ca, "--no-tty")
	cmd := exec.Command(orasBin(t), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("oras %s: %v\n%s", strings.Join(args[:len(args)-7], " "), err, out.String())
	}
	return out.String()
}

// orasPushBuild publishes the build directory dir as ref the way kiln
// push lays a build out, but with oras and without kiln's checks: every
// file uncompressed (media types without +zstd), titled with its name,
// and manifest.json.sig attached as a signature referrer.
func orasPushBuild(t *testing.T, reg *testRegistry, env []string, dir, ref string) {
	t.Helper()
	types := map[string]string{"disk.img": "application/vnd.kiln.disk.raw", "disk.qcow2": "application/vnd.kiln.disk.qcow2",
		"disk.vhd": "application/vnd.kiln.disk.vhd", "disk.img.zst": "application/vnd.kiln.disk.raw.zst",
		"usr.img": "application/vnd.kiln.partition.raw", "usr.blockmap.json": "application/vnd.kiln.blockmap.v1+json",
		"manifest.json": "application/vnd.kiln.manifest.v1+json"}
	// The documents go up as kiln pushes them: referrers of the build,
	// one layer each, titled with their names.
	referrers := map[string]string{"sbom.spdx.json": "application/spdx+json", "sbom.cdx.json": "application/vnd.cyclonedx+json",
		"provenance.intoto.json": "application/vnd.in-toto+json"}
	args := []string{"push", "--artifact-type", "application/vnd.kiln.build.v1", ref}
	for _, n := range dirNames(t, dir) {
		mt, ok := types[n]
		if !ok {
			if _, ok := referrers[n]; !ok && n != "manifest.json.sig" {
				t.Fatalf("orasPushBuild: no media type for %s", n)
			}
			continue
		}
		args = append(args, n+":"+mt)
	}
	oras(t, reg, dir, env, args...)
	if fileExists(filepath.Join(dir, "manifest.json.sig")) {
		oras(t, reg, dir, env, "attach", "--artifact-type", "application/vnd.kiln.signature.v1", ref,
			"manifest.json.sig:application/vnd.kiln.signature.v1+base64")
	}
	for _, n := range dirNames(t, dir) {
		if mt, ok := referrers[n]; ok {
			oras(t, reg, dir, env, "attach", "--artifact-type", mt, ref, n+":"+mt)
		}
	}
}

// tagExists asks the registry (through host) whether repo has tag.
func tagExists(t *testing.T, reg *testRegistry, host, repo, tag string) bool {
	t.Helper()
	req, _ := http.NewRequest(http.MethodHead, "https://"+host+"/v2/"+repo+"/manifests/"+tag, nil)
	req.SetBasicAuth(reg.user, reg.pass)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
	resp, err := reg.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true
	case http.StatusNotFound:
		return false
	}
	t.Fatalf("HEAD %s:%s: %s", repo, tag, resp.Status)
	return false
}
