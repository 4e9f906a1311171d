//go:build !linux

package tpm2

import "syscall"

func procAttr() *syscall.SysProcAttr { return nil }
