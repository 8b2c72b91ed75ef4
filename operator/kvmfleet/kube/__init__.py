"""The Kubernetes adapter: the only package that imports the Kubernetes client."""
