// Command kube is a multi-call binary holding the Kubernetes control-plane
// components, kubectl and etcd, dispatched on the name it is invoked by
// (argv[0], through symlinks) the way hyperkube and k3s do. One binary links
// once, which saves minutes of link time and hundreds of megabytes of disk.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata" // CronJob time zones, as the upstream mains import it

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl's client auth plugins
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var components = map[string]func([]string) int{
	"kube-apiserver":          runCobra(apiserver.NewAPIServerCommand),
	"kube-controller-manager": runCobra(controllermanager.NewControllerManagerCommand),
	"kube-scheduler": runCobra(func() *cobra.Command {
		return scheduler.NewSchedulerCommand()
	}),
	"kubectl": runKubectl,
	"etcd":    runEtcd,
}

func runCobra(newCommand func() *cobra.Command) func([]string) int {
	return func(args []string) int {
		command := newCommand()
		command.SetArgs(args)
		return cli.Run(command)
	}
}

func runKubectl(args []string) int {
	// As upstream: set verbosity before command construction, which already logs.
	logs.GlogSetter(kubectl.GetLogVerbosity(append([]string{"kubectl"}, args...))) // nolint:errcheck
	command := kubectl.NewDefaultKubectlCommand()
	command.SetArgs(args)
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
	return 0
}

func runEtcd(args []string) int {
	etcdmain.Main(append([]string{"etcd"}, args...))
	return 0
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if _, ok := components[name]; !ok && len(args) > 0 {
		name, args = args[0], args[1:]
	}
	run, ok := components[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "usage: invoke as (or pass first) one of kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd; got %q\n", name)
		os.Exit(2)
	}
	os.Exit(run(args))
}
