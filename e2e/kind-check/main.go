// Command kind-check checks a kind cluster configuration the way `kind create cluster --config`
// does before it touches Docker, with kind's own code at the version go.mod pins, and prints what
// kind would create: the nodes, their roles and images, the host port mappings and the network.
//
//	kind-check [-name NAME] [-json] kind-config.yaml
//
// It exists because kind itself cannot run without a container engine: `kind create cluster`
// asks the engine for its cgroup setup and for existing clusters first, and only then validates
// the configuration. The steps it takes, and what this command does for each:
//
//  1. cluster.CreateWithConfigFile → encoding.Load: read the file, pick the API version, decode
//     it strictly (unknown fields and unknown port protocols fail), apply the v1alpha4 defaults,
//     convert to kind's internal config. Called as is.
//  2. create.fixupOptions: `--name` overrides the file's name, then the internal defaults. The
//     function is unexported; its two statements are repeated here (`-name` below) and
//     config.SetDefaultsCluster is called as is.
//  3. config.Cluster.Validate: name, ports, subnets, roles, port mapping conflicts. Called as is.
//
// Steps 1 and 3 live in kind's internal packages, which Go lets only packages under
// sigs.k8s.io/kind/pkg import. In module mode that rule is about import paths, not modules
// (golang.org/issue/23970), which is why this module's path is under sigs.k8s.io/kind/pkg: it
// is never published, and it is the only way to run kind's own validation rather than a copy.
// kind's public API offers strict decoding into pkg/apis/config/v1alpha4 and its defaults, but
// no validation without a container engine.
//
// Exit status: 0 when kind accepts the file, 1 with kind's message when it does not, 2 for a
// usage error.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sort"
	"strings"

	"sigs.k8s.io/kind/pkg/internal/apis/config"
	"sigs.k8s.io/kind/pkg/internal/apis/config/encoding"
)

// kindModule is the module whose code does the checking; its version comes from the build.
const kindModule = "sigs.k8s.io/kind"

func main() {
	flags := flag.NewFlagSet("kind-check", flag.ContinueOnError)
	flags.SetOutput(os.Stderr)
	name := flags.String("name", "", "cluster name, as kind create cluster --name NAME (overrides the file's)")
	asJSON := flags.Bool("json", false, "print the defaulted configuration as JSON instead of text")
	flags.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: kind-check [-name NAME] [-json] KIND_CONFIG.yaml")
		flags.PrintDefaults()
	}
	if err := flags.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if flags.NArg() != 1 {
		flags.Usage()
		os.Exit(2)
	}
	path := flags.Arg(0)
	version := kindVersion()

	cluster, err := load(path, *name)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kind %s rejects %s: %v\n", version, path, err)
		os.Exit(1)
	}

	if *asJSON {
		err = printJSON(os.Stdout, version, path, cluster)
	} else {
		printText(os.Stdout, version, path, cluster)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kind-check: %v\n", err)
		os.Exit(2)
	}
}

// load does what `kind create cluster --config path [--name name]` does to the file before it
// creates anything (see the package documentation for the mapping).
func load(path, name string) (*config.Cluster, error) {
	cluster, err := encoding.Load(path)
	if err != nil {
		return nil, err
	}
	if name != "" {
		cluster.Name = name
	}
	config.SetDefaultsCluster(cluster)
	if err := cluster.Validate(); err != nil {
		return nil, err
	}
	return cluster, nil
}

// kindVersion is the version of kind linked into this binary, as go.mod resolved it.
func kindVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dependency := range info.Deps {
			if dependency.Path == kindModule {
				if dependency.Replace != nil {
					return dependency.Replace.Version
				}
				return dependency.Version
			}
		}
	}
	return "(unknown version)"
}

func printText(out io.Writer, version, path string, cluster *config.Cluster) {
	roles := map[config.NodeRole]int{}
	for _, node := range cluster.Nodes {
		roles[node.Role]++
	}
	fmt.Fprintf(out, "%s: accepted by kind %s (load, defaults and validation of `kind create cluster --config`)\n", path, version)
	fmt.Fprintf(out, "cluster %s: %d nodes (%s: %d, %s: %d)\n", cluster.Name, len(cluster.Nodes),
		config.ControlPlaneRole, roles[config.ControlPlaneRole], config.WorkerRole, roles[config.WorkerRole])
	for index, node := range cluster.Nodes {
		fmt.Fprintf(out, "  node %d: %s, image %s\n", index, node.Role, node.Image)
		for _, mapping := range node.ExtraPortMappings {
			fmt.Fprintf(out, "    port %s -> node port %d/%s\n",
				hostAddress(mapping), mapping.ContainerPort, protocol(mapping))
		}
		for _, mount := range node.ExtraMounts {
			fmt.Fprintf(out, "    mount %s -> %s\n", mount.HostPath, mount.ContainerPath)
		}
	}
	network := cluster.Networking
	apiServer := hostAddress(config.PortMapping{
		ListenAddress: network.APIServerAddress,
		HostPort:      network.APIServerPort,
	})
	cni := "kind's default CNI"
	if network.DisableDefaultCNI {
		cni = "no CNI (disableDefaultCNI)"
	}
	fmt.Fprintf(out, "networking: %s, API server on %s, pods %s, services %s, kube-proxy %s, %s\n",
		network.IPFamily, apiServer, network.PodSubnet,
		network.ServiceSubnet, network.KubeProxyMode, cni)
	if len(cluster.FeatureGates) > 0 {
		gates := make([]string, 0, len(cluster.FeatureGates))
		for gate, enabled := range cluster.FeatureGates {
			gates = append(gates, fmt.Sprintf("%s=%t", gate, enabled))
		}
		sort.Strings(gates)
		fmt.Fprintf(out, "feature gates: %s\n", strings.Join(gates, ", "))
	}
}

// hostAddress is where a mapping listens on the host; kind's default for an empty address is
// every interface.
func hostAddress(mapping config.PortMapping) string {
	address := mapping.ListenAddress
	if address == "" {
		address = "0.0.0.0"
	}
	if strings.Contains(address, ":") {
		address = "[" + address + "]"
	}
	switch mapping.HostPort {
	case 0, -1:
		return address + ":<random>"
	default:
		return fmt.Sprintf("%s:%d", address, mapping.HostPort)
	}
}

// protocol is a mapping's protocol; kind's node provider publishes an empty one as TCP.
func protocol(mapping config.PortMapping) config.PortMappingProtocol {
	if mapping.Protocol == "" {
		return config.PortMappingProtocolTCP
	}
	return mapping.Protocol
}

// The JSON form, for tests: kind's v1alpha4 field names, after kind's defaults.
type summary struct {
	KindVersion string         `json:"kindVersion"`
	File        string         `json:"file"`
	Name        string         `json:"name"`
	Nodes       []nodeSummary  `json:"nodes"`
	Networking  networkSummary `json:"networking"`
}

type nodeSummary struct {
	Role              string           `json:"role"`
	Image             string           `json:"image"`
	ExtraPortMappings []mappingSummary `json:"extraPortMappings"`
}

type mappingSummary struct {
	ListenAddress string `json:"listenAddress"`
	HostPort      int32  `json:"hostPort"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

type networkSummary struct {
	IPFamily          string `json:"ipFamily"`
	APIServerAddress  string `json:"apiServerAddress"`
	APIServerPort     int32  `json:"apiServerPort"`
	PodSubnet         string `json:"podSubnet"`
	ServiceSubnet     string `json:"serviceSubnet"`
	KubeProxyMode     string `json:"kubeProxyMode"`
	DisableDefaultCNI bool   `json:"disableDefaultCNI"`
}

func printJSON(out io.Writer, version, path string, cluster *config.Cluster) error {
	nodes := make([]nodeSummary, 0, len(cluster.Nodes))
	for _, node := range cluster.Nodes {
		mappings := make([]mappingSummary, 0, len(node.ExtraPortMappings))
		for _, mapping := range node.ExtraPortMappings {
			mappings = append(mappings, mappingSummary{
				ListenAddress: mapping.ListenAddress,
				HostPort:      mapping.HostPort,
				ContainerPort: mapping.ContainerPort,
				Protocol:      string(protocol(mapping)),
			})
		}
		nodes = append(nodes, nodeSummary{
			Role:              string(node.Role),
			Image:             node.Image,
			ExtraPortMappings: mappings,
		})
	}
	network := cluster.Networking
	encoder := json.NewEncoder(out)
	encoder.SetIndent("", "  ")
	return encoder.Encode(summary{
		KindVersion: version,
		File:        path,
		Name:        cluster.Name,
		Nodes:       nodes,
		Networking: networkSummary{
			IPFamily:          string(network.IPFamily),
			APIServerAddress:  network.APIServerAddress,
			APIServerPort:     network.APIServerPort,
			PodSubnet:         network.PodSubnet,
			ServiceSubnet:     network.ServiceSubnet,
			KubeProxyMode:     string(network.KubeProxyMode),
			DisableDefaultCNI: network.DisableDefaultCNI,
		},
	})
}
