package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/kiln-os/kiln/internal/progress"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/errcode"
	"oras.land/oras-go/v2/registry/remote/retry"
)

// Remote says how to reach a registry.
type Remote struct {
	// CAFile is a PEM file of certificates trusted besides the system's
	// (a private registry's CA, a test's self-signed certificate).
	CAFile string
	// PlainHTTP talks plain HTTP instead of TLS. Off by default: a
	// registry that answers in plain HTTP is refused (ErrPlainHTTP).
	PlainHTTP bool
	// AuthFiles are the credential files read, in order, the first that
	// has credentials for the registry winning; nil means
	// DefaultAuthFiles(). Docker's config.json format (which containers'
	// auth.json shares), credential helpers included.
	AuthFiles []string
	// UserAgent is sent with every request.
	UserAgent string
	// Log receives one line per blob; nil logs nothing.
	Log *slog.Logger
	// Progress receives a push's or a pull's stages, one per blob and
	// step (checking, hashing and compressing, uploading; downloading,
	// decompressing, verifying), with the bytes done; nil reports none.
	Progress progress.Reporter
}

func (r *Remote) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// DefaultAuthFiles are the credential files docker, podman, skopeo and
// buildah read, in the containers-auth.json(5) order, those that exist:
// $REGISTRY_AUTH_FILE; $XDG_RUNTIME_DIR/containers/auth.json;
// $XDG_CONFIG_HOME/containers/auth.json (~/.config/containers/auth.json);
// $DOCKER_CONFIG/config.json (~/.docker/config.json).
func DefaultAuthFiles() []string {
	home, _ := os.UserHomeDir()
	var files []string
	add := func(p string) {
		if p == "" {
			return
		}
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			files = append(files, p)
		}
	}
	add(os.Getenv("REGISTRY_AUTH_FILE"))
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		add(filepath.Join(d, "containers", "auth.json"))
	}
	if d := os.Getenv("XDG_CONFIG_HOME"); d != "" {
		add(filepath.Join(d, "containers", "auth.json"))
	} else if home != "" {
		add(filepath.Join(home, ".config", "containers", "auth.json"))
	}
	if d := os.Getenv("DOCKER_CONFIG"); d != "" {
		add(filepath.Join(d, "config.json"))
	} else if home != "" {
		add(filepath.Join(home, ".docker", "config.json"))
	}
	return files
}

// credentialStore chains the auth files.
func (r *Remote) credentialStore() (credentials.Store, []string, error) {
	files := r.AuthFiles
	if files == nil {
		files = DefaultAuthFiles()
	}
	var stores []credentials.Store
	for _, f := range files {
		s, err := credentials.NewStore(f, credentials.StoreOptions{})
		if err != nil {
			return nil, nil, inputErrorf("credentials file %s: %w", f, err)
		}
		stores = append(stores, s)
	}
	if len(stores) == 0 {
		return credentials.NewMemoryStore(), files, nil
	}
	return credentials.NewStoreWithFallbacks(stores[0], stores[1:]...), files, nil
}

// client is one repository on a registry, and how errors name it.
type client struct {
	repo      *remote.Repository
	ref       registry.Reference
	authFiles []string
	remote    *Remote
}

// ParseReference parses a reference of the form
// registry.example.com[:port]/repository[:tag|@digest]; the registry
// host is required (no default registry is assumed).
func ParseReference(ref string) (registry.Reference, error) {
	r, err := registry.ParseReference(ref)
	if err != nil {
		return registry.Reference{}, inputErrorf("reference %q: want HOST[:PORT]/REPOSITORY[:TAG|@DIGEST]: %w", ref, err)
	}
	if !strings.ContainsAny(r.Registry, ".:") && r.Registry != "localhost" {
		return registry.Reference{}, inputErrorf("reference %q: %q is not a registry host (want HOST[:PORT]/REPOSITORY[:TAG])", ref, r.Registry)
	}
	return r, nil
}

// connect returns a client for the repository of ref.
func (r *Remote) connect(ref registry.Reference) (*client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	tr.WriteBufferSize = 256 << 10
	tr.ReadBufferSize = 256 << 10
	if r.CAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(r.CAFile)
		if err != nil {
			return nil, inputErrorf("CA file: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, inputErrorf("CA file %s holds no PEM certificate", r.CAFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	store, files, err := r.credentialStore()
	if err != nil {
		return nil, err
	}
	ac := &auth.Client{
		Client:     &http.Client{Transport: retry.NewTransport(tr)},
		Cache:      auth.NewCache(),
		Credential: credentials.Credential(store),
	}
	if r.UserAgent != "" {
		ac.SetUserAgent(r.UserAgent)
	}
	repo, err := remote.NewRepository(ref.Registry + "/" + ref.Repository)
	if err != nil {
		return nil, inputErrorf("reference %s: %w", ref, err)
	}
	repo.Client = ac
	repo.PlainHTTP = r.PlainHTTP
	return &client{repo: repo, ref: ref, authFiles: files, remote: r}, nil
}

// ping asks the registry for its API root (GET /v2/), as a client does
// first, so that a wrong scheme, an untrusted certificate or refused
// credentials show before any work.
func (c *client) ping(ctx context.Context) error {
	reg, err := remote.NewRegistry(c.ref.Registry)
	if err != nil {
		return inputErrorf("registry %s: %w", c.ref.Registry, err)
	}
	reg.Client, reg.PlainHTTP = c.repo.Client, c.repo.PlainHTTP
	return c.explain(reg.Ping(ctx))
}

// explain turns a transport or registry error into one that says what to
// do: plain HTTP without PlainHTTP, an unknown certificate authority,
// refused credentials.
func (c *client) explain(err error) error {
	if err == nil {
		return nil
	}
	host := c.ref.Registry
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var er *errcode.ErrorResponse
	switch {
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return classify(ErrPlainHTTP, fmt.Errorf("%s answers in plain HTTP, and kiln talks TLS to registries (--insecure allows plain HTTP): %w", host, err))
	case errors.As(err, &unknownCA), errors.As(err, &hostErr):
		return fmt.Errorf("%s: TLS certificate not trusted (--ca-file names a CA to trust): %w", host, err)
	case errors.As(err, &er) && (er.StatusCode == http.StatusUnauthorized || er.StatusCode == http.StatusForbidden):
		return classify(ErrAuth, fmt.Errorf("%s refused access to %s (%s; %s): %w", host, c.ref.Repository, http.StatusText(er.StatusCode), c.credentialSource(), err))
	case errors.Is(err, auth.ErrBasicCredentialNotFound):
		return classify(ErrAuth, fmt.Errorf("%s refused access to %s: it asks for a password, and there is none for %s (%s)", host, c.ref.Repository, host, c.credentialSource()))
	}
	return err
}

// credentialSource says where credentials were looked for.
func (c *client) credentialSource() string {
	if len(c.authFiles) == 0 {
		return "no credentials file found"
	}
	return "credentials from " + strings.Join(c.authFiles, ", ")
}

// notExist says whether err means the manifest or blob does not exist.
func notExist(err error) bool {
	var er *errcode.ErrorResponse
	return errors.As(err, &er) && er.StatusCode == http.StatusNotFound || errors.Is(err, errdef.ErrNotFound)
}

// done reports a context's cancellation in preference to what it caused.
func done(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}
