// Command pause is the real node's pod sandbox: it holds a pod's namespaces, reaps the zombies handed to
// it as PID 1 and exits when told to stop. It stands in for registry.k8s.io/pause, which cannot be pulled
// here (tests/node/build-images.sh builds it into an image of that name).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for received := range signals {
		if received != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
