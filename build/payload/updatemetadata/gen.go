// Package updatemetadata holds the generated protobuf types of the
// update_engine payload manifest (see update_metadata.proto).
package updatemetadata

//go:generate protoc --go_out=. --go_opt=paths=source_relative update_metadata.proto
