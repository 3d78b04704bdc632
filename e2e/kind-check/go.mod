// e2e/kind-check: checks kind-config.yaml with kind's own loader, defaults and validation
// (see main.go). The module path is under sigs.k8s.io/kind/pkg only so that Go lets it import
// kind's internal config packages; it is never published. Raising kind here raises it for
// e2e/kind-up.sh and the tests too: they read the version from this file.
module sigs.k8s.io/kind/pkg/orderpipelinekindcheck

go 1.23

require sigs.k8s.io/kind v0.33.0

require (
	github.com/pkg/errors v0.9.1 // indirect
	go.yaml.in/yaml/v3 v3.0.4 // indirect
)
