//go:build !linux

package main

import "os"

// openUncached on hosts without O_DIRECT (macOS, Windows): reads may hit the page cache,
// and the note says so next to the figure.
func openUncached(path string) (*os.File, string, error) {
	f, err := os.Open(path)
	return f, "page cache (no O_DIRECT on this OS)", err
}

func alignedBlock(size int) []byte { return make([]byte, size) }
