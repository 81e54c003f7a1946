// Command garbage is a "plugin" that prints garbage where go-plugin expects
// its handshake line and then sleeps, for the host's tests: the host must
// refuse it with a clear error and kill it, not wait forever.
package main

import (
	"fmt"
	"time"
)

func main() {
	fmt.Println("this is not a handshake|\x00\xff|garbage")
	time.Sleep(time.Hour)
}
