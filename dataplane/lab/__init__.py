"""The local multi-cluster lab: clusters, nodes and pods made of network namespaces."""
