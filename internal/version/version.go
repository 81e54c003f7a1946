// Package version holds the version stamped into every Vigil binary at build
// time (make build sets it with -ldflags -X).
package version

// Version is the build's version; "dev" when built without make.
var Version = "dev"
