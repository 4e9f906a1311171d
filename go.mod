module github.com/kiln-os/kiln

go 1.26.8

require (
	github.com/diskfs/go-diskfs v1.9.4
	github.com/spf13/cobra v1.10.2
	go.yaml.in/yaml/v3 v3.0.6
	golang.org/x/sys v0.50.0
)

require (
	github.com/google/uuid v1.6.0 // indirect
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/klauspost/compress v1.18.5 // indirect
	github.com/spf13/pflag v1.0.9 // indirect
)
