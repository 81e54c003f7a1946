package sdk_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine running: the SDK
// promises that every goroutine it starts has an owner that waits for it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
