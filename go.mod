module github.com/kiln-os/kiln

go 1.26.8

require golang.org/x/sys v0.50.0

require github.com/klauspost/compress v1.18.5 // indirect
