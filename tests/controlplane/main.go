// Command controlplane runs one Kubernetes component, chosen by its first argument, so that the test
// suite builds a single binary (one link of the shared dependency graph) instead of five:
//
//	controlplane etcd ...                     go.etcd.io/etcd/server/v3 (etcdmain)
//	controlplane kube-apiserver ...           k8s.io/kubernetes/cmd/kube-apiserver/app
//	controlplane kube-controller-manager ...  k8s.io/kubernetes/cmd/kube-controller-manager/app
//	controlplane kube-scheduler ...           k8s.io/kubernetes/cmd/kube-scheduler/app
//	controlplane kubectl ...                  k8s.io/kubectl/pkg/cmd
//	controlplane kubelet ...                  k8s.io/kubernetes/cmd/kubelet/app (the real node, issue 20)
//	controlplane kube-proxy ...               k8s.io/kubernetes/cmd/kube-proxy/app
//
// The remaining arguments are the component's own flags.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	kubectl "k8s.io/kubectl/pkg/cmd"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler": func() *cobra.Command {
		return scheduler.NewSchedulerCommand()
	},
	"kubectl": kubectl.NewDefaultKubectlCommand,
	"kubelet": func() *cobra.Command {
		return kubelet.NewKubeletCommand(context.Background())
	},
	"kube-proxy": proxy.NewProxyCommand,
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: controlplane etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy [flags]")
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "etcd" {
		etcdmain.Main(append([]string{"etcd"}, os.Args[2:]...))
		return
	}
	build, found := components[name]
	if !found {
		fmt.Fprintf(os.Stderr, "controlplane: unknown component %q\n", name)
		os.Exit(2)
	}
	command := build()
	command.SetArgs(os.Args[2:])
	os.Exit(cli.Run(command))
}
