package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testRegistry is Debian's docker-registry (the distribution v2 server)
// on a free loopback port, with a self-signed TLS certificate and
// htpasswd auth, stopped when the test ends.
type testRegistry struct {
	dir        string
	addr       string // 127.0.0.1:PORT
	ca         string // the certificate's PEM file, for --ca-file
	cert       tls.Certificate
	pool       *x509.CertPool
	user, pass string
}

// startRegistry starts a registry for the test.
func startRegistry(t *testing.T) *testRegistry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("docker-registry is not installed (make test installs Debian's docker-registry): %v", err)
	}
	r := &testRegistry{dir: t.TempDir(), user: "kiln", pass: "s3cret-pw"}
	r.writeCert(t)
	mustRun(t, "htpasswd", "-Bbc", filepath.Join(r.dir, "htpasswd"), r.user, r.pass)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = l.Addr().String()
	l.Close()
	config := fmt.Sprintf(`version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: kiln-test-secret
  tls:
    certificate: %s
    key: %s
auth:
  htpasswd:
    realm: kiln-test
    path: %s
`, filepath.Join(r.dir, "data"), r.addr, r.ca, filepath.Join(r.dir, "key.pem"), filepath.Join(r.dir, "htpasswd"))
	cfg := filepath.Join(r.dir, "config.yml")
	os.WriteFile(cfg, []byte(config), 0o644)
	log, err := os.Create(filepath.Join(r.dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfg)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("registry log (last 4 KiB):\n%s", lastBytes(b, 4096))
		}
	})
	// Ready when /v2/ asks for credentials.
	c := r.client()
	for deadline := time.Now().Add(15 * time.Second); ; {
		resp, err := c.Get("https://" + r.addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				break
			}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(log.Name())
			t.Fatalf("docker-registry exited:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry not ready on %s: %v", r.addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return r
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// writeCert makes a self-signed certificate for 127.0.0.1.
func (r *testRegistry) writeCert(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kiln test registry"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	r.ca = filepath.Join(r.dir, "cert.pem")
	os.WriteFile(r.ca, certPEM, 0o644)
	os.WriteFile(filepath.Join(r.dir, "key.pem"), keyPEM, 0o600)
	if r.cert, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	r.pool = x509.NewCertPool()
	r.pool.AppendCertsFromPEM(certPEM)
}

// client is an HTTP client that trusts the registry's certificate.
func (r *testRegistry) client() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.pool}}, Timeout: 30 * time.Second}
}

// get fetches a registry API path (through host, a proxy or the
// registry) with the test's credentials.
func (r *testRegistry) get(t *testing.T, host, path, accept string) []byte {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+host+path, nil)
	req.SetBasicAuth(r.user, r.pass)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := r.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", path, resp.Status, b)
	}
	return b
}

// env is the environment for kiln with a Docker config.json (in a fresh
// DOCKER_CONFIG, HOME empty) holding the password pass for each host.
func (r *testRegistry) env(t *testing.T, pass string, hosts ...string) []string {
	t.Helper()
	dir := t.TempDir()
	auths := map[string]any{}
	for _, h := range hosts {
		auths[h] = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(r.user + ":" + pass))}
	}
	b, _ := json.Marshal(map[string]any{"auths": auths})
	os.MkdirAll(filepath.Join(dir, "docker"), 0o700)
	os.WriteFile(filepath.Join(dir, "docker", "config.json"), b, 0o600)
	os.MkdirAll(filepath.Join(dir, "home"), 0o700)
	return []string{"DOCKER_CONFIG=" + filepath.Join(dir, "docker"), "HOME=" + filepath.Join(dir, "home"),
		"REGISTRY_AUTH_FILE=", "XDG_RUNTIME_DIR=", "XDG_CONFIG_HOME="}
}

// registryBehindProxy starts a registry and a TLS proxy in front of it,
// and returns them with an environment whose credentials let kiln in
// through the proxy: what most registry tests need.
func registryBehindProxy(t *testing.T) (*testRegistry, *proxy, []string) {
	t.Helper()
	reg := startRegistry(t)
	px := reg.startProxy(t, true)
	return reg, px, reg.env(t, reg.pass, px.host)
}

// proxy is a reverse proxy in front of the registry that records the
// requests it passes and can drop the connection in the middle of blob
// downloads.
type proxy struct {
	srv  *httptest.Server
	host string

	mu       sync.Mutex
	requests []string // "METHOD PATH", with " Range: …" when a range was asked
	// dropAfter > 0 drops each blob download after that many bytes,
	// drops times (-1: always).
	dropAfter int64
	drops     int
}

// startProxy starts a proxy to the registry, TLS (with the registry's
// certificate) or plain HTTP.
func (r *testRegistry) startProxy(t *testing.T, useTLS bool) *proxy {
	p := &proxy{}
	target, _ := url.Parse("https://" + r.addr)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host // the registry's upload URLs name the proxy
			pr.SetXForwarded()
		},
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.pool}},
	}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rec := req.Method + " " + req.URL.Path
		if rg := req.Header.Get("Range"); rg != "" {
			rec += " Range: " + rg
		}
		p.mu.Lock()
		p.requests = append(p.requests, rec)
		drop := req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/sha256:") && p.dropAfter > 0 && p.drops != 0
		limit := p.dropAfter
		p.mu.Unlock()
		if drop {
			w = &droppingWriter{ResponseWriter: w, left: limit, p: p}
		}
		rp.ServeHTTP(w, req)
	}))
	if useTLS {
		p.srv.TLS = &tls.Config{Certificates: []tls.Certificate{r.cert}}
		p.srv.StartTLS()
	} else {
		p.srv.Start()
	}
	t.Cleanup(p.srv.Close)
	p.host = p.srv.Listener.Addr().String()
	return p
}

// reset forgets the recorded requests and sets how downloads are dropped.
func (p *proxy) reset(dropAfter int64, drops int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests, p.dropAfter, p.drops = nil, dropAfter, drops
}

// count counts the recorded requests whose line satisfies match.
func (p *proxy) count(match func(string) bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, r := range p.requests {
		if match(r) {
			n++
		}
	}
	return n
}

// blobUpload matches the requests of a blob upload (start, chunk, end).
func blobUpload(r string) bool { return strings.Contains(r, "/blobs/uploads/") }

// droppingWriter passes left bytes of a response, then fails (while the
// proxy has drops left), which makes the reverse proxy abort the
// connection mid-body.
type droppingWriter struct {
	http.ResponseWriter
	left    int64
	p       *proxy
	dropped bool
}

func (d *droppingWriter) Write(b []byte) (int, error) {
	if d.left < int64(len(b)) && !d.dropped {
		d.p.mu.Lock()
		if d.p.drops != 0 {
			d.dropped = true
			if d.p.drops > 0 {
				d.p.drops--
			}
		}
		d.p.mu.Unlock()
	}
	if !d.dropped {
		d.left -= int64(len(b))
		return d.ResponseWriter.Write(b)
	}
	n := int(max(0, min(int64(len(b)), d.left)))
	n, err := d.ResponseWriter.Write(b[:n])
	d.left -= int64(n)
	if f, ok := d.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
	if err == nil {
		err = fmt.Errorf("test proxy: dropping the connection")
	}
	return n, err
}

func (d *droppingWriter) Flush() {
	if f, ok := d.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
