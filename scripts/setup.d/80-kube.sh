# The Kubernetes integration tests' real control plane and tools (see
# ../shared research "kubernetes-real-apiserver"): etcd (tools/etcd),
# kube-apiserver and kubectl (tools/kube-apiserver: k8s.io/kubernetes with its
# staging modules replaced by their published releases) and helm (tools/helm),
# each built from the Go module proxy into build/bin by build_tool (70-hubble.sh:
# rebuilt only when its tools module changes). ~10 minutes the first time.
build_tool etcd github.com/wardproxy/ward/tools/etcd
build_tool kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build_tool kubectl k8s.io/kubernetes/cmd/kubectl kube-apiserver
build_tool helm helm.sh/helm/v3/cmd/helm
